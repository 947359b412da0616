// Cluster mode under faults: Redis going away and coming back, a node killed
// mid-stream, and a node whose delivery buffer overflows.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingest, ingestOk, connect, makeSocket, waitFor, subscribe, payments, recorded, payment, uid, rand,
  assertPayment, assertHttpError, assertError, httpGet, closeAll, withTimeout, backfill,
} from "./lib/harness.mjs";
import { copyFileSync, rmSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { startRedis, startNodes, stopNodes, readMetric, waitUntil, pace, withLogs } from "./lib/cluster.mjs";
import { startRedisProxy } from "./lib/redisproxy.mjs";

const WS = { transports: ["websocket"] };

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
      assert.equal(res.status, 503, `node ${name}: ingest while Redis is down: ${res.status} ${res.text}`);
      assertHttpError(res, 503, "UNAVAILABLE");
      assertRetryAfter(res);
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
    assert.equal(r1.seq, 1, "Redis came back empty: the history starts afresh");
    // The node noticed the history it had delivered from was lost, and said
    // so once, before the first payment of the new one.
    const log = recorded(s).filter((e) => e.event === "error" || (e.event === "payment" && e.payload.data.trackingId === id));
    const warnings = log.filter((e) => e.event === "error");
    assert.equal(warnings.length, 1, `one HISTORY_TRUNCATED warning: ${JSON.stringify(warnings.map((e) => e.payload))}`);
    assertError(warnings[0].payload, "HISTORY_TRUNCATED");
    assert.equal(warnings[0].payload.data.trackingId, id, "the warning names the trackingId");
    assert.ok(log.indexOf(warnings[0]) < log.findIndex((e) => e.event === "payment" && e.payload.id === r1.id),
      "the warning comes before the new history's first payment");
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

  test("drops are counted and logged, and the node catches its socket up: every seq after the ack's position, in order, no jump, with no later payment to reveal the tail", (t) => withLogs(() => nodes, async () => {
    const [D, E] = nodes;
    const id = uid("drop");
    // Some history first, so the ack's position is not the start.
    const pre = await ingestOk(E.url, [payment(id), payment(id)]);
    const s = await connect(D.url, WS);
    sockets.push(s);
    const ack = await subscribe(s, id);
    assert.deepEqual(ack.position, { id: pre[1].id, seq: 2 }, "the position is the last stored event");

    // The client: accepts seq lastSeq+1, ignores repeats, records any jump.
    const client = { lastSeq: ack.position.seq, lastId: ack.position.id, accepted: [], jumps: [], seqOf: new Map(), mismatch: [] };
    s.on("payment", (p) => {
      if (p?.data?.trackingId !== id) return;
      const known = client.seqOf.get(p.id);
      if (known !== undefined && known !== p.seq) client.mismatch.push(`${p.id}: seq ${known} then ${p.seq}`);
      client.seqOf.set(p.id, p.seq);
      if (p.seq === client.lastSeq + 1) {
        client.lastSeq = p.seq;
        client.lastId = p.id;
        client.accepted.push(p);
      } else if (p.seq > client.lastSeq + 1) {
        client.jumps.push(`${client.lastSeq} -> ${p.seq}`);
      }
    });

    const metric = async (name, labels) => (await readMetric(D.url, name, labels)).value ?? 0;
    const catchUpsBefore = await metric("tidings_catch_ups_total", { reason: "dropped" });
    const BATCH = 500;
    const results = [...pre];
    let dropped = 0;
    let attempts = 0;
    for (; attempts < 8 && dropped === 0; attempts++) {
      // Two batches at once, so Redis pushes 1,000 messages to D back to back.
      const pair = await Promise.all([0, 1].map(() =>
        ingestOk(E.url, Array.from({ length: BATCH }, () => payment(id)))));
      for (const r of pair) results.push(...r);
      dropped = await metric("tidings_deliveries_dropped_total", { reason: "queue_full" });
    }
    assert.ok(dropped > 0, `tidings_deliveries_dropped_total{reason="queue_full"} on D must exceed 0 after ${attempts * 2 * BATCH} payments in bursts, got ${dropped}`);
    const dropLines = D.logs().split("\n").filter((l) => l.includes("delivery buffer full"));
    assert.ok(dropLines.length > 0, "D logs the drop (a line containing \"delivery buffer full\")");
    assert.ok(dropLines.some((l) => /"level":"WARN"/.test(l)), `the drop is logged at WARN: ${dropLines[0]}`);

    // No tail payment is posted: the node itself must deliver what it dropped.
    const N = results.length;
    await waitUntil(s, () => client.lastSeq >= N, 15000,
      () => `client at seq ${client.lastSeq} of ${N}; jumps ${client.jumps.join(", ")}`);
    const sorted = [...results].sort((a, b) => a.seq - b.seq);
    assert.deepEqual(sorted.map((r) => r.seq), Array.from({ length: N }, (_, i) => i + 1), "ingest seqs 1..N");
    assert.deepEqual(client.jumps, [], "the client never saw a seq jump");
    assert.deepEqual(client.accepted.map((p) => p.seq), sorted.slice(2).map((r) => r.seq), "every seq after the position, in order");
    assert.deepEqual(client.accepted.map((p) => p.id), sorted.slice(2).map((r) => r.id), "with the ids ingest returned");
    assert.deepEqual(client.mismatch, [], "an id always comes with the same seq");
    assert.deepEqual(recorded(s, "error"), [], "no error (e.g. HISTORY_TRUNCATED): nothing was lost");
    const catchUps = await metric("tidings_catch_ups_total", { reason: "dropped" });
    assert.ok(catchUps > catchUpsBefore, `catch-ups after drops counted: ${catchUpsBefore} -> ${catchUps}`);
    assert.ok(await metric("tidings_catch_up_events_total") > 0, "catch-up delivered events");
    assert.equal(s.connected, true);
    t.diagnostic(`payments ${N}, burst rounds ${attempts}, dropped on D ${dropped} (at the check), catch-ups ${catchUps - catchUpsBefore}, payment events received ${recorded(s, "payment").length}`);
  })());
});

