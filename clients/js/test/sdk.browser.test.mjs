// The SDK's browser bundle (dist/tidings-client.browser.js, global `Tidings`)
// in a real headless Chromium, in a page served from another origin than the
// server: payments exactly once and in order across a server restart, and a
// page that comes back resumes from localStorage.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { launchChromium, servePages } from "./lib/browser.mjs";
import { startNode, startRedis, ingestOk, payment, uid, withTimeout } from "./lib/env.mjs";

const BUNDLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../dist/tidings-client.browser.js");

// The page an application would write: the bundle, localStorage, a listener per event.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>tidings-client</title>
<script src="/tidings-client.browser.js"></script></head>
<body><script>
  const q = new URLSearchParams(location.search);
  window.seen = [];
  const client = Tidings.connect(q.get("server"), {
    storage: Tidings.localStorageStorage(),
    reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
  });
  const sub = client.subscribe(q.get("id"));
  sub.on("payment", (p) => seen.push({ kind: "payment", id: p.id, seq: p.seq }));
  sub.on("gap", (g) => seen.push({ kind: "gap", gap: g }));
  sub.on("error", (e) => seen.push({ kind: "error", code: e.code, instance: e instanceof Tidings.TidingsError }));
  sub.on("subscribed", () => seen.push({ kind: "subscribed" }));
</script></body></html>`;

function startPageServer() {
  return servePages({
    "/": ["text/html; charset=utf-8", PAGE],
    "/tidings-client.browser.js": ["application/javascript", readFileSync(BUNDLE)],
  });
}

describe("browser bundle (headless Chromium, another origin)", () => {
  let redis;
  let node;
  let pages;
  let browser;
  let setupError = null;

  before(async () => {
    try {
      assert.ok(existsSync(BUNDLE), `${BUNDLE} missing: npm run build`);
      redis = await startRedis();
      node = await startNode(["--redis-url", redis.url]);
      pages = await startPageServer();
      browser = await launchChromium();
    } catch (err) {
      setupError = err;
    }
  });
  after(async () => {
    await browser?.close().catch(() => {});
    await pages?.close();
    await node?.stop();
    await redis?.stop();
  });

  /** What the page's application saw. */
  const seen = (page) => page.evaluate(() => window.seen);
  const waitPayments = (page, ids) => page.waitForFunction(
    (want) => want.every((id) => window.seen.some((e) => e.kind === "payment" && e.id === id)), ids, { timeout: 20000 },
  ).catch(async (err) => { err.message += `\n  the page saw: ${JSON.stringify(await seen(page))}`; throw err; });
  const paymentIds = (events) => events.filter((e) => e.kind === "payment").map((e) => e.id);

  test("exactly once, in order, across a server restart; a page that comes back resumes from localStorage", async () => {
    if (setupError) throw setupError;
    const id = uid("browser-sdk");
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    try {
      const url = `${pages.url}/?server=${encodeURIComponent(node.url)}&id=${encodeURIComponent(id)}`;
      await page.goto(url);
      assert.notEqual(await page.evaluate(() => location.origin), node.url, "the page is on another origin");
      await page.waitForFunction(() => window.seen.some((e) => e.kind === "subscribed"), null, { timeout: 15000 });
      const first = [];
      for (let i = 0; i < 3; i++) first.push(...await ingestOk(node.url, payment(id)));
      await waitPayments(page, first.map((r) => r.id));

      await node.restart();
      const second = [];
      for (let i = 0; i < 3; i++) second.push(...await ingestOk(node.url, payment(id)));
      await waitPayments(page, second.map((r) => r.id));
      // One more, waited for: whatever would come before it (a duplicate) has come.
      second.push(...await ingestOk(node.url, payment(id)));
      await waitPayments(page, second.map((r) => r.id));
      const one = await seen(page);
      assert.deepEqual(paymentIds(one), [...first, ...second].map((r) => r.id), "each payment once, in order, across the restart");
      assert.ok(one.filter((e) => e.kind === "subscribed").length >= 2, "resubscribed after the restart");
      assert.deepEqual(one.filter((e) => e.kind === "gap" || e.kind === "error"), [], "no gap, no error: Redis kept the history");
      const stored = await page.evaluate(() => Object.keys(localStorage).map((k) => [k, localStorage.getItem(k)]));
      assert.equal(stored.length, 1, JSON.stringify(stored));
      assert.equal(JSON.parse(stored[0][1]).id, second[3].id, "localStorage holds the last id");

      // The user leaves; payments arrive; the user comes back (same origin's localStorage).
      await page.goto("about:blank");
      const meanwhile = [];
      for (let i = 0; i < 2; i++) meanwhile.push(...await ingestOk(node.url, payment(id)));
      await page.goto(url);
      await waitPayments(page, meanwhile.map((r) => r.id));
      const live = await ingestOk(node.url, payment(id));
      await waitPayments(page, live.map((r) => r.id));
      const two = await seen(page);
      assert.deepEqual(paymentIds(two), [...meanwhile, ...live].map((r) => r.id), "the page resumed after its last id: what came meanwhile, once");
      assert.deepEqual(two.filter((e) => e.kind === "gap" || e.kind === "error"), []);
      assert.deepEqual(pageErrors, [], "no page errors");
    } finally {
      await context.close();
    }
  });
});
