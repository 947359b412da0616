// Every error code a socket can get, and the ingest validation table; each
// case proves that nothing changed.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer, ingest, ingestOk, connect, waitFor, subscribe, unsubscribe, emitWithAck, barrier,
  payments, recorded, payment, uid, futureId, assertAck, assertError, assertHttpError, closeAll,
  withTimeout, signature,
} from "./lib/harness.mjs";

const WS = { transports: ["websocket"] };

describe("socket errors (default server)", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  const open = async (opts = WS) => {
    const s = await connect(server.url, opts);
    sockets.push(s);
    return s;
  };

  // A candidate id that the bad input names (when it names one): after the
  // error, a payment for it must not reach the socket.
  async function proveNotSubscribed(s, keep, candidate) {
    if (typeof candidate === "string") {
      // The ingest may itself refuse an id that is not a valid trackingId;
      // either way it must not reach the socket.
      await ingest(server.url, payment(candidate));
    }
    await barrier(server.url, s, keep);
    if (typeof candidate === "string") {
      assert.equal(payments(s, candidate).length, 0, `no payment for ${JSON.stringify(candidate)} after the error`);
    }
    const acks = recorded(s, "ack").map((a) => a.data);
    assert.deepEqual(acks, [`Subscribed to trackingId: ${keep}`], "no ack other than the barrier's");
  }

  // [name, (v) => args after the event name, code, (v) => candidate id or null]
  // `v` is a fresh valid trackingId per test.
  const cases = [
    ["no payload at all", () => [], "INVALID_PAYLOAD", () => null],
    ["payload is a string (the trackingId itself)", (v) => [v], "INVALID_PAYLOAD", (v) => v],
    ["payload is a number", () => [5], "INVALID_PAYLOAD", () => null],
    ["payload is an array", (v) => [[{ trackingId: v }]], "INVALID_PAYLOAD", (v) => v],
    ["payload is null", () => [null], "INVALID_PAYLOAD", () => null],
    ["payload is {}", () => [{}], "INVALID_TRACKING_ID", () => null],
    ["trackingId is a number", () => [{ trackingId: 5 }], "INVALID_TRACKING_ID", () => "5"],
    ["trackingId is empty", () => [{ trackingId: "" }], "INVALID_TRACKING_ID", () => null],
    ["trackingId is 257 bytes", () => [{ trackingId: "a".repeat(257) }], "INVALID_TRACKING_ID", () => "a".repeat(257)],
    ["trackingId is 86 x € (258 bytes)", () => [{ trackingId: "€".repeat(86) }], "INVALID_TRACKING_ID", () => "€".repeat(86)],
    ["trackingId contains U+0000", () => [{ trackingId: "a\u0000b" }], "INVALID_TRACKING_ID", () => "a\u0000b"],
    ["trackingId contains U+007F", () => [{ trackingId: "a\u007fb" }], "INVALID_TRACKING_ID", () => "a\u007fb"],
    ["trackingId contains U+0085", () => [{ trackingId: "a\u0085b" }], "INVALID_TRACKING_ID", () => "a\u0085b"],
    ["trackingId contains a newline", () => [{ trackingId: "a\nb" }], "INVALID_TRACKING_ID", () => "a\nb"],
  ];

  for (const [name, makeArgs, code, makeCandidate] of cases) {
    test(`subscribe: ${name} -> ${code}, nothing changed`, async () => {
      const s = await open();
      const keep = uid("keep");
      await subscribe(s, keep);
      const v = uid("valid");
      const args = makeArgs(v);
      const candidate = makeCandidate(v);
      s.emit("subscribe", ...args);
      const err = await waitFor(s, "error");
      assertError(err, code);
      await proveNotSubscribed(s, keep, candidate);
    });

    test(`subscribe with a callback: ${name} -> the callback gets the same ${code} envelope`, async () => {
      const s = await open();
      const keep = uid("keep");
      await subscribe(s, keep);
      const v = uid("valid");
      const args = makeArgs(v);
      const candidate = makeCandidate(v);
      const fromCallback = await emitWithAck(s, "subscribe", ...args);
      assertError(fromCallback, code);
      const fromEvent = await waitFor(s, "error");
      assert.deepEqual(fromCallback, fromEvent, "callback and error event carry the same envelope");
      await proveNotSubscribed(s, keep, candidate);
    });

    test(`unsubscribe: ${name} -> ${code}, the subscription still holds`, async () => {
      const s = await open();
      const keep = uid("keep");
      await subscribe(s, keep);
      // When the bad payload names a valid id, hold it first: it must stay held.
      const v = uid("valid");
      const args = makeArgs(v);
      const candidate = makeCandidate(v);
      const held = candidate === v ? v : null;
      if (held) await subscribe(s, held);
      s.emit("unsubscribe", ...args);
      const err = await waitFor(s, "error");
      assertError(err, code);
      if (held) {
        const item = payment(held);
        await ingestOk(server.url, item);
        await waitFor(s, "payment", (p) => p.data.signature === item.signature);
      }
      await barrier(server.url, s, keep);
      assert.equal(recorded(s, "ack").filter((a) => a.data.startsWith("Unsubscribed")).length, 0, "no unsubscribe ack");
    });

    test(`unsubscribe with a callback: ${name} -> the callback gets the same ${code} envelope`, async () => {
      const s = await open();
      const keep = uid("keep");
      await subscribe(s, keep);
      const args = makeArgs(uid("valid"));
      const fromCallback = await emitWithAck(s, "unsubscribe", ...args);
      assertError(fromCallback, code);
      const fromEvent = await waitFor(s, "error");
      assert.deepEqual(fromCallback, fromEvent);
      await barrier(server.url, s, keep);
    });
  }

  test("a trackingId of exactly 256 bytes is accepted (ASCII and multi-byte)", async () => {
    const s = await open();
    const ascii = "a".repeat(250) + rand6();
    assert.equal(Buffer.byteLength(ascii), 256);
    const multi = "€".repeat(85) + "b";
    assert.equal(Buffer.byteLength(multi), 256);
    for (const id of [ascii, multi]) {
      const ack = await subscribe(s, id);
      assertAck(ack, "subscribe", id);
    }
    // The ASCII one is unique per run: prove delivery for it.
    const item = payment(ascii);
    const [r] = await ingestOk(server.url, item);
    const env = await waitFor(s, "payment", (p) => p.data.trackingId === ascii);
    assert.equal(env.id, r.id);
    assert.equal(recorded(s, "error").length, 0);
  });

  describe("INVALID_SINCE", () => {
    const bad = [
      ["since is an empty string", () => ""],
      ["since is garbage", () => "garbage"],
      ["since is a number", () => 5],
      ["since is an id this server could not have issued (seq + 100)", (realId) => futureId(realId)],
    ];
    for (const [name, makeSince] of bad) {
      for (const withCallback of [false, true]) {
        test(`${name}${withCallback ? " (callback)" : ""} -> INVALID_SINCE, not subscribed`, async () => {
          const s = await open();
          const keep = uid("keep");
          await subscribe(s, keep);
          const id = uid("since");
          const [first] = await ingestOk(server.url, payment(id));
          const since = makeSince(first.id);
          let err;
          if (withCallback) {
            err = await emitWithAck(s, "subscribe", { trackingId: id, since });
            assertError(err, "INVALID_SINCE");
            assert.deepEqual(await waitFor(s, "error"), err);
          } else {
            s.emit("subscribe", { trackingId: id, since });
            err = await waitFor(s, "error");
            assertError(err, "INVALID_SINCE");
          }
          await ingestOk(server.url, payment(id));
          await barrier(server.url, s, keep);
          assert.equal(payments(s, id).length, 0, "neither replay nor live delivery after INVALID_SINCE");
          assert.deepEqual(recorded(s, "ack").map((a) => a.data), [`Subscribed to trackingId: ${keep}`]);
        });
      }
    }

    test("since: null is treated as absent (no replay, live delivery works)", async () => {
      const s = await open();
      const keep = uid("keep");
      await subscribe(s, keep);
      const id = uid("null");
      await ingestOk(server.url, payment(id));
      const ack = await emitWithAck(s, "subscribe", { trackingId: id, since: null });
      assertAck(ack, "subscribe", id);
      await barrier(server.url, s, keep);
      assert.equal(payments(s, id).length, 0, "no replay without since");
      assert.equal(recorded(s, "error").length, 0, "no error for since: null");
      const item = payment(id);
      const [r] = await ingestOk(server.url, item);
      const env = await waitFor(s, "payment", (p) => p.data.trackingId === id);
      assert.equal(env.seq, 2);
      assert.equal(env.id, r.id);
    });
  });
});

