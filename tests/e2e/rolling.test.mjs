// A rolling restart behind nginx, end to end: three nodes on one Redis
// behind deploy/nginx/tidings.conf; 30 socket.io-client clients (10
// websocket only, 10 polling only, 10 polling with upgrade), each from a
// source address of its own so that nginx's client-address hash spreads
// them over the nodes, each subscribed to three trackingIds and doing what
// the README (and docs/operations.md) tells clients to do: on every (re)connect, subscribe again
// with `since` = the last id received, and drop what it already has by id.
// Three ingest workers POST continuously through nginx and retry as the
// docs/operations.md says (the same body; on 503 after Retry-After, on a network or
// gateway error after a backoff).
//
// Each node in turn: SIGTERM, exit 0 within --shutdown-timeout, started
// again on its port, /readyz 200, next. Then: no ingest request ended in
// anything but 202; every client holds every accepted payment of its
// trackingIds exactly once, in seq order, without a gap (no seq jump was
// ever seen); the history agrees; every node exited 0.
//
// The same test shows what the client rules are for:
//   TIDINGS_ROLLING_BREAK=no-retry  the ingest workers do not retry
//   TIDINGS_ROLLING_BREAK=no-since  clients resubscribe without `since`
// Each makes it fail (see deploy/README.md for the figures).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import {
  startServer, httpGet, backfill, payment, uid, withTimeout, INGEST_TOKEN, WS_PATH,
} from "./lib/harness.mjs";
import { startRedis, startNodes, startNginx, logLines, readMetric } from "./lib/cluster.mjs";
import { fromAddress } from "./lib/deploy.mjs";
import { pollingHandshake, poll } from "./lib/attacks.mjs";

const BREAK = process.env.TIDINGS_ROLLING_BREAK ?? "";
const SHUTDOWN_TIMEOUT = 5;
const CLIENTS = 30;
const TRACKING_IDS = 10;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * POSTs one ingest body through `url`, retrying as docs/operations.md tells payment
 * backends to: the same body (ingest is idempotent), on 503 after its
 * Retry-After, on a network error or a gateway error (502/504: the request
 * may not have reached a node) after a backoff from 100 ms doubling to 2 s;
 * giving up after 30 s.
 */
async function ingestWithRetries(url, body, stats) {
  const text = JSON.stringify(body);
  const giveUp = Date.now() + 30000;
  let backoff = 100;
  for (;;) {
    let res;
    let wait;
    try {
      res = await fetch(`${url}/v1/payments`, {
        method: "POST",
        headers: { authorization: `Bearer ${INGEST_TOKEN}`, "content-type": "application/json" },
        body: text,
        signal: AbortSignal.timeout(10000),
      });
    } catch (err) {
      stats.networkErrors++;
      if (BREAK === "no-retry" || Date.now() > giveUp) return { status: 0, error: err.message };
      res = null;
      wait = backoff;
    }
    if (res) {
      const answer = await res.text();
      if (res.status === 202) return { status: 202, data: JSON.parse(answer).data };
      if (res.status < 500) return { status: res.status, error: answer }; // 4xx: a bug in the test, never retried
      stats.fiveHundreds[res.status] = (stats.fiveHundreds[res.status] ?? 0) + 1;
      if (BREAK === "no-retry" || Date.now() > giveUp) return { status: res.status, error: answer };
      const after = Number(res.headers.get("retry-after"));
      wait = res.status === 503 && after > 0 ? after * 1000 : backoff;
    }
    stats.retries++;
    await sleep(wait);
    backoff = Math.min(backoff * 2, 2000);
  }
}

/**
 * A client as the README describes one (docs/reference.md): keeps the last id per trackingId,
 * subscribes with it as `since` on every connect, drops payments it has by
 * id, and records any seq it did not expect.
 */
