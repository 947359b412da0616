// Replay, HISTORY_TRUNCATED, REST backfill, and amounts at the edge of what a
// JavaScript number holds exactly.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer, ingest, ingestOk, connect, waitFor, subscribe, emitWithAck, barrier, payments,
  recorded, payment, uid, futureId, assertAck, assertError, assertHttpError, assertPayment,
  assertKeys, backfill, closeAll,
} from "./lib/harness.mjs";
import { freePort } from "./lib/cluster.mjs";

const WS = { transports: ["websocket"] };

/** The event names of a socket's log from its first ack on. */
function eventLog(s) {
  return recorded(s).map((e) => e.event === "payment"
    ? `payment:${e.payload.data.trackingId}#${e.payload.seq}`
    : e.event === "error" ? `error:${e.payload?.data?.code}` : e.event);
}

describe("HISTORY_TRUNCATED by the history limit (--history-limit 3)", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(["--history-limit", "3"]); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  for (const transports of [["websocket"], ["polling"]]) {
    test(`since = #1 of 5 over ${transports[0]}: ack, HISTORY_TRUNCATED, replay of #3..#5, then live`, async () => {
      const id = uid("trunc");
      const items = Array.from({ length: 5 }, () => payment(id));
      const res = [];
      for (const it of items) res.push(...await ingestOk(server.url, it));
      assert.deepEqual(res.map((r) => r.seq), [1, 2, 3, 4, 5]);

      const s = await connect(server.url, { transports });
      sockets.push(s);
      const ack = await emitWithAck(s, "subscribe", { trackingId: id, since: res[0].id });
      assertAck(ack, "subscribe", id);
      const warn = await waitFor(s, "error");
      assertError(warn, "HISTORY_TRUNCATED");
      await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 5);
      const live = payment(id);
      const [liveRes] = await ingestOk(server.url, live);
      await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 6);

      assert.deepEqual(eventLog(s), [
        "ack", "error:HISTORY_TRUNCATED",
        `payment:${id}#3`, `payment:${id}#4`, `payment:${id}#5`, `payment:${id}#6`,
      ], "order: ack, warning, replay of the retained events, live");
      const got = payments(s, id);
      [2, 3, 4].forEach((k, i) => assertPayment(got[i], items[k], res[k]));
      assertPayment(got[3], live, liveRes);
      assert.equal(s.connected, true, "the warning does not end the subscription or the socket");
    });
  }

  test("since = #2 of 5: nothing lost, so no HISTORY_TRUNCATED; replay of #3..#5", async () => {
    const id = uid("exact");
    const keep = uid("keep");
    const res = await ingestOk(server.url, Array.from({ length: 5 }, () => payment(id)));
    const s = await connect(server.url, WS);
    sockets.push(s);
    await subscribe(s, keep);
    const ack = await emitWithAck(s, "subscribe", { trackingId: id, since: res[1].id });
    assertAck(ack, "subscribe", id);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 5);
    await barrier(server.url, s, keep);
    assert.deepEqual(payments(s, id).map((p) => p.seq), [3, 4, 5]);
    assert.equal(recorded(s, "error").length, 0, "no HISTORY_TRUNCATED when nothing after since was dropped");
  });

  test("backfill reports truncated: true when since is older than what is retained", async () => {
    const id = uid("bf-trunc");
    const res = await ingestOk(server.url, Array.from({ length: 5 }, () => payment(id)));
    const r1 = await backfill(server.url, { trackingId: id, since: res[0].id });
    assert.equal(r1.status, 200, r1.text);
    assert.equal(r1.body.truncated, true);
    assert.deepEqual(r1.body.data.map((e) => e.seq), [3, 4, 5]);
    assert.equal(r1.body.hasMore, false);
    const r2 = await backfill(server.url, { trackingId: id, since: res[1].id });
    assert.equal(r2.body.truncated, false);
    assert.deepEqual(r2.body.data.map((e) => e.seq), [3, 4, 5]);
    const r3 = await backfill(server.url, { trackingId: id });
    assert.deepEqual(r3.body.data.map((e) => e.seq), [3, 4, 5], "without since: from the oldest retained");
  });
});

