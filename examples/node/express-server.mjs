// An Express API in front of the gateway: POST /api/chat {"message": "..."} → {"success", "response"}.
// Guide: "JavaScript/Node.js → Express.js Integration". Fixed here: the address of the gateway
// and the port come from the environment (LITELLM_BASE_URL, PORT); it listens on 127.0.0.1
// only (anyone who reaches it spends your key); a gateway error keeps its status (a 404 for
// an unknown model stays a 404, not a 500).
//
//   LITELLM_MASTER_KEY=sk-... node express-server.mjs
//   curl -H 'Content-Type: application/json' -d '{"message": "Hello"}' http://localhost:3000/api/chat
import express from 'express';
import OpenAI from 'openai';

const app = express();
app.use(express.json());

const client = new OpenAI({
  apiKey: process.env.LITELLM_MASTER_KEY,
  baseURL: process.env.LITELLM_BASE_URL || 'http://localhost:4000'
});

app.post('/api/chat', async (req, res) => {
  try {
    const { message, model = process.env.LITELLM_MODEL || 'shin-llama-3-1-70b' } = req.body;

    const response = await client.chat.completions.create({
      model: model,
      messages: [{ role: 'user', content: message }]
    });

    res.json({
      success: true,
      response: response.choices[0].message.content
    });
  } catch (error) {
    res.status(error.status || 500).json({
      success: false,
      error: error.message
    });
  }
});

const port = Number(process.env.PORT || 3000);
app.listen(port, '127.0.0.1', () => {
  console.log(`Server running on http://127.0.0.1:${port}`);
});
