// Cluster mode with one Redis: three Tidings nodes (A, B, C) sharing
// history, seq, dedupe and pub/sub. Websocket transport throughout.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingestOk, connect, waitFor, subscribe, emitWithAck, payments, recorded, payment, uid,
  assertAck, assertError, assertPayment, backfill, closeAll,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, logLines, waitUntil } from "./lib/cluster.mjs";

const WS = { transports: ["websocket"] };

/** The socket's log as short strings, for order assertions. */
function eventLog(s, trackingId) {
  return recorded(s)
    .filter((e) => e.event !== "payment" || e.payload?.data?.trackingId === trackingId)
    .map((e) => e.event === "payment"
      ? `payment#${e.payload.seq}`
      : e.event === "error" ? `error:${e.payload?.data?.code}` : e.event);
}

/** Appends every node's warnings/errors to a failing assertion's message. */
function withLogs(nodes, fn) {
  return async () => {
    try {
      await fn();
    } catch (err) {
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes().map((n, i) => `[node ${"ABC"[i]}]\n${logLines(n)}`).join("\n")}`;
      throw err;
    }
  };
}

describe("cluster: three nodes, one Redis", () => {
  let redis;
  let nodes = [];
  let A, B, C;
  const sockets = [];
  const open = async (node) => {
    const s = await connect(node.url, WS);
    sockets.push(s);
    return s;
  };
  const T = (name, fn) => test(name, withLogs(() => nodes, fn));

  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(3, redis.url);
    [A, B, C] = nodes;
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await redis?.stop();
  });

  T("subscriber on A, ingest on B: exact envelopes; backfill from A and from B equals what was received", async () => {
    const id = uid("ab");
    const s = await open(A);
    await subscribe(s, id);
    const items = [payment(id, { amount: 1 }), payment(id, { amount: 2, status: "failed" }), payment(id, { amount: 3 })];
    const r1 = await ingestOk(B.url, items[0]);
    const r23 = await ingestOk(B.url, items.slice(1));
    const res = [...r1, ...r23];
    assert.deepEqual(res.map((r) => [r.seq, r.duplicate, r.trackingId]), [[1, false, id], [2, false, id], [3, false, id]]);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 3, 5000);
    const got = payments(s, id);
    assert.equal(got.length, 3, "three payments received");
    got.forEach((env, i) => assertPayment(env, items[i], res[i]));

    for (const [name, node] of [["A", A], ["B", B]]) {
      const bf = await backfill(node.url, { trackingId: id });
      assert.equal(bf.status, 200, `backfill from ${name}: ${bf.text}`);
      assert.deepEqual(bf.body.data, got, `backfill from ${name} returns the received envelopes unchanged`);
      assert.equal(bf.body.hasMore, false);
      assert.equal(bf.body.truncated, false);
      const after1 = await backfill(node.url, { trackingId: id, since: got[0].id });
      assert.deepEqual(after1.body.data, got.slice(1), `backfill from ${name} after #1`);
    }
  });

  T("the same payment ingested on A then on B: the second is a duplicate with the original id/seq, delivered once", async () => {
    const id = uid("dup");
    const s = await open(C);
    await subscribe(s, id);
    const item = payment(id);
    const [first] = await ingestOk(A.url, item);
    assert.equal(first.duplicate, false);
    assert.equal(first.seq, 1);
    const [second] = await ingestOk(B.url, item);
    assert.deepEqual(second, { ...first, duplicate: true },
      "the repeat on another node answers duplicate: true with the original id and seq");
    // The idempotencyKey variant, in a batch, the other way round (B then A).
    const keyed = payment(id, { signature: undefined, idempotencyKey: uid("key"), status: "pending" });
    delete keyed.signature;
    const [k1] = await ingestOk(B.url, [keyed]);
    assert.equal(k1.duplicate, false);
    assert.equal(k1.seq, 2);
    const [k2] = await ingestOk(A.url, [keyed]);
    assert.deepEqual(k2, { ...k1, duplicate: true }, "idempotencyKey repeat on another node");

    // Barrier on the same trackingId: seq order holds per trackingId, so once
    // #3 has arrived, a re-broadcast duplicate (published before it) would have too.
    const bar = payment(id);
    const [br] = await ingestOk(C.url, bar);
    assert.equal(br.seq, 3);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 3, 5000);
    const got = payments(s, id);
    assert.deepEqual(got.map((p) => p.seq), [1, 2, 3], "each payment exactly once");
    assertPayment(got[0], item, first);
    assertPayment(got[1], keyed, k1);
    assertPayment(got[2], bar, br);
  });

  T("replay served by B of events ingested on A (subscribe on B with since), then live from C", async () => {
    const id = uid("replay");
    const items = Array.from({ length: 5 }, (_, i) => payment(id, { amount: 100 + i }));
    const res = await ingestOk(A.url, items);
    assert.deepEqual(res.map((r) => r.seq), [1, 2, 3, 4, 5]);
    const s = await open(B);
    const ack = await emitWithAck(s, "subscribe", { trackingId: id, since: res[1].id });
    assertAck(ack, "subscribe", id);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 5, 5000);
    const live = payment(id);
    const [lr] = await ingestOk(C.url, live);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 6, 5000);
    assert.deepEqual(eventLog(s, id), ["ack", "payment#3", "payment#4", "payment#5", "payment#6"],
      "ack, replay of #3..#5 (nothing lost: no HISTORY_TRUNCATED), then live #6");
    const got = payments(s, id);
    [2, 3, 4].forEach((k, i) => assertPayment(got[i], items[k], res[k]));
    assertPayment(got[3], live, lr);
    const bf = await backfill(A.url, { trackingId: id, since: res[1].id });
    assert.deepEqual(bf.body.data, got, "replayed envelopes equal A's backfill");
  });

  T("concurrent ingest for one trackingId on A and B (2 x 100): seqs 1..200 exactly; C's subscriber gets them in order", async () => {
    const id = uid("conc");
    const N = 200;
    const s = await open(C);
    await subscribe(s, id);
    const items = Array.from({ length: N }, (_, i) => payment(id, { amount: i }));
    const results = await Promise.all(items.map((it, i) => ingestOk(i % 2 === 0 ? A.url : B.url, it)));
    const res = results.map((r) => r[0]);
    const seqs = res.map((r) => r.seq).sort((a, b) => a - b);
    assert.deepEqual(seqs, Array.from({ length: N }, (_, i) => i + 1), "202 seqs are exactly 1..200");
    assert.equal(new Set(res.map((r) => r.id)).size, N, "200 distinct ids");
    assert.ok(res.every((r) => r.duplicate === false));

    await waitUntil(s, () => payments(s, id).length >= N, 10000,
      () => `received ${payments(s, id).length} of ${N}; seqs ${payments(s, id).map((p) => p.seq).join(",")}`);
    const got = payments(s, id);
    assert.deepEqual(got.map((p) => p.seq), Array.from({ length: N }, (_, i) => i + 1),
      "received in strictly increasing seq order 1..200 with no gap");
    const bySig = new Map(items.map((it, i) => [it.signature, i]));
    for (const env of got) {
      const i = bySig.get(env.data.signature);
      assert.ok(i !== undefined, `unknown payment ${JSON.stringify(env)}`);
      assertPayment(env, items[i], res[i]);
    }
    // A barrier on the same trackingId: no extra copies arrive afterwards.
    const [last] = await ingestOk(A.url, payment(id));
    assert.equal(last.seq, N + 1);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === N + 1, 5000);
    assert.equal(payments(s, id).length, N + 1, "nothing delivered twice");
  });

  // Last in this file: it wipes Redis.
  T("FLUSHALL, then a since from the lost history: ack, HISTORY_TRUNCATED, then what is retained now (seq 1)", async () => {
    const id = uid("flush");
    const old = await ingestOk(A.url, [payment(id), payment(id)]);
    const oldId = old[1].id;
    assert.equal(await redis.cli("flushall"), "OK");

    const s1 = await open(B);
    const ack = await emitWithAck(s1, "subscribe", { trackingId: id, since: oldId });
    assertAck(ack, "subscribe", id);
    assertError(await waitFor(s1, "error", undefined, 5000), "HISTORY_TRUNCATED");

    const item = payment(id);
    const [fresh] = await ingestOk(C.url, item);
    assert.equal(fresh.seq, 1, "the history was lost: it starts again at seq 1");
    assert.equal(fresh.duplicate, false);
    assert.ok(!old.some((o) => o.id === fresh.id), `the new id ${fresh.id} must differ from the lost ones`);
    assertPayment(await waitFor(s1, "payment", (p) => p.data.trackingId === id, 5000), item, fresh);
    assert.deepEqual(eventLog(s1, id), ["ack", "error:HISTORY_TRUNCATED", "payment#1"], "live after the warning");

    // A subscriber arriving now is replayed the new history.
    const s2 = await open(A);
    const ack2 = await emitWithAck(s2, "subscribe", { trackingId: id, since: oldId });
    assertAck(ack2, "subscribe", id);
    assertError(await waitFor(s2, "error", undefined, 5000), "HISTORY_TRUNCATED");
    const env = await waitFor(s2, "payment", (p) => p.data.trackingId === id, 5000);
    assertPayment(env, item, fresh);
    assert.deepEqual(eventLog(s2, id), ["ack", "error:HISTORY_TRUNCATED", "payment#1"]);

    const bf = await backfill(B.url, { trackingId: id, since: oldId });
    assert.equal(bf.status, 200, bf.text);
    assert.equal(bf.body.truncated, true, "backfill with a since from the lost history is truncated");
    assert.deepEqual(bf.body.data, [env]);
  });
});
