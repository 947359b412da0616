// The admin page behind --api-key: its API refuses without the key and is
// absent without --api-key; in headless Chromium an operator logs in, sees
// both nodes of a real two-node cluster on Redis with their live figures,
// inspects a trackingId (subscribers per node, history, then a live tail
// while payments are posted), and sees a killed node go silent.
// UPDATE_SCREENSHOT=1 writes the README's screenshot (docs/admin.png).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchChromium } from "./lib/browser.mjs";
import {
  REPO_ROOT, startServer, ingestOk, connect, subscribe, payment, uid, httpGet, closeAll, assertHttpError,
} from "./lib/harness.mjs";
import { startRedis, startRedisCluster, startNodes, stopNodes } from "./lib/cluster.mjs";

const KEY = "admin-test-key";
const SCREENSHOT = process.env.UPDATE_SCREENSHOT
  ? path.join(REPO_ROOT, "docs/admin.png")
  : path.join(tmpdir(), `tidings-admin-${process.pid}.png`);

const get = (url, key) => httpGet(url, { headers: key ? { authorization: `Bearer ${key}` } : {} });

describe("admin API", () => {
  let open;
  let keyed;
  before(async () => {
    open = await startServer();
    keyed = await startServer(["--api-key", KEY]);
  });
  after(async () => {
    await open?.stop();
    await keyed?.stop();
  });

  test("without --api-key every admin path is 404", async () => {
    for (const p of ["/admin", "/admin/admin.js", "/admin/api/nodes", "/admin/api/tracking?trackingId=x"]) {
      assertHttpError(await get(`${open.url}${p}`, KEY), 404, "NOT_FOUND");
    }
  });

  test("the API needs the key as a bearer token; the page itself holds no data", async () => {
    assertHttpError(await get(`${keyed.url}/admin/api/nodes`), 401, "UNAUTHORIZED");
    assertHttpError(await get(`${keyed.url}/admin/api/nodes`, "wrong"), 401, "UNAUTHORIZED");
    assertHttpError(await get(`${keyed.url}/admin/api/tracking?trackingId=x`, "wrong"), 401, "UNAUTHORIZED");
    const page = await get(`${keyed.url}/admin`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type"), /^text\/html/);
    assert.match(page.headers.get("content-security-policy"), /script-src 'self'/);
    const ok = await get(`${keyed.url}/admin/api/nodes`, KEY);
    assert.equal(ok.status, 200, ok.text);
    const post = await httpGet(`${keyed.url}/admin/api/nodes`, { method: "POST", headers: { authorization: `Bearer ${KEY}` } });
    assertHttpError(post, 405, "METHOD_NOT_ALLOWED");
    assert.match(post.headers.get("allow") ?? "", /GET/);
  });

  test("bad input: a clear error and nothing else", async () => {
    assertHttpError(await get(`${keyed.url}/admin/api/tracking`, KEY), 400, "INVALID_TRACKING_ID");
    assertHttpError(await get(`${keyed.url}/admin/api/tracking?trackingId=`, KEY), 400, "INVALID_TRACKING_ID");
    assertHttpError(await get(`${keyed.url}/admin/api/tracking?trackingId=x&since=nope`, KEY), 400, "INVALID_SINCE");
    assertHttpError(await get(`${keyed.url}/admin/api/tracking?trackingId=x&limit=0`, KEY), 400, "INVALID_PAYLOAD");
  });

  test("the inspector shows the latest payments, then what came after since", async () => {
    const id = uid("adm");
    const stored = await ingestOk(keyed.url, Array.from({ length: 25 }, () => payment(id)));
    const latest = JSON.parse((await get(`${keyed.url}/admin/api/tracking?trackingId=${id}`, KEY)).text);
    assert.deepEqual(latest.history.data.map((p) => p.seq), stored.slice(5).map((r) => r.seq), "the latest 20");
    assert.deepEqual(latest.position, { id: stored[24].id, seq: 25 });
    const tail = JSON.parse((await get(`${keyed.url}/admin/api/tracking?trackingId=${id}&since=${stored[22].id}`, KEY)).text);
    assert.deepEqual(tail.history.data.map((p) => p.id), [stored[23].id, stored[24].id]);
  });
});

describe("admin API on a Redis Cluster", () => {
  let cluster;
  let nodes = [];
  const sockets = [];
  before(async () => {
    cluster = await startRedisCluster();
    nodes = await startNodes(2, cluster.url, ["--redis-cluster", "--api-key", KEY]);
  });
  after(async () => {
    closeAll(...sockets);
    await stopNodes(nodes);
    await cluster?.stop();
  });

  test("every node lists both, and counts an inspected trackingId's subscribers", async () => {
    const [A, B] = nodes;
    const id = uid("rc");
    const s = await connect(B.url, { transports: ["websocket"] });
    sockets.push(s);
    await subscribe(s, id);
    const deadline = Date.now() + 15000;
    for (;;) {
      const body = JSON.parse((await get(`${A.url}/admin/api/tracking?trackingId=${id}`, KEY)).text);
      const counts = Object.fromEntries(body.subscribers.map((x) => [x.listen, x.subscribers]));
      if (body.subscribers.length === 2 && counts[new URL(A.url).host] === 0 && counts[new URL(B.url).host] === 1) break;
      assert.ok(Date.now() < deadline, `both nodes counting: ${JSON.stringify(counts)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const listed = JSON.parse((await get(`${B.url}/admin/api/nodes`, KEY)).text).nodes.map((n) => n.listen).sort();
    assert.deepEqual(listed, [new URL(A.url).host, new URL(B.url).host].sort());
  });
});

describe("admin page in Chromium, two nodes on Redis", () => {
  let redis;
  let nodes = [];
  let browser;
  const sockets = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(2, redis.url, ["--api-key", KEY]);
    browser = await launchChromium();
  });
  after(async () => {
    closeAll(...sockets);
    await browser?.close();
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("log in, see both nodes live, inspect and tail a trackingId, see a killed node go silent", async () => {
    const [A, B] = nodes;
    const addr = (n) => new URL(n.url).host;
    const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.setDefaultTimeout(15000);
    await page.goto(`${A.url}/admin`);

    // A wrong key is refused on the page.
    await page.fill("#key", "wrong");
    await page.click("#login-form button");
    await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("Invalid API key"));
    assert.equal(await page.isHidden("#main"), true);

    await page.fill("#key", KEY);
    await page.click("#login-form button");
    await page.waitForSelector("#main:not([hidden])");

    // Three sockets on B, one on A, all subscribed to the inspected trackingId.
    const id = uid("inspect");
    for (const [node, n] of [[B, 3], [A, 1]]) {
      for (let i = 0; i < n; i++) {
        const s = await connect(node.url, { transports: ["websocket"] });
        sockets.push(s);
        await subscribe(s, id);
      }
    }
    // Both nodes listed by their addresses, with their sockets.
    const nodeRows = () => page.$$eval("#nodes tbody tr", (trs) => trs.map((tr) => ({
      id: tr.dataset.nodeId,
      cells: [...tr.cells].map((c) => c.textContent),
      silent: tr.classList.contains("silent"),
    })));
    await page.waitForFunction(([a, b]) => {
      const rows = [...document.querySelectorAll("#nodes tbody tr")].map((tr) => [tr.cells[1].textContent, tr.cells[2].textContent]);
      return rows.length === 2 && rows.some(([l, s]) => l === a && s === "1") && rows.some(([l, s]) => l === b && s === "3");
    }, [addr(A), addr(B)]);

    // The inspector: subscribers per node, then payments as they are posted.
    await page.fill("#tid", id);
    await page.click("#inspect-form button");
    await page.waitForSelector("#inspector:not([hidden])");
    await page.waitForFunction(([a, b]) => {
      const rows = [...document.querySelectorAll("#subscribers tbody tr")].map((tr) => [tr.cells[1].textContent, tr.cells[2].textContent]);
      return rows.some(([l, c]) => l === a && c === "1") && rows.some(([l, c]) => l === b && c === "3");
    }, [addr(A), addr(B)]);
    const posted = [];
    for (let i = 0; i < 5; i++) posted.push(...await ingestOk(i % 2 ? A.url : B.url, payment(id, { amount: 1000 * (i + 1) })));
    await page.waitForFunction((n) => document.querySelectorAll("#history tbody tr").length >= n, posted.length);
    const history = await page.$$eval("#history tbody tr", (trs) => trs.map((tr) => tr.dataset.id));
    assert.deepEqual(history, posted.map((r) => r.id), "the tail shows every payment once, in seq order");
    // The ingesting nodes' rates show up in the nodes table.
    await page.waitForFunction(() => [...document.querySelectorAll("#nodes tbody tr")]
      .some((tr) => Number(tr.cells[7].textContent) > 0));
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    // B dies: its row goes silent (no report for 10 s), A stays live.
    await B.stop("SIGKILL");
    await page.waitForFunction((b) => [...document.querySelectorAll("#nodes tbody tr")]
      .some((tr) => tr.cells[1].textContent === b && tr.classList.contains("silent")), addr(B), { timeout: 20000 });
    const rows = await nodeRows();
    assert.equal(rows.find((r) => r.cells[1] === addr(A))?.silent, false, "A still reports");
    assert.deepEqual(errors, [], "no script error on the page");
    await page.close();
  });
});
