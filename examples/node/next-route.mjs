// A Next.js route handler streaming the gateway's answer as plain text.
// Save it as app/api/chat/route.js in a Next.js app (call-next-route.mjs calls it as Next.js would).
// Guide: "Framework Integration → Vercel AI SDK (JavaScript)", the current equivalent of the
// `openai-edge` example (deprecated packages).
import OpenAI from 'openai';

const client = new OpenAI({
  apiKey: process.env.LITELLM_MASTER_KEY,
  baseURL: process.env.LITELLM_BASE_URL || 'http://localhost:4000'
});

export async function POST(req) {
  const { messages } = await req.json();

  const stream = await client.chat.completions.create({
    model: process.env.LITELLM_MODEL || 'shin-llama-3-1-70b',
    stream: true,
    messages
  });

  const encoder = new TextEncoder();
  const body = new ReadableStream({
    async start(controller) {
      for await (const chunk of stream) {
        const content = chunk.choices[0]?.delta?.content || '';
        if (content) controller.enqueue(encoder.encode(content));
      }
      controller.close();
    }
  });

  return new Response(body, {
    headers: { 'Content-Type': 'text/plain; charset=utf-8' }
  });
}
