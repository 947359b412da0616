// Drives the merchant dashboard in headless Chromium against real Tidings
// processes (TIDINGS_BIN) started with `--stream-separator :`, the page on
// another origin. On Redis: the account's payments appear grouped by
// trackingId (a new trackingId's group with its first payment), once each;
// "Failed only" resubscribes with the filter (the subscribe the page sends is
// read off the wire) and shows only failed ones; the node is SIGKILLed while a
// second node on the same Redis takes payments, restarted on the same port,
// and the page shows what came meanwhile; "All" resubscribes without the
// filter and reads back what the filter left out. In memory: a restart loses
// the history, and the page says so (a gap notice) and goes on. Needs the SDK
// built (clients/js/dist: `npm ci && npm run build` there), whose test helpers
// and packages (playwright-core) it uses.
// UPDATE_SCREENSHOT=1 writes the README's screenshot.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
// The SDK's own test helpers: the dashboard is built on the SDK, whose
// `npm ci` (and build) it needs anyway, so its packages are there.
import { launchChromium } from "../../../clients/js/test/lib/browser.mjs";
import { startServer, ingestOk, payment, INGEST_TOKEN, uid } from "../../../clients/js/test/lib/harness.mjs";
import { freePort, startRedis, startNodes, stopNodes } from "../../../clients/js/test/lib/cluster.mjs";
import { serve } from "../serve.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const SDK_BUNDLE = path.resolve(here, "../../../clients/js/dist/tidings-client.browser.mjs");
const SCREENSHOT = process.env.UPDATE_SCREENSHOT
  ? path.resolve(here, "../screenshot.png")
  : path.join(tmpdir(), `tidings-dashboard-${process.pid}.png`);
const SEP = ["--stream-separator", ":"];
const T = 15000;

let browser, pages;
const cleanups = [];

before(async () => {
  assert.ok(existsSync(SDK_BUNDLE), `SDK bundle missing at ${SDK_BUNDLE}: npm --prefix clients/js run build`);
  pages = await serve(0);
  browser = await launchChromium();
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
  await browser?.close();
  pages?.close();
});

/** A Tidings node on a fixed port (`start()` again after a SIGKILL brings it back where the page left it). */
async function fixedNode(args) {
  const port = await freePort();
  const baseArgs = ["--listen", `127.0.0.1:${port}`, "--ingest-token", INGEST_TOKEN, "--log-format", "json"];
  const node = {
    port,
    url: `http://127.0.0.1:${port}`,
    server: null,
    async start() { node.server = await startServer(args, {}, { baseArgs, timeoutMs: 20000 }); },
    async kill() { await node.server.stop("SIGKILL"); },
  };
  await node.start();
  cleanups.push(() => node.server.stop("SIGKILL"));
  return node;
}

/** Opens the page on `stream`; records page errors and every `subscribe` the page sends (websocket or polling). */
async function openPage(node, stream) {
  const page = await browser.newPage({ locale: "en-US", timezoneId: "UTC", viewport: { width: 1100, height: 900 } });
  const errors = [];
  const subscribes = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const read = (text) => {
    for (const packet of String(text).split("\x1e")) {
      if (!packet.startsWith("42")) continue;
      try {
        const [event, data] = JSON.parse(packet.slice(2).replace(/^\d+/, ""));
        if (event === "subscribe") subscribes.push(data);
      } catch { /* not an event */ }
    }
  };
  page.on("websocket", (ws) => ws.on("framesent", (f) => read(f.payload)));
  page.on("request", (r) => { if (r.method() === "POST" && r.url().includes("/ws/v1/")) read(r.postData() ?? ""); });
  const { port } = pages.address();
  // The page's origin (its own port) is not the server's: CORS and all.
  await page.goto(`http://127.0.0.1:${port}/?server=${node.url}&stream=${encodeURIComponent(stream)}`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: T });
  return { page, errors, subscribes };
}

/** The groups, top first: [{ tid, rows: [{ id, source, tseq, amount, status, seq }] }] (rows newest first). */
function groups(page) {
  return page.$$eval("#groups .group", (gs) => gs.map((g) => ({
    tid: g.dataset.tid,
    count: g.querySelector(".count").textContent,
    rows: [...g.querySelectorAll("tbody tr")].map((tr) => {
      const td = [...tr.children].map((c) => c.textContent);
      return { id: tr.dataset.id, source: tr.dataset.source, time: td[0], tseq: td[1], amount: td[2], status: td[3], seq: Number(td[4]) };
    }),
  })));
}

