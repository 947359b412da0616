// Account streams and filters (contract section 8) through the SDK, in Node,
// against real Tidings processes started with `--stream-separator :`: in
// memory (a cut connection, deliveries lost or repeated on the way, a
// SIGKILL and restart), in token mode, and on a Redis Cluster behind nginx
// with the client's node SIGKILLed mid-stream. Each test states what the
// application must see, exactly: a stream's payments are checked against
// what ingest accepted (the trackingId's id and seq, which the stream's
// payment carries as `source`), in the stream's own seq order.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { connect, memoryStorage, TidingsError } from "tidings-client";
import {
  startNode, record, clientEvent, assertTidingsError, ingestOk, payment, uid, pace,
  startRedisCluster, startNodes, stopNodes, startNginx, readMetric,
} from "./lib/env.mjs";
import { startWireProxy } from "./lib/wire.mjs";

const SEP = ["--stream-separator", ":"];
const FAST = { initialDelayMs: 50, maxDelayMs: 500 };
const STREAM_ID = /^s(\d+)-(\d+)$/;

const clients = [];
function client(url, options = {}) {
  const c = connect(url, { reconnect: FAST, ...options });
  clients.push(c);
  return c;
}
after(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
});

/** A fresh account: its stream is `${account}:*`, its trackingIds `${account}:<rest>`. */
function account(prefix = "m") {
  const a = uid(prefix);
  return { a, stream: `${a}:*`, tid: (rest) => `${a}:${rest}` };
}

/** Subscribes and waits for the first ack; returns { sub, rec }. */
async function subscribed(c, name, options) {
  const sub = c.subscribe(name, options);
  const rec = record(sub);
  await rec.until((r) => r.acks().length >= 1, 10000, `the ack of ${name}`);
  return { sub, rec };
}

/** Ingests each item in a request of its own (so the stream's order is this order); returns the 202 results. */
async function ingestEach(url, items) {
  const out = [];
  for (const it of items) out.push(...await ingestOk(url, it));
  return out;
}

/** Until the application has seen (by source id) every accepted payment of `accepted`. */
function untilSources(rec, accepted, ms = 20000) {
  const want = accepted.map((r) => r.id);
  return rec.until((r) => {
    const got = new Set(r.payments().map((p) => p.source?.id));
    return want.every((id) => got.has(id));
  }, ms, `the application receiving ${want.length} payments of the stream`);
}

/**
 * The application saw exactly `accepted` (ingest results, in the order
 * ingested), each once, as payments of `stream`: the stream's own ids
 * (`s<epoch>-<seq>`, one epoch) in increasing seq order, contiguous unless
 * `filtered`, and `source` the payment's id and seq in its trackingId.
 * With `filtered`, every payment's prevSeq is the seq of the one before it
 * (`firstPrev` for the first).
 */
function assertStreamOnce(rec, stream, accepted, { filtered = false, firstPrev, startSeq, what = "stream" } = {}) {
  const got = rec.payments();
  const trace = rec.trace();
  assert.equal(new Set(got.map((p) => p.id)).size, got.length, `${what}: no payment twice (saw ${trace})`);
  assert.deepEqual(got.map((p) => [p.data.trackingId, p.source?.id, p.source?.seq]),
    accepted.map((r) => [r.trackingId, r.id, r.seq]), `${what}: every accepted payment once, in order (saw ${trace})`);
  const epochs = new Set();
  got.forEach((p, i) => {
    assert.equal(p.stream, stream, `${what}: the stream's name on ${p.id}`);
    const m = STREAM_ID.exec(p.id);
    assert.ok(m, `${what}: a stream id s<epoch>-<seq>: ${p.id}`);
    assert.equal(Number(m[2]), p.seq, `${what}: the id's seq is the payment's: ${p.id}`);
    epochs.add(m[1]);
    if (i > 0) {
      if (filtered) assert.ok(p.seq > got[i - 1].seq, `${what}: seqs increase (saw ${trace})`);
      else assert.equal(p.seq, got[i - 1].seq + 1, `${what}: contiguous seqs (saw ${trace})`);
    } else if (startSeq !== undefined) {
      assert.equal(p.seq, startSeq, `${what}: the first seq`);
    }
    if (filtered) {
      const want = i === 0 ? firstPrev : got[i - 1].seq;
      if (want !== undefined) assert.equal(p.prevSeq, want, `${what}: prevSeq of ${p.id} (saw ${trace})`);
      else assert.ok(Number.isSafeInteger(p.prevSeq), `${what}: ${p.id} carries prevSeq`);
    } else {
      assert.equal(p.prevSeq, undefined, `${what}: no prevSeq on an unfiltered subscription's ${p.id}`);
    }
  });
  assert.ok(epochs.size <= 1, `${what}: one epoch: ${[...epochs]}`);
}

