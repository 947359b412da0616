// Redis Sentinel (issue 17, item 3): nodes started with
// `--redis-sentinel mymaster --redis-url redis://S1,redis://S2,redis://S3`
// ask the sentinels for the master and follow it through failovers: a
// SENTINEL FAILOVER (the old master becomes a replica) and a master killed
// with SIGKILL (a replica is promoted). Under steady ingest: ingest answers
// 202 again within a bounded time, the subscriber keeps receiving, no id is
// ever answered for two payments, and any payment the failover lost is
// signalled (HISTORY_TRUNCATED before the next payment of that trackingId),
// never silence. Then the same over TLS with an ACL user.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingest, ingestOk, connect, waitFor, subscribe, payments, recorded, payment, rand,
  assertPayment, closeAll,
} from "./lib/harness.mjs";
import { startNodes, stopNodes, logLines, waitUntil, pace } from "./lib/cluster.mjs";
import { makeTestPki, startSentinel, waitReadyz, roleOf, until, ACL_PASS } from "./lib/tls.mjs";

const WS = { transports: ["websocket"] };
const NAME = "mymaster";

/**
 * Steady ingest: one payment every `everyMs` for `ids` in turn, alternating
 * nodes; a refused or timed-out request is retried with the same body
 * until 202 (every fetch bounded). Records every 202 entry with its item.
 */
function startWriter(nodes, ids, everyMs = 40) {
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
function checkStream(s, ids, answers) {
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
async function failoverUnderLoad(t, { nodes, sockets, doFailover, withinMs }) {
  const [A, B] = nodes;
  const run = rand(3);
  const ids = [`sen-${run}-a`, `sen-${run}-b`, `sen-${run}-c`];
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

const T = (nodes, name, fn, opts = {}) => test(name, opts, async (t) => {
  try {
    await fn(t);
  } catch (err) {
    err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes().map((n, i) => `[node ${"AB"[i]}]\n${logLines(n)}`).join("\n")}`;
    throw err;
  }
});

describe("Redis Sentinel: two nodes follow the master", () => {
  let sen;
  let nodes = [];
  const sockets = [];
  before(async () => {
    sen = await startSentinel({ name: NAME, replicas: 2 });
    nodes = await startNodes(2, sen.url, ["--redis-sentinel", NAME]);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await sen?.stop();
  });

  T(() => nodes, "ready; ingest on B reaches a subscriber on A; the data is on the master the sentinels name", async () => {
    const [A, B] = nodes;
    for (const n of nodes) await waitReadyz(n.url, 200, 15000);
    const id = `sen-${rand(4)}`;
    const s = await connect(A.url, WS);
    sockets.push(s);
    await subscribe(s, id);
    const item = payment(id);
    const [r] = await ingestOk(B.url, item);
    assertPayment(await waitFor(s, "payment", (p) => p.data.trackingId === id, 5000), item, r);
    const m = await sen.currentMaster();
    assert.equal(await roleOf(m), "master");
    assert.ok(Number(await m.cli("dbsize")) > 0, "the master holds the history");
    // Nothing was written anywhere but through the master (the replicas hold copies).
    for (const d of sen.data.filter((x) => x !== m)) assert.equal(await roleOf(d), "slave");
  });

  T(() => nodes, "SENTINEL FAILOVER under steady ingest: ingest 202 again within 20 s, subscriber keeps receiving, no id reissued", async (t) => {
    const oldPort = await sen.masterPort();
    await failoverUnderLoad(t, {
      nodes, sockets, withinMs: 20000,
      doFailover: async () => {
        const p = await sen.failover();
        // The old master is reconfigured as a replica: a node left on it would get READONLY.
        await until(async () => (await roleOf(sen.data.find((d) => d.port === oldPort))) === "slave", 15000, "old master demoted");
        return `SENTINEL FAILOVER ${oldPort} -> ${p}`;
      },
    });
    assert.notEqual(await sen.masterPort(), oldPort);
  }, { timeout: 90000 });

  T(() => nodes, "the master killed (SIGKILL) under steady ingest: a replica is promoted, ingest 202 again within 30 s, no id reissued", async (t) => {
    const old = await sen.currentMaster();
    await failoverUnderLoad(t, {
      nodes, sockets, withinMs: 30000,
      doFailover: async () => {
        await old.kill();
        const p = await until(async () => { const q = await sen.masterPort(); return q !== old.port && q; }, 30000, "a replica promoted");
        return `SIGKILL master ${old.port}, promoted ${p}`;
      },
    });
    // The killed master comes back as a replica; the sentinels settle.
    await sen.restartAsReplica(old);
    await sen.waitSettled(30000);
  }, { timeout: 120000 });
});

describe("Redis Sentinel over TLS with an ACL user", () => {
  let pki;
  let sen;
  let nodes = [];
  const sockets = [];
  before(async () => {
    pki = await makeTestPki();
    sen = await startSentinel({ pki, name: NAME, replicas: 1 });
    nodes = await startNodes(2, sen.url, ["--redis-sentinel", NAME, "--redis-ca-cert", pki.ca.cert]);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await sen?.stop();
    pki?.remove();
  });

  T(() => nodes, "rediss:// sentinels: ready, delivering; after SENTINEL FAILOVER delivering again; the password never logged", async (t) => {
    for (const n of nodes) await waitReadyz(n.url, 200, 15000);
    const oldPort = await sen.masterPort();
    await failoverUnderLoad(t, {
      nodes, sockets, withinMs: 20000,
      doFailover: async () => `SENTINEL FAILOVER (TLS) ${oldPort} -> ${await sen.failover()}`,
    });
    for (const n of nodes) assert.ok(!n.logs().includes(ACL_PASS), "the Redis password is not in the log");
  }, { timeout: 90000 });
});
