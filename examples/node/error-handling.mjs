// Retry what is worth retrying (429, 5xx), give up at once on the rest.
// Guide: "Error Handling → Error Handling (JavaScript)". Fixed here:
// - the guide passed `timeout: 60000` among the request's parameters, where it is sent to the
//   API as an unknown body field and does nothing; it is a request option (second argument);
// - the SDK already retries 429 and 5xx twice on its own (`maxRetries: 2`), so each of the
//   guide's attempts could be three requests: the client is made with `maxRetries: 0`;
// - the last 5xx printed no reason.
// It asks once with a model the gateway serves and once with one it does not serve
// (a 404: a client error, not retried).
import OpenAI from 'openai';

async function robustChat(message, model = process.env.LITELLM_MODEL || 'shin-llama-3-1-70b') {
  const client = new OpenAI({
    apiKey: process.env.LITELLM_MASTER_KEY,
    baseURL: process.env.LITELLM_BASE_URL || 'http://localhost:4000',
    maxRetries: 0 // this function does the retrying
  });

  const maxRetries = 3;
  const baseDelay = 1000; // ms

  for (let attempt = 0; attempt < maxRetries; attempt++) {
    try {
      const response = await client.chat.completions.create(
        {
          model: model,
          messages: [{ role: 'user', content: message }]
        },
        { timeout: 60000 } // ms, this request only
      );

      return response.choices[0].message.content;
    } catch (error) {
      if (error.status === 401) {
        console.error('Authentication failed');
        return null;
      }

      const retryable = error.status === 429 || error.status >= 500;
      if (retryable && attempt < maxRetries - 1) {
        const delay = baseDelay * Math.pow(2, attempt);
        console.log(`Error ${error.status}. Waiting ${delay}ms...`);
        await new Promise(resolve => setTimeout(resolve, delay));
        continue;
      }

      console.error('Error:', error.message);
      return null;
    }
  }

  console.error('Max retries exceeded');
  return null;
}

console.log(await robustChat('Hello from the examples'));
console.log(await robustChat('Hello again', 'no-such-model'));
