// The node-local hub, with faults that hit one node only (a TCP proxy in
// front of Redis, see lib/redisproxy.mjs): a slow subscribe stalls no
// other delivery; an unsubscribe racing a disconnect leaves the node's
// other sockets subscribed; a node cut off from pub/sub catches its
// sockets up by itself. And the subscribe ack's position, on one node and
// across nodes.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer, ingestOk, connect, waitFor, subscribe, unsubscribe, payments, recorded, payment, uid,
  closeAll, assertError,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, readMetric, waitUntil, withLogs } from "./lib/cluster.mjs";
import { startRedisProxy } from "./lib/redisproxy.mjs";

const WS = { transports: ["websocket"] };

/** Connects to `node`, keeping the socket in `sockets` for the after hook. */
async function openIn(sockets, node) {
  const s = await connect(node.url, WS);
  sockets.push(s);
  return s;
}

describe("one node's Redis answers slowly, or is cut off (A through a proxy, B direct)", () => {
  let redis;
  let proxy;
  let A;
  let B;
  const sockets = [];
  const open = (node) => openIn(sockets, node);
  before(async () => {
    redis = await startRedis();
    proxy = await startRedisProxy(redis.port);
    [A] = await startNodes(1, proxy.url);
    [B] = await startNodes(1, redis.url);
  });
  after(async () => {
    proxy?.release();
    closeAll(sockets);
    await stopNodes([A, B]);
    await proxy?.stop();
    await redis?.stop();
  });

  test("a subscribe waiting on Redis holds back no delivery: not of other trackingIds, not of its own", withLogs(() => [A, B], async () => {
    const x = uid("slow-x");
    const y = uid("slow-y");
    const watcher = await open(A);
    await subscribe(watcher, x);
    await subscribe(watcher, y);
    const [r0] = await ingestOk(B.url, payment(x));
    await waitFor(watcher, "payment", (p) => p.id === r0.id);

    const late = await open(A);
    proxy.hold();
    const sent = proxy.seen(/EVALSHA|EVAL/);
    late.emit("subscribe", { trackingId: x, since: r0.id });
    await sent; // A's read for the replay is on its way, its answer held
    const [rx] = await ingestOk(B.url, payment(x));
    const [ry] = await ingestOk(B.url, payment(y));
    await waitFor(watcher, "payment", (p) => p.id === ry.id, 5000);
    assert.deepEqual(recorded(late), [], "the slow subscribe is still waiting for Redis");
    assert.deepEqual(payments(watcher, x).map((p) => p.id), [r0.id, rx.id], "x delivered meanwhile too");
    proxy.release();

    const ack = await waitFor(late, "ack", null, 5000);
    assert.equal(ack.data, `Subscribed to trackingId: ${x}`);
    // The replay (read before rx was stored) and the live rx buffered
    // meanwhile: rx once, after the ack.
    await waitFor(late, "payment", (p) => p.id === rx.id, 5000);
    assert.deepEqual(recorded(late).map((e) => e.event), ["ack", "payment"]);
  }));

  test("an unsubscribe racing a disconnect while Redis answers slowly leaves the node's other sockets subscribed", withLogs(() => [A, B], async () => {
    const x = uid("race");
    const [a, b, c] = [await open(A), await open(A), await open(A)];
    for (const s of [a, b, c]) await subscribe(s, x);
    const [r0] = await ingestOk(B.url, payment(x));
    for (const s of [a, b, c]) await waitFor(s, "payment", (p) => p.id === r0.id);

    proxy.hold();
    const sent = proxy.seen(/EVALSHA|EVAL/);
    b.emit("subscribe", { trackingId: x, since: r0.id }); // a replay, waiting on Redis
    await sent;
    // What the public React example does on unmount: unsubscribe, then
    // disconnect. The unsubscribe needs nothing from Redis: its ack comes
    // at once (were it to wait for b's read, as it once did, the disconnect
    // would race it for the same subscription).
    c.emit("unsubscribe", { trackingId: x });
    await waitFor(c, "ack", (m) => m.data === `Unsubscribed from trackingId: ${x}`, 500).catch(() => {});
    c.disconnect();
    proxy.release();
    await waitFor(b, "ack", (m) => m.data === `Subscribed to trackingId: ${x}`, 5000);
    // b leaves as well: a is the last socket watching x on A.
    await unsubscribe(b, x);

    const [r1] = await ingestOk(B.url, payment(x));
    const got = await waitFor(a, "payment", (p) => p.id === r1.id, 5000);
    assert.equal(got.seq, r1.seq);
    assert.deepEqual(payments(a, x).map((p) => p.seq), [1, 2]);
  }));

  test("a resubscribe whose read fails while the history starts afresh still gets the warning, before the new history", withLogs(() => [A, B], async () => {
    const x = uid("restart-pending");
    const s = await open(A);
    await subscribe(s, x);
    const [r0] = await ingestOk(B.url, payment(x));
    await waitFor(s, "payment", (p) => p.id === r0.id);

    proxy.hold();
    const sent = proxy.seen(/EVALSHA|EVAL/);
    s.emit("subscribe", { trackingId: x, since: r0.id }); // its read will time out
    await sent;
    // The history is lost and starts afresh while s waits for its read.
    assert.equal(await redis.cli("DEL", `tidings:{${x}}:meta`, `tidings:{${x}}:events`), "2");
    const [fresh] = await ingestOk(B.url, payment(x));
    assert.equal(fresh.seq, 1);
    const refused = await waitFor(s, "error", (e) => e.data?.code === "CONNECTION_ERROR", 10000);
    assertError(refused, "CONNECTION_ERROR");
    proxy.release();
    const log = recorded(s).map((e) => (e.event === "payment" ? `payment:${e.payload.id}` : e.event === "error" ? e.payload.data.code : e.event));
    assert.deepEqual(log, ["ack", `payment:${r0.id}`, "HISTORY_TRUNCATED", `payment:${fresh.id}`, "CONNECTION_ERROR"],
      "the failed resubscribe changes nothing: the socket gets what the room got, the warning first");
  }));

  test("a listen that silently disappears is found by the node's audit: it listens again and delivers what was missed", withLogs(() => [A, B], async () => {
    const x = uid("vanish");
    const s = await open(A);
    await subscribe(s, x);
    const [r0] = await ingestOk(B.url, payment(x));
    await waitFor(s, "payment", (p) => p.id === r0.id);
    const audits = async () => (await readMetric(A.url, "tidings_catch_ups_total", { reason: "audit" })).value ?? 0;
    const before = await audits();

    assert.equal(proxy.dropSubscription(`tidings:{${x}}:p`), 1, "A's pub/sub connection");
    const [r1] = await ingestOk(B.url, payment(x)); // Redis delivers it to nobody on A
    // The audit runs every 5 s.
    const got = await waitFor(s, "payment", (p) => p.id === r1.id, 15000);
    assert.equal(got.seq, r0.seq + 1);
    assert.deepEqual(recorded(s, "error"), [], "nothing was lost: no warning");
    assert.ok(await audits() > before, "found by the audit");
    // And it listens again: the next payment arrives live.
    const [r2] = await ingestOk(B.url, payment(x));
    await waitFor(s, "payment", (p) => p.id === r2.id, 5000);
  }));

  test("a node cut off from Redis pub/sub catches its sockets up by itself, with no later payment to reveal the gap", withLogs(() => [A, B], async () => {
    const x = uid("cut");
    const s = await open(A);
    const ack = await subscribe(s, x);
    assert.deepEqual(ack.position, { id: null, seq: 0 });
    const metric = async (name, labels) => (await readMetric(A.url, name, labels)).value ?? 0;
    const resyncsBefore = await metric("tidings_store_resyncs_total");
    const catchUpsBefore = await metric("tidings_catch_ups_total", { reason: "resync" });
    const lagBefore = await metric("tidings_delivery_lag_seconds_count", { path: "catch_up" });

    assert.equal(proxy.cutPubsub(), 1, "A's one pub/sub connection cut");
    // Stored and published while A cannot hear it.
    const lost = await ingestOk(B.url, [payment(x), payment(x), payment(x)]);
    proxy.heal();

    await waitUntil(s, () => payments(s, x).length >= 3, 15000,
      () => `received ${JSON.stringify(payments(s, x).map((p) => p.seq))}`);
    assert.deepEqual(payments(s, x).map((p) => p.id), lost.map((r) => r.id), "every payment, once, in order");
    assert.deepEqual(recorded(s, "error"), [], "nothing was lost: no HISTORY_TRUNCATED");
    assert.ok(await metric("tidings_store_resyncs_total") > resyncsBefore, "the lost connection was noticed");
    assert.ok(await metric("tidings_catch_ups_total", { reason: "resync" }) > catchUpsBefore, "and caught up");
    assert.equal(await metric("tidings_delivery_lag_seconds_count", { path: "catch_up" }) - lagBefore, 3,
      "the three payments' lag observed on the catch-up path");
  }));
});

