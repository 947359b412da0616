// Account streams (contract section 8, design of issue 18), end to end: the
// binary as a process, real redis-server and Redis Cluster on free ports, the
// official socket.io-client. Every storage setup runs the same tests: memory
// (one node), one Redis with two nodes, a Redis Cluster with two nodes (a
// subscriber on node B, payments ingested on node A). Then: a memory node
// restarted, streams off, the flag and its variables, turning streams on and
// off on one Redis, --max-subscriptions, and token mode.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer, ingestOk, connect, connectWith, waitFor, recorded, payment, uid, rand, closeAll,
  assertHttpError, TRANSPORT_SETUPS, httpGet,
} from "./lib/harness.mjs";
import { keySlot, waitUntil, startRedis, startNodes } from "./lib/cluster.mjs";
import {
  BACKENDS, STREAM_ARGS, OFF_MESSAGE, badStreamMessage, withNodeLogs, ask, sub, subPlain, unsub, assertErr,
  streamPayments, tidPayments, waitStream, waitTid, errorsOf, parseStreamId, assertStreamEnv,
  assertTidEnv, backfillRaw, backfillQ, backfillOk,
} from "./lib/streams.mjs";

const WS = { transports: ["websocket"] };
/** A fresh account name (no separator): its stream is `${a}:*`. */
const acct = () => `m${rand(5)}`;
const src = (r) => ({ id: r.id, seq: r.seq });

/** The socket's events from its first one: acks, errors by code, payments by stream/trackingId and seq. */
function eventLog(s) {
  return recorded(s).map((e) => {
    if (e.event === "payment") return `payment:${e.payload.stream ?? e.payload.data.trackingId}#${e.payload.seq}`;
    if (e.event === "error") return `error:${e.payload?.data?.code}`;
    return e.event;
  });
}