function rand6() {
  return uid("x").slice(-6);
}

describe("TOO_MANY_SUBSCRIPTIONS (--max-subscriptions 2)", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(["--max-subscriptions", "2"]); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  test("a third distinct id is refused; re-subscribing a held id is acked; after an unsubscribe a new id fits", async () => {
    const s = await connect(server.url, WS);
    sockets.push(s);
    const [a, b, c] = [uid("a"), uid("b"), uid("c")];
    await subscribe(s, a);
    await subscribe(s, b);

    s.emit("subscribe", { trackingId: c });
    assertError(await waitFor(s, "error"), "TOO_MANY_SUBSCRIPTIONS");
    const viaCallback = await emitWithAck(s, "subscribe", { trackingId: c });
    assertError(viaCallback, "TOO_MANY_SUBSCRIPTIONS");
    assert.deepEqual(await waitFor(s, "error"), viaCallback);

    // Nothing changed: c is not delivered, a still is.
    await ingestOk(server.url, payment(c));
    await barrier(server.url, s, a);
    assert.equal(payments(s, c).length, 0, "no delivery for the refused id");

    // Re-subscribing a held id is still acked (it is not a new subscription).
    const again = await subscribe(s, a);
    assertAck(again, "subscribe", a);
    assert.equal(recorded(s, "error").length, 2, "no further error");

    await unsubscribe(s, b);
    await subscribe(s, c);
    const item = payment(c);
    await ingestOk(server.url, item);
    await waitFor(s, "payment", (p) => p.data.signature === item.signature);
    // b is really gone.
    await ingestOk(server.url, payment(b));
    await barrier(server.url, s, a);
    assert.equal(payments(s, b).length, 0, "no delivery for b after unsubscribing it");
  });

  test("the limit is per socket", async () => {
    const s1 = await connect(server.url, WS);
    const s2 = await connect(server.url, WS);
    sockets.push(s1, s2);
    await subscribe(s1, uid("x"));
    await subscribe(s1, uid("y"));
    await subscribe(s2, uid("x"));
    await subscribe(s2, uid("y"));
    assert.equal(recorded(s2, "error").length, 0);
  });
});