describe("the ack's position", () => {
  let server;
  let redis;
  let nodes = [];
  const sockets = [];
  const open = (node) => openIn(sockets, node);
  before(async () => {
    server = await startServer(["--history-limit", "2"]);
    redis = await startRedis();
    nodes = await startNodes(2, redis.url);
  });
  after(async () => {
    closeAll(sockets);
    await server?.stop();
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("one node: none, then the last stored event (also when no longer retained), at a repeat too, and with since", async () => {
    const x = uid("pos");
    const s = await open(server);
    assert.deepEqual((await subscribe(s, x)).position, { id: null, seq: 0 });
    const r = await ingestOk(server.url, [payment(x), payment(x), payment(x)]);
    await waitFor(s, "payment", (p) => p.id === r[2].id);
    // A repeat on a held id: the position at the repeat.
    assert.deepEqual((await subscribe(s, x)).position, { id: r[2].id, seq: 3 });
    // History limit 2: seq 1 is no longer retained; the position is still the last stored.
    const t = await open(server);
    assert.deepEqual((await subscribe(t, x)).position, { id: r[2].id, seq: 3 });
    const u = await open(server);
    const ack = await subscribe(u, x, { since: r[0].id });
    assert.deepEqual(ack.position, { id: r[2].id, seq: 3 }, "with since: where the replay ends");
    await waitFor(u, "payment", (p) => p.id === r[2].id);
    assert.deepEqual(payments(u, x).map((p) => p.seq), [2, 3]);
  });

  test("across nodes, under concurrent ingest: every subscriber's first live payment is position + 1", withLogs(() => nodes, async () => {
    const [A, B] = nodes;
    const x = uid("pos-cluster");
    await ingestOk(B.url, payment(x));
    let writing = true;
    const accepted = [];
    const writer = (async () => {
      while (writing) accepted.push(...await ingestOk(B.url, payment(x)));
    })();
    const acks = [];
    for (let i = 0; i < 12; i++) {
      // Alternate: the first subscriber on a node reads Redis, later ones
      // take the node's own position.
      const s = await open(i % 2 === 0 ? A : B);
      acks.push({ s, ack: await subscribe(s, x) });
    }
    writing = false;
    await writer;
    // One more, after every subscription took effect: everyone gets it.
    const [last] = await ingestOk(A.url, payment(x));
    for (const [i, { s, ack }] of acks.entries()) {
      await waitFor(s, "payment", (p) => p.id === last.id, 5000);
      const got = payments(s, x).filter((p) => p.seq > ack.position.seq);
      assert.ok(ack.position.seq >= 1, `subscriber ${i}: position ${JSON.stringify(ack.position)}`);
      assert.deepEqual(got.map((p) => p.seq),
        Array.from({ length: last.seq - ack.position.seq }, (_, k) => ack.position.seq + 1 + k),
        `subscriber ${i} (position ${ack.position.seq}): contiguous from position + 1`);
      assert.equal(payments(s, x).length, got.length, `subscriber ${i}: nothing at or below its position`);
    }
  }));
});

describe("HISTORY_TRUNCATED names its trackingId", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(["--history-limit", "2"]); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  test("a replay from a since that is no longer retained: ack, warning with data.trackingId, replay", async () => {
    const x = uid("trunc");
    const r = await ingestOk(server.url, [payment(x), payment(x), payment(x), payment(x)]);
    const s = await connect(server.url, WS);
    sockets.push(s);
    await subscribe(s, x, { since: r[0].id });
    const warning = await waitFor(s, "error");
    assertError(warning, "HISTORY_TRUNCATED");
    assert.equal(warning.data.trackingId, x);
    await waitFor(s, "payment", (p) => p.id === r[3].id);
    assert.deepEqual(recorded(s).map((e) => e.event), ["ack", "error", "payment", "payment"]);
  });
});