for (const backend of BACKENDS) {
  describe(`streams: ${backend.name}`, () => {
    let env;
    let A;
    let B;
    const sockets = [];
    const open = async (node, opts = WS) => {
      const s = await connect(node.url, opts);
      sockets.push(s);
      return s;
    };
    const T = (name, fn) => test(name, withNodeLogs(() => env?.nodes, fn));

    before(async () => {
      env = await backend.start(STREAM_ARGS);
      ({ A, B } = env);
    });
    after(async () => {
      closeAll(sockets);
      await env?.stop();
    });

    for (const transports of [["websocket"], ["polling"]]) {
      T(`${transports[0]}: payments of <a>:sub-1, <a>:sub-2, <a>:inv:9 reach a subscriber of <a>:* as stream envelopes (seq 1, 2, 3; source; timestamp); ack positions`, async () => {
        const a = acct();
        const S = `${a}:*`;
        const s = await open(B, { transports });
        const ack0 = await subPlain(s, S);
        assert.deepEqual(ack0.position, { id: null, seq: 0 }, "a stream with no payment yet");

        const tids = [`${a}:sub-1`, `${a}:sub-2`, `${a}:inv:9`];
        const items = tids.map((t) => payment(t));
        const res = [];
        for (const it of items) res.push(...await ingestOk(A.url, it));
        assert.deepEqual(res.map((r) => [r.trackingId, r.seq]), tids.map((t) => [t, 1]), "each trackingId's own seq");

        await waitStream(s, S, 3);
        const got = streamPayments(s, S);
        assert.deepEqual(got.map((p) => p.seq), [1, 2, 3], "the stream's own contiguous seq");
        assert.equal(new Set(got.map((p) => parseStreamId(p.id).epoch)).size, 1, "one epoch");
        for (const [i, e] of got.entries()) {
          const own = (await backfillOk(A.url, { trackingId: tids[i] })).data;
          assert.equal(own.length, 1);
          assert.equal(own[0].id, res[i].id);
          assertStreamEnv(e, { stream: S, item: items[i], source: src(res[i]), seq: i + 1, timestamp: own[0].timestamp });
          assert.notEqual(e.id, res[i].id);
        }

        // A later subscriber (on the other node) is acked with the stream's position.
        const s2 = await open(A, { transports });
        const ack = await subPlain(s2, S);
        assert.deepEqual(ack.position, { id: got[2].id, seq: 3 });

        // A batch over two trackingIds: stream seqs 4 and 5, on both sockets, the same envelopes.
        const batch = [payment(tids[0]), payment(tids[1])];
        const br = await ingestOk(A.url, batch);
        assert.deepEqual(br.map((r) => r.seq), [2, 2]);
        await waitStream(s, S, 5);
        await waitStream(s2, S, 5);
        const later = streamPayments(s, S).slice(3);
        assert.deepEqual(later.map((p) => p.seq), [4, 5]);
        for (const e of later) {
          const k = batch.findIndex((it) => it.signature === e.data.signature);
          assert.ok(k >= 0, `a payment of the batch: ${JSON.stringify(e)}`);
          assertStreamEnv(e, { stream: S, item: batch[k], source: src(br[k]) });
        }
        assert.deepEqual(streamPayments(s2, S), later, "both subscribers get the same envelopes");
        assert.deepEqual(recorded(s, "payment").length, 5, "nothing but the stream's payments");
        assert.deepEqual(errorsOf(s), []);
        assert.deepEqual(errorsOf(s2), []);

        // Backfill answers the very same envelopes.
        const bf = await backfillOk(B.url, { trackingId: S });
        assert.deepEqual(bf, { data: streamPayments(s, S), hasMore: false, truncated: false });
      });
    }

    T("a socket holding <a>:* and <a>:sub-1 gets a payment once per subscription: own id and seq each, same source.id and timestamp; unsubscribing one leaves the other", async () => {
      const a = acct();
      const S = `${a}:*`;
      const t1 = `${a}:sub-1`;
      await ingestOk(A.url, [payment(`${a}:sub-2`), payment(`${a}:sub-2`)]); // stream seqs 1, 2
      const s = await open(B);
      const w = await open(B); // a witness holding only the stream
      assert.deepEqual((await sub(s, S)).position.seq, 2);
      assert.deepEqual((await sub(s, t1)).position, { id: null, seq: 0 });
      await sub(w, S);

      const item = payment(t1);
      const [r] = await ingestOk(A.url, item);
      const sEnv = await waitStream(s, S, 3);
      const tEnv = await waitTid(s, t1, 1);
      assertTidEnv(tEnv, { item, result: r });
      assertStreamEnv(sEnv, { stream: S, item, source: src(r), seq: 3, timestamp: tEnv.timestamp });
      assert.equal(sEnv.source.id, tEnv.id, "source.id is the same payment's id in both");
      assert.notEqual(sEnv.id, tEnv.id);
      assert.equal(recorded(s, "payment").length, 2, "exactly twice");

      // Unsubscribe the stream: the next payment of sub-1 comes once, as the trackingId's.
      await unsub(s, S);
      const item2 = payment(t1);
      const [r2] = await ingestOk(A.url, item2);
      assertTidEnv(await waitTid(s, t1, 2), { item: item2, result: r2 });
      await waitStream(w, S, 4);
      // Unsubscribe the trackingId, subscribe the stream again: only the stream's envelope.
      await unsub(s, t1);
      assert.equal((await sub(s, S)).position.seq, 4);
      const item3 = payment(t1);
      const [r3] = await ingestOk(A.url, item3);
      assertStreamEnv(await waitStream(s, S, 5), { stream: S, item: item3, source: src(r3), seq: 5 });
      await waitStream(w, S, 5);
      const log = eventLog(s);
      assert.deepEqual(log.slice(0, 2), ["ack", "ack"]);
      assert.deepEqual(log.slice(2, 4).sort(), [`payment:${S}#3`, `payment:${t1}#1`].sort(), "one payment, once per subscription");
      assert.deepEqual(log.slice(4), ["ack", `payment:${t1}#2`, "ack", "ack", `payment:${S}#5`], "only what the held subscriptions cover");
      assert.deepEqual(streamPayments(s, S).map((p) => p.seq), [3, 5], "no stream payment while the stream was not held");
      assert.deepEqual(tidPayments(s, t1).map((p) => p.seq), [1, 2], "no trackingId payment while it was not held");
    });

    T("sub-7 and :sub-7 belong to no stream: plain envelopes, and no stream is stored for them", async () => {
      const u = rand(4);
      const plain = `sub-${u}`;
      const lead = `:sub-${u}`;
      const s = await open(B);
      await sub(s, plain);
      await sub(s, lead);
      const starKeys = async () => (env.keys ? (await env.keys("*\\**")).sort() : null);
      const before = await starKeys();
      const items = [payment(plain), payment(lead)];
      const res = await ingestOk(A.url, items);
      assertTidEnv(await waitTid(s, plain, 1), { item: items[0], result: res[0] });
      assertTidEnv(await waitTid(s, lead, 1), { item: items[1], result: res[1] });
      assert.equal(recorded(s, "payment").length, 2);
      for (const [i, t] of [plain, lead].entries()) {
        const bf = await backfillOk(A.url, { trackingId: t });
        assert.equal(bf.data.length, 1);
        assertTidEnv(bf.data[0], { item: items[i], result: res[i] });
      }
      if (before) {
        assert.deepEqual(await starKeys(), before, "no stream key (a key holding `*`) was written for them");
        const own = await env.keys(`*sub-${u}*`);
        assert.ok(own.length > 0, "their histories are stored");
        assert.ok(own.every((k) => !k.includes("*")), `their keys: ${JSON.stringify(own)}`);
      }
    });

    T("a payment of another account does not reach the stream (a longer account, no separator, other case)", async () => {
      const a = acct();
      const S = `${a}:*`;
      const s = await open(B);
      await sub(s, S);
      const others = [`${a}2:sub-1`, `${a}sub-1`, a, `x${a}:sub-1`, `${a.toUpperCase()}:sub-1`, `sub-1`];
      await ingestOk(A.url, others.map((t) => payment(t)));
      const item = payment(`${a}:sub-1`);
      const [r] = await ingestOk(A.url, item);
      assertStreamEnv(await waitStream(s, S, 1), { stream: S, item, source: src(r), seq: 1 });
      // The longer account's payment went to its own stream.
      const other = await backfillOk(A.url, { trackingId: `${a}2:*` });
      assert.deepEqual(other.data.map((p) => [p.stream, p.seq, p.data.trackingId]), [[`${a}2:*`, 1, `${a}2:sub-1`]]);
      const mine = await backfillOk(A.url, { trackingId: S });
      assert.deepEqual(mine.data.map((p) => p.data.trackingId), [`${a}:sub-1`]);
      assert.equal(recorded(s, "payment").length, 1, `only the account's payment: ${JSON.stringify(recorded(s, "payment"))}`);
    });

    T("replay on B with since = a stream id gives exactly what followed (ingested on A), then live; since = the last id replays nothing", async () => {
      const a = acct();
      const S = `${a}:*`;
      const tids = [`${a}:sub-1`, `${a}:sub-2`, `${a}:inv:9`];
      const items = [0, 1, 2, 3, 4].map((i) => payment(tids[i % 3], { amount: 100 + i }));
      const res = [];
      for (const it of items) res.push(...await ingestOk(A.url, it));
      const all = (await backfillOk(A.url, { trackingId: S })).data;
      assert.deepEqual(all.map((p) => p.seq), [1, 2, 3, 4, 5]);
      all.forEach((e, i) => assertStreamEnv(e, { stream: S, item: items[i], source: src(res[i]), seq: i + 1 }));

      const s = await open(B);
      const ack = await sub(s, S, { since: all[1].id });
      assert.deepEqual(ack.position, { id: all[4].id, seq: 5 });
      await waitStream(s, S, 5);
      const live = payment(tids[1]);
      const [lr] = await ingestOk(A.url, live);
      const le = await waitStream(s, S, 6);
      assertStreamEnv(le, { stream: S, item: live, source: src(lr), seq: 6 });
      assert.deepEqual(streamPayments(s, S), [...all.slice(2), le], "exactly what followed since, then live");
      assert.deepEqual(eventLog(s), ["ack", `payment:${S}#3`, `payment:${S}#4`, `payment:${S}#5`, `payment:${S}#6`]);

      const s2 = await open(A);
      const ack2 = await sub(s2, S, { since: le.id });
      assert.deepEqual(ack2.position, { id: le.id, seq: 6 });
      const live2 = payment(tids[2]);
      const [lr2] = await ingestOk(B.url, live2);
      assertStreamEnv(await waitStream(s2, S, 7), { stream: S, item: live2, source: src(lr2), seq: 7 });
      assert.deepEqual(eventLog(s2), ["ack", `payment:${S}#7`], "nothing replayed after the last id");
    });

    T("INVALID_SINCE: a trackingId's id on a stream, a stream's id on a trackingId, a stream id beyond the last (socket and backfill); nothing changes", async () => {
      const a = acct();
      const S = `${a}:*`;
      const t1 = `${a}:sub-1`;
      const keep = `${a}:keep`;
      const [r1] = await ingestOk(A.url, [payment(t1), payment(t1)]);
      const sids = (await backfillOk(A.url, { trackingId: S })).data.map((p) => p.id);
      assert.equal(sids.length, 2);
      const { epoch } = parseStreamId(sids[0]);
      const s = await open(B);
      await sub(s, keep);
      const cases = [
        [S, r1.id, "a trackingId's id on the stream"],
        [S, sids[0].slice(1), "the stream's id without its s"],
        [t1, sids[0], "the stream's id on a trackingId"],
        [t1, `s${r1.id}`, "a trackingId's id with an s, on the trackingId"],
        [S, `s${epoch}-${2 + 100}`, "a stream id beyond the stream's last seq"],
        [S, `s${epoch}-0`, "a stream id with seq 0"],
        [S, "s", "a lone s"],
        [S, "sabc-1", "s and garbage"],
        [S, "", "an empty since"],
      ];
      for (const [name, since, what] of cases) {
        const e = await ask(s, { trackingId: name, since });
        try {
          assertErr(e, "INVALID_SINCE");
        } catch (err) {
          err.message = `${what} (subscribe ${name} since ${JSON.stringify(since)}): ${err.message}`;
          throw err;
        }
      }
      // Nothing changed: neither the stream nor the trackingId is held.
      await ingestOk(A.url, payment(t1));
      const kItem = payment(keep);
      const [kr] = await ingestOk(A.url, kItem);
      assertTidEnv(await waitTid(s, keep, 1), { item: kItem, result: kr });
      assert.deepEqual(recorded(s, "payment").map((p) => p.data.trackingId), [keep], "no payment for the refused names");
      assert.equal(recorded(s, "ack").length, 1);

      for (const [name, since, what] of [
        [S, r1.id, "a trackingId's id on the stream"],
        [t1, sids[0], "the stream's id on a trackingId"],
        [S, `s${epoch}-${100}`, "a stream id beyond the stream's last seq"],
      ]) {
        const r = await backfillQ(B.url, { trackingId: name, since });
        try {
          assertHttpError(r, 400, "INVALID_SINCE");
        } catch (err) {
          err.message = `backfill, ${what}: ${err.message}`;
          throw err;
        }
      }
    });

    T("backfill of the stream: `*` as is, %2A and %3A%2A answer the stream's envelopes; since and limit page through", async () => {
      const a = acct();
      const S = `${a}:*`;
      const s = await open(B);
      await sub(s, S);
      const items = [payment(`${a}:sub-1`), payment(`${a}:sub-2`), payment(`${a}:sub-1`), payment(`${a}:inv:9`)];
      for (const it of items) await ingestOk(A.url, it);
      await waitStream(s, S, 4);
      const live = streamPayments(s, S);
      for (const q of [`trackingId=${a}:*`, `trackingId=${a}:%2A`, `trackingId=${a}%3A%2A`, `trackingId=${a}%3a%2a`]) {
        for (const node of [A, B]) {
          const r = await backfillRaw(node.url, q);
          assert.equal(r.status, 200, `${q}: ${r.text}`);
          assert.deepEqual(r.body, { data: live, hasMore: false, truncated: false }, q);
        }
      }
      const p1 = await backfillOk(A.url, { trackingId: S, limit: 2 });
      assert.deepEqual([p1.data.map((p) => p.seq), p1.hasMore, p1.truncated], [[1, 2], true, false]);
      const p2 = await backfillOk(A.url, { trackingId: S, since: p1.data[1].id, limit: 2 });
      assert.deepEqual([p2.data, p2.hasMore, p2.truncated], [live.slice(2), false, false]);
      const p3 = await backfillOk(A.url, { trackingId: S, since: live[3].id });
      assert.deepEqual(p3, { data: [], hasMore: false, truncated: false });
      const none = await backfillOk(A.url, { trackingId: `${acct()}:*` });
      assert.deepEqual(none, { data: [], hasMore: false, truncated: false }, "a stream with no payment has an empty history");
    });

    T("a duplicate (same idempotencyKey, same signature; on the other node; twice in one batch) is stored in neither history: the stream's seq does not move", async () => {
      const a = acct();
      const S = `${a}:*`;
      const t1 = `${a}:sub-1`;
      const s = await open(B);
      await sub(s, S);
      const byKey = payment(t1, { idempotencyKey: uid("key") });
      delete byKey.signature;
      const bySig = payment(t1);
      const first = await ingestOk(A.url, [byKey, bySig]);
      await waitStream(s, S, 2);
      const again = await ingestOk(B.url, [byKey, bySig]);
      assert.deepEqual(again, first.map((r) => ({ ...r, duplicate: true })));
      const twice = payment(`${a}:sub-2`);
      const inBatch = await ingestOk(A.url, [twice, twice]);
      assert.deepEqual(inBatch.map((r) => [r.seq, r.duplicate]), [[1, false], [1, true]]);
      // The same signature for another trackingId of the account is another payment.
      const next = payment(`${a}:sub-3`, { signature: bySig.signature });
      const [nr] = await ingestOk(A.url, next);
      assert.equal(nr.duplicate, false, "dedupe is per trackingId");
      assertStreamEnv(await waitStream(s, S, 4), { stream: S, item: next, source: src(nr), seq: 4 });
      assert.deepEqual(streamPayments(s, S).map((p) => [p.seq, p.data.trackingId]),
        [[1, t1], [2, t1], [3, `${a}:sub-2`], [4, `${a}:sub-3`]], "each payment once in the stream");
      assert.deepEqual((await backfillOk(B.url, { trackingId: S })).data, streamPayments(s, S));
      assert.deepEqual((await backfillOk(B.url, { trackingId: t1 })).data.map((p) => p.seq), [1, 2]);
    });

    T("bad stream names are INVALID_TRACKING_ID with the design's message (subscribe, unsubscribe, backfill); nothing changes", async () => {
      const a = acct();
      const S = `${a}:*`;
      const t1 = `${a}:sub-1`;
      const s = await open(B);
      await sub(s, S);
      await sub(s, t1);
      const bad = ["*", `${a}*`, `${a}:b:*`, ":*", `${a}::*`, `${a}:sub-1*`, "**", `:${a}:*`];
      for (const name of bad) {
        for (const event of ["subscribe", "unsubscribe"]) {
          const e = await ask(s, { trackingId: name }, event);
          try {
            assertErr(e, "INVALID_TRACKING_ID", badStreamMessage());
          } catch (err) {
            err.message = `${event} ${JSON.stringify(name)}: ${err.message}`;
            throw err;
          }
        }
        const r = await backfillQ(B.url, { trackingId: name });
        try {
          assertHttpError(r, 400, "INVALID_TRACKING_ID");
          assert.equal(r.body.error.message, badStreamMessage());
        } catch (err) {
          err.message = `backfill ${JSON.stringify(name)}: ${err.message}`;
          throw err;
        }
      }
      // Unsubscribing a valid stream the socket does not hold is acked and changes nothing.
      await unsub(s, `${acct()}:*`);
      // Nothing changed: both subscriptions still deliver; `<a>:b:c` is in the stream <a>:*.
      const items = [payment(`${a}:b:c`), payment(t1)];
      const res = await ingestOk(A.url, items);
      await waitStream(s, S, 2);
      assertTidEnv(await waitTid(s, t1, 1), { item: items[1], result: res[1] });
      const got = streamPayments(s, S);
      assert.deepEqual(got.map((p) => p.data.trackingId).sort(), [`${a}:b:c`, t1].sort());
      assert.equal(recorded(s, "payment").length, 3);
      assert.equal(recorded(s, "ack").length, 3, "no other ack");
    });

    T("concurrent ingest on A and B for three trackingIds of one account (90 payments): stream seqs 1..90, in order on both nodes; each trackingId's payments in its own order", async () => {
      const a = acct();
      const S = `${a}:*`;
      const tids = [`${a}:x`, `${a}:y`, `${a}:z:w`];
      const sa = await open(A);
      const sb = await open(B);
      await sub(sa, S);
      await sub(sb, S);
      const N = 90;
      const items = Array.from({ length: N }, (_, i) => payment(tids[i % 3], { amount: i }));
      const res = (await Promise.all(items.map((it, i) => ingestOk(i % 2 ? B.url : A.url, it)))).map((r) => r[0]);
      const bySig = new Map(items.map((it, i) => [it.signature, i]));
      for (const [name, s] of [["A", sa], ["B", sb]]) {
        await waitUntil(s, () => streamPayments(s, S).length >= N, 15000, () => `${name} has ${streamPayments(s, S).length} of ${N}`);
        const got = streamPayments(s, S);
        assert.deepEqual(got.map((p) => p.seq), Array.from({ length: N }, (_, i) => i + 1), `in order on ${name}`);
        for (const e of got) {
          const k = bySig.get(e.data.signature);
          assertStreamEnv(e, { stream: S, item: items[k], source: src(res[k]) });
        }
        for (const t of tids) {
          assert.deepEqual(got.filter((p) => p.data.trackingId === t).map((p) => p.source.seq),
            Array.from({ length: N / 3 }, (_, i) => i + 1), `${t}'s payments in its own seq order in the stream`);
        }
      }
      assert.deepEqual(streamPayments(sa, S), streamPayments(sb, S));
    });

    T("--stream-history-limit 3 (a node on the same storage): since an old stream id gets the ack, HISTORY_TRUNCATED, the 3 retained, then live; backfill truncated; the trackingId keeps all", async () => {
      const C = await env.extra([...STREAM_ARGS, "--stream-history-limit", "3"]);
      const a = acct();
      const S = `${a}:*`;
      const t1 = `${a}:sub-1`;
      const items = Array.from({ length: 5 }, () => payment(t1));
      await ingestOk(C.url, items[0]);
      const id1 = (await backfillOk(C.url, { trackingId: S })).data[0].id;
      await ingestOk(C.url, items[1]);
      const id2 = (await backfillOk(C.url, { trackingId: S })).data[1].id;
      for (const it of items.slice(2)) await ingestOk(C.url, it);

      const b1 = await backfillOk(C.url, { trackingId: S, since: id1 });
      assert.deepEqual([b1.data.map((p) => p.seq), b1.truncated, b1.hasMore], [[3, 4, 5], true, false]);
      const b2 = await backfillOk(C.url, { trackingId: S, since: id2 });
      assert.deepEqual([b2.data.map((p) => p.seq), b2.truncated], [[3, 4, 5], false]);
      const b0 = await backfillOk(C.url, { trackingId: S });
      assert.deepEqual([b0.data.map((p) => p.seq), b0.truncated], [[3, 4, 5], false]);
      const own = await backfillOk(C.url, { trackingId: t1 });
      assert.deepEqual(own.data.map((p) => p.seq), [1, 2, 3, 4, 5], "the trackingId's history follows --history-limit");

      const s = await open(C);
      const ack = await sub(s, S, { since: id1 });
      assert.equal(ack.position.seq, 5);
      const warn = await waitFor(s, "error", undefined, 5000);
      assertErr(warn, "HISTORY_TRUNCATED");
      assert.equal(warn.data.trackingId, S, "the warning names the stream");
      await waitStream(s, S, 5);
      const live = payment(t1);
      const [lr] = await ingestOk(C.url, live);
      assertStreamEnv(await waitStream(s, S, 6), { stream: S, item: live, source: src(lr), seq: 6 });
      assert.deepEqual(eventLog(s), ["ack", "error:HISTORY_TRUNCATED", `payment:${S}#3`, `payment:${S}#4`, `payment:${S}#5`, `payment:${S}#6`]);
      assert.deepEqual(streamPayments(s, S).slice(0, 3), b1.data, "the replay is what backfill holds");

      if (env.kind !== "memory") {
        // Another node reads the same (trimmed) history.
        const s2 = await open(A);
        await sub(s2, S, { since: id1 });
        assertErr(await waitFor(s2, "error", undefined, 5000), "HISTORY_TRUNCATED");
        await waitStream(s2, S, 6);
        assert.deepEqual(streamPayments(s2, S).map((p) => p.seq), [4, 5, 6]);
      }
    });

    if (backend.kind === "cluster") {
      T("every key of an account (its trackingIds' and its stream's) lies in one hash slot", async () => {
        const a = acct();
        await ingestOk(A.url, [payment(`${a}:sub-1`), payment(`${a}:sub-2`), payment(`${a}:inv:9`)]);
        const keys = await env.keys(`*${a}*`);
        assert.ok(keys.some((k) => k.includes("*")), `a stream key: ${JSON.stringify(keys)}`);
        assert.ok(keys.length >= 4, `keys of three trackingIds and a stream: ${JSON.stringify(keys)}`);
        assert.equal(new Set(keys.map(keySlot)).size, 1, `one slot: ${JSON.stringify(keys.map((k) => [k, keySlot(k)]))}`);
      });
    }
  });
}