describe("Redis restarted from an older snapshot (the rollback path), and forged sinces", () => {
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
  const open = async (node) => {
    const s = await connect(node.url, WS);
    sockets.push(s);
    return s;
  };
  const epochOf = (id) => BigInt(id.split("-")[0]);

  test("a forged since changes nothing for anyone else", withLogs(() => nodes, async () => {
    const [A, B] = nodes;
    const id = uid("forged");
    const s = await open(A);
    await subscribe(s, id);
    const [r1] = await ingestOk(B.url, payment(id));
    await waitFor(s, "payment", (p) => p.id === r1.id);
    const forger = await open(B);
    forger.emit("subscribe", { trackingId: id, since: `${epochOf(r1.id)}-999` });
    assertError(await waitFor(forger, "error"), "INVALID_SINCE");
    forger.emit("subscribe", { trackingId: id, since: `${Date.now() + 3600000}-1` });
    assertError(await waitFor(forger, "error"), "INVALID_SINCE");
    // An epoch this history could have had but does not: a lost history,
    // for the forger alone.
    await subscribe(forger, id, { since: `${epochOf(r1.id) - 1n}-7` });
    assertError(await waitFor(forger, "error"), "HISTORY_TRUNCATED");
    // Seqs at and beyond what Lua's %d and a u64 hold: INVALID_SINCE, as in
    // memory mode, over the socket and over backfill (they once answered 503).
    for (const seq of ["9223372036854775808", "18446744073709551615", "18446744073709551616"]) {
      const since = `${epochOf(r1.id)}-${seq}`;
      forger.emit("subscribe", { trackingId: id, since });
      assertError(await waitFor(forger, "error", (e) => e.data?.code === "INVALID_SINCE"), "INVALID_SINCE");
      assertHttpError(await backfill(B.url, { trackingId: id, since }), 400, "INVALID_SINCE");
    }
    const [r2] = await ingestOk(A.url, payment(id));
    assert.equal(r2.id, `${epochOf(r1.id)}-2`, "the history goes on: same epoch, next seq");
    await waitFor(s, "payment", (p) => p.id === r2.id);
    assert.deepEqual(recorded(s, "error"), [], "no warning for the honest subscriber");
  }));

  test("no id is issued twice: the still-connected subscriber is warned, new ids start a new epoch, a since from before is truncated", withLogs(() => nodes, async () => {
    const [A, B] = nodes;
    const id = uid("rollback");
    const s = await open(A);
    await subscribe(s, id);
    const p1 = payment(id);
    const p2 = payment(id);
    const p3 = payment(id);
    const [r1, r2] = await ingestOk(B.url, [p1, p2]);
    assert.equal(await redis.cli("SAVE"), "OK");
    const snapshot = path.join(redis.dir, "older.rdb");
    copyFileSync(path.join(redis.dir, "dump.rdb"), snapshot);
    const [r3] = await ingestOk(B.url, p3);
    await waitFor(s, "payment", (p) => p.id === r3.id);

    // Redis dies and comes back from the older snapshot: p3 is gone.
    await redis.kill();
    copyFileSync(snapshot, path.join(redis.dir, "dump.rdb"));
    rmSync(snapshot);
    await redis.restart();
    // p3 is not in Redis any more. (The nodes may already have found the
    // restart and started the history afresh, so the meta may say seq 2 of
    // the old epoch or seq 0 of a new one; the stream never holds p3.)
    const meta = await redis.cli("HMGET", `tidings:{${id}}:meta`, "epoch", "seq");
    const [epochNow, seqNow] = meta.split("\n");
    assert.ok((BigInt(epochNow) === epochOf(r3.id) && seqNow === "2") || (BigInt(epochNow) > epochOf(r3.id) && seqNow === "0"),
      `the snapshot has seq 2 of the old epoch, or the history started afresh: ${JSON.stringify(meta)}`);
    const entries = (await redis.cli("XRANGE", `tidings:{${id}}:events`, "-", "+")).split("\n");
    assert.ok(!entries.includes(r3.id), `p3 (${r3.id}) is gone with the rollback`);

    // The node that delivered p3 finds its history lost, and says so.
    const warning = await waitFor(s, "error", (e) => e.data?.trackingId === id, 15000);
    assertError(warning, "HISTORY_TRUNCATED");

    const p4 = payment(id);
    const res4 = await ingest(B.url, p4, { timeoutMs: 15000 });
    assert.equal(res4.status, 202, res4.text);
    const [r4] = res4.body.data;
    assert.notEqual(r4.id, r3.id, "p3's id is not issued again");
    assert.ok(epochOf(r4.id) > epochOf(r3.id), `a new epoch: ${r4.id} after ${r3.id}`);
    assert.equal(r4.seq, 1);
    const got4 = await waitFor(s, "payment", (p) => p.data.signature === p4.signature, 5000);
    assertPayment(got4, p4, r4);

    // Retries: p2 survived in the snapshot (duplicate, original id); p3's
    // acceptance was lost with it, so it is stored again, in the new history.
    const retry = await ingestOk(A.url, [p2, p3]);
    assert.deepEqual([retry[0].id, retry[0].duplicate], [r2.id, true]);
    assert.equal(retry[1].duplicate, false);
    assert.notEqual(retry[1].id, r3.id);
    assert.equal(epochOf(retry[1].id), epochOf(r4.id));

    // A client coming back with any since from before the loss: truncated, never invalid.
    for (const since of [r3.id, r2.id, r1.id]) {
      const t = await open(A);
      const ack = await subscribe(t, id, { since });
      assert.deepEqual(ack.position, { id: retry[1].id, seq: 2 });
      assertError(await waitFor(t, "error"), "HISTORY_TRUNCATED");
      await waitFor(t, "payment", (p) => p.id === retry[1].id);
      assert.deepEqual(payments(t, id).map((p) => p.id), [r4.id, retry[1].id], `since ${since}: the new history`);
      const bf = await backfill(B.url, { trackingId: id, since });
      assert.equal(bf.status, 200, bf.text);
      assert.equal(bf.body.truncated, true, `backfill since ${since}`);
    }
    const seen = payments(s, id).map((p) => p.id);
    assert.equal(new Set(seen).size, seen.length, "the subscriber never got one id twice");
  }));
});