describe("RATE_LIMITED (--rate-limit 1 --rate-burst 3)", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(["--rate-limit", "1", "--rate-burst", "3"]); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  for (const transports of [["websocket"], ["polling"]]) {
    test(`20 subscribes at once over ${transports[0]}: at most 4 acks, the rest RATE_LIMITED, refused ones not subscribed`, async () => {
      const s = await connect(server.url, { transports });
      sockets.push(s);
      const ids = Array.from({ length: 20 }, (_, i) => uid(`r${i}`));
      for (const id of ids) s.emit("subscribe", { trackingId: id });
      // Every refused event is answered with an error: wait until all 20 are answered.
      const answered = () => recorded(s, "ack").length + recorded(s, "error").length;
      await withTimeout(new Promise((resolve) => {
        const check = () => { if (answered() >= 20) { s.offAny(check); resolve(); } };
        s.onAny(check);
        check();
      }), 10000, `all 20 subscribes answered (so far ${answered()})`).catch((e) => {
        // Not every refused event answered: still check what we can below, but fail.
        e.message += ` acks=${recorded(s, "ack").length} errors=${recorded(s, "error").length}`;
        throw e;
      });
      const acks = recorded(s, "ack");
      const errors = recorded(s, "error");
      assert.ok(acks.length <= 4, `at most burst + 1 acks, got ${acks.length}`);
      assert.ok(errors.length >= 1, "at least one RATE_LIMITED");
      for (const e of errors) assertError(e, "RATE_LIMITED");
      assert.equal(acks.length + errors.length, 20);

      // The refused subscribes did not take effect.
      const acked = new Set(acks.map((a) => a.data.replace("Subscribed to trackingId: ", "")));
      assert.ok(acked.size >= 1, "the first events within the burst are served");
      const refused = ids.filter((id) => !acked.has(id));
      for (const id of refused.slice(0, 3)) await ingestOk(server.url, payment(id));
      await barrier(server.url, s, [...acked][0]);
      for (const id of refused) assert.equal(payments(s, id).length, 0, `no delivery for refused ${id}`);
      assert.equal(s.connected, true, "the socket stays connected");
    });
  }

  test("after the burst, the socket is served again once the rate allows", async () => {
    const s = await connect(server.url, WS);
    sockets.push(s);
    for (let i = 0; i < 10; i++) s.emit("subscribe", { trackingId: uid("flood") });
    await waitFor(s, "error", (e) => e?.data?.code === "RATE_LIMITED");
    // The bucket refills at 1/s: retry (bounded) until one subscribe is acked.
    const id = uid("later");
    const deadline = Date.now() + 8000;
    let ack = null;
    while (!ack && Date.now() < deadline) {
      const r = await emitWithAck(s, "subscribe", { trackingId: id });
      if (r?.type === "ack") ack = r;
      else {
        assertError(r, "RATE_LIMITED");
        await new Promise((res) => setTimeout(res, 300));
      }
    }
    assert.ok(ack, "a subscribe is acked again within 8 s");
    assertAck(ack, "subscribe", id);
  });
});