describe("streams: a memory node restarted", () => {
  const started = [];
  const sockets = [];
  after(async () => {
    closeAll(sockets);
    for (const s of started) await s.stop();
  });

  test("the stream's history starts afresh: a since from before gets HISTORY_TRUNCATED, then the new history (a larger epoch, seq 1)", async () => {
    const first = await startServer(STREAM_ARGS);
    started.push(first);
    const a = acct();
    const S = `${a}:*`;
    await ingestOk(first.url, [payment(`${a}:sub-1`), payment(`${a}:sub-2`)]);
    const old = (await backfillOk(first.url, { trackingId: S })).data;
    assert.deepEqual(old.map((p) => p.seq), [1, 2]);
    await first.stop();

    const second = await startServer(STREAM_ARGS);
    started.push(second);
    const item = payment(`${a}:sub-1`);
    const [r] = await ingestOk(second.url, item);
    const s = await connect(second.url, WS);
    sockets.push(s);
    const ack = await sub(s, S, { since: old[1].id });
    assert.equal(ack.position.seq, 1);
    assertErr(await waitFor(s, "error", undefined, 5000), "HISTORY_TRUNCATED");
    const e = await waitStream(s, S, 1);
    assertStreamEnv(e, { stream: S, item, source: src(r), seq: 1 });
    assert.ok(parseStreamId(e.id).epoch > parseStreamId(old[1].id).epoch, `a larger epoch: ${e.id} after ${old[1].id}`);
    assert.deepEqual(eventLog(s), ["ack", "error:HISTORY_TRUNCATED", `payment:${S}#1`]);
    const bf = await backfillOk(second.url, { trackingId: S, since: old[0].id });
    assert.deepEqual([bf.truncated, bf.data], [true, [e]]);
  });
});