describe("HISTORY_TRUNCATED after a restart (history lost)", () => {
  const started = [];
  const sockets = [];
  after(async () => {
    closeAll(sockets);
    for (const s of started) await s.stop();
  });

  test("a since from the old process gets ack, HISTORY_TRUNCATED, then the new history from seq 1", async () => {
    const id = uid("restart");
    const first = await startServer();
    started.push(first);
    const old = await ingestOk(first.url, [payment(id), payment(id)]);
    const oldId = old[1].id;
    const stopped = await first.stop();
    assert.equal(stopped.code, 0, `first server exits 0 on SIGTERM, got ${JSON.stringify(stopped)}`);

    const second = await startServer();
    started.push(second);
    const item = payment(id);
    const [fresh] = await ingestOk(second.url, item);
    assert.equal(fresh.seq, 1, "memory was lost: the new history starts at 1");

    const s = await connect(second.url, WS);
    sockets.push(s);
    const ack = await emitWithAck(s, "subscribe", { trackingId: id, since: oldId });
    assertAck(ack, "subscribe", id);
    assertError(await waitFor(s, "error"), "HISTORY_TRUNCATED");
    const env = await waitFor(s, "payment", (p) => p.data.trackingId === id);
    assertPayment(env, item, fresh);
    assert.deepEqual(eventLog(s), ["ack", "error:HISTORY_TRUNCATED", `payment:${id}#1`]);

    // And live delivery continues.
    const live = payment(id);
    const [lr] = await ingestOk(second.url, live);
    assertPayment(await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 2), live, lr);

    // Backfill agrees.
    const bf = await backfill(second.url, { trackingId: id, since: oldId });
    assert.equal(bf.status, 200, bf.text);
    assert.equal(bf.body.truncated, true, "backfill with a since from the lost history is truncated");
    assert.deepEqual(bf.body.data.map((e) => e.seq), [1, 2]);
  });

  test("after a burst of 30,000 new trackingIds, a restart on the same port: a since from before is truncated (never INVALID_SINCE) and no id is issued again", async () => {
    const port = await freePort();
    const args = ["--listen", `127.0.0.1:${port}`, "--ingest-token", "test-token", "--log-format", "json"];
    const first = await startServer([], {}, { baseArgs: args });
    started.push(first);
    const run = uid("burst");
    let last;
    for (let b = 0; b < 30; b++) {
      const batch = Array.from({ length: 1000 }, (_, i) => payment(`${run}-${b}-${i}`));
      last = (await ingestOk(first.url, batch)).at(-1);
    }
    const tid = last.trackingId;
    assert.equal(last.seq, 1);
    assert.equal((await first.stop("SIGKILL")).signal, "SIGKILL");

    const second = await startServer([], {}, { baseArgs: args });
    started.push(second);
    const s = await connect(second.url, WS);
    sockets.push(s);
    const ack = await emitWithAck(s, "subscribe", { trackingId: tid, since: last.id });
    assertAck(ack, "subscribe", tid);
    assertError(await waitFor(s, "error"), "HISTORY_TRUNCATED");
    const [next] = await ingestOk(second.url, payment(tid));
    assert.notEqual(next.id, last.id, "the id the client holds is not issued again");
    assert.ok(BigInt(next.id.split("-")[0]) > BigInt(last.id.split("-")[0]), `a larger epoch: ${next.id} after ${last.id}`);
    assert.equal((await waitFor(s, "payment", (p) => p.data.trackingId === tid)).id, next.id);
    assert.deepEqual(eventLog(s), ["ack", "error:HISTORY_TRUNCATED", `payment:${tid}#1`]);
    const bf = await backfill(second.url, { trackingId: tid, since: next.id });
    assert.equal(bf.status, 200, bf.text);
    assert.deepEqual([bf.body.data.length, bf.body.truncated], [0, false]);
  });
});

describe("acceptance time", () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { await server?.stop(); });

  test("envelope timestamps never decrease along a trackingId's history, also under concurrent multi-trackingId batches", async () => {
    const id = uid("clock");
    const others = (n) => Array.from({ length: n }, () => payment(uid("other")));
    // Big batches spend a while on other trackingIds before reaching ours,
    // while single payments for ours keep arriving.
    const requests = [];
    for (let i = 0; i < 20; i++) {
      requests.push(ingestOk(server.url, [...others(800), payment(id)]));
      requests.push(ingestOk(server.url, payment(id)));
    }
    await Promise.all(requests);
    const bf = await backfill(server.url, { trackingId: id, limit: 1000 });
    assert.equal(bf.status, 200, bf.text);
    const events = bf.body.data;
    assert.equal(events.length, 40);
    for (let i = 1; i < events.length; i++) {
      assert.ok(events[i].timestamp >= events[i - 1].timestamp,
        `seq ${events[i].seq} accepted at ${events[i].timestamp}, before seq ${events[i - 1].seq} at ${events[i - 1].timestamp}`);
    }
  });
});

