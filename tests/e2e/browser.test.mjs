// A real headless Chromium on another origin: the browser bundle of
// socket.io-client connects (polling, then upgrade), receives a payment, and
// backfills it with a cross-origin fetch.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { launchChromium, servePages } from "./lib/browser.mjs";
import {
  E2E_DIR, startServer, ingestOk, payment, uid, assertPayment, withTimeout, WS_PATH,
} from "./lib/harness.mjs";

const BUNDLE = path.join(E2E_DIR, "node_modules/socket.io-client/dist/socket.io.min.js");

const BROWSER_API_KEY = "browser-api-key-0123456789";
const BROWSER_SECRET = "browser-token-secret-0123456789abcdef";

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>tidings e2e</title>
<script src="/socket.io.min.js"></script></head>
<body><p>tidings e2e page</p></body></html>`;

/** Serves the test page and the client bundle on its own port (its own origin). */
function startPageServer() {
  return servePages({
    "/": ["text/html; charset=utf-8", PAGE],
    "/socket.io.min.js": ["application/javascript", readFileSync(BUNDLE)],
  });
}

describe("browser (headless Chromium, cross-origin)", () => {
  let server;
  let tokenServer;
  let pages;
  let browser;

  let setupError = null;

  before(async () => {
    // Failures here are reported by every test below (as failures, not as
    // skips or cancellations).
    try {
      assert.ok(existsSync(BUNDLE), `socket.io-client browser bundle missing at ${BUNDLE}: run npm install`);
      server = await startServer();
      tokenServer = await startServer(["--auth", "token", "--api-key", BROWSER_API_KEY, "--token-secret", BROWSER_SECRET]);
      pages = await startPageServer();
      browser = await launchChromium();
    } catch (err) {
      setupError = err;
    }
  });

  function requireSetup() {
    if (setupError) throw setupError;
  }

  after(async () => {
    await browser?.close().catch(() => {});
    await pages?.close();
    await server?.stop();
    await tokenServer?.stop();
  });

  /** Opens the page and connects a socket in it with `transports` (undefined: default). */
  async function openPage(transports) {
    requireSetup();
    const page = await browser.newPage();
    page.setDefaultTimeout(15000);
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(pages.url + "/");
    const origin = await page.evaluate(() => location.origin);
    assert.notEqual(origin, server.url, "the page is on another origin than the server");
    await page.evaluate(async ({ url, path, transports }) => {
      const opts = { path, forceNew: true, reconnection: false };
      if (transports) opts.transports = transports;
      const socket = window.io(url, opts);
      window.socket = socket;
      // The engine opens its first transport synchronously; the upgrade may
      // complete before "connect" fires, so record both from the start.
      window.firstTransport = socket.io.engine.transport.name;
      window.upgradedTo = null;
      socket.io.engine.on("upgrade", (t) => { window.upgradedTo = t.name; });
      window.received = [];
      window.acks = [];
      window.errors = [];
      socket.on("payment", (p) => window.received.push(p));
      socket.on("ack", (a) => window.acks.push(a));
      socket.on("error", (e) => window.errors.push(e));
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error("connect timed out")), 10000);
        socket.once("connect", () => { clearTimeout(t); resolve(); });
        socket.once("connect_error", (e) => { clearTimeout(t); reject(new Error("connect_error: " + e.message)); });
      });
    }, { url: server.url, path: WS_PATH, transports });
    return { page, errors };
  }

  async function subscribeInPage(page, trackingId) {
    return page.evaluate((trackingId) => new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("ack timed out")), 5000);
      window.socket.emit("subscribe", { trackingId }, (env) => { clearTimeout(t); resolve(env); });
    }), trackingId);
  }

  async function receiveAndBackfill(page, trackingId) {
    const item = payment(trackingId);
    const [r] = await ingestOk(server.url, item);
    await page.waitForFunction((id) => window.received.some((p) => p.data.trackingId === id), trackingId,
      { timeout: 10000 });
    const result = await page.evaluate(async ({ url, trackingId }) => {
      const env = window.received.find((p) => p.data.trackingId === trackingId);
      const res = await fetch(`${url}/v1/events?trackingId=${encodeURIComponent(trackingId)}`);
      return {
        env,
        status: res.status,
        body: await res.json(),
        transport: window.socket.io.engine.transport.name,
        firstTransport: window.firstTransport,
        upgradedTo: window.upgradedTo,
        errors: window.errors,
      };
    }, { url: server.url, trackingId });
    assertPayment(result.env, item, r);
    assert.equal(result.status, 200);
    assert.deepEqual(result.body.data, [result.env], "backfill returns the envelope the page received");
    assert.equal(result.body.hasMore, false);
    assert.deepEqual(result.errors, []);
    return result;
  }

  test("default transports: polling, upgraded to websocket; payment received; cross-origin backfill equal", async () => {
    const { page, errors } = await openPage(undefined);
    try {
      const id = uid("browser");
      const ack = await subscribeInPage(page, id);
      assert.equal(ack.type, "ack");
      assert.equal(ack.data, `Subscribed to trackingId: ${id}`);
      // The upgrade happens in the background; wait for it (bounded).
      await page.waitForFunction(() => window.socket.io.engine.transport.name === "websocket", null, { timeout: 10000 })
        .catch(async () => {
          const name = await page.evaluate(() => window.socket.io.engine.transport.name);
          assert.fail(`the browser socket did not upgrade to websocket (still ${name})`);
        });
      const result = await receiveAndBackfill(page, id);
      assert.equal(result.firstTransport, "polling", "the browser starts on long-polling");
      assert.equal(result.upgradedTo, "websocket", "the engine emitted upgrade to websocket");
      assert.equal(result.transport, "websocket", "and ends on websocket");
      assert.deepEqual(errors, [], "no page errors");
    } finally {
      await page.close();
    }
  });

  test("polling only: cross-origin long-polling carries subscribe, ack and payment", async () => {
    const { page, errors } = await openPage(["polling"]);
    try {
      const id = uid("browser-poll");
      const ack = await subscribeInPage(page, id);
      assert.equal(ack.data, `Subscribed to trackingId: ${id}`);
      const result = await receiveAndBackfill(page, id);
      assert.equal(result.firstTransport, "polling");
      assert.equal(result.upgradedTo, null, "no upgrade with transports: [polling]");
      assert.equal(result.transport, "polling");
      assert.deepEqual(errors, [], "no page errors");
    } finally {
      await page.close();
    }
  });

  test("token mode: a page on another origin connects with a token, gets FORBIDDEN outside it, backfills with it", async () => {
    requireSetup();
    const id = uid("browser-tok");
    const other = uid("browser-tok-other");
    // The payment platform's backend mints the token and hands it to its page.
    const minted = await fetch(`${tokenServer.url}/v1/ws/tokens`, {
      method: "POST",
      headers: { authorization: `Bearer ${BROWSER_API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ trackingIds: [id] }),
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(minted.status, 201);
    const { token } = await minted.json();
    const page = await browser.newPage();
    page.setDefaultTimeout(15000);
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    try {
      await page.goto(pages.url + "/");
      const refused = await page.evaluate(({ url, path }) => new Promise((resolve) => {
        const s = window.io(url, { path, forceNew: true, reconnection: false });
        const t = setTimeout(() => resolve("timed out"), 10000);
        s.once("connect", () => { clearTimeout(t); s.close(); resolve("connected"); });
        s.once("connect_error", (e) => { clearTimeout(t); s.close(); resolve(e.message); });
      }), { url: tokenServer.url, path: WS_PATH });
      assert.match(refused, /^UNAUTHORIZED/, "no token: refused");
      const answers = await page.evaluate(({ url, path, token, id, other }) => new Promise((resolve, reject) => {
        const s = window.io(url, { path, forceNew: true, reconnection: false, auth: { token } });
        window.socket = s;
        window.received = [];
        s.on("payment", (p) => window.received.push(p));
        const t = setTimeout(() => reject(new Error("connect/subscribe timed out")), 10000);
        s.once("connect_error", (e) => { clearTimeout(t); reject(new Error("connect_error: " + e.message)); });
        s.once("connect", () => {
          s.emit("subscribe", { trackingId: id }, (mine) => {
            s.emit("subscribe", { trackingId: other }, (theirs) => { clearTimeout(t); resolve({ mine, theirs }); });
          });
        });
      }), { url: tokenServer.url, path: WS_PATH, token, id, other });
      assert.equal(answers.mine.type, "ack");
      assert.equal(answers.theirs.type, "error");
      assert.equal(answers.theirs.data.code, "FORBIDDEN");
      const item = payment(id);
      const [r] = await ingestOk(tokenServer.url, item);
      await page.waitForFunction((eid) => window.received.some((p) => p.id === eid), r.id, { timeout: 10000 });
      const bf = await page.evaluate(async ({ url, id, other, token }) => {
        const get = async (tid) => {
          const res = await fetch(`${url}/v1/events?trackingId=${encodeURIComponent(tid)}`,
            { headers: { authorization: `Bearer ${token}` } });
          return { status: res.status, body: await res.json() };
        };
        const noToken = await fetch(`${url}/v1/events?trackingId=${encodeURIComponent(id)}`);
        return { mine: await get(id), theirs: await get(other), noToken: noToken.status, received: window.received };
      }, { url: tokenServer.url, id, other, token });
      assert.equal(bf.mine.status, 200);
      assert.deepEqual(bf.mine.body.data, bf.received, "backfill (with the token, cross-origin) equals what the socket got");
      assertPayment(bf.received[0], item, r);
      assert.equal(bf.theirs.status, 403);
      assert.equal(bf.theirs.body.error.code, "FORBIDDEN");
      assert.equal(bf.noToken, 401);
      assert.deepEqual(errors, [], "no page errors");
    } finally {
      await page.close();
    }
  });
});