/** Waits until the row of each ingest result (by its trackingId id) is on the page. */
async function untilRows(page, results) {
  await page.waitForFunction((ids) => ids.every((id) => document.querySelector(`#groups tr[data-source="${id}"]`)),
    results.map((r) => r.id), { timeout: T });
}

/** The page's groups, reduced to trackingId and the source ids of its rows. */
async function shape(page) {
  return (await groups(page)).map((g) => [g.tid, g.rows.map((r) => r.source)]);
}
const want = (spec) => spec.map(([tid, rs]) => [tid, rs.map((r) => r.id)]);

test("on Redis: grouped by trackingId, new ones as they come; Failed only resubscribes with the filter; a node restart loses nothing; All reads back what the filter left out", async () => {
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  const A = await fixedNode(["--redis-url", redis.url, ...SEP]);
  const [B] = await startNodes(1, redis.url, SEP);
  cleanups.push(() => stopNodes([B]));
  const acct = uid("merchant");
  const stream = `${acct}:*`;
  const sub = (n) => `${acct}:sub-${n}`;
  let minute = 0;
  const pay = async (node, n, status, amount = 1000) =>
    (await ingestOk(node.url, payment(sub(n), { status, amount, timestamp: 1699876543 + 60 * minute++ })))[0];
  const { page, errors, subscribes } = await openPage(A, stream);
  await page.waitForSelector('#filters[data-applied="all"]', { timeout: T });
  assert.equal(await page.textContent("#stream"), stream);

  const p1 = await pay(A, 1, "executed", 1500000);
  const [other] = await ingestOk(A.url, payment(`${uid("other")}:sub-1`));
  const p2 = await pay(A, 2, "pending", 42);
  const p3 = await pay(A, 1, "failed", 2500000);
  await untilRows(page, [p1, p2, p3]);
  let g = await groups(page);
  assert.deepEqual(await shape(page), want([[sub(1), [p3, p1]], [sub(2), [p2]]]), "grouped, the latest activity on top");
  assert.equal(await page.$(`#groups tr[data-source="${other.id}"]`), null, "another account's payment is not shown");
  assert.deepEqual(g[0].rows.map((r) => [r.amount, r.status, r.tseq]), [["2,500,000", "failed", "#2"], ["1,500,000", "executed", "#1"]]);
  assert.match(g[0].rows[0].time, /2023/); // data.timestamp 1699876543 s: Nov 13, 2023
  assert.match(g[0].rows[0].id, /^s\d+-3$/, "the stream's own id");
  assert.equal(g[0].count, "2 payments");
  const p3Stream = g[0].rows[0].id;

  // Failed only: the page resubscribes with the filter, from its last id, and hides the rest.
  const sent = subscribes.length;
  await page.click('#filters button[data-filter="failed"]');
  await page.waitForSelector('#filters[data-applied="failed"]', { timeout: T });
  assert.deepEqual(subscribes.slice(sent), [{ trackingId: stream, since: p3Stream, filter: { status: ["failed"] } }],
    "the subscribe the page sent");
  assert.deepEqual(await shape(page), want([[sub(1), [p3]]]));
  const q1 = await pay(A, 3, "executed");
  const q2 = await pay(A, 2, "failed");
  const q3 = await pay(A, 4, "failed");
  await untilRows(page, [q2, q3]);
  assert.deepEqual(await shape(page), want([[sub(4), [q3]], [sub(2), [q2]], [sub(1), [p3]]]),
    "a new trackingId's group comes with its first (failed) payment; the executed one is not shown");

  // The node dies; another node on the same Redis takes payments meanwhile; the node comes back on its port.
  await A.kill();
  await page.waitForSelector('#connection[data-state="reconnecting"]', { timeout: T });
  const r1 = await pay(B, 5, "executed");
  const r2 = await pay(B, 1, "failed");
  const r3 = await pay(B, 6, "failed");
  const r4 = await pay(B, 3, "executed");
  const beforeRestart = subscribes.length;
  await A.start();
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 30000 });
  await untilRows(page, [r2, r3]);
  const r5 = await pay(A, 2, "executed");
  const r6 = await pay(A, 6, "failed");
  await untilRows(page, [r6]);
  g = await groups(page);
  assert.deepEqual(await shape(page), want([[sub(6), [r6, r3]], [sub(1), [r2, p3]], [sub(4), [q3]], [sub(2), [q2]]]));
  const q3Stream = g[2].rows[0].id;
  assert.deepEqual(subscribes.slice(beforeRestart, beforeRestart + 1),
    [{ trackingId: stream, since: q3Stream, filter: { status: ["failed"] } }], "resubscribed with its last id and the filter");
  assert.equal(await page.$("#gaps .gap"), null, "Redis kept the history: no gap");

  // All: the page resubscribes without the filter, and reads back what the filter left out.
  const r6Stream = g[0].rows[0].id;
  const beforeAll = subscribes.length;
  await page.click('#filters button[data-filter="all"]');
  await page.waitForSelector('#filters[data-applied="all"]', { timeout: T });
  assert.deepEqual(subscribes.slice(beforeAll), [{ trackingId: stream, since: r6Stream }], "the subscribe the page sent");
  await untilRows(page, [p1, p2, q1, r1, r4, r5]);
  const s1 = await pay(A, 7, "pending", 7);
  await untilRows(page, [s1]);
  assert.deepEqual(await shape(page), want([
    [sub(7), [s1]], [sub(6), [r6, r3]], [sub(2), [r5, q2, p2]], [sub(3), [r4, q1]], [sub(1), [r2, p3, p1]], [sub(5), [r1]], [sub(4), [q3]],
  ]));
  const seqs = (await groups(page)).flatMap((x) => x.rows.map((r) => r.seq)).sort((a, b) => a - b);
  assert.deepEqual(seqs, Array.from({ length: 13 }, (_, i) => i + 1), "every payment of the stream once");
  assert.equal(await page.$("#gaps .gap"), null);
  assert.deepEqual(errors, []);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  await page.close();
});

