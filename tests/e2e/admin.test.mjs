// The admin page behind --api-key: its API refuses without the key and is
// absent without --api-key; in headless Chromium an operator logs in, sees
// both nodes of a real two-node cluster on Redis with their live figures,
// inspects a trackingId (subscribers per node, history, then a live tail
// while payments are posted), and sees a killed node go silent. With
// --stream-separator, the inspector takes an account stream (merchant:*) as
// it takes a trackingId: the stream's position and envelopes, s<epoch>-<seq>
// ids, and a tail whose since is the last stream id (API and page).
// UPDATE_SCREENSHOT=1 writes the README's screenshot (docs/admin.png).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { tmpdir } from "node:os";
import path from "node:path";
import { launchChromium } from "./lib/browser.mjs";
import {
  REPO_ROOT, startServer, ingestOk, connect, subscribe, payment, uid, rand, httpGet, closeAll, assertHttpError,
} from "./lib/harness.mjs";
import { startRedis, startRedisCluster, startNodes, stopNodes } from "./lib/cluster.mjs";
import { STREAM_ARGS, STREAM_ID, assertStreamEnv, backfillOk, until } from "./lib/streams.mjs";

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

describe("admin inspector on an account stream (--stream-separator :)", () => {
  let server;
  let browser;
  const sockets = [];
  before(async () => {
    server = await startServer([...STREAM_ARGS, "--api-key", KEY]);
    browser = await launchChromium();
  });
  after(async () => {
    closeAll(...sockets);
    await browser?.close();
    await server?.stop();
  });

  const tracking = (name, extra = "") =>
    get(`${server.url}/admin/api/tracking?trackingId=${encodeURIComponent(name)}${extra}`, KEY);
  const trackingOk = async (name, extra) => {
    const r = await tracking(name, extra);
    assert.equal(r.status, 200, `inspect ${name}${extra ?? ""}: ${r.status} ${r.text}`);
    return r.body;
  };
  /** Ingests one payment per request, spread over the account's trackingIds; the items and ingest's answers. */
  const post = async (tids, n, from = 0) => {
    const items = [];
    const res = [];
    for (let i = from; i < from + n; i++) {
      const item = payment(tids[i % tids.length], { amount: 1000 * (i + 1) });
      items.push(item);
      res.push(...await ingestOk(server.url, item));
    }
    return { items, res };
  };

  test("the API: the stream's position (an s id), its latest envelopes, the tail after since = an s id, its subscribers; a trackingId's id is INVALID_SINCE", async () => {
    const acct = `m${rand(6)}`;
    const S = `${acct}:*`;
    const tids = [`${acct}:sub-1`, `${acct}:sub-2`, `${acct}:inv:9`];

    const empty = await trackingOk(S);
    assert.equal(empty.trackingId, S);
    assert.deepEqual(empty.position, { id: null, seq: 0 }, "a stream with no payment yet");
    assert.deepEqual(empty.history, { data: [], hasMore: false, truncated: false });

    // A subscriber of the stream is counted as the stream's.
    const s = await connect(server.url, { transports: ["websocket"] });
    sockets.push(s);
    await subscribe(s, S);
    await until(async () => (await trackingOk(S)).subscribers[0]?.subscribers === 1, 15000,
      "the node counting the stream's subscriber");

    const { items, res } = await post(tids, 25);
    const stream = (await backfillOk(server.url, { trackingId: S, limit: 100 })).data;
    assert.equal(stream.length, 25);

    const latest = await trackingOk(S);
    assert.match(latest.position.id, STREAM_ID, "the position's id is a stream id");
    assert.deepEqual(latest.position, { id: stream[24].id, seq: 25 });
    assert.deepEqual(latest.history.data, stream.slice(5), "the latest 20, the backfill's very envelopes");
    for (const [k, e] of latest.history.data.entries()) {
      const i = k + 5;
      assertStreamEnv(e, { stream: S, item: items[i], source: { id: res[i].id, seq: res[i].seq }, seq: i + 1 });
    }

    // The tail: since = the last stream id the page holds.
    const tail = await trackingOk(S, `&since=${encodeURIComponent(stream[22].id)}&limit=100`);
    assert.deepEqual(tail.history.data, stream.slice(23));
    assert.equal(tail.history.truncated, false);
    const more = await post(tids, 2, 25);
    const next = await trackingOk(S, `&since=${encodeURIComponent(stream[24].id)}`);
    assert.deepEqual(next.history.data.map((e) => [e.seq, e.source.id]), more.res.map((r, i) => [26 + i, r.id]));
    assert.deepEqual(next.position.seq, 27);
    // `*` written %2A reads the same stream.
    const raw = JSON.parse((await get(`${server.url}/admin/api/tracking?trackingId=${acct}%3A%2A`, KEY)).text);
    assert.deepEqual(raw.position, next.position);

    // A since of the other kind, or a name that is no stream: the backfill's codes.
    assertHttpError(await tracking(S, `&since=${encodeURIComponent(res[24].id)}`), 400, "INVALID_SINCE");
    assertHttpError(await tracking(tids[0], `&since=${encodeURIComponent(stream[24].id)}`), 400, "INVALID_SINCE");
    assertHttpError(await tracking(`${acct}:sub-1:*`), 400, "INVALID_TRACKING_ID");
    // The trackingId itself is still inspected with its own ids.
    const own = await trackingOk(tids[0]);
    const ownLast = [...res, ...more.res].filter((r) => r.trackingId === tids[0]).at(-1);
    assert.deepEqual(own.position, { id: ownLast.id, seq: ownLast.seq });
  });

  test("the page: inspect merchant:*, see its stream envelopes, then tail it with since = the last s id", async () => {
    const acct = `m${rand(6)}`;
    const S = `${acct}:*`;
    const tids = [`${acct}:sub-1`, `${acct}:inv:9`];
    await post(tids, 4);

    const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    const tails = []; // the since of every tail request for the stream
    page.on("request", (r) => {
      const u = new URL(r.url());
      if (u.pathname === "/admin/api/tracking" && u.searchParams.get("trackingId") === S) {
        tails.push(u.searchParams.get("since"));
      }
    });
    page.setDefaultTimeout(15000);
    await page.goto(`${server.url}/admin`);
    await page.fill("#key", KEY);
    await page.click("#login-form button");
    await page.waitForSelector("#main:not([hidden])");

    await page.fill("#tid", S);
    await page.click("#inspect-form button");
    await page.waitForSelector("#inspector:not([hidden])");
    assert.equal(await page.textContent("#inspect-error"), "", "the stream is accepted");
    assert.equal(await page.textContent("#tid-title"), S);
    const rows = () => page.$$eval("#history tbody tr", (trs) => trs.map((tr) => [Number(tr.dataset.seq), tr.dataset.id]));
    await page.waitForFunction(() => document.querySelectorAll("#history tbody tr").length >= 4);
    const first = (await backfillOk(server.url, { trackingId: S })).data;
    assert.deepEqual(await rows(), first.map((e) => [e.seq, e.id]), "the stream's envelopes, by their s ids");
    assert.match(await page.textContent("#position"), new RegExp(`seq 4 \\(${first[3].id}\\)`));

    // The tail asks with since = the last stream id, and shows what follows.
    await until(() => tails.includes(first[3].id), 10000, `a tail request with since=${first[3].id}: ${JSON.stringify(tails)}`);
    await post(tids, 3, 4);
    await page.waitForFunction(() => document.querySelectorAll("#history tbody tr").length >= 7);
    const all = (await backfillOk(server.url, { trackingId: S })).data;
    assert.equal(all.length, 7);
    assert.deepEqual(await rows(), all.map((e) => [e.seq, e.id]), "every payment once, in stream seq order");
    await until(() => tails.includes(all[6].id), 10000, `a tail request with since=${all[6].id}`);
    assert.equal(await page.textContent("#tail-state"), "(live)", "the tail is not paused by an error");
    for (const since of tails) assert.ok(since === null || STREAM_ID.test(since), `a stream's since: ${since}`);
    assert.deepEqual(errors, [], "no script error on the page");
    await page.close();
  });
});
