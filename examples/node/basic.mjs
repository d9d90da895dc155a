// A chat completion through the gateway with the `openai` npm package.
// Guide: "OpenAI SDK Integration → JavaScript/TypeScript" and "JavaScript/Node.js → Basic Usage".
//
//   LITELLM_MASTER_KEY=sk-... node basic.mjs
import OpenAI from 'openai';

const client = new OpenAI({
  apiKey: process.env.LITELLM_MASTER_KEY,
  baseURL: process.env.LITELLM_BASE_URL || 'http://localhost:4000'
});
const MODEL = process.env.LITELLM_MODEL || 'shin-llama-3-1-70b'; // any model_name of your config

async function chat(message, model = MODEL) {
  const response = await client.chat.completions.create({
    model: model,
    messages: [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', content: message }
    ]
  });

  return response.choices[0].message.content;
}

// Use it
const result = await chat('What is JavaScript?');
console.log(result);
