// Cluster mode under faults: Redis going away and coming back, a node killed
// mid-stream, and a node whose delivery buffer overflows.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingest, ingestOk, connect, makeSocket, waitFor, subscribe, payments, recorded, payment, uid, rand,
  assertPayment, assertHttpError, httpGet, closeAll, withTimeout,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, logLines, readMetric, waitUntil, pace } from "./lib/cluster.mjs";

const WS = { transports: ["websocket"] };

function withLogs(nodes, fn) {
  return async () => {
    try {
      await fn();
    } catch (err) {
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes().filter(Boolean).map((n, i) => `[node ${i}]\n${logLines(n)}`).join("\n")}`;
      throw err;
    }
  };
}

/** Asserts a Retry-After header: delay-seconds (a non-negative integer) or an HTTP date. */
function assertRetryAfter(res) {
  const v = res.headers.get("retry-after");
  assert.ok(v !== null, `503 must carry Retry-After (headers: ${JSON.stringify(Object.fromEntries(res.headers))})`);
  assert.ok(/^\d+$/.test(v.trim()) || !Number.isNaN(Date.parse(v)), `Retry-After must be seconds or an HTTP date, got ${JSON.stringify(v)}`);
}

describe("Redis down and back", () => {
  let redis;
  let nodes = [];
  const sockets = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(2, redis.url);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("ingest 503 + Retry-After + UNAVAILABLE, readyz 503, sockets stay; after a restart the node recovers by itself", withLogs(() => nodes, async () => {
    const [A, B] = nodes;
    const id = uid("down");
    const s = await connect(A.url, WS);
    sockets.push(s);
    const disconnects = [];
    s.on("disconnect", (reason) => disconnects.push(reason));
    await subscribe(s, id);
    const before1 = payment(id);
    const [r0] = await ingestOk(B.url, before1);
    assertPayment(await waitFor(s, "payment", (p) => p.data.trackingId === id), before1, r0);
    for (const n of nodes) assert.equal((await httpGet(`${n.url}/readyz`)).status, 200, "ready while Redis is up");

    await redis.kill();

    // Ingest on both nodes: refused, retryable, nothing half-published.
    const lost = payment(id);
    for (const [name, n] of [["A", A], ["B", B]]) {
      const res = await ingest(n.url, lost, { timeoutMs: 15000 });
      assertHttpError(res, 503, "UNAVAILABLE");
      assertRetryAfter(res);
      assert.ok(name); // (name is for the failure message above)
    }
    // Readiness: no event to await, poll (bounded) until both report 503.
    for (const [name, n] of [["A", A], ["B", B]]) {
      const deadline = Date.now() + 5000;
      let r = await httpGet(`${n.url}/readyz`);
      while (r.status !== 503 && Date.now() < deadline) {
        await pace(100);
        r = await httpGet(`${n.url}/readyz`);
      }
      assert.equal(r.status, 503, `node ${name}: /readyz must answer 503 within 5 s while Redis is down, got ${r.status} ${r.text}`);
    }
    assert.equal(s.connected, true, "the socket stays connected while Redis is down");
    assert.deepEqual(disconnects, [], "no disconnect while Redis is down");

    await redis.restart();
    const deadline = Date.now() + 15000;
    const ready = new Map();
    while (ready.size < nodes.length && Date.now() < deadline) {
      for (const [i, n] of nodes.entries()) {
        if (!ready.has(i) && (await httpGet(`${n.url}/readyz`)).status === 200) ready.set(i, Date.now());
      }
      if (ready.size < nodes.length) await pace(200);
    }
    assert.equal(ready.size, nodes.length, `every node reports ready again within 15 s of the Redis restart (ready: ${[...ready.keys()]})`);

    const item = payment(id);
    const res = await ingest(B.url, item);
    assert.equal(res.status, 202, `ingest after recovery: ${res.status} ${res.text}`);
    const [r1] = res.body.data;
    const env = await waitFor(s, "payment", (p) => p.data.trackingId === id && p.data.signature === item.signature, 5000);
    assertPayment(env, item, r1);
    // The payment refused during the outage was not stored (Redis came back empty anyway);
    // the socket never saw it.
    assert.equal(payments(s, id).filter((p) => p.data.signature === lost.signature).length, 0);
    assert.equal(s.connected, true);
    assert.deepEqual(disconnects, [], "no disconnect at any point");
    // Also ingest on A reaches the subscriber on A through Redis again.
    const item2 = payment(id);
    const [r2] = await ingestOk(A.url, item2);
    assertPayment(await waitFor(s, "payment", (p) => p.data.signature === item2.signature, 5000), item2, r2);
    assert.equal(r2.seq, r1.seq + 1);
  }));
});

describe("a node killed (SIGKILL) during steady ingest", () => {
  let redis;
  let nodes = [];
  const sockets = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(3, redis.url);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("20 clients on A move to B/C with since: every accepted payment, in seq order (dups allowed, no holes)", (t) => withLogs(() => nodes, async () => {
    const [A, B, C] = nodes;
    const K = 20;
    const IDS = 5;
    const TOTAL = 200;
    const run = rand(3);
    const ids = Array.from({ length: IDS }, (_, i) => `kill-${run}-${i}`);

    // Per client: everything received across its sockets, in arrival order.
    const clients = [];
    const onProgress = new Set();
    const progress = () => { for (const f of onProgress) f(); };
    const attach = (client, s) => {
      s.on("payment", (p) => {
        if (p?.data?.trackingId !== client.id) return;
        client.received.push({ id: p.id, seq: p.seq, via: client.sockets.indexOf(s) });
        client.lastId = p.id;
        progress();
      });
      s.on("error", (e) => client.errors.push(e));
    };
    for (let i = 0; i < K; i++) {
      const client = { i, id: ids[i % IDS], received: [], errors: [], sockets: [], lastId: undefined, moved: null, moveErr: null };
      const s = await connect(A.url, WS);
      sockets.push(s);
      client.sockets.push(s);
      attach(client, s);
      await subscribe(s, client.id);
      clients.push(client);
    }
    // Seed one payment per id, so every client has a last id before the kill.
    const accepted = new Map(ids.map((id) => [id, []]));
    for (const id of ids) {
      const [r] = await ingestOk(B.url, payment(id));
      accepted.get(id).push(r);
    }
    await Promise.all(clients.map((c) => waitFor(c.sockets[0], "payment", (p) => p.data.trackingId === c.id, 5000)));

    // On disconnect, a client opens a new socket on B or C and resubscribes with since.
    // The delay stands in for socket.io-client's reconnection back-off: payments
    // accepted meanwhile must come back through the replay.
    const reconnect = async (client) => {
      await pace(150 + 20 * client.i);
      const target = client.i % 2 === 0 ? B : C;
      const s = makeSocket(target.url, { ...WS, timeout: 10000 });
      sockets.push(s);
      client.sockets.push(s);
      attach(client, s);
      await withTimeout(new Promise((resolve, reject) => {
        s.once("connect", resolve);
        s.once("connect_error", reject);
      }), 10000, `client ${client.i} reconnecting`);
      client.resubscribedAt = Date.now();
      await subscribe(s, client.id, client.lastId ? { since: client.lastId } : {});
    };
    for (const c of clients) {
      c.sockets[0].once("disconnect", (reason) => {
        c.disconnectReason = reason;
        c.moved = reconnect(c).catch((err) => { c.moveErr = err; });
      });
    }

    // The writer: one payment every 20 ms, round-robin to B and C; A is killed midway.
    const inflight = [];
    const failures = [];
    let killed = null;
    for (let k = 0; k < TOTAL; k++) {
      const id = ids[k % IDS];
      const node = k % 2 === 0 ? B : C;
      inflight.push(ingest(node.url, payment(id)).then((res) => {
        if (res.status === 202) accepted.get(id).push({ ...res.body.data[0], at: Date.now() });
        else failures.push(`${res.status} ${res.text}`);
      }, (err) => failures.push(err.message)));
      if (k === TOTAL / 2) killed = A.stop("SIGKILL");
      await pace(20);
    }
    await Promise.all(inflight);
    const killInfo = await killed;
    assert.equal(killInfo.signal, "SIGKILL", `node A was killed: ${JSON.stringify(killInfo)}`);
    assert.deepEqual(failures, [], "ingest on B and C keeps working while A dies");

    // Every client noticed and moved.
    await Promise.all(clients.map((c) => c.moved ?? Promise.reject(new Error(`client ${c.i} saw no disconnect`))));
    for (const c of clients) assert.equal(c.moveErr, null, `client ${c.i} reconnect: ${c.moveErr?.message}`);

    // Wait (bounded) until every client has every accepted id of its trackingId.
    const complete = (c) => {
      const have = new Set(c.received.map((r) => r.id));
      return accepted.get(c.id).every((r) => have.has(r.id));
    };
    await withTimeout(new Promise((resolve) => {
      const check = () => { if (clients.every(complete)) { onProgress.delete(check); resolve(); } };
      onProgress.add(check);
      check();
    }), 10000, "every client has every accepted payment").catch((err) => {
      const missing = clients.filter((c) => !complete(c)).map((c) => {
        const have = new Set(c.received.map((r) => r.id));
        return `client ${c.i} (${c.id}): missing seqs ${accepted.get(c.id).filter((r) => !have.has(r.id)).map((r) => r.seq).join(",")}`;
      });
      err.message += `\n${missing.slice(0, 10).join("\n")}`;
      throw err;
    });

    for (const c of clients) {
      const acc = [...accepted.get(c.id)].sort((a, b) => a.seq - b.seq);
      assert.deepEqual(acc.map((r) => r.seq), Array.from({ length: acc.length }, (_, i) => i + 1),
        `accepted seqs of ${c.id} are contiguous`);
      // Dedupe by id (first occurrence), then the order must be seq order with no hole.
      const seen = new Set();
      const firsts = [];
      for (const r of c.received) {
        if (!seen.has(r.id)) { seen.add(r.id); firsts.push(r); }
      }
      assert.deepEqual(firsts.map((r) => r.seq), acc.map((r) => r.seq),
        `client ${c.i}: received seqs after dedupe, in arrival order`);
      assert.deepEqual(firsts.map((r) => r.id), acc.map((r) => r.id), `client ${c.i}: the ids ingest returned`);
      assert.deepEqual(c.errors, [], `client ${c.i}: no error events (e.g. HISTORY_TRUNCATED)`);
      assert.ok(c.sockets.length === 2, `client ${c.i} used two sockets`);
    }
    // The scenario exercised the replay: payments accepted (202) before a
    // client resubscribed reached it on its new socket.
    const byId = new Map([...accepted.values()].flat().map((r) => [r.id, r]));
    const replayed = clients.map((c) => c.received.filter((r) => r.via === 1 && byId.get(r.id)?.at < c.resubscribedAt).length);
    const dups = clients.map((c) => c.received.length - new Set(c.received.map((r) => r.id)).size);
    t.diagnostic(`accepted per id: ${ids.map((id) => accepted.get(id).length).join(",")}; replayed per client: ${replayed.join(",")}; duplicates per client: ${dups.join(",")}`);
    assert.ok(replayed.some((n) => n > 0), "some payments were accepted while clients were away and came back through the replay");
  })());
});

describe("delivery buffer overflow (--delivery-buffer 1)", () => {
  let redis;
  let nodes = [];
  const sockets = [];
  before(async () => {
    redis = await startRedis();
    // D delivers with a one-slot buffer; E ingests. History large enough for every payment.
    const [D] = await startNodes(1, redis.url, ["--delivery-buffer", "1", "--history-limit", "20000"]);
    nodes.push(D);
    const [E] = await startNodes(1, redis.url, ["--history-limit", "20000"]);
    nodes.push(E);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("drops are counted and logged; the client sees the seq jump, resubscribes with since and ends with 1..N", (t) => withLogs(() => nodes, async () => {
    const [D, E] = nodes;
    const id = uid("drop");
    const s = await connect(D.url, WS);
    sockets.push(s);
    await subscribe(s, id);

    // The client: accepts seq lastSeq+1, ignores repeats, and on a jump
    // resubscribes with since = the last id before the jump (once per id).
    const client = { lastSeq: 0, lastId: undefined, accepted: [], gaps: 0, resubscribes: 0, resubscribedFrom: null, seqOf: new Map(), mismatch: [], timeline: [] };
    s.on("ack", () => client.timeline.push("ack"));
    /** The timeline with runs of consecutive seqs folded: "1-142 resubscribe(since #142) ack 143-1001". */
    const timeline = () => {
      const out = [];
      for (const x of client.timeline) {
        const last = out.at(-1);
        if (typeof x === "number" && last && typeof last.to === "number" && x === last.to + 1) last.to = x;
        else out.push(typeof x === "number" ? { from: x, to: x } : x);
      }
      return out.map((x) => (typeof x === "string" ? x : x.from === x.to ? `${x.from}` : `${x.from}-${x.to}`)).join(" ");
    };
    s.on("payment", (p) => {
      if (p?.data?.trackingId !== id) return;
      const known = client.seqOf.get(p.id);
      if (known !== undefined && known !== p.seq) client.mismatch.push(`${p.id}: seq ${known} then ${p.seq}`);
      client.seqOf.set(p.id, p.seq);
      client.timeline.push(p.seq);
      if (p.seq === client.lastSeq + 1) {
        client.lastSeq = p.seq;
        client.lastId = p.id;
        client.accepted.push(p);
      } else if (p.seq > client.lastSeq + 1) {
        client.gaps++;
        if (client.resubscribedFrom !== client.lastId) {
          client.resubscribedFrom = client.lastId;
          client.resubscribes++;
          client.timeline.push(`resubscribe(since #${client.lastSeq})`);
          s.emit("subscribe", { trackingId: id, since: client.lastId });
        }
      }
    });

    const BATCH = 500;
    const results = [];
    let dropped = 0;
    let attempts = 0;
    for (; attempts < 8 && dropped === 0; attempts++) {
      // Two batches at once, so Redis pushes 1,000 messages to D back to back.
      const pair = await Promise.all([0, 1].map(() =>
        ingestOk(E.url, Array.from({ length: BATCH }, () => payment(id)))));
      for (const r of pair) results.push(...r);
      dropped = (await readMetric(D.url, "tidings_deliveries_dropped_total")).value ?? 0;
    }
    assert.ok(dropped > 0, `tidings_deliveries_dropped_total on D must exceed 0 after ${attempts * 2 * BATCH} payments in bursts, got ${dropped}`);
    const dropLines = D.logs().split("\n").filter((l) => l.includes("delivery buffer full"));
    assert.ok(dropLines.length > 0, "D logs the drop (a line containing \"delivery buffer full\")");
    assert.ok(dropLines.some((l) => /"level":"WARN"/.test(l)), `the drop is logged at WARN: ${dropLines[0]}`);

    // Drops at the very end of the stream show only when a later payment
    // arrives: keep a trickle of tail payments coming (as a live feed would),
    // one per second at most, until the client is complete (bounded). With a
    // one-slot buffer a tail can itself be dropped while D still works
    // through the burst; the next one then reveals the jump.
    let N = 0;
    let tails = 0;
    for (let tail = 0; tail < 10; tail++) {
      tails++;
      client.timeline.push(`(tail ingested #${results.length + 1})`);
      results.push(...await ingestOk(E.url, payment(id)));
      N = results.length;
      const ok = await waitUntil(s, () => client.lastSeq >= N, tail === 9 ? 5000 : 1000,
        () => `client at seq ${client.lastSeq} of ${N} (gaps ${client.gaps}, resubscribes ${client.resubscribes}); timeline: ${timeline()}`)
        .then(() => true, (err) => (tail === 9 ? Promise.reject(err) : false));
      if (ok) break;
    }
    const sorted = [...results].sort((a, b) => a.seq - b.seq);
    assert.deepEqual(sorted.map((r) => r.seq), Array.from({ length: N }, (_, i) => i + 1), "ingest seqs 1..N");
    assert.ok(client.gaps > 0, "the client saw at least one seq jump (a payment dropped for its socket)");
    assert.ok(client.resubscribes > 0, "the client resubscribed with since");
    assert.deepEqual(client.accepted.map((p) => p.seq), sorted.map((r) => r.seq), "every seq 1..N in order after dedupe");
    assert.deepEqual(client.accepted.map((p) => p.id), sorted.map((r) => r.id), "with the ids ingest returned");
    assert.deepEqual(client.mismatch, [], "an id always comes with the same seq");
    assert.deepEqual(recorded(s, "error"), [], "no error (e.g. HISTORY_TRUNCATED) while recovering");
    assert.equal(s.connected, true);
    t.diagnostic(`payments ${N}, burst rounds ${attempts}, dropped on D ${dropped} (at the check), seq jumps seen ${client.gaps}, resubscribes ${client.resubscribes}, payment events received ${recorded(s, "payment").length}, tail payments ${tails}; timeline: ${timeline()}`);
  })());
});
