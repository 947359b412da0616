// Failover under steady ingest, shared by sentinel.test.mjs and
// redis-cluster-failover.test.mjs: a writer that posts a payment every
// 40 ms (retrying the same body until 202), a check of what a subscriber
// saw against ingest's answers (no id for two payments, nothing received
// that ingest did not answer, per trackingId consecutive unless a
// HISTORY_TRUNCATED came in between, nothing accepted silently missing),
// and the whole scenario around one failover.

import assert from "node:assert/strict";
import {
  ingest, ingestOk, connect, waitFor, subscribe, payments, recorded, payment, rand, assertPayment,
} from "./harness.mjs";
import { waitUntil, pace } from "./cluster.mjs";
import { waitReadyz, until } from "./tls.mjs";

const WS = { transports: ["websocket"] };

/**
 * Steady ingest: one payment every `everyMs` for `ids` in turn, alternating
 * nodes; a refused or timed-out request is retried with the same body
 * until 202 (every fetch bounded). Records every 202 entry with its item.
 */
export function startWriter(nodes, ids, everyMs = 40) {
  const answers = []; // {entry, item, at}
  const failures = []; // {status, at}
  let stopped = false;
  let k = 0;
  const loop = (async () => {
    while (!stopped) {
      const item = payment(ids[k % ids.length], { amount: 1000 + k });
      const node = nodes[k % nodes.length];
      k++;
      for (;;) {
        const res = await ingest(node.url, item, { timeoutMs: 5000 }).catch((err) => ({ status: 0, text: err.message }));
        if (res.status === 202) {
          answers.push({ entry: res.body.data[0], item, at: Date.now() });
          break;
        }
        failures.push({ status: res.status, at: Date.now(), text: String(res.text).slice(0, 200) });
        if (stopped) break;
        await pace(100);
      }
      await pace(everyMs);
    }
  })();
  return {
    answers,
    failures,
    /** The first 202 answered after `t`, or null. */
    firstOkAfter: (t) => answers.find((a) => a.at > t) ?? null,
    async stop() { stopped = true; await loop; },
  };
}

/**
 * What the subscriber `s` saw for `ids`, checked against the writer's
 * answers: no id answered for two payments; every received payment is one
 * ingest answered, with its seq; per trackingId the payments follow each
 * other (same epoch, seq + 1) unless a HISTORY_TRUNCATED for it came in
 * between; every accepted payment was received or its trackingId got a
 * HISTORY_TRUNCATED. Returns figures for the diagnostic.
 */
export function checkStream(s, ids, answers) {
  const owner = new Map(); // id -> signature
  for (const { entry, item } of answers) {
    const key = `${entry.trackingId}\u0000${entry.id}`;
    const prev = owner.get(key);
    assert.ok(prev === undefined || prev === item.signature,
      `id ${entry.id} of ${entry.trackingId} answered for two payments (${prev?.slice(0, 10)}…, ${item.signature.slice(0, 10)}…)`);
    owner.set(key, item.signature);
  }
  const truncated = new Set();
  const figures = { received: 0, dups: 0, truncations: 0, rebases: 0, rebaseExamples: [] };
  const last = new Map();
  const pendingTrunc = new Set();
  const seen = new Set();
  for (const e of recorded(s)) {
    if (e.event === "error") {
      assert.equal(e.payload?.data?.code, "HISTORY_TRUNCATED", `only HISTORY_TRUNCATED errors: ${JSON.stringify(e.payload)}`);
      const tid = e.payload.data.trackingId;
      assert.ok(ids.includes(tid), `HISTORY_TRUNCATED names a trackingId held: ${JSON.stringify(e.payload)}`);
      truncated.add(tid);
      pendingTrunc.add(tid);
      figures.truncations++;
      continue;
    }
    if (e.event !== "payment") continue;
    const p = e.payload;
    const tid = p.data.trackingId;
    if (!ids.includes(tid)) continue;
    // Ids are per trackingId (<epoch>-<seq>): dedupe by both.
    if (seen.has(`${tid}\u0000${p.id}`)) { figures.dups++; continue; }
    seen.add(`${tid}\u0000${p.id}`);
    figures.received++;
    const sig = owner.get(`${tid}\u0000${p.id}`);
    assert.ok(sig !== undefined, `received ${p.id} for ${tid}, an id ingest never answered`);
    assert.equal(p.data.signature, sig, `received ${p.id} is the payment ingest answered it for`);
    const [epoch, seq] = p.id.split("-").map(Number);
    const l = last.get(tid);
    if (l && !(epoch === l.epoch && seq === l.seq + 1)) {
      assert.ok(pendingTrunc.has(tid),
        `${tid}: ${p.id} follows ${l.epoch}-${l.seq} without HISTORY_TRUNCATED in between (a silent gap or reorder)`);
      figures.rebases++;
      if (figures.rebaseExamples.length < 3) figures.rebaseExamples.push(`${l.epoch}-${l.seq} -> ${p.id}`);
    }
    pendingTrunc.delete(tid);
    last.set(tid, { epoch, seq });
  }
  const missing = answers.filter((a) => !a.entry.duplicate && !seen.has(`${a.entry.trackingId}\u0000${a.entry.id}`) && !truncated.has(a.entry.trackingId));
  assert.deepEqual(missing.map((a) => a.entry.id), [], "every accepted payment was received, or its trackingId got HISTORY_TRUNCATED");
  return figures;
}