describe("a multi-trackingId batch cut by a storage failure", () => {
  let redis;
  let nodes = [];
  const sockets = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(1, redis.url);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("500 INTERNAL_ERROR for a key the server cannot read (not 503: retrying reads the same); each trackingId's payments stored and published whole or not at all; the same request retried once the key is fixed stores the rest, the stored part answers duplicate", withLogs(() => nodes, async () => {
    const [A] = nodes;
    const [t1, t2, t3] = [uid("cut1"), uid("cut2"), uid("cut3")];
    const s = await connect(A.url, WS);
    sockets.push(s);
    for (const t of [t1, t2, t3]) await subscribe(s, t);
    // t2's history key holds a value of the wrong type: its append fails.
    assert.equal(await redis.cli("SET", `tidings:{${t2}}:meta`, "not a hash"), "OK");
    const body = [payment(t1), payment(t1), payment(t2), payment(t3)];
    const cut = await ingest(A.url, body);
    assertHttpError(cut, 500, "INTERNAL_ERROR");
    assert.equal(cut.headers.get("retry-after"), null, "no Retry-After: retrying as is reads the same");
    const { value: malformed } = await readMetric(A.url, "tidings_store_malformed_total");
    assert.ok(malformed >= 1, `counted: ${malformed}`);
    const stored = await backfill(A.url, { trackingId: t1 });
    assert.deepEqual(stored.body.data.map((e) => e.data.signature), [body[0].signature, body[1].signature], "t1 stored whole");
    assert.deepEqual((await backfill(A.url, { trackingId: t3 })).body.data, [], "t3, after the failure, not stored");

    assert.equal(await redis.cli("DEL", `tidings:{${t2}}:meta`), "1");
    const retried = await ingestOk(A.url, body);
    assert.deepEqual(retried.map((r) => [r.trackingId, r.duplicate]),
      [[t1, true], [t1, true], [t2, false], [t3, false]]);
    assert.deepEqual(retried.slice(0, 2).map((r) => r.id), stored.body.data.map((e) => e.id), "the stored part keeps its ids");
    await waitFor(s, "payment", (p) => p.data.trackingId === t3);
    await waitFor(s, "payment", (p) => p.data.trackingId === t2);
    const sigs = payments(s).map((p) => p.data.signature);
    for (const item of body) {
      assert.equal(sigs.filter((sig) => sig === item.signature).length, 1, `${item.trackingId} delivered exactly once`);
    }
  }));
});