describe("ingest validation", () => {
  let server;
  let s;
  let keep;
  before(async () => {
    server = await startServer();
    s = await connect(server.url, WS);
    keep = uid("keep");
    await subscribe(s, keep);
  });
  after(async () => { closeAll(s); await server?.stop(); });

  const withoutKey = (k) => (p) => { delete p[k]; return p; };
  const table = [
    ["missing trackingId", withoutKey("trackingId"), "trackingId"],
    ["trackingId not a string", (p) => ({ ...p, trackingId: 5 }), "trackingId"],
    ["amount -1", (p) => ({ ...p, amount: -1 }), "amount"],
    ["amount 1.5", (p) => ({ ...p, amount: 1.5 }), "amount"],
    ["amount \"100\"", (p) => ({ ...p, amount: "100" }), "amount"],
    ["amount 2^53 (9007199254740992)", (p) => ({ ...p, amount: 9007199254740992 }), "amount"],
    ["amount missing", withoutKey("amount"), "amount"],
    ["timestamp missing", withoutKey("timestamp"), "timestamp"],
    ["timestamp -1", (p) => ({ ...p, timestamp: -1 }), "timestamp"],
    ["timestamp in milliseconds (1699876543210)", (p) => ({ ...p, timestamp: 1699876543210 }), "timestamp"],
    ["status \"done\"", (p) => ({ ...p, status: "done" }), "status"],
    ["status missing", withoutKey("status"), "status"],
    ["neither signature nor idempotencyKey", withoutKey("signature"), "signature"],
    ["signature \"\"", (p) => ({ ...p, signature: "" }), "signature"],
    ["idempotencyKey 5", (p) => ({ ...p, idempotencyKey: 5 }), "idempotencyKey"],
    ["unknown field", (p) => ({ ...p, foo: 1 }), "foo"],
  ];

  for (const [name, mutate, field] of table) {
    test(`${name} -> 400 INVALID_PAYLOAD, detail field ${field}, nothing stored or delivered`, async () => {
      const id = uid("v");
      await subscribe(s, id);
      const item = mutate(payment(id));
      const res = await ingest(server.url, item);
      assertHttpError(res, 400, "INVALID_PAYLOAD");
      const details = res.body.error.details;
      assert.ok(Array.isArray(details), `details must be an array, body ${res.text}`);
      assert.equal(details.length, 1, `one detail per bad field, got ${JSON.stringify(details)}`);
      assert.equal(details[0].index, 0, "a single-object body is index 0");
      assert.equal(details[0].field, field);
      assert.equal(typeof details[0].message, "string");
      assert.ok(details[0].message.length > 0);
      await barrier(server.url, s, keep);
      assert.equal(payments(s, id).length, 0, "nothing delivered");
      const [r] = await ingestOk(server.url, payment(id));
      assert.equal(r.seq, 1, "nothing stored: the next good payment is seq 1");
      await unsubscribe(s, id);
    });
  }

  test("one detail per bad field, with the item index, for every bad item of a batch", async () => {
    const id = uid("multi");
    await subscribe(s, id);
    const body = [
      payment(id, { amount: -1, status: "done" }),
      payment(id),
      payment(id),
      payment(id, { timestamp: 1.5 }),
    ];
    const res = await ingest(server.url, body);
    assertHttpError(res, 400, "INVALID_PAYLOAD");
    const got = res.body.error.details.map((d) => `${d.index}:${d.field}`).sort();
    assert.deepEqual(got, ["0:amount", "0:status", "3:timestamp"]);
    for (const d of res.body.error.details) assert.ok(typeof d.message === "string" && d.message.length > 0);
    await barrier(server.url, s, keep);
    assert.equal(payments(s, id).length, 0);
    await unsubscribe(s, id);
  });

  test("a batch with a bad item at index 2 -> details [{index:2, field:'amount'}], nothing stored", async () => {
    const id = uid("idx2");
    await subscribe(s, id);
    const body = [payment(id), payment(id), payment(id, { amount: -1 }), payment(id)];
    const res = await ingest(server.url, body);
    assertHttpError(res, 400, "INVALID_PAYLOAD");
    assert.deepEqual(res.body.error.details.map(({ index, field }) => ({ index, field })), [{ index: 2, field: "amount" }]);
    await barrier(server.url, s, keep);
    assert.equal(payments(s, id).length, 0);
    const [r] = await ingestOk(server.url, body[1]);
    assert.equal(r.seq, 1);
    assert.equal(r.duplicate, false, "the good items of the rejected batch were not remembered for dedupe");
    await unsubscribe(s, id);
  });

  test("an empty batch [] -> 400 INVALID_PAYLOAD", async () => {
    const res = await ingest(server.url, []);
    assertHttpError(res, 400, "INVALID_PAYLOAD");
  });

  for (const [name, raw] of [
    ["a non-JSON body", "this is not json"],
    ["truncated JSON", '{"trackingId": "x", "amount": 1'],
    ["a JSON number", "5"],
    ["a JSON string", '"payment"'],
    ["JSON null", "null"],
  ]) {
    test(`${name} -> 400 INVALID_PAYLOAD`, async () => {
      const res = await ingest(server.url, raw);
      assertHttpError(res, 400, "INVALID_PAYLOAD");
    });
  }

  for (const [name, token, headers] of [
    ["missing bearer token", null, {}],
    ["wrong bearer token", "wrong-token", {}],
    ["a non-Bearer scheme", null, { authorization: "Basic dGVzdC10b2tlbjo=" }],
    ["the token without the Bearer scheme", null, { authorization: "test-token" }],
  ]) {
    test(`${name} -> 401 UNAUTHORIZED, nothing stored`, async () => {
      const id = uid("auth");
      await subscribe(s, id);
      const res = await ingest(server.url, payment(id), { token, headers });
      assertHttpError(res, 401, "UNAUTHORIZED");
      await barrier(server.url, s, keep);
      assert.equal(payments(s, id).length, 0);
      const [r] = await ingestOk(server.url, payment(id));
      assert.equal(r.seq, 1);
      await unsubscribe(s, id);
    });
  }

  test("the token is checked before the body: a bad token with an oversized or malformed body is 401", async () => {
    const big = JSON.stringify([payment(uid("big"), { signature: "s".repeat(2 * 1024 * 1024) })]);
    assertHttpError(await ingest(server.url, big, { token: "wrong-token" }), 401, "UNAUTHORIZED");
    assertHttpError(await ingest(server.url, big, { token: null }), 401, "UNAUTHORIZED");
    assertHttpError(await ingest(server.url, "not json", { token: "wrong-token" }), 401, "UNAUTHORIZED");
    assertHttpError(await ingest(server.url, [], { token: null }), 401, "UNAUTHORIZED");
  });

  test("a body over the default --max-body (1 MiB) -> 413 PAYLOAD_TOO_LARGE", async () => {
    const id = uid("big");
    // Valid JSON, just too large.
    const body = [payment(id, { signature: "s".repeat(1024 * 1024 + 16) })];
    const res = await ingest(server.url, JSON.stringify(body));
    assertHttpError(res, 413, "PAYLOAD_TOO_LARGE");
  });

  test("a batch over the default --max-batch (1000) -> 413 PAYLOAD_TOO_LARGE; exactly 1000 is accepted", async () => {
    const id = uid("many");
    await subscribe(s, id);
    const over = Array.from({ length: 1001 }, () => payment(id));
    const res = await ingest(server.url, over);
    assertHttpError(res, 413, "PAYLOAD_TOO_LARGE");
    await barrier(server.url, s, keep);
    assert.equal(payments(s, id).length, 0);
    const ok = await ingestOk(server.url, over.slice(0, 1000));
    assert.equal(ok.length, 1000);
    assert.equal(ok[999].seq, 1000);
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 1000, 15000);
    await unsubscribe(s, id);
  });
});