function makeClient(url, i, tids, transports) {
  const address = `127.0.1.${i + 1}`;
  const opts = {
    path: WS_PATH,
    forceNew: true,
    reconnection: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 1000,
    timeout: 5000,
    ...fromAddress(address),
  };
  if (transports) opts.transports = transports;
  const socket = io(url, opts);
  const c = {
    socket, address, tids, kind: transports ? transports.join("+") : "polling+upgrade",
    got: Object.fromEntries(tids.map((t) => [t, []])), // ids in arrival order, deduped
    lastSeq: Object.fromEntries(tids.map((t) => [t, 0])),
    seen: new Set(),
    acked: new Set(),
    ackedNow: new Set(), // the trackingIds acked on the current connection
    connects: 0,
    disconnects: [],
    duplicates: 0,
    jumps: [],
    errors: [],
    onPayment: () => {},
    onChange: () => {}, // called on every connect, ack, payment and disconnect
  };
  socket.on("connect", () => {
    c.connects++;
    c.ackedNow = new Set();
    for (const t of tids) {
      const last = c.got[t].at(-1);
      const since = BREAK === "no-since" ? undefined : last;
      socket.emit("subscribe", since ? { trackingId: t, since } : { trackingId: t });
    }
    c.onChange();
  });
  socket.on("ack", (a) => {
    const m = /^Subscribed to trackingId: (.*)$/.exec(a?.data ?? "");
    if (m) {
      c.acked.add(m[1]);
      c.ackedNow.add(m[1]);
    }
    c.onChange();
  });
  socket.on("error", (e) => c.errors.push(e?.data ?? e));
  socket.on("disconnect", (reason) => {
    c.disconnects.push(reason);
    c.ackedNow = new Set();
    c.onChange();
  });
  socket.on("payment", (p) => {
    const t = p.data.trackingId;
    const key = `${t}\u0000${p.id}`;
    if (c.seen.has(key)) {
      c.duplicates++;
      return;
    }
    c.seen.add(key);
    if (p.seq !== c.lastSeq[t] + 1) c.jumps.push(`${t}: seq ${p.seq} after ${c.lastSeq[t]}`);
    c.lastSeq[t] = Math.max(c.lastSeq[t], p.seq);
    c.got[t].push(p.id);
    c.onPayment();
    c.onChange();
  });
  return c;
}

/** Connected, with every trackingId acked on the current connection. */
const settled = (c) => c.socket.connected && c.tids.every((x) => c.ackedNow.has(x));

/**
 * Resolves once `ready(clients)` holds, checked at every connect, ack,
 * payment and disconnect of any client; rejects after `timeoutMs` with what
 * is missing.
 */
function whenClients(clients, ready, timeoutMs, what) {
  let check;
  return withTimeout(new Promise((resolve) => {
    check = () => { if (ready(clients)) resolve(); };
    for (const c of clients) c.onChange = check;
    check();
  }), timeoutMs, what).catch((err) => {
    const behind = clients.filter((c) => !settled(c)).map((c) => `${c.address} (${c.kind}): ` +
      `${c.socket.connected ? "connected" : "disconnected"}, acked ${[...c.ackedNow].length}/${c.tids.length}`);
    err.message += `\n${behind.join("\n")}`;
    throw err;
  }).finally(() => { for (const c of clients) if (c.onChange === check) c.onChange = () => {}; });
}

/**
 * Which node nginx's Socket.IO upstream sends `address` to: opens an
 * Engine.IO polling session through nginx from that address and closes it
 * on each node directly (only the node holding the session answers 200).
 * Returns the node's index, or -1.
 */
async function socketIoNodeOf(nginxUrl, nodes, address) {
  const hs = await pollingHandshake(nginxUrl, { localAddress: address });
  assert.ok(hs.sid, `polling handshake through nginx from ${address}: ${hs.status} ${hs.text.slice(0, 200)}`);
  let owner = -1;
  for (const [k, n] of nodes.entries()) {
    const r = await poll(n.url, hs.sid, { method: "POST", body: "1" }).catch(() => ({ status: 0 }));
    if (r.status === 200) owner = k;
  }
  return owner;
}

/** Polls a condition nothing announces, every 50 ms, for at most `timeoutMs`. */
async function until(cond, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await sleep(50);
  }
}

async function waitReady(url, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await httpGet(`${url}/readyz`).catch((e) => ({ status: 0, text: e.message }));
    if (r.status === 200) return;
    if (Date.now() > deadline) throw new Error(`${url}/readyz not 200 within ${timeoutMs} ms: ${r.status} ${r.text}`);
    await sleep(50);
  }
}

