// A multi-turn conversation: the whole history is sent with every request.
// Guide: "JavaScript/Node.js → Multi-Turn Conversation". Fixed here: the guide's version read
// the key from the environment but hard-coded the address; both come from the environment now.
import OpenAI from 'openai';

class ChatSession {
  constructor(model = process.env.LITELLM_MODEL || 'shin-llama-3-1-70b') {
    this.client = new OpenAI({
      apiKey: process.env.LITELLM_MASTER_KEY,
      baseURL: process.env.LITELLM_BASE_URL || 'http://localhost:4000'
    });
    this.model = model;
    this.messages = [];
  }

  async send(message) {
    // Add the user message, then ask with the whole conversation so far
    this.messages.push({ role: 'user', content: message });
    const response = await this.client.chat.completions.create({
      model: this.model,
      messages: this.messages
    });

    // Keep the assistant's answer for the next turn
    const assistantMessage = response.choices[0].message.content;
    this.messages.push({ role: 'assistant', content: assistantMessage });
    return assistantMessage;
  }
}

// Use it
const chat = new ChatSession();
console.log(await chat.send('Hi!'));
console.log(await chat.send('Tell me about Node.js'));
console.log(`${chat.messages.length} messages in the conversation`);