test("in memory: a restart loses the history; the page shows the gap, then the new history", async () => {
  const node = await fixedNode(SEP);
  const acct = uid("merchant");
  const stream = `${acct}:*`;
  const pay = async (n, status = "executed") => (await ingestOk(node.url, payment(`${acct}:sub-${n}`, { status })))[0];
  const { page, errors } = await openPage(node, stream);
  const a1 = await pay(1);
  const a2 = await pay(2, "failed");
  await untilRows(page, [a1, a2]);
  await node.kill();
  await page.waitForSelector('#connection[data-state="reconnecting"]', { timeout: T });
  await node.start();
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 30000 });
  const b1 = await pay(1);
  const b2 = await pay(3);
  await untilRows(page, [b1, b2]);
  await page.waitForSelector("#gaps .gap", { timeout: T });
  assert.match(await page.textContent("#gaps .gap"),
    new RegExp(`Payments of ${acct}:\\* cannot be recovered: the server lost its history after s\\d+-2; it resumes at seq 1`));
  assert.equal((await page.$$("#gaps .gap")).length, 1);
  // The new history's seqs start at 1 again; the page orders by (epoch, seq).
  assert.deepEqual(await shape(page), want([[`${acct}:sub-3`, [b2]], [`${acct}:sub-1`, [b1, a1]], [`${acct}:sub-2`, [a2]]]));
  assert.deepEqual((await groups(page)).flatMap((x) => x.rows.map((r) => r.seq)), [2, 1, 1, 2]);
  assert.deepEqual(errors, []);
  await page.close();
});

test("a server without --stream-separator: the page says streams are off", async () => {
  const node = await fixedNode([]);
  const { page, errors } = await openPage(node, "merchant-42:*");
  await page.waitForSelector("#gaps .gap", { timeout: T });
  assert.match(await page.textContent("#gaps .gap"), /^merchant-42:\*: INVALID_TRACKING_ID — Streams are off on this server/);
  assert.equal(await page.$("#groups .group"), null);
  assert.deepEqual(errors, []);
  await page.close();
});