describe("SIGTERM with an ingest in flight (Redis answering slowly)", () => {
  let redis;
  let proxy;
  let node;
  const sockets = [];
  before(async () => {
    redis = await startRedis();
    proxy = await startRedisProxy(redis.port);
    [node] = await startNodes(1, proxy.url);
  });
  after(async () => {
    proxy?.release();
    closeAll(sockets);
    await stopNodes([node]);
    await proxy?.stop();
    await redis?.stop();
  });

  /** Resolves once a TCP connect to `port` is refused (bounded). */
  async function refused(port, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const outcome = await new Promise((resolve) => {
        const c = net.connect({ port, host: "127.0.0.1" });
        c.once("connect", () => { c.destroy(); resolve("accepted"); });
        c.once("error", (err) => { c.destroy(); resolve(err.code); });
      });
      if (outcome === "ECONNREFUSED") return;
      assert.ok(Date.now() < deadline, `connections to ${port} still ${outcome} ${timeoutMs} ms after SIGTERM`);
      await pace(20);
    }
  }

  test("unready and no new connection first, then the in-flight ingest finishes (202), then sockets close; exit 0; no reconnect to the dying node", withLogs(() => [node], async () => {
    const id = uid("drain");
    const s = makeSocket(node.url, { ...WS, reconnection: true, reconnectionDelay: 1, reconnectionDelayMax: 10 });
    sockets.push(s);
    let connects = 0;
    const timeline = [];
    s.on("connect", () => { connects++; timeline.push("connect"); });
    s.on("disconnect", (reason) => timeline.push(`disconnect:${reason}`));
    await withTimeout(new Promise((resolve, reject) => { s.once("connect", resolve); s.once("connect_error", reject); }), 10000, "connect");
    await subscribe(s, id);

    proxy.hold();
    const sent = proxy.seen(/EVALSHA|EVAL/);
    const inflight = ingest(node.url, payment(id), { timeoutMs: 15000 }).then((res) => { timeline.push(`ingest:${res.status}`); return res; });
    await sent; // the ingest waits on Redis
    const disconnected = new Promise((resolve) => s.once("disconnect", resolve));
    node.proc.kill("SIGTERM");
    await refused(node.port);
    timeline.push("refused");
    // While the ingest waits on Redis, the node keeps its sockets (half a
    // second of nothing happening; the old order closed them at once).
    const early = await Promise.race([disconnected.then(() => true), pace(500).then(() => false)]);
    assert.equal(early, false, `sockets stay until in-flight ingest is done: ${timeline}`);
    assert.equal(s.connected, true);
    proxy.release();
    const res = await inflight;
    assert.equal(res.status, 202, `the in-flight ingest completes: ${res.status} ${res.text}`);
    const exit = await withTimeout(node.exited, 15000, "the node exits");
    assert.deepEqual(exit, { code: 0, signal: null });
    const reason = await withTimeout(disconnected, 5000, "the socket is closed");
    assert.equal(reason, "transport close", timeline.join(" "));
    // The 202 and the close travel on two connections: their order as seen
    // here is not the server's; what the server did first is shown above.
    assert.deepEqual(timeline.slice(0, 2), ["connect", "refused"], timeline.join(" "));
    assert.equal(connects, 1, `never reconnected to the dying node: ${timeline}`);
  }));
});
