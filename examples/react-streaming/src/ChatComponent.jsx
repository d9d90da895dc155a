// The guide's React streaming component ("Streaming Responses → React Streaming Component"):
// the browser calls the gateway directly (CORS: general_settings.cors_allow_origins) and shows
// the answer as it streams in. Fixed here:
// - the gateway address, key and model are props (from config.js) instead of constants;
// - the client is made once, not again on every render (each keystroke);
// - a failed request left the button on "Sending..." for good and the error unhandled: it is
//   now shown, and the button comes back.
import { useMemo, useState } from 'react';
import OpenAI from 'openai';

export default function ChatComponent({ baseURL, apiKey, model }) {
  const [message, setMessage] = useState('');
  const [response, setResponse] = useState('');
  const [error, setError] = useState('');
  const [loading, setLoading] = useState(false);

  const client = useMemo(() => new OpenAI({
    apiKey,
    baseURL,
    dangerouslyAllowBrowser: true // Only for demo: the key is visible to the page's users
  }), [apiKey, baseURL]);

  const handleSubmit = async (e) => {
    e.preventDefault();
    setLoading(true);
    setResponse('');
    setError('');

    try {
      const stream = await client.chat.completions.create({
        model,
        messages: [{ role: 'user', content: message }],
        stream: true
      });

      for await (const chunk of stream) {
        const content = chunk.choices[0]?.delta?.content || '';
        setResponse(prev => prev + content);
      }
    } catch (err) {
      setError(err.message);
    } finally {
      setLoading(false);
    }
  };

  return (
    <div>
      <form onSubmit={handleSubmit}>
        <input
          value={message}
          onChange={(e) => setMessage(e.target.value)}
          placeholder="Type your message..."
        />
        <button type="submit" disabled={loading}>
          {loading ? 'Sending...' : 'Send'}
        </button>
      </form>
      <div id="response">{response}</div>
      {error && <div id="error" role="alert">{error}</div>}
    </div>
  );
}