/** prevSeq kept in the trace helps to read a failure. */
const FAILED = { status: ["failed"] };

describe("streams: one node in memory (--stream-separator :)", () => {
  let node;
  before(async () => { node = await startNode(SEP); });
  after(async () => { await node?.stop(); });

  test("a stream: every payment of the account's trackingIds once, in stream order, with source; nothing of others; a trackingId held beside it gets its own copy; history()", async () => {
    const m = account();
    const other = account("o");
    const before = await ingestEach(node.url, [payment(m.tid("a")), payment(m.tid("b"))]);
    const storage = memoryStorage();
    const c = client(node.url, { transports: ["websocket"], storage });
    const { sub, rec } = await subscribed(c, m.stream);
    assert.equal(sub.stream, true);
    const pos = rec.acks()[0].position;
    assert.match(pos.id, STREAM_ID, "the ack's position is the stream's");
    assert.equal(pos.seq, 2, "two payments of the account before the subscribe");
    assert.equal(sub.lastId, pos.id, "a fresh subscribe stands at the ack's position");
    const { sub: own, rec: ownRec } = await subscribed(c, m.tid("a"));
    assert.equal(own.stream, false);

    const items = [
      payment(m.tid("a"), { status: "executed" }), payment(other.tid("a")), payment(m.tid("b"), { status: "failed" }),
      payment(`${m.a}-no-separator`), payment(m.tid("inv:9"), { status: "pending" }), payment(`:${m.a}`),
    ];
    const res = await ingestEach(node.url, items);
    // One batch across the account's trackingIds too.
    const batch = await ingestOk(node.url, [payment(m.tid("c")), payment(m.tid("a")), payment(other.tid("b"))]);
    const ofAccount = (r) => r.trackingId.startsWith(`${m.a}:`);
    const mine = [...res, ...batch].filter(ofAccount);
    assert.equal(mine.length, 5);
    await untilSources(rec, mine);
    // One more, waited for: anything the SDK would still deliver before it has been delivered.
    const tail = await ingestOk(node.url, payment(m.tid("z")));
    await untilSources(rec, tail);
    // A batch's payments of different trackingIds: in the order the server stored them (the
    // contract orders per trackingId); every one of them, once, after the single ones.
    const seen = rec.payments().map((p) => p.source.id);
    const batchStored = batch.filter(ofAccount).sort((x, y) => seen.indexOf(x.id) - seen.indexOf(y.id));
    assertStreamOnce(rec, m.stream, [...res.filter(ofAccount), ...batchStored, ...tail], { startSeq: 3 });
    assert.equal(sub.lastId, rec.payments().at(-1).id);
    assert.equal(JSON.parse(await storage.get(`tidings:${node.url} ${m.stream}`)).id, sub.lastId,
      "the storage keeps the stream's last id under the stream's name");
    // The trackingId's own subscription: its own ids, no stream fields.
    const ownWant = mine.filter((r) => r.trackingId === m.tid("a"));
    await ownRec.untilIds(ownWant);
    assert.deepEqual(ownRec.payments().map((p) => [p.id, p.seq, p.stream, p.source]),
      ownWant.map((r) => [r.id, r.seq, undefined, undefined]), ownRec.trace());
    const byId = new Map(rec.payments().map((p) => [p.source.id, p]));
    for (const p of ownRec.payments()) {
      assert.deepEqual(byId.get(p.id).data, p.data, "the same payment's data in both");
      assert.equal(byId.get(p.id).timestamp, p.timestamp, "the same acceptance time in both");
    }
    // REST: the stream's envelopes exactly as the socket delivered them.
    const page = await sub.history({ limit: 100 });
    assert.deepEqual(page.data.map((p) => p.source.id), [...before, ...mine, ...tail].map((r) => r.id));
    assert.deepEqual(page.data.slice(2), rec.payments(), "REST returns the envelopes the socket delivered");
    const failed = await c.history(m.stream, { status: ["failed"] });
    assert.deepEqual(failed.data.map((p) => [p.data.status, p.source.id]), [["failed", res[2].id]]);
    assert.equal(failed.data[0].prevSeq, 0, "prevSeq without since: the seq before the oldest retained payment (seq 1)");
    // With since: the first prevSeq is since's seq; limit and hasMore count matching payments.
    const fromSince = await c.history(m.stream, { status: ["executed"], since: page.data[2].id, limit: 1 });
    assert.equal(page.data[2].seq, 3);
    assert.deepEqual(fromSince.data.map((p) => [p.source.id, p.prevSeq]), [[batchStored[0].id, 3]]);
    assert.equal(fromSince.hasMore, true);
    assert.deepEqual(rec.gaps(), []);
    assert.deepEqual(rec.errors(), []);
  });

  test("a stream across a cut connection, with deliveries repeated on the way: resubscribed with the stream's last id, what it missed once, in order, nothing twice", async () => {
    const m = account();
    await ingestOk(node.url, payment(m.tid("x")));
    const proxy = await startWireProxy(node.url);
    try {
      const c = client(proxy.url, { transports: ["polling"] });
      const { rec } = await subscribed(c, m.stream);
      proxy.rule("duplicate", (event, p) => event === "payment" && p?.stream === m.stream, 2);
      const first = await ingestEach(node.url, [payment(m.tid("a")), payment(m.tid("b")), payment(m.tid("a"))]);
      await untilSources(rec, first);
      assert.equal(proxy.stats.duplicated.length, 2, "the proxy repeated two payments");
      const lost = clientEvent(c, "disconnect");
      proxy.cut();
      await lost;
      const missed = await ingestEach(node.url, [payment(m.tid("c")), payment(m.tid("a")), payment(m.tid("b")), payment(m.tid("d"))]);
      const back = clientEvent(c, "connect");
      proxy.heal();
      await back;
      // Nothing more is ingested until the missed ones arrived: only the resubscribe's since brings them.
      await untilSources(rec, missed);
      const live = await ingestOk(node.url, payment(m.tid("a")));
      await untilSources(rec, live);
      assertStreamOnce(rec, m.stream, [...first, ...missed, ...live], { startSeq: 2 });
      assert.ok(rec.acks().length >= 2, "resubscribed after the reconnect");
      assert.deepEqual(rec.gaps(), []);
      assert.deepEqual(rec.errors(), []);
    } finally {
      await proxy.close();
    }
  });

  test("a filtered stream: only matching payments, once, prevSeq unbroken; one lost on the way is seen by prevSeq and filled from the backfill with &status", async () => {
    const m = account();
    await ingestEach(node.url, [payment(m.tid("a"), { status: "failed" }), payment(m.tid("b"))]);
    const proxy = await startWireProxy(node.url);
    try {
      const c = client(proxy.url, { transports: ["polling"] });
      let disconnects = 0;
      c.on("disconnect", () => { disconnects++; });
      const { sub, rec } = await subscribed(c, m.stream, { filter: FAILED });
      assert.deepEqual(sub.filter, FAILED);
      const pos = rec.acks()[0].position;
      assert.equal(pos.seq, 2);
      const statuses = ["executed", "failed", "executed", "executed", "failed", "pending", "failed", "executed", "failed", "executed", "failed"];
      const tids = ["a", "b", "c"];
      // The third failed one never reaches the client; the next failed one's prevSeq is its seq.
      let failedSeen = 0;
      proxy.rule("drop", (event, p) => event === "payment" && p?.stream === m.stream && p.data?.status === "failed" && ++failedSeen === 3);
      const res = await ingestEach(node.url, statuses.map((status, i) => payment(m.tid(tids[i % 3]), { status })));
      const want = res.filter((_, i) => statuses[i] === "failed");
      await untilSources(rec, want);
      const tail = await ingestEach(node.url, [payment(m.tid("a")), payment(m.tid("b"), { status: "failed" })]);
      await untilSources(rec, tail.slice(1));
      assert.equal(proxy.stats.dropped.length, 1, "the proxy dropped one failed payment");
      assert.equal(proxy.stats.dropped[0].source.id, want[2].id);
      assertStreamOnce(rec, m.stream, [...want, tail[1]], { filtered: true, firstPrev: pos.seq });
      const delivered = rec.payments();
      assert.deepEqual(proxy.stats.rest.map((q) => [q.get("trackingId"), q.get("since"), q.get("status")]),
        [[m.stream, delivered[1].id, "failed"]], "one backfill read after the last delivered id, with the filter");
      assert.equal(disconnects, 0, "without reconnecting: prevSeq told the SDK");
      assert.deepEqual(rec.gaps(), [], "a recovered hole is no gap");
      assert.deepEqual(rec.errors(), []);
      assert.deepEqual((await sub.history()).data.map((p) => p.data.status).filter((s) => s !== "failed"), [],
        "a filtered subscription's history() reads with its filter");
    } finally {
      await proxy.close();
    }
  });

  test("the filter goes with every resubscribe: after a cut connection, what was missed and what follows, only matching, once", async () => {
    const m = account();
    const proxy = await startWireProxy(node.url);
    try {
      const filter = { status: ["failed", "pending"] };
      const c = client(proxy.url, { transports: ["polling"] });
      const { rec } = await subscribed(c, m.stream, { filter });
      const pos = rec.acks()[0].position;
      assert.deepEqual(pos, { id: null, seq: 0 }, "a stream with no payment yet");
      const mix = (n, k) => Array.from({ length: n }, (_, i) => payment(m.tid(`t${(i + k) % 4}`), { status: ["executed", "failed", "pending"][(i + k) % 3] }));
      const matching = (items, res) => res.filter((_, i) => filter.status.includes(items[i].status));
      const firstItems = mix(6, 0);
      const first = await ingestEach(node.url, firstItems);
      await untilSources(rec, matching(firstItems, first));
      const lost = clientEvent(c, "disconnect");
      proxy.cut();
      await lost;
      const missedItems = mix(7, 1);
      const missed = await ingestEach(node.url, missedItems);
      const back = clientEvent(c, "connect");
      proxy.heal();
      await back;
      await untilSources(rec, matching(missedItems, missed));
      const liveItems = [payment(m.tid("t1")), payment(m.tid("t2"), { status: "pending" })];
      const live = await ingestEach(node.url, liveItems);
      await untilSources(rec, matching(liveItems, live));
      assertStreamOnce(rec, m.stream, [...matching(firstItems, first), ...matching(missedItems, missed), ...matching(liveItems, live)],
        { filtered: true, firstPrev: 0 });
      assert.ok(rec.acks().length >= 2, "resubscribed after the reconnect");
      assert.deepEqual(rec.gaps(), []);
    } finally {
      await proxy.close();
    }
  });

  test("setFilter: all, then failed only, then all again; each change resubscribes at once, from the last id on, nothing twice", async () => {
    const m = account();
    const c = client(node.url, { transports: ["websocket"] });
    const { sub, rec } = await subscribed(c, m.stream);
    const a = await ingestEach(node.url, [payment(m.tid("a")), payment(m.tid("b"), { status: "failed" })]);
    await untilSources(rec, a);
    sub.setFilter(FAILED);
    assert.deepEqual(sub.filter, FAILED);
    await rec.until((r) => r.acks().length >= 2, 10000, "the ack of the filter change");
    const bItems = ["executed", "failed", "executed", "failed", "executed"].map((status, i) => payment(m.tid(`b${i}`), { status }));
    const b = await ingestEach(node.url, bItems);
    const bFailed = b.filter((_, i) => bItems[i].status === "failed");
    await untilSources(rec, bFailed);
    sub.setFilter(null);
    assert.equal(sub.filter, null);
    await rec.until((r) => r.acks().length >= 3, 10000, "the ack of the filter removed");
    // From the last id on: the executed payment after the last failed one is replayed.
    await untilSources(rec, b.slice(4));
    const c2 = await ingestEach(node.url, [payment(m.tid("c")), payment(m.tid("d"), { status: "pending" })]);
    await untilSources(rec, c2);
    const got = rec.payments();
    assert.deepEqual(got.map((p) => p.source.id), [...a, ...bFailed, b[4], ...c2].map((r) => r.id), rec.trace());
    assert.equal(new Set(got.map((p) => p.id)).size, got.length, "nothing twice");
    assert.deepEqual(got.map((p) => p.prevSeq === undefined), [true, true, false, false, true, true, true],
      "prevSeq exactly on what the filtered subscription was sent");
    assert.equal(got[2].prevSeq, got[1].seq, "the filtered chain starts at the last id");
    assert.deepEqual(rec.gaps(), []);
  });

  test("bad input: a name ending in * that is no stream, a since of the other kind, a bad filter, a bad status: clear errors", async () => {
    const m = account();
    const c = client(node.url, { transports: ["websocket"] });
    for (const bad of [`${m.a}*`, "*", ":*", `${m.a}:x:*`]) {
      const sub = c.subscribe(bad);
      const rec = record(sub);
      await rec.until((r) => r.errors().length === 1, 10000, `INVALID_TRACKING_ID for ${bad}`);
      assertTidingsError(rec.errors()[0], "INVALID_TRACKING_ID");
      assert.match(rec.errors()[0].message, /stream|:\*/, `the message says why (${bad}): ${rec.errors()[0].message}`);
      assert.equal(sub.subscribed, false);
    }
    const id = (await ingestOk(node.url, payment(m.tid("a"))))[0].id;
    assert.throws(() => c.subscribe(m.stream, { since: id }), (e) => e instanceof TypeError && /trackingId's id/.test(e.message));
    assert.throws(() => c.subscribe(m.tid("a"), { since: `s${id}` }), (e) => e instanceof TypeError && /stream's id/.test(e.message));
    for (const filter of [{}, { status: [] }, { status: ["done"] }, { status: "failed" }, { status: ["failed"], amount: 1 }]) {
      assert.throws(() => c.subscribe(uid("f"), { filter }), TypeError, JSON.stringify(filter));
    }
    const { sub } = await subscribed(c, m.stream);
    assert.throws(() => sub.setFilter({ status: [] }), TypeError);
    assert.equal(sub.filter, null, "a refused filter changes nothing");
    await assert.rejects(c.history(`${m.a}*`), (e) => e instanceof TidingsError && e.code === "INVALID_TRACKING_ID" && e.status === 400);
    await assert.rejects(c.history(m.stream, { status: ["done"] }), (e) => e instanceof TidingsError && e.code === "INVALID_PAYLOAD" && e.status === 400);
    await assert.rejects(c.history(m.stream, { since: id }), (e) => e instanceof TidingsError && e.code === "INVALID_SINCE");
  });
});

describe("streams: one node in memory, SIGKILLed and restarted", () => {
  let node;
  before(async () => { node = await startNode(SEP); });
  after(async () => { await node?.stop(); });

  test("the stream's history is lost with the process: a gap (restarted), then the new history, nothing twice; the same for a filtered subscription", async () => {
    const m = account();
    const c = client(node.url, { transports: ["websocket"] });
    const f = client(node.url, { transports: ["websocket"] });
    const { rec } = await subscribed(c, m.stream);
    const { rec: frec } = await subscribed(f, m.stream, { filter: FAILED });
    const old = await ingestEach(node.url, [payment(m.tid("a")), payment(m.tid("b"), { status: "failed" }), payment(m.tid("a"))]);
    await untilSources(rec, old);
    await untilSources(frec, [old[1]]);
    const lost = Promise.all([clientEvent(c, "disconnect"), clientEvent(f, "disconnect")]);
    await node.restart();
    await lost;
    const fresh = await ingestEach(node.url, [payment(m.tid("b")), payment(m.tid("a"), { status: "failed" })]);
    await untilSources(rec, fresh);
    await untilSources(frec, [fresh[1]]);
    const last = rec.payments();
    assert.equal(last.at(-2).seq, 1, "the restarted node began the stream anew");
    assert.deepEqual(rec.events.filter((e) => e.kind !== "subscribed").map((e) => e.kind),
      ["payment", "payment", "payment", "gap", "payment", "payment"], rec.trace());
    assert.deepEqual(rec.gaps(), [{
      trackingId: m.stream, lastId: last[2].id, fromSeq: 4, toSeq: null, restarted: true, nextId: last[3].id, nextSeq: 1,
    }]);
    assert.deepEqual(last.map((p) => p.source.id), [...old, ...fresh].map((r) => r.id));
    const fl = frec.payments();
    assert.deepEqual(fl.map((p) => p.source.id), [old[1].id, fresh[1].id], frec.trace());
    assert.equal(fl[1].prevSeq, 0, "a history started afresh: the chain starts at 0");
    assert.deepEqual(frec.gaps(), [{
      trackingId: m.stream, lastId: fl[0].id, fromSeq: fl[0].seq + 1, toSeq: null, restarted: true, nextId: fl[1].id, nextSeq: 2,
    }]);
    assert.deepEqual([...rec.errors(), ...frec.errors()], [], "HISTORY_TRUNCATED is a gap, not an error");
  });
});

// ---------------------------------------------------------------------------
// Token mode
// ---------------------------------------------------------------------------

const SECRET = "sdk-stream-secret-" + "0123456789abcdefghij";
const b64url = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
function token(tids, expInS = 300) {
  const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ tids, exp: Math.floor(Date.now() / 1000) + expInS })}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

