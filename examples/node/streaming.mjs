// Write the answer as it is generated (server-sent events through the gateway).
// Guide: "Streaming Responses → JavaScript Streaming".
import OpenAI from 'openai';

const client = new OpenAI({
  apiKey: process.env.LITELLM_MASTER_KEY,
  baseURL: process.env.LITELLM_BASE_URL || 'http://localhost:4000'
});

async function streamChat(message) {
  const stream = await client.chat.completions.create({
    model: process.env.LITELLM_MODEL || 'shin-llama-3-1-70b',
    messages: [{ role: 'user', content: message }],
    stream: true
  });

  for await (const chunk of stream) {
    const content = chunk.choices[0]?.delta?.content || '';
    process.stdout.write(content);
  }
  console.log(); // New line at end
}

// Use it
await streamChat('Tell me a long story');
