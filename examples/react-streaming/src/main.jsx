// Mounts ChatComponent with the gateway settings of config.js (window.SHIN_GATEWAY).
import { createRoot } from 'react-dom/client';
import ChatComponent from './ChatComponent.jsx';

const { baseURL, apiKey, model } = window.SHIN_GATEWAY;

createRoot(document.getElementById('root')).render(
  <ChatComponent baseURL={baseURL} apiKey={apiKey} model={model} />
);