describe("retention by age (--history-ttl 1)", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(["--history-ttl", "1"]); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  test("expired events leave backfill and replay; a since before them gets HISTORY_TRUNCATED; dedupe still holds", async () => {
    const id = uid("ttl");
    const items = [payment(id), payment(id)];
    const res = await ingestOk(server.url, items);
    const before = await backfill(server.url, { trackingId: id });
    assert.equal(before.body.data.length, 2, "retained right after ingest");
    // Nothing to await but time: poll (bounded) until the history has expired.
    const deadline = Date.now() + 6000;
    let bf = before;
    while (bf.body.data.length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      bf = await backfill(server.url, { trackingId: id });
    }
    assert.deepEqual(bf.body.data, [], "events older than --history-ttl are no longer returned");
    const since1 = await backfill(server.url, { trackingId: id, since: res[0].id });
    assert.equal(since1.status, 200, since1.text);
    assert.equal(since1.body.truncated, true, "an event after since expired: truncated");
    assert.deepEqual(since1.body.data, []);

    const s = await connect(server.url, WS);
    sockets.push(s);
    const ack = await emitWithAck(s, "subscribe", { trackingId: id, since: res[0].id });
    assertAck(ack, "subscribe", id);
    assertError(await waitFor(s, "error"), "HISTORY_TRUNCATED");

    // The dedupe window (default 24 h) outlives the history.
    const [dup] = await ingestOk(server.url, items[1]);
    assert.equal(dup.duplicate, true, "a repeat after the history expired is still a duplicate");
    assert.equal(dup.id, res[1].id);

    const live = payment(id);
    const [lr] = await ingestOk(server.url, live);
    const env = await waitFor(s, "payment", (p) => p.data.trackingId === id);
    assertPayment(env, live, lr);
    assert.notEqual(lr.id, res[0].id, "ids stay unique within the trackingId");
    assert.notEqual(lr.id, res[1].id, "ids stay unique within the trackingId");
    assert.deepEqual(eventLog(s), ["ack", "error:HISTORY_TRUNCATED", `payment:${id}#${lr.seq}`]);
  });
});

describe("backfill over REST", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  test("data deep-equals the envelopes the socket received (live and replayed)", async () => {
    const id = uid("bf");
    const s = await connect(server.url, WS);
    sockets.push(s);
    await subscribe(s, id);
    const items = Array.from({ length: 4 }, (_, i) => payment(id, { amount: 10 + i }));
    await ingestOk(server.url, items.slice(0, 2));
    await ingestOk(server.url, items[2]);
    await ingestOk(server.url, items[3]);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 4);
    const live = payments(s, id);
    assert.equal(live.length, 4);

    const bf = await backfill(server.url, { trackingId: id });
    assert.equal(bf.status, 200, bf.text);
    assertKeys(bf.body, ["data", "hasMore", "truncated"], "backfill body");
    assert.deepEqual(bf.body.data, live, "backfill returns the stored envelopes unchanged");
    assert.equal(bf.body.hasMore, false);
    assert.equal(bf.body.truncated, false);

    const empty = await backfill(server.url, { trackingId: id, since: "" });
    assert.equal(empty.status, 200, "since= empty starts at the oldest");
    assert.deepEqual(empty.body.data, live);

    const after2 = await backfill(server.url, { trackingId: id, since: live[1].id });
    assert.deepEqual(after2.body.data, live.slice(2));

    // A replay over a new socket gets the very same objects too.
    const s2 = await connect(server.url, WS);
    sockets.push(s2);
    await emitWithAck(s2, "subscribe", { trackingId: id, since: live[0].id });
    await waitFor(s2, "payment", (p) => p.data.trackingId === id && p.seq === 4);
    assert.deepEqual(payments(s2, id), live.slice(1), "replayed envelopes equal the live ones");
  });

  test("pagination with limit: hasMore true, then false", async () => {
    const id = uid("page");
    const res = await ingestOk(server.url, Array.from({ length: 5 }, () => payment(id)));
    const p1 = await backfill(server.url, { trackingId: id, limit: 2 });
    assert.equal(p1.status, 200, p1.text);
    assert.deepEqual(p1.body.data.map((e) => e.seq), [1, 2]);
    assert.equal(p1.body.hasMore, true);
    const p2 = await backfill(server.url, { trackingId: id, since: p1.body.data.at(-1).id, limit: 2 });
    assert.deepEqual(p2.body.data.map((e) => e.seq), [3, 4]);
    assert.equal(p2.body.hasMore, true);
    const p3 = await backfill(server.url, { trackingId: id, since: p2.body.data.at(-1).id, limit: 2 });
    assert.deepEqual(p3.body.data.map((e) => e.seq), [5]);
    assert.equal(p3.body.hasMore, false);
    assert.deepEqual([...p1.body.data, ...p2.body.data, ...p3.body.data].map((e) => e.id), res.map((r) => r.id));

    const exact = await backfill(server.url, { trackingId: id, limit: 5 });
    assert.equal(exact.body.data.length, 5);
    assert.equal(exact.body.hasMore, false, "limit equal to the remaining count: no more");

    const atEnd = await backfill(server.url, { trackingId: id, since: res[4].id });
    assert.equal(atEnd.status, 200);
    assert.deepEqual(atEnd.body, { data: [], hasMore: false, truncated: false });
  });

  test("an unknown trackingId has an empty history", async () => {
    const r = await backfill(server.url, { trackingId: uid("nothing") });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body, { data: [], hasMore: false, truncated: false });
  });

  test("bad input answers 400 with the socket's codes", async () => {
    const id = uid("bad");
    const [real] = await ingestOk(server.url, payment(id));
    assertHttpError(await backfill(server.url, {}), 400, "INVALID_TRACKING_ID");
    assertHttpError(await backfill(server.url, { trackingId: "" }), 400, "INVALID_TRACKING_ID");
    assertHttpError(await backfill(server.url, { trackingId: "a".repeat(257) }), 400, "INVALID_TRACKING_ID");
    assertHttpError(await backfill(server.url, { trackingId: "a\u0001b" }), 400, "INVALID_TRACKING_ID");
    assertHttpError(await backfill(server.url, { trackingId: id, since: "garbage" }), 400, "INVALID_SINCE");
    assertHttpError(await backfill(server.url, { trackingId: id, since: futureId(real.id) }), 400, "INVALID_SINCE");
    // A 256-byte id is fine.
    const ok = await backfill(server.url, { trackingId: "b".repeat(256) });
    assert.equal(ok.status, 200, ok.text);
  });
});