describe("streams in token mode", () => {
  let node;
  before(async () => { node = await startNode([...SEP, "--auth", "token", "--token-secret", SECRET]); });
  after(async () => { await node?.stop(); });

  test("a token's prefix entry covers the stream (socket and backfill); an exact entry does not: FORBIDDEN, typed", async () => {
    const m = account();
    const c = client(node.url, { auth: token([`${m.a}:*`]), transports: ["websocket"] });
    const { sub, rec } = await subscribed(c, m.stream);
    const r = await ingestEach(node.url, [payment(m.tid("a")), payment(m.tid("b"))]);
    await untilSources(rec, r);
    assertStreamOnce(rec, m.stream, r, { startSeq: 1 });
    assert.deepEqual((await sub.history()).data.map((p) => p.source.id), r.map((x) => x.id), "backfill with the socket's token");

    const d = client(node.url, { auth: token([m.tid("a")]), transports: ["websocket"] });
    const theirs = d.subscribe(m.stream);
    const trec = record(theirs);
    await trec.until((x) => x.errors().length === 1, 10000, "FORBIDDEN");
    assertTidingsError(trec.errors()[0], "FORBIDDEN");
    await assert.rejects(theirs.history(), (e) => e instanceof TidingsError && e.code === "FORBIDDEN" && e.status === 403);
  });
});