describe("ingest limits (--max-body 4096 --max-batch 5)", () => {
  let server;
  let s;
  let keep;
  before(async () => {
    server = await startServer(["--max-body", "4096", "--max-batch", "5"]);
    s = await connect(server.url, WS);
    keep = uid("keep");
    await subscribe(s, keep);
  });
  after(async () => { closeAll(s); await server?.stop(); });

  test("a body over --max-body -> 413 PAYLOAD_TOO_LARGE, nothing delivered", async () => {
    const id = uid("body");
    await subscribe(s, id);
    const item = payment(id, { signature: signature() + "x".repeat(5000) });
    const res = await ingest(server.url, item);
    assertHttpError(res, 413, "PAYLOAD_TOO_LARGE");
    await barrier(server.url, s, keep);
    assert.equal(payments(s, id).length, 0);
  });

  test("a batch over --max-batch -> 413 PAYLOAD_TOO_LARGE; exactly --max-batch is accepted", async () => {
    const id = uid("batch");
    await subscribe(s, id);
    const six = Array.from({ length: 6 }, () => payment(id));
    assertHttpError(await ingest(server.url, six), 413, "PAYLOAD_TOO_LARGE");
    await barrier(server.url, s, keep);
    assert.equal(payments(s, id).length, 0);
    const ok = await ingestOk(server.url, six.slice(0, 5));
    assert.deepEqual(ok.map((r) => r.seq), [1, 2, 3, 4, 5]);
  });
});
