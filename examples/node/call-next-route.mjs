// Calls the route handler of next-route.mjs with a web Request, as Next.js does, and prints
// the streamed text as it arrives: the handler runs without a Next.js app around it.
import { POST } from './next-route.mjs';

const response = await POST(new Request('http://localhost:3000/api/chat', {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ messages: [{ role: 'user', content: 'Stream through Next.js' }] })
}));

console.log(response.status, response.headers.get('content-type'));
const decoder = new TextDecoder();
for await (const part of response.body) {
  process.stdout.write(decoder.decode(part, { stream: true }));
}
console.log();