// ---------------------------------------------------------------------------
// Redis Cluster
// ---------------------------------------------------------------------------

describe("streams on a Redis Cluster (3 masters), two nodes behind nginx", () => {
  let cluster;
  let nodes = [];
  let nginx;
  before(async () => {
    cluster = await startRedisCluster();
    nodes = await startNodes(2, cluster.url, ["--redis-cluster", ...SEP]);
    nginx = await startNginx(nodes.map((n) => n.port));
  });
  after(async () => {
    await nginx?.stop();
    await stopNodes(nodes);
    await cluster?.stop();
  });

  test("the clients' node SIGKILLed while ingest for many trackingIds goes on: the stream once, in order, no gap; a filtered one too, prevSeq unbroken", async () => {
    const m = account("rc");
    const tids = Array.from({ length: 8 }, (_, i) => m.tid(`sub-${i}`));
    // A history before the subscribe.
    await ingestEach(nodes[0].url, tids.slice(0, 3).map((t) => payment(t)));
    const c = client(nginx.url, { transports: ["websocket"] });
    const f = client(nginx.url, { transports: ["websocket"] });
    const { rec } = await subscribed(c, m.stream);
    const { rec: frec } = await subscribed(f, m.stream, { filter: FAILED });
    const startAt = rec.acks()[0].position.seq;
    assert.equal(startAt, 3);
    const subs = await Promise.all(nodes.map(async (n) => (await readMetric(n.url, "tidings_subscriptions")).value));
    const victim = subs.indexOf(2);
    assert.ok(victim >= 0, `one node holds both subscriptions (nginx hashes by address; tidings_subscriptions: ${subs})`);
    const survivor = nodes[1 - victim];
    const accepted = [];
    let killed = null;
    for (let i = 0; i < 120; i++) {
      const status = i % 3 === 1 ? "failed" : "executed";
      accepted.push(...await ingestOk(survivor.url, payment(tids[i % tids.length], { status })));
      accepted.at(-1).status = status;
      if (i === 40) {
        await rec.until((r) => r.payments().length >= 20, 10000, "payments before the kill");
        killed = nodes[victim].stop("SIGKILL");
      }
      await pace(5);
    }
    await killed;
    await untilSources(rec, accepted, 30000);
    const failed = accepted.filter((r) => r.status === "failed");
    await untilSources(frec, failed, 30000);
    const tail = await ingestOk(survivor.url, payment(tids[0], { status: "failed" }));
    await untilSources(rec, tail);
    await untilSources(frec, tail);
    assertStreamOnce(rec, m.stream, [...accepted, ...tail], { startSeq: startAt + 1 });
    assertStreamOnce(frec, m.stream, [...failed, ...tail], { filtered: true, firstPrev: startAt, what: "filtered stream" });
    // Each failed payment has the same stream id and seq in both subscriptions.
    const all = new Map(rec.payments().map((p) => [p.source.id, p]));
    for (const p of frec.payments()) assert.deepEqual([p.id, p.seq], [all.get(p.source.id).id, all.get(p.source.id).seq]);
    assert.deepEqual([...rec.gaps(), ...frec.gaps()], [], "no gap: Redis kept the history");
    assert.ok(rec.acks().length >= 2 && frec.acks().length >= 2, "both resubscribed on the surviving node");
  });
});
