// Cluster mode on a Redis Cluster (three masters, sharded pub/sub): two
// Tidings nodes started with --redis-cluster and the three seed URLs.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingestOk, connect, waitFor, subscribe, emitWithAck, payments, recorded, payment, rand,
  assertAck, assertPayment, backfill, closeAll,
} from "./lib/harness.mjs";
import { startRedisCluster, startNodes, stopNodes, logLines, keySlot, waitUntil } from "./lib/cluster.mjs";

const WS = { transports: ["websocket"] };

/** Slot ranges per master port, from CLUSTER NODES. */
async function slotOwners(cluster) {
  const ranges = [];
  for (const line of (await cluster.cli(0, "cluster", "nodes")).split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 9 || !f[2].includes("master")) continue;
    const port = Number(/:(\d+)@/.exec(f[1])?.[1]);
    for (const r of f.slice(8)) {
      const m = /^(\d+)(?:-(\d+))?$/.exec(r);
      if (m) ranges.push({ start: Number(m[1]), end: Number(m[2] ?? m[1]), port });
    }
  }
  return ranges;
}

describe("Redis Cluster: two nodes", () => {
  let cluster;
  let nodes = [];
  let A, B;
  const sockets = [];
  const open = async (node) => {
    const s = await connect(node.url, WS);
    sockets.push(s);
    return s;
  };
  const T = (name, fn) => test(name, async () => {
    try {
      await fn();
    } catch (err) {
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes.map((n, i) => `[node ${"AB"[i]}]\n${logLines(n)}`).join("\n")}`;
      throw err;
    }
  });

  before(async () => {
    cluster = await startRedisCluster();
    nodes = await startNodes(2, cluster.url, ["--redis-cluster"]);
    [A, B] = nodes;
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await cluster?.stop();
  });

  T("subscriber on A, ingest on B for trackingIds on every master: received exactly (single and one mixed batch)", async () => {
    const ranges = await slotOwners(cluster);
    assert.equal(new Set(ranges.map((r) => r.port)).size, 3, `three masters own slots: ${JSON.stringify(ranges)}`);
    const owner = (id) => ranges.find((r) => keySlot(id) >= r.start && keySlot(id) <= r.end)?.port;
    // Pick ids until every master owns three of them.
    const run = rand(3);
    const byPort = new Map(cluster.ports.map((p) => [p, []]));
    for (let i = 0; [...byPort.values()].some((l) => l.length < 3); i++) {
      const id = `rc-${run}-${i}`;
      const l = byPort.get(owner(id));
      if (l && l.length < 3) l.push(id);
    }
    const ids = [...byPort.values()].flat();
    const s = await open(A);
    for (const id of ids) await subscribe(s, id);

    // One payment per id, one request each...
    const singles = ids.map((id) => payment(id, { amount: 7 }));
    const singleRes = [];
    for (const it of singles) singleRes.push(...await ingestOk(B.url, it));
    // ...then one batch spanning every master (cross-slot).
    const batch = ids.map((id) => payment(id, { amount: 8 }));
    const batchRes = await ingestOk(B.url, batch);
    assert.deepEqual(singleRes.map((r) => r.seq), ids.map(() => 1));
    assert.deepEqual(batchRes.map((r) => [r.trackingId, r.seq]), ids.map((id) => [id, 2]), "batch results in request order");

    await waitUntil(s, () => ids.every((id) => payments(s, id).length >= 2), 10000,
      () => ids.map((id) => `${id}:${payments(s, id).map((p) => p.seq)}`).join(" "));
    for (const [i, id] of ids.entries()) {
      const got = payments(s, id);
      assert.equal(got.length, 2, `two payments for ${id}`);
      assertPayment(got[0], singles[i], singleRes[i]);
      assertPayment(got[1], batch[i], batchRes[i]);
      const bf = await backfill(A.url, { trackingId: id });
      assert.deepEqual(bf.body.data, got, `backfill of ${id} on A`);
    }
    // The data is sharded: each master holds keys.
    for (const [i, p] of cluster.ports.entries()) {
      const n = Number(await cluster.cli(i, "dbsize"));
      assert.ok(n > 0, `master ${p} holds keys (dbsize ${n}): trackingIds are spread over the cluster`);
    }
  });

  T("the same payment on A then on B: duplicate with the original id/seq, delivered once", async () => {
    const id = `rc-dup-${rand(4)}`;
    const s = await open(A);
    await subscribe(s, id);
    const item = payment(id);
    const [first] = await ingestOk(A.url, item);
    const [second] = await ingestOk(B.url, item);
    assert.equal(first.duplicate, false);
    assert.deepEqual(second, { ...first, duplicate: true });
    const bar = payment(id);
    const [br] = await ingestOk(B.url, bar);
    assert.equal(br.seq, first.seq + 1);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === br.seq, 5000);
    const got = payments(s, id);
    assert.deepEqual(got.map((p) => p.seq), [1, 2], "delivered once");
    assertPayment(got[0], item, first);
    assertPayment(got[1], bar, br);
  });

  T("concurrent ingest for one trackingId on A and B (2 x 60): seqs 1..120 contiguous, received in order on both nodes", async () => {
    const id = `rc-conc-${rand(4)}`;
    const N = 120;
    const sa = await open(A);
    const sb = await open(B);
    await subscribe(sa, id);
    await subscribe(sb, id);
    const items = Array.from({ length: N }, (_, i) => payment(id, { amount: i }));
    const res = (await Promise.all(items.map((it, i) => ingestOk(i % 2 ? B.url : A.url, it)))).map((r) => r[0]);
    assert.deepEqual(res.map((r) => r.seq).sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i + 1));
    assert.equal(new Set(res.map((r) => r.id)).size, N);
    for (const [name, s] of [["A", sa], ["B", sb]]) {
      await waitUntil(s, () => payments(s, id).length >= N, 10000, () => `${name} has ${payments(s, id).length} of ${N}`);
      assert.deepEqual(payments(s, id).map((p) => p.seq), Array.from({ length: N }, (_, i) => i + 1),
        `subscriber on ${name} receives 1..${N} in order`);
      const bySig = new Map(items.map((it, i) => [it.signature, i]));
      for (const env of payments(s, id)) assertPayment(env, items[bySig.get(env.data.signature)], res[bySig.get(env.data.signature)]);
    }
  });

  T("replay on B of events ingested on A", async () => {
    const id = `rc-replay-${rand(4)}`;
    const items = Array.from({ length: 4 }, () => payment(id));
    const res = await ingestOk(A.url, items);
    const s = await open(B);
    assertAck(await emitWithAck(s, "subscribe", { trackingId: id, since: res[0].id }), "subscribe", id);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 4, 5000);
    const live = payment(id);
    const [lr] = await ingestOk(A.url, live);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 5, 5000);
    const got = payments(s, id);
    assert.deepEqual(got.map((p) => p.seq), [2, 3, 4, 5]);
    [1, 2, 3].forEach((k, i) => assertPayment(got[i], items[k], res[k]));
    assertPayment(got[3], live, lr);
    assert.deepEqual(recorded(s, "error"), [], "no error");
  });
});