describe("streams off (no --stream-separator)", () => {
  for (const backend of BACKENDS.slice(0, 2)) {
    describe(backend.name, () => {
      let env;
      const sockets = [];
      before(async () => { env = await backend.start([]); });
      after(async () => { closeAll(sockets); await env?.stop(); });

      test("<a>:sub-1 payments are plain; any name ending in * is INVALID_TRACKING_ID (streams are off) on subscribe, unsubscribe and backfill; nothing changes", async () => {
        const a = acct();
        const t1 = `${a}:sub-1`;
        const s = await connect(env.B.url, WS);
        sockets.push(s);
        await sub(s, t1);
        for (const name of [`${a}:*`, "*", `${a}*`, ":*", `${a}:sub-1*`]) {
          for (const event of ["subscribe", "unsubscribe"]) {
            const e = await ask(s, { trackingId: name }, event);
            try {
              assertErr(e, "INVALID_TRACKING_ID", OFF_MESSAGE);
            } catch (err) {
              err.message = `${event} ${JSON.stringify(name)}: ${err.message}`;
              throw err;
            }
          }
          const r = await backfillQ(env.A.url, { trackingId: name });
          assertHttpError(r, 400, "INVALID_TRACKING_ID");
          assert.equal(r.body.error.message, OFF_MESSAGE, `backfill ${name}`);
        }
        const items = [payment(t1), payment(`${a}:sub-2`), payment(t1)];
        const res = await ingestOk(env.A.url, items);
        assert.deepEqual(res.map((r) => r.seq), [1, 1, 2]);
        assertTidEnv(await waitTid(s, t1, 1), { item: items[0], result: res[0] });
        assertTidEnv(await waitTid(s, t1, 2), { item: items[2], result: res[2] });
        assert.equal(recorded(s, "payment").length, 2, "only the held trackingId's payments, plain");
        assert.equal(recorded(s, "ack").length, 1);
        const bf = await backfillOk(env.A.url, { trackingId: t1 });
        assert.deepEqual(bf.data, tidPayments(s, t1));
        if (env.keys) {
          assert.deepEqual(await env.keys("*\\**"), [], "no stream key (a key holding `*`) at all");
        }
      });
    });
  }
});

