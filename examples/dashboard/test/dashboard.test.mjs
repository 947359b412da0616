// Drives the dashboard in headless Chromium against a real Tidings process
// (TIDINGS_BIN): payments posted to ingest appear in the table, in order,
// once; the server is SIGKILLed and restarted (memory mode: its history is
// gone) and the page recovers, shows the gap, and goes on. Needs the SDK
// built (clients/js/dist: `npm ci && npm run build` there), whose test
// helpers and packages (playwright-core) it uses.
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
import { freePort } from "../../../clients/js/test/lib/cluster.mjs";
import { serve } from "../serve.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const SDK_BUNDLE = path.resolve(here, "../../../clients/js/dist/tidings-client.browser.mjs");
const SCREENSHOT = process.env.UPDATE_SCREENSHOT
  ? path.resolve(here, "../screenshot.png")
  : path.join(tmpdir(), `tidings-dashboard-${process.pid}.png`);

let browser, pages, tidingsPort, server;

function start() {
  return startServer([], {}, {
    baseArgs: ["--listen", `127.0.0.1:${tidingsPort}`, "--ingest-token", INGEST_TOKEN, "--log-format", "json"],
  });
}

before(async () => {
  assert.ok(existsSync(SDK_BUNDLE), `SDK bundle missing at ${SDK_BUNDLE}: npm --prefix clients/js run build`);
  // A fixed port, so that the restarted server is where the page left it.
  tidingsPort = await freePort();
  server = await start();
  pages = await serve(0);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  pages?.close();
  await server?.stop("SIGKILL");
});

/** The table's rows, top (newest) first: { id, tid, seq, amount, status }. */
function rows(page) {
  return page.$$eval("#payments tr", (trs) => trs.map((tr) => {
    const td = [...tr.children].map((c) => c.textContent);
    return { id: tr.dataset.id, time: td[0], tid: td[1], seq: Number(td[2]), amount: td[3], status: td[4] };
  }));
}

async function rowCount(page, n) {
  await page.waitForFunction((n) => document.querySelectorAll("#payments tr").length >= n, n, { timeout: 15000 });
  return rows(page);
}

/** Per trackingId, bottom (oldest) to top: ids in delivery order. */
function perTrackingId(list) {
  const by = new Map();
  for (const r of [...list].reverse()) by.set(r.tid, [...(by.get(r.tid) ?? []), r]);
  return by;
}

test("payments appear in order, once; a server restart shows the gap and the page recovers", async () => {
  const [a, b] = [uid("dash-a"), uid("dash-b")];
  const page = await browser.newPage({ locale: "en-US", timezoneId: "UTC" });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const { port: pagePort } = pages.address();
  // The page's origin (its own port) is not the server's: CORS and all.
  await page.goto(`http://127.0.0.1:${pagePort}/?server=http://127.0.0.1:${tidingsPort}&ids=${a},${b}`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 15000 });

  const posted = [];
  for (const [tid, amount, status] of [[a, 1500000, "executed"], [b, 42, "pending"], [a, 2500000, "failed"]]) {
    const [res] = await ingestOk(server.url, payment(tid, { amount, status, timestamp: 1699876543 }));
    posted.push({ tid, id: res.id });
  }
  let seen = await rowCount(page, 3);
  assert.equal(seen.length, 3);
  const firstA = perTrackingId(seen).get(a);
  assert.deepEqual(firstA.map((r) => r.id), posted.filter((p) => p.tid === a).map((p) => p.id));
  assert.deepEqual(firstA.map((r) => r.seq), [1, 2]);
  assert.equal(firstA[0].amount, "1,500,000"); // in the page's locale
  assert.equal(firstA[1].status, "failed");
  assert.match(firstA[0].time, /2023/); // data.timestamp 1699876543 s: Nov 13, 2023
  assert.equal(perTrackingId(seen).get(b)[0].status, "pending");

  // The server dies; the page says so, then recovers when it is back.
  await server.stop("SIGKILL");
  await page.waitForSelector('#connection[data-state="reconnecting"]', { timeout: 15000 });
  server = await start();
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 30000 });
  const [after1] = await ingestOk(server.url, payment(a, { amount: 7 }));
  const [after2] = await ingestOk(server.url, payment(a, { amount: 8 }));
  seen = await rowCount(page, 5);
  await page.waitForSelector("#gaps .gap", { timeout: 15000 });
  const notice = await page.textContent("#gaps .gap");
  assert.match(notice, new RegExp(`Payments of ${a} cannot be recovered`));
  const nowA = perTrackingId(seen).get(a).map((r) => r.id);
  assert.deepEqual(nowA, [...firstA.map((r) => r.id), after1.id, after2.id]);
  assert.equal(new Set(seen.map((r) => r.id)).size, seen.length, "a payment shown twice");
  assert.equal((await rows(page)).length, 5);
  assert.deepEqual(errors, []);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  await page.close();
});
