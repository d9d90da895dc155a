"""Serve examples/react-streaming and drive it in headless Chromium (playwright-core, node).

The page must come from another origin than the gateway, as it would in real use, so the
browser sends a CORS preflight before the POST: `PageServer` serves the built page from its
own port on 127.0.0.1. The same page at `http://localhost:<port>` is a second origin, one the
test gateway does not allow.

`DRIVER_JS` opens each page URL given on its command line, types the message, clicks Send,
waits until the button is back (answer or error shown) and prints one JSON document: per page
the final `#response` text, the `#error` text, every `#response` text the page showed while
the answer streamed in (a MutationObserver), the console, and what the browser sent and got
(Chrome DevTools Protocol, the only view that includes preflight requests and CORS errors).
"""
from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PLAYWRIGHT_CORE = "playwright-core@1.65.1"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class PageServer:
    """A static file server for `directory` on 127.0.0.1 (free port), in a daemon thread."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.other_origin = f"http://localhost:{self.port}"   # same files, another origin
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "PageServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def config_js(base_url: str, api_key: str, model: str) -> str:
    """The page's config.js (window.SHIN_GATEWAY), as a user would edit it."""
    return (f"window.SHIN_GATEWAY = {{ baseURL: '{base_url}', apiKey: '{api_key}', "
            f"model: '{model}' }};\n")


DRIVER_JS = r"""
import { chromium } from 'playwright-core';

const [message, ...pageUrls] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH });

async function drive(pageUrl) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const out = { url: pageUrl, network: [], console: [] };
  page.on('console', m => out.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', e => out.console.push(`pageerror: ${e.message}`));
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const byId = new Map();
  cdp.on('Network.requestWillBeSent', e => {
    const r = { method: e.request.method, url: e.request.url, initiator: e.initiator?.type };
    byId.set(e.requestId, { ...byId.get(e.requestId), ...r });
    out.network.push(byId.get(e.requestId));
  });
  cdp.on('Network.requestWillBeSentExtraInfo', e => {   // the headers as sent, Origin included
    const r = byId.get(e.requestId) || {};
    r.origin = Object.entries(e.headers).find(([name]) => name.toLowerCase() === 'origin')?.[1] || null;
    byId.set(e.requestId, r);
  });
  cdp.on('Network.responseReceived', e => {
    const r = byId.get(e.requestId);
    if (r) { r.status = e.response.status; r.headers = e.response.headers; }
  });
  cdp.on('Network.loadingFailed', e => {
    const r = byId.get(e.requestId);
    if (r) { r.failed = e.errorText; r.corsError = e.corsErrorStatus?.corsError || null; }
  });

  await page.goto(pageUrl);
  await page.evaluate(() => {
    window.__seen = [];
    const target = document.getElementById('response');
    new MutationObserver(() => window.__seen.push(target.textContent))
      .observe(target, { childList: true, characterData: true, subtree: true });
  });
  await page.fill('input', message);
  await page.click('button[type=submit]');
  await page.waitForFunction(() => {
    const button = document.querySelector('button[type=submit]');
    const answered = document.getElementById('response').textContent || document.getElementById('error');
    return answered && !button.disabled && button.textContent === 'Send';
  }, null, { timeout: 20000 });
  out.response = await page.textContent('#response');
  out.error = (await page.locator('#error').count()) ? await page.textContent('#error') : null;
  out.seen = await page.evaluate(() => window.__seen);
  await context.close();
  return out;
}

try {
  console.log(JSON.stringify(await Promise.all(pageUrls.map(drive))));
} finally {
  await browser.close();
}
"""