/**
 * One failover under steady ingest (`doFailover` returns when the fault is
 * done): ingest must answer 202 again within `withinMs` of it, the
 * subscriber on A keeps receiving, and the stream checks hold.
 */
export async function failoverUnderLoad(t, { nodes, sockets, doFailover, withinMs, ids }) {
  const [A, B] = nodes;
  const run = rand(3);
  ids ??= [`fo-${run}-a`, `fo-${run}-b`, `fo-${run}-c`];
  const s = await connect(A.url, WS);
  sockets.push(s);
  for (const id of ids) await subscribe(s, id);
  const writer = startWriter([A, B], ids);
  let info;
  let backMs;
  let outageMs;
  try {
    await waitUntil(s, () => payments(s).length >= 20, 10000, () => `${payments(s).length} payments before the failover`);
    const t0 = Date.now();
    info = await doFailover();
    const tFault = Date.now();
    // Ingest answers 202 again (no event to await: the writer's retries are the poll).
    await until(() => writer.firstOkAfter(tFault), withinMs, () => `ingest 202 again within ${withinMs} ms of the failover (${info}; last failures: ${JSON.stringify(writer.failures.slice(-3))})`);
    backMs = writer.firstOkAfter(tFault).at - t0;
    // The longest time without a 202 from the fault on (the writer sends every 40 ms).
    const oks = writer.answers.filter((a) => a.at >= t0).map((a) => a.at);
    outageMs = Math.max(oks[0] - t0, ...oks.slice(1).map((x, i) => x - oks[i]));
    assert.ok(outageMs <= withinMs, `no 202 for ${outageMs} ms after the failover (bound ${withinMs} ms)`);
    // Some more payments after the failover, then stop and settle on markers.
    const after = writer.answers.length;
    await until(() => writer.answers.length >= after + 30, 15000, "30 payments accepted after the failover");
  } finally {
    await writer.stop();
  }
  for (const n of nodes) await waitReadyz(n.url, 200, 15000, "node after the failover");
  for (const id of ids) {
    const item = payment(id);
    const [r] = await ingestOk(B.url, item);
    writer.answers.push({ entry: r, item, at: Date.now() });
    assertPayment(await waitFor(s, "payment", (p) => p.data.trackingId === id && p.id === r.id, 10000), item, r);
  }
  assert.equal(s.connected, true, "the subscriber stayed connected");
  const f = checkStream(s, ids, writer.answers);
  const refused = writer.failures.length;
  t.diagnostic(`${info}: longest time without a 202 ${outageMs} ms (first 202 after the fault was done: ${backMs} ms after it began); ${writer.answers.length} accepted, ${refused} attempts refused/timed out ` +
    `(${[...new Set(writer.failures.map((x) => x.status))].join(",")}); subscriber: ${f.received} received, ${f.dups} dups, ` +
    `${f.truncations} HISTORY_TRUNCATED, ${f.rebases} rebases (${f.rebaseExamples.join(", ")})`);
  return { backMs, outageMs, ...f };
}