describe("rolling restart behind nginx (deploy/nginx/tidings.conf): three nodes, 30 clients, continuous ingest", () => {
  let redis;
  let nodes = [];
  let nginx;
  const clients = [];
  const nodeArgs = () => ["--redis-url", redis.url, "--shutdown-timeout", String(SHUTDOWN_TIMEOUT)];

  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(3, redis.url, ["--shutdown-timeout", String(SHUTDOWN_TIMEOUT)]);
    nginx = await startNginx(nodes.map((n) => n.port), { accessLog: true });
  });
  after(async () => {
    for (const c of clients) c.socket.close();
    await nginx?.stop();
    await Promise.all(nodes.map((n) => n?.stop("SIGKILL")));
    await redis?.stop();
  });

  test("SIGTERM, restart, ready, next: no ingest fails, every client gets every accepted payment once, in order, no gap; every node exits 0", async (t) => {
    const tids = Array.from({ length: TRACKING_IDS }, (_, k) => uid(`roll${k}`));
    const kinds = [["websocket"], ["polling"], null];
    for (let i = 0; i < CLIENTS; i++) {
      const mine = [tids[i % TRACKING_IDS], tids[(i + 3) % TRACKING_IDS], tids[(i + 7) % TRACKING_IDS]];
      clients.push(makeClient(nginx.url, i, mine, kinds[i % 3]));
    }
    // Everyone subscribed before the first payment: a fresh subscribe without since starts at the ack.
    await whenClients(clients, (cs) => cs.every(settled), 20000, "every client connected and acked");
    const sockets = await Promise.all(nodes.map(async (n) => (await readMetric(n.url, "tidings_sockets")).value));
    t.diagnostic(`sockets per node before the restarts: ${sockets.join(", ")}`);
    assert.ok(sockets.every((s) => s > 0), `clients on every node (nginx hashes their addresses): ${sockets}`);

    // For each node, an address that nginx's client-address hash sends to
    // it (addresses no client uses): it tells when nginx, which marks a
    // node that failed as down for fail_timeout, sends that node new
    // connections again.
    const probes = new Array(nodes.length).fill(null);
    for (let k = 1; k <= 100 && probes.includes(null); k++) {
      const address = `127.0.2.${k}`;
      const owner = await socketIoNodeOf(nginx.url, nodes, address);
      if (owner >= 0 && probes[owner] === null) probes[owner] = address;
    }
    assert.ok(!probes.includes(null), `a probe address for every node: ${probes}`);

    // Ingest, continuously, until told to stop.
    const stats = { requests: 0, retries: 0, networkErrors: 0, fiveHundreds: {}, failed: [] };
    const accepted = Object.fromEntries(tids.map((x) => [x, new Map()])); // seq -> id
    let stop = false;
    const worker = async () => {
      while (!stop) {
        const n = 1 + Math.floor(Math.random() * 3);
        const body = Array.from({ length: n }, () => payment(tids[Math.floor(Math.random() * TRACKING_IDS)]));
        stats.requests++;
        const r = await ingestWithRetries(nginx.url, body, stats);
        if (r.status !== 202) {
          stats.failed.push(`${r.status}: ${String(r.error).slice(0, 200)}`);
          continue;
        }
        for (const d of r.data) {
          const prev = accepted[d.trackingId].get(d.seq);
          assert.ok(prev === undefined || prev === d.id, `seq ${d.seq} of ${d.trackingId} given to two ids`);
          accepted[d.trackingId].set(d.seq, d.id);
        }
      }
    };
    const workers = [worker(), worker(), worker()];

    // The rolling restart.
    const restarts = [];
    // Ingest is under way before the first node goes: every client holds
    // a payment of each of its trackingIds (so it resubscribes with `since`).
    await whenClients(clients, (cs) => cs.every((c) => c.tids.every((x) => c.got[x].length > 0)), 20000,
      "every client receiving a first payment of each of its trackingIds");
    const disconnects = () => clients.reduce((n, c) => n + c.disconnects.length, 0);
    for (let i = 0; i < nodes.length; i++) {
      const port = nodes[i].port;
      const disconnectsBefore = disconnects();
      const t0 = Date.now();
      const exit = await nodes[i].stop("SIGTERM", (SHUTDOWN_TIMEOUT + 5) * 1000);
      const took = Date.now() - t0;
      restarts.push({ node: i + 1, exit, took });
      assert.deepEqual({ code: exit.code, signal: exit.signal, timedOut: exit.timedOut ?? false },
        { code: 0, signal: null, timedOut: false }, `node ${i + 1} exits 0 at SIGTERM:\n${logLines(nodes[i])}`);
      assert.ok(took <= SHUTDOWN_TIMEOUT * 1000 + 1000, `node ${i + 1} took ${took} ms to exit (--shutdown-timeout ${SHUTDOWN_TIMEOUT})`);
      nodes[i] = await startServer(nodeArgs(), {}, {
        baseArgs: ["--listen", `127.0.0.1:${port}`, "--ingest-token", INGEST_TOKEN, "--log-format", "json"],
        timeoutMs: 20000,
      });
      await waitReady(nodes[i].url);
      const readyAt = Date.now();
      // Before the next node goes: nginx uses this one again, in both
      // upstreams (ingest reaches it; a new connection from its probe
      // address lands on it). nginx keeps a node that failed out for
      // fail_timeout; a next node stopped before that could leave it
      // with no live upstream. (So a too long fail_timeout in the shipped
      // file no longer fails this test: it is waited out, and shows in
      // the diagnostic below.) ...
      const restarted = nodes[i];
      await until(async () => ((await readMetric(restarted.url, "tidings_ingest_requests_total", { status: "202" })).value ?? 0) > 0,
        15000, `nginx sending ingest requests to the restarted node ${i + 1}`);
      await until(async () => (await socketIoNodeOf(nginx.url, nodes, probes[i])) === i,
        15000, `nginx sending new connections from ${probes[i]} to the restarted node ${i + 1}`);
      restarts.at(-1).backInNginx = Date.now() - readyAt;
      // ... and its clients are back: the node closed their sockets at
      // SIGTERM (so at least one client saw a disconnect; every node held
      // clients, see above), and every client is connected again with all
      // its trackingIds acked on that connection.
      await whenClients(clients, (cs) => disconnects() > disconnectsBefore && cs.every(settled), 30000,
        `the clients of node ${i + 1} back and resubscribed after its restart`);
    }
    stop = true;
    await withTimeout(Promise.all(workers), 30000, "the ingest workers to finish");

    const total = Object.values(accepted).reduce((s, m) => s + m.size, 0);
    const upstream = nginx.accessLog().split("\n").filter((l) => l.startsWith("POST /v1/payments"));
    const nginxRetried = upstream.filter((l) => /upstream=\S+, /.test(l)).length;
    t.diagnostic(`ingest: ${stats.requests} requests, ${total} payments accepted; the client saw ${JSON.stringify(stats.fiveHundreds)} ` +
      `5xx and ${stats.networkErrors} network errors, retried ${stats.retries} times; nginx sent ${nginxRetried} ingest requests to a second node`);
    t.diagnostic(`shutdowns: ${restarts.map((r) => `node ${r.node} exit ${r.exit.code} in ${r.took} ms`).join(", ")}`);
    t.diagnostic(`nginx used each restarted node again ${restarts.map((r) => `${r.backInNginx} ms`).join(", ")} after its /readyz`);
    assert.deepEqual(stats.failed, [], "every ingest request ended in 202 (after the client's retries); nginx logged:\n" +
      `${upstream.filter((l) => !/ 202 upstream=202$/.test(l)).slice(0, 20).join("\n")}\n` +
      `${nginx.errorLog().split("\n").filter((l) => /\[(error|warn)\]/.test(l)).slice(-10).join("\n")}`);

    // One node out at a time must never leave nginx without a node it
    // believes alive (a restarted node stays marked failed for
    // fail_timeout: longer than a restart step, and all three are out).
    const noLive = nginx.errorLog().split("\n").filter((l) => l.includes("no live upstreams"));
    assert.deepEqual(noLive.slice(0, 5), [], `nginx had no live upstream ${noLive.length} times`);

    // Every accepted payment, per trackingId: seqs 1..N, as the history says.
    for (const x of tids) {
      const seqs = [...accepted[x].keys()].sort((a, b) => a - b);
      assert.deepEqual(seqs, seqs.map((_, k) => k + 1), `${x}: accepted seqs are 1..N without a hole`);
      const bf = await backfill(nginx.url, { trackingId: x, limit: 1000 });
      assert.equal(bf.status, 200, bf.text);
      assert.deepEqual(bf.body.data.map((e) => e.id), seqs.map((s) => accepted[x].get(s)), `${x}: the history holds exactly the accepted payments`);
    }

    // Every client ends up with all of them (event-driven wait, bounded).
    const complete = (c) => c.tids.every((x) => c.got[x].length >= accepted[x].size);
    await withTimeout(Promise.all(clients.map((c) => new Promise((resolve) => {
      if (complete(c)) return resolve();
      c.onPayment = () => { if (complete(c)) resolve(); };
    }))), 30000, "every client to hold every accepted payment").catch((err) => {
      const behind = clients.filter((c) => !complete(c)).map((c) => `${c.address} (${c.kind}): ` +
        c.tids.map((x) => `${c.got[x].length}/${accepted[x].size}`).join(" ") + ` jumps ${c.jumps.length}`);
      err.message += `\n${behind.join("\n")}`;
      throw err;
    });
    let reconnects = 0;
    let duplicates = 0;
    for (const c of clients) {
      reconnects += c.connects - 1;
      duplicates += c.duplicates;
      assert.deepEqual(c.jumps, [], `${c.address} (${c.kind}): no seq jump (a gap) was ever seen`);
      assert.deepEqual(c.errors, [], `${c.address} (${c.kind}): no error event`);
      for (const x of c.tids) {
        const want = [...accepted[x].keys()].sort((a, b) => a - b).map((s) => accepted[x].get(s));
        assert.deepEqual(c.got[x], want, `${c.address} (${c.kind}) ${x}: every accepted payment once, in seq order`);
      }
    }
    t.diagnostic(`clients: ${reconnects} reconnects in all, ${duplicates} payments received twice and dropped by id`);
    assert.ok(reconnects >= 1, "the restarts moved clients");

    // And the last three nodes stop cleanly too.
    for (const [i, n] of nodes.entries()) {
      const exit = await n.stop("SIGTERM", (SHUTDOWN_TIMEOUT + 5) * 1000);
      assert.deepEqual([exit.code, exit.timedOut ?? false], [0, false], `node ${i + 1} (restarted) exits 0`);
    }
  });
});
