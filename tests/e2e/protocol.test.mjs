// The realtime protocol over each transport setup: websocket only, polling
// only, and polling upgraded to websocket.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  TRANSPORT_SETUPS, startServer, ingest, ingestOk, connect, connectWith, makeSocket,
  waitFor, waitDisconnect, subscribe, unsubscribe, emitWithAck, barrier, payments, recorded,
  payment, uid, assertAck, assertPayment, assertKeys, assertMillisNow, closeAll, withTimeout,
} from "./lib/harness.mjs";

let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

for (const setup of TRANSPORT_SETUPS) {
  describe(`protocol over ${setup.name}`, () => {
    const sockets = [];
    const open = async (extra) => {
      const s = await connectWith(server.url, setup, extra);
      sockets.push(s);
      return s;
    };
    after(() => closeAll(sockets));

    if (setup.upgrade) {
      test("starts on polling and upgrades to websocket; a subscription made before the upgrade survives it", async () => {
        const s = makeSocket(server.url, setup.opts);
        sockets.push(s);
        assert.equal(s.initialTransport, "polling", "the default transports start on long-polling");
        await withTimeout(new Promise((resolve, reject) => {
          s.once("connect", resolve);
          s.once("connect_error", reject);
        }), 10000, "connect");
        const id = uid("upg");
        // Subscribe right away: most likely still on polling.
        const ack = await subscribe(s, id);
        assertAck(ack, "subscribe", id);
        const name = await withTimeout(s.upgraded, 10000, "upgrade event");
        assert.equal(name, "websocket");
        assert.equal(s.io.engine.transport.name, "websocket", "transport after the upgrade event");
        const item = payment(id);
        const [r] = await ingestOk(server.url, item);
        const env = await waitFor(s, "payment", (p) => p.data.trackingId === id);
        assertPayment(env, item, r);
      });
    } else {
      test(`uses the ${setup.expect} transport`, async () => {
        const s = await open();
        const id = uid("tr");
        await subscribe(s, id);
        assert.equal(s.io.engine.transport.name, setup.expect);
      });
    }

    test("subscribe is answered with an ack envelope", async () => {
      const s = await open();
      const id = uid("sub");
      s.emit("subscribe", { trackingId: id });
      const ack = await waitFor(s, "ack");
      assertKeys(ack, ["type", "data", "timestamp", "position"], "ack");
      assert.equal(ack.type, "ack");
      assert.equal(ack.data, `Subscribed to trackingId: ${id}`);
      assertMillisNow(ack.timestamp, "ack timestamp");
      assert.deepEqual(ack.position, { id: null, seq: 0 }, "no history yet: position { id: null, seq: 0 }");
      assert.equal(recorded(s, "error").length, 0, "no error event");
    });

    test("an acknowledgement callback is answered with the same envelope as the ack event", async () => {
      const s = await open();
      const id = uid("cb");
      const fromCallback = await emitWithAck(s, "subscribe", { trackingId: id });
      assertAck(fromCallback, "subscribe", id);
      const fromEvent = await waitFor(s, "ack", (a) => a.data === `Subscribed to trackingId: ${id}`);
      assert.deepEqual(fromCallback, fromEvent, "callback and event envelopes");

      const unsubCb = await emitWithAck(s, "unsubscribe", { trackingId: id });
      assertAck(unsubCb, "unsubscribe", id);
      const unsubEvent = await waitFor(s, "ack", (a) => a.data === `Unsubscribed from trackingId: ${id}`);
      assert.deepEqual(unsubCb, unsubEvent, "unsubscribe callback and event envelopes");
    });

    test("a payment envelope has the exact shape and units", async () => {
      const s = await open();
      const id = uid("pay");
      await subscribe(s, id);
      const item = payment(id, { amount: 123456789, timestamp: 1699876543, status: "executed" });
      const res = await ingest(server.url, item);
      assert.equal(res.status, 202, res.text);
      assertKeys(res.body, ["data"], "ingest body");
      assert.equal(res.body.data.length, 1);
      const r = res.body.data[0];
      assertKeys(r, ["id", "seq", "trackingId", "duplicate"], "ingest result entry");
      assert.equal(r.trackingId, id);
      assert.equal(r.duplicate, false);
      assert.equal(r.seq, 1, "first event of a fresh trackingId has seq 1");
      assert.equal(typeof r.id, "string");

      const env = await waitFor(s, "payment", (p) => p.data.trackingId === id);
      assertKeys(env, ["type", "id", "seq", "data", "timestamp"], "payment envelope");
      assert.equal(env.type, "payment_notification");
      assert.equal(env.id, r.id);
      assert.equal(env.seq, 1);
      assertKeys(env.data, ["trackingId", "amount", "timestamp", "status", "signature"], "payment data");
      assert.deepEqual(env.data, {
        trackingId: id, amount: 123456789, timestamp: 1699876543, status: "executed", signature: item.signature,
      });
      assert.equal(env.data.timestamp, 1699876543, "data.timestamp is the ingested seconds value, unchanged");
      assertMillisNow(env.timestamp, "envelope timestamp (ms)");
    });

    test("a payment with an idempotencyKey and no signature carries neither in data; other statuses pass through", async () => {
      const s = await open();
      const id = uid("idem");
      await subscribe(s, id);
      const a = payment(id, { status: "failed" });
      delete a.signature;
      a.idempotencyKey = `key-${uid()}`;
      const b = payment(id, { status: "pending", amount: 0, timestamp: 0 });
      const results = await ingestOk(server.url, [a, b]);
      assert.equal(results.length, 2);
      const ea = await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 1);
      const eb = await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 2);
      assertKeys(ea.data, ["trackingId", "amount", "timestamp", "status"], "data without signature");
      assert.deepEqual(ea.data, { trackingId: id, amount: a.amount, timestamp: a.timestamp, status: "failed" });
      assertPayment(ea, a, results[0]);
      assertPayment(eb, b, results[1]);
      assert.equal(eb.data.amount, 0);
      assert.equal(eb.data.timestamp, 0);
    });

    test("unsubscribe stops delivery; unsubscribing an id never held is acked and changes nothing", async () => {
      const s = await open();
      const id = uid("uns");
      const keep = uid("keep");
      await subscribe(s, id);
      await subscribe(s, keep);
      const first = payment(id);
      await ingestOk(server.url, first);
      await waitFor(s, "payment", (p) => p.data.signature === first.signature);

      s.emit("unsubscribe", { trackingId: id });
      const ack = await waitFor(s, "ack", (a) => a.data.startsWith("Unsubscribed"));
      assertAck(ack, "unsubscribe", id);
      assert.equal(ack.data, `Unsubscribed from trackingId: ${id}`);

      const after1 = payment(id);
      await ingestOk(server.url, after1);
      await barrier(server.url, s, keep);
      assert.deepEqual(payments(s, id).map((p) => p.data.signature), [first.signature],
        "no payment for an unsubscribed id");

      const never = uid("never");
      const ack2 = await unsubscribe(s, never);
      assert.equal(ack2.data, `Unsubscribed from trackingId: ${never}`);
      assert.equal(recorded(s, "error").length, 0, "no error for unsubscribing an id never held");
      // Still subscribed to `keep`: the barrier is still delivered.
      await barrier(server.url, s, keep);
      // And unsubscribing twice is acked too.
      await unsubscribe(s, id);
    });

    test("two sockets on one trackingId both receive the same envelope", async () => {
      const a = await open();
      const b = await open();
      const id = uid("two");
      await subscribe(a, id);
      await subscribe(b, id);
      const item = payment(id);
      const [r] = await ingestOk(server.url, item);
      const ea = await waitFor(a, "payment", (p) => p.data.trackingId === id);
      const eb = await waitFor(b, "payment", (p) => p.data.trackingId === id);
      assertPayment(ea, item, r);
      assert.deepEqual(eb, ea, "both sockets get the same envelope");
    });

    test("a batch is answered in request order with contiguous seqs and delivered in seq order", async () => {
      const s = await open();
      const id = uid("batch");
      const other = uid("batch-other");
      await subscribe(s, id);
      await subscribe(s, other);
      const items = Array.from({ length: 10 }, (_, i) => payment(id, { amount: 1000 + i }));
      // Interleave another id: seqs are per trackingId.
      const body = [...items.slice(0, 5), payment(other), ...items.slice(5), payment(other)];
      const res = await ingestOk(server.url, body);
      assert.equal(res.length, body.length, "one result per item");
      res.forEach((r, i) => {
        assert.equal(r.trackingId, body[i].trackingId, `result ${i} trackingId (request order)`);
        assert.equal(r.duplicate, false);
      });
      const mine = res.filter((r) => r.trackingId === id);
      assert.deepEqual(mine.map((r) => r.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "contiguous seqs in request order");
      assert.deepEqual(res.filter((r) => r.trackingId === other).map((r) => r.seq), [1, 2]);
      // Ids are unique within a trackingId (contract section 1); two
      // trackingIds may share one.
      for (const tid of [id, other]) {
        const ids = res.filter((r) => r.trackingId === tid).map((r) => r.id);
        assert.equal(new Set(ids).size, ids.length, `ids of ${tid} are unique`);
      }

      await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 10);
      await waitFor(s, "payment", (p) => p.data.trackingId === other && p.seq === 2);
      const got = payments(s, id);
      assert.deepEqual(got.map((p) => p.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "delivered in seq order, each once");
      got.forEach((env, i) => assertPayment(env, items[i], mine[i]));
    });

    test("duplicates are answered with the original id and are not delivered again", async () => {
      const s = await open();
      const id = uid("dup");
      const keep = uid("dup-barrier");
      await subscribe(s, id);
      await subscribe(s, keep);

      const bySig = payment(id);
      const [r1] = await ingestOk(server.url, bySig);
      assert.equal(r1.duplicate, false);
      const [r1b] = await ingestOk(server.url, { ...bySig, amount: 5 });
      assert.equal(r1b.duplicate, true, "same trackingId + signature is a duplicate");
      assert.equal(r1b.id, r1.id, "duplicate gives the original id");
      assert.equal(r1b.seq, r1.seq, "duplicate gives the original seq");
      assert.equal(r1b.trackingId, id);

      const byKey = payment(id);
      delete byKey.signature;
      byKey.idempotencyKey = `k-${uid()}`;
      const [r2] = await ingestOk(server.url, byKey);
      assert.equal(r2.duplicate, false);
      assert.equal(r2.seq, 2);
      const again = { ...byKey, amount: 77 };
      const [r2b] = await ingestOk(server.url, again);
      assert.equal(r2b.duplicate, true, "same trackingId + idempotencyKey is a duplicate");
      assert.equal(r2b.id, r2.id);
      assert.equal(r2b.seq, r2.seq);

      // Within one batch: the second copy is a duplicate of the first.
      const inBatch = payment(id);
      const rb = await ingestOk(server.url, [inBatch, { ...inBatch }]);
      assert.equal(rb[0].duplicate, false);
      assert.equal(rb[0].seq, 3);
      assert.equal(rb[1].duplicate, true, "a repeat within one batch is a duplicate");
      assert.equal(rb[1].id, rb[0].id);
      assert.equal(rb[1].seq, rb[0].seq);

      await barrier(server.url, s, keep);
      const got = payments(s, id);
      assert.deepEqual(got.map((p) => p.seq), [1, 2, 3], "each payment delivered exactly once");
      assert.equal(got[0].data.amount, bySig.amount, "the original is kept, not the duplicate's fields");
      assert.equal(got[1].data.amount, byKey.amount);
      // The next new payment continues the sequence without holes.
      const [r4] = await ingestOk(server.url, payment(id));
      assert.equal(r4.seq, 4);
    });

    test("a batch with one bad item delivers nothing and stores nothing", async () => {
      const s = await open();
      const id = uid("bad");
      const keep = uid("bad-barrier");
      await subscribe(s, id);
      await subscribe(s, keep);
      const body = [payment(id), payment(id), payment(id, { amount: -1 }), payment(id)];
      const res = await ingest(server.url, body);
      assert.equal(res.status, 400, res.text);
      assert.equal(res.body.error.code, "INVALID_PAYLOAD");
      assert.deepEqual(res.body.error.details.map((d) => [d.index, d.field]), [[2, "amount"]]);
      await barrier(server.url, s, keep);
      assert.equal(payments(s, id).length, 0, "nothing delivered for a rejected batch");
      const [r] = await ingestOk(server.url, body[0]);
      assert.equal(r.duplicate, false, "the good items of the rejected batch were not stored");
      assert.equal(r.seq, 1, "no seq was consumed by the rejected batch");
    });

    test("replay after a disconnect delivers exactly the missed events, then live ones", async () => {
      const id = uid("replay");
      const s1 = await open();
      await subscribe(s1, id);
      const early = [payment(id), payment(id)];
      for (const p of early) await ingestOk(server.url, p);
      await waitFor(s1, "payment", (p) => p.data.trackingId === id && p.seq === 2);
      const seen = payments(s1, id);
      assert.deepEqual(seen.map((p) => p.seq), [1, 2]);
      const lastId = seen[1].id;
      s1.disconnect();
      await waitDisconnect(s1);

      const missed = [payment(id), payment(id), payment(id)];
      const missedRes = [];
      for (const p of missed) missedRes.push(...await ingestOk(server.url, p));
      assert.deepEqual(missedRes.map((r) => r.seq), [3, 4, 5]);

      const s2 = await open();
      const ack = await emitWithAck(s2, "subscribe", { trackingId: id, since: lastId });
      assertAck(ack, "subscribe", id);
      await waitFor(s2, "payment", (p) => p.data.trackingId === id && p.seq === 5);
      const live = payment(id);
      const [liveRes] = await ingestOk(server.url, live);
      await waitFor(s2, "payment", (p) => p.data.trackingId === id && p.seq === 6);

      const got = payments(s2, id);
      assert.deepEqual(got.map((p) => p.seq), [3, 4, 5, 6], "exactly the missed events in order, then the live one");
      got.slice(0, 3).forEach((env, i) => assertPayment(env, missed[i], missedRes[i]));
      assertPayment(got[3], live, liveRes);
      assert.equal(recorded(s2, "error").length, 0, "no error (nothing was truncated)");
      // The ack event came before the replayed payments.
      const log = recorded(s2).map((e) => e.event);
      assert.equal(log[0], "ack", `first event is the ack, log: ${log.join(",")}`);
    });

    test("subscribing twice is one subscription (acked twice, one delivery per payment)", async () => {
      const s = await open();
      const id = uid("twice");
      const keep = uid("twice-barrier");
      await subscribe(s, id);
      await subscribe(s, id);
      await subscribe(s, keep);
      assert.equal(recorded(s, "ack").filter((a) => a.data === `Subscribed to trackingId: ${id}`).length, 2);
      const item = payment(id);
      await ingestOk(server.url, item);
      await barrier(server.url, s, keep);
      assert.equal(payments(s, id).length, 1, "one delivery");
      // One unsubscribe undoes it entirely.
      await unsubscribe(s, id);
      await ingestOk(server.url, payment(id));
      await barrier(server.url, s, keep);
      assert.equal(payments(s, id).length, 1, "no delivery after a single unsubscribe");
    });
  });
}
