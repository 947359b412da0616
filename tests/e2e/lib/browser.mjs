// Headless Chromium for the e2e tests that drive a page (the browser test,
// the admin page): one way to launch it, and a static server for a test
// page on its own origin. The SDK (clients/js/test/lib) and the dashboard
// example (examples/dashboard/test/lib) keep trimmed copies, so that each
// package's tests run from the package.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import http from "node:http";
import { chromium } from "playwright-core";
import { withTimeout } from "./harness.mjs";

export const CHROMIUM = process.env.TIDINGS_CHROMIUM ?? "/usr/bin/chromium";

/** Launches Debian's Chromium headless (no browser download works here). */
export async function launchChromium() {
  assert.ok(existsSync(CHROMIUM),
    `Chromium not found at ${CHROMIUM}: install it (apt-get install chromium) or set TIDINGS_CHROMIUM`);
  return withTimeout(chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 30000,
  }), 35000, "launching Chromium");
}

/**
 * Serves fixed files on a free port of 127.0.0.1 (another origin than the
 * server under test): `files` maps a path (query ignored) to
 * `[contentType, body]`; anything else is 404. Resolves to `{ url, close() }`.
 */
export function servePages(files) {
  const srv = http.createServer((req, res) => {
    const file = files[new URL(req.url ?? "/", "http://x").pathname];
    if (file) {
      res.writeHead(200, { "content-type": file[0] });
      res.end(file[1]);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => resolve({
      url: `http://127.0.0.1:${srv.address().port}`,
      close: () => new Promise((r) => { srv.closeAllConnections?.(); srv.close(() => r()); }),
    }));
  });
}