describe("streams: configuration", () => {
  const started = [];
  const sockets = [];
  after(async () => {
    closeAll(sockets);
    for (const s of started) await s.stop();
  });
  const start = async (args, envVars = {}) => {
    const s = await startServer(args, envVars);
    started.push(s);
    return s;
  };

  for (const [what, value] of [["*", "*"], ["a space", " "], ["a tab", "\t"], ["a control character", "\u0001"], ["two characters", "::"], ["an empty value", ""]]) {
    test(`--stream-separator ${what} refuses to start, naming the flag`, async () => {
      await assert.rejects(start(["--stream-separator", value]), (err) => {
        assert.match(err.message, /server exited \(\{"code":[1-9]/, "exits non-zero before listening");
        assert.match(err.message, /stream-separator/i);
        assert.match(err.message, /character/i, "the message says what a separator must be (the flag itself is known)");
        assert.doesNotMatch(err.message, /unexpected argument/i);
        return true;
      });
    });
  }

  test("TIDINGS_STREAM_SEPARATOR=/ and TIDINGS_STREAM_HISTORY_LIMIT=2 (variables only): streams by /, two payments kept; the bad-name message names /", async () => {
    const server = await start([], { TIDINGS_STREAM_SEPARATOR: "/", TIDINGS_STREAM_HISTORY_LIMIT: "2" });
    const a = acct();
    const S = `${a}/*`;
    const s = await connect(server.url, WS);
    sockets.push(s);
    await sub(s, S);
    const items = [payment(`${a}/sub-1`), payment(`${a}:sub-2`), payment(`${a}/x/y`), payment(`${a}/sub-1`)];
    const res = [];
    for (const it of items) res.push(...await ingestOk(server.url, it)); // one request each: the stream's order is theirs
    await waitStream(s, S, 3);
    assert.deepEqual(streamPayments(s, S).map((p) => [p.seq, p.data.trackingId, p.source.id]),
      [[1, `${a}/sub-1`, res[0].id], [2, `${a}/x/y`, res[2].id], [3, `${a}/sub-1`, res[3].id]]);
    const bf = await backfillOk(server.url, { trackingId: S });
    assert.deepEqual(bf.data.map((p) => p.seq), [2, 3], "TIDINGS_STREAM_HISTORY_LIMIT=2");
    for (const name of [`${a}:*`, `${a}/b/*`]) {
      assertErr(await ask(s, { trackingId: name }), "INVALID_TRACKING_ID", badStreamMessage("/"));
    }
  });

  test("the flag wins over the variable: --stream-separator : with TIDINGS_STREAM_SEPARATOR=/", async () => {
    const server = await start(STREAM_ARGS, { TIDINGS_STREAM_SEPARATOR: "/" });
    const a = acct();
    const s = await connect(server.url, WS);
    sockets.push(s);
    await sub(s, `${a}:*`);
    assertErr(await ask(s, { trackingId: `${a}/*` }), "INVALID_TRACKING_ID", badStreamMessage(":"));
    const item = payment(`${a}:sub-1`);
    const [r] = await ingestOk(server.url, item);
    assertStreamEnv(await waitStream(s, `${a}:*`, 1), { stream: `${a}:*`, item, source: src(r), seq: 1 });
  });

  test("a multi-byte separator (€) is one character: m€sub-1 is in the stream m€* (socket and backfill)", async () => {
    const server = await start(["--stream-separator", "€"]);
    const a = acct();
    const S = `${a}€*`;
    const s = await connect(server.url, WS);
    sockets.push(s);
    await sub(s, S);
    const item = payment(`${a}€sub-1`);
    const [r] = await ingestOk(server.url, item);
    const e = await waitStream(s, S, 1);
    assertStreamEnv(e, { stream: S, item, source: src(r), seq: 1 });
    assert.deepEqual((await backfillOk(server.url, { trackingId: S })).data, [e]);
    assertErr(await ask(s, { trackingId: `${a}:*` }), "INVALID_TRACKING_ID", badStreamMessage("€"));
  });
});

describe("streams: turning streams on and off on one Redis", () => {
  let redis;
  const started = [];
  const sockets = [];
  before(async () => { redis = await startRedis(); });
  after(async () => {
    closeAll(sockets);
    for (const s of started) await s.stop();
    await redis?.stop();
  });
  const node = async (args) => {
    const [n] = await startNodes(1, redis.url, args);
    started.push(n);
    return n;
  };

  const epochOf = (id) => BigInt(id.replace(/^s/, "").split("-")[0]);

  /**
   * Ingests for `t1` under each configuration in turn (one node at a time on
   * the same Redis); at each change the design says the trackingId's history
   * starts afresh: a larger epoch, no id issued twice, and a since from any
   * earlier configuration gets HISTORY_TRUNCATED (the payments accepted under
   * another configuration are not in this history: never a silent gap). The
   * same for the stream when streams come back on after payments were
   * accepted without them. Every violation is collected, then reported.
   */
  async function toggle(configs) {
    const a = acct();
    const t1 = `${a}:sub-1`;
    const S = `${a}:*`;
    const seen = []; // every trackingId id issued, in order
    let streamSeen = null; // the stream's last id under the last configuration with streams
    const problems = [];
    const check = (ok, msg) => { if (!ok) problems.push(msg); };
    const truncated = async (n, name, since, lastSeq, what) => {
      const s = await connect(n.url, WS);
      sockets.push(s);
      await sub(s, name, { since });
      if (name.endsWith("*")) await waitStream(s, name, lastSeq);
      else await waitTid(s, name, lastSeq);
      const codes = errorsOf(s).map((e) => e.data.code);
      check(codes.length === 1 && codes[0] === "HISTORY_TRUNCATED",
        `${what}: subscribe ${name} since ${since} -> expected ack, HISTORY_TRUNCATED, replay; got ${JSON.stringify(eventLog(s))}`);
      closeAll(s);
    };
    for (const [i, args] of configs.entries()) {
      const n = await node(args);
      const what = `config ${i} (${JSON.stringify(configs.slice(0, i + 1))})`;
      const res = await ingestOk(n.url, [payment(t1), payment(t1)]);
      for (const r of res) check(!seen.includes(r.id), `${what}: id ${r.id} was issued before (${seen})`);
      if (i > 0) {
        for (const since of new Set([seen.at(-1), seen[1]])) await truncated(n, t1, since, res[1].seq, what);
        check(res[0].seq === 1 && epochOf(res[0].id) > epochOf(seen.at(-1)),
          `${what}: the trackingId's history starts afresh (seq 1, a larger epoch): got ${res[0].id} after ${seen.at(-1)}`);
      }
      seen.push(...res.map((r) => r.id));
      if (args.length) {
        const sd = (await backfillOk(n.url, { trackingId: S })).data;
        if (streamSeen) {
          await truncated(n, S, streamSeen, sd.at(-1).seq, `${what}, the stream`);
          check(epochOf(sd[0].id) > epochOf(streamSeen), `${what}: the stream's history starts afresh: got ${sd.map((p) => p.id)} after ${streamSeen}`);
        }
        streamSeen = sd.at(-1).id;
      }
      await n.stop();
    }
    assert.deepEqual(problems, [], `ids issued: ${seen}`);
  }

  test("off, on, off: each change of --stream-separator starts the trackingId's history afresh (larger epoch, HISTORY_TRUNCATED for a since from before, no id twice)", async () => {
    await toggle([[], STREAM_ARGS, []]);
  });

  test("on, off, on: the same", async () => {
    await toggle([STREAM_ARGS, [], STREAM_ARGS]);
  });
});

describe("streams: --max-subscriptions 2 (memory)", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer([...STREAM_ARGS, "--max-subscriptions", "2"]); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  test("a stream counts as one subscription: a stream and a trackingId fit, a third name is TOO_MANY_SUBSCRIPTIONS; a held stream is acked again", async () => {
    const a = acct();
    const S = `${a}:*`;
    const s = await connect(server.url, WS);
    sockets.push(s);
    await sub(s, S);
    await sub(s, `${a}:sub-1`);
    for (const name of [`${a}:sub-2`, `${acct()}:*`]) {
      assertErr(await ask(s, { trackingId: name }), "TOO_MANY_SUBSCRIPTIONS");
    }
    await sub(s, S); // held: acked again
    await sub(s, `${a}:sub-1`);
    const item = payment(`${a}:sub-2`);
    const [r] = await ingestOk(server.url, item);
    assertStreamEnv(await waitStream(s, S, 1), { stream: S, item, source: src(r), seq: 1 });
    assert.equal(tidPayments(s, `${a}:sub-2`).length, 0, "the refused trackingId is not held");
    await unsub(s, `${a}:sub-1`);
    const other = `${acct()}:*`;
    await sub(s, other);
    assertErr(await ask(s, { trackingId: `${a}:sub-1` }), "TOO_MANY_SUBSCRIPTIONS");

    const s2 = await connect(server.url, WS);
    sockets.push(s2);
    await sub(s2, `${acct()}:*`);
    await sub(s2, `${acct()}:*`);
    assertErr(await ask(s2, { trackingId: `${acct()}:*` }), "TOO_MANY_SUBSCRIPTIONS", undefined);
  });
});

// ---------------------------------------------------------------------------
// Token mode (contract section 5 on streams)
// ---------------------------------------------------------------------------

const API_KEY = "ak-" + "streams18" + rand(6);
const SECRET = "ts-streams18-" + rand(16) + "-0123456789";

describe("streams: token mode (memory)", () => {
  let server;
  const sockets = [];
  before(async () => {
    server = await startServer([...STREAM_ARGS, "--auth", "token", "--api-key", API_KEY, "--token-secret", SECRET]);
  });
  after(async () => { closeAll(sockets); await server?.stop(); });

  async function mint(trackingIds) {
    const res = await fetch(`${server.url}/v1/ws/tokens`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify({ trackingIds }),
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    assert.equal(res.status, 201, `mint ${JSON.stringify(trackingIds)}: ${text}`);
    return JSON.parse(text).token;
  }
  const bf = (name, token) => httpGet(`${server.url}/v1/events?trackingId=${encodeURIComponent(name).replace(/\*/g, "%2A")}`,
    { headers: { authorization: `Bearer ${token}` } });

  for (const setup of TRANSPORT_SETUPS.slice(0, 2)) {
    test(`${setup.name}: a token for <a>:* subscribes to the stream <a>:* and backfills it; payments flow`, async () => {
      const a = acct();
      const S = `${a}:*`;
      const token = await mint([S]);
      const s = await connectWith(server.url, setup, { auth: { token } });
      sockets.push(s);
      await sub(s, S);
      await sub(s, `${a}:sub-1`);
      const item = payment(`${a}:sub-1`);
      const [r] = await ingestOk(server.url, item);
      const e = await waitStream(s, S, 1);
      assertStreamEnv(e, { stream: S, item, source: src(r), seq: 1 });
      const b = await bf(S, token);
      assert.equal(b.status, 200, b.text);
      assert.deepEqual(b.body.data, [e]);
      assert.deepEqual(errorsOf(s), []);
    });
  }

  test("an exact token never covers a stream: FORBIDDEN on subscribe, 403 on backfill; a longer prefix or another account's prefix neither", async () => {
    const a = acct();
    const S = `${a}:*`;
    for (const entries of [[`${a}:sub-1`], [`${a}:sub*`], [`${a}:s*`], [`${a}2:*`]]) {
      const token = await mint(entries);
      const s = await connect(server.url, { transports: ["websocket"], auth: { token } });
      sockets.push(s);
      const keep = entries[0].endsWith("*") ? entries[0].slice(0, -1) + "keep" : entries[0];
      await sub(s, keep);
      const e = await ask(s, { trackingId: S });
      try {
        assertErr(e, "FORBIDDEN");
      } catch (err) {
        err.message = `token ${JSON.stringify(entries)}: ${err.message}`;
        throw err;
      }
      assert.equal(e.data.trackingId, S);
      assertHttpError(await bf(S, token), 403, "FORBIDDEN");
      // Nothing changed: the stream is not held (its payment does not come), the covered name still is.
      const kItem = payment(keep);
      await ingestOk(server.url, payment(`${a}:sub-1`));
      const [kr] = await ingestOk(server.url, kItem);
      assertTidEnv(await waitTid(s, keep, kr.seq), { item: kItem, result: kr });
      assert.equal(streamPayments(s, S).length, 0, `token ${JSON.stringify(entries)}: no stream payment`);
    }
  });

  test("a token for merchant-* covers the stream merchant-42:* (and merchant-4* too)", async () => {
    const base = `mt${rand(4)}`;
    const S = `${base}-42:*`;
    for (const entry of [`${base}-*`, `${base}-4*`, `${base}-42:*`]) {
      const token = await mint([entry]);
      const s = await connect(server.url, { transports: ["websocket"], auth: { token } });
      sockets.push(s);
      const ack = await sub(s, S);
      const item = payment(`${base}-42:inv:${rand(2)}`);
      await ingestOk(server.url, item);
      const e = await waitStream(s, S, ack.position.seq + 1);
      assert.deepEqual(e.data.signature, item.signature, `token ${entry}`);
      const b = await bf(S, token);
      assert.equal(b.status, 200, `backfill with a token for ${entry}: ${b.text}`);
      assert.equal(b.body.data.at(-1).id, e.id);
    }
  });

  test("minting accepts <a>:* (a prefix entry)", async () => {
    const token = await mint([`${acct()}:*`]);
    const claims = JSON.parse(Buffer.from(token.split(".")[1], "base64url"));
    assert.equal(claims.tids.length, 1);
    assert.match(claims.tids[0], /^m[0-9a-f]{10}:\*$/);
  });
});