describe("amounts at the limit of exact JavaScript numbers", () => {
  let server;
  let s;
  before(async () => {
    server = await startServer();
    s = await connect(server.url, WS);
  });
  after(async () => { closeAll(s); await server?.stop(); });

  test("2^53 - 1 is accepted and delivered exactly (socket, replay, backfill)", async () => {
    const id = uid("max");
    await subscribe(s, id);
    const item = payment(id, { amount: 9007199254740991 });
    const [r] = await ingestOk(server.url, item);
    const env = await waitFor(s, "payment", (p) => p.data.trackingId === id);
    assertPayment(env, item, r);
    assert.equal(env.data.amount, 9007199254740991);
    assert.ok(Number.isSafeInteger(env.data.amount));

    const bf = await backfill(server.url, { trackingId: id });
    assert.match(bf.text, /"amount":\s*9007199254740991\b/, "the JSON text carries the exact digits");
    assert.deepEqual(bf.body.data, [env]);

    const s2 = await connect(server.url, WS);
    try {
      await emitWithAck(s2, "subscribe", { trackingId: id, since: r.id });
      const [r2] = await ingestOk(server.url, payment(id, { amount: 9007199254740991 }));
      const e2 = await waitFor(s2, "payment", (p) => p.data.trackingId === id);
      assert.equal(e2.seq, r2.seq);
      assert.equal(e2.data.amount, 9007199254740991);
    } finally {
      closeAll(s2);
    }
  });

  for (const [name, raw] of [
    ["2^53 (9007199254740992)", "9007199254740992"],
    ["2^64 - 1 (18446744073709551615)", "18446744073709551615"],
    ["1e20", "1e20"],
  ]) {
    test(`amount ${name} is rejected (field amount), never rounded and stored`, async () => {
      const id = uid("over");
      await subscribe(s, id);
      const keep = uid("keep");
      await subscribe(s, keep);
      const item = payment(id);
      const body = JSON.stringify(item).replace(/"amount":1000000/, `"amount":${raw}`);
      assert.ok(body.includes(`"amount":${raw}`));
      const res = await ingest(server.url, body);
      assertHttpError(res, 400, "INVALID_PAYLOAD");
      assert.deepEqual(res.body.error.details.map((d) => [d.index, d.field]), [[0, "amount"]]);
      await barrier(server.url, s, keep);
      assert.equal(payments(s, id).length, 0);
      const bf = await backfill(server.url, { trackingId: id });
      assert.deepEqual(bf.body.data, [], "nothing stored");
    });
  }
});
