// Where the page sends its requests. Edit before serving the page.
// The key is visible to anyone who can open the page: use a virtual key with a small budget
// (docs/keys.md), never the master key, outside a demo.
window.SHIN_GATEWAY = {
  baseURL: 'http://localhost:4000',
  apiKey: 'your-master-key',
  model: 'shin-llama-3-1-70b'
};
