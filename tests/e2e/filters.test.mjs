// Filters on subscriptions and backfill (contract section 8, design of issue
// 18), end to end: the binary as a process, real redis-server and Redis
// Cluster, the official socket.io-client. Each case runs on a trackingId and
// on an account stream, in memory, on one Redis with two nodes and on a Redis
// Cluster with two nodes (subscribers on node B, payments ingested on node
// A), and the trackingId cases once more on a memory node without streams.
//
// prevSeq (design): every payment a FILTERED subscription receives carries
// the seq of the previous payment that subscription was sent; the first one
// carries since's seq (replay right after since), the seq just before the
// oldest retained payment (after HISTORY_TRUNCATED; 0 after a history started
// afresh; the ack's position.seq when nothing is retained), or the ack's
// position.seq (no since).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer, ingestOk, connect, waitFor, recorded, payment, rand, closeAll, assertHttpError,
} from "./lib/harness.mjs";
import {
  BACKENDS, STREAM_ARGS, withNodeLogs, ask, sub, assertErr, streamPayments, tidPayments, waitStream, waitTid,
  errorsOf, assertStreamEnv, assertTidEnv, withoutPrev, backfillQ, backfillOk, until,
} from "./lib/streams.mjs";

const WS = { transports: ["websocket"] };
const acct = () => `f${rand(5)}`;
const F = (...status) => ({ status });
const E = "executed";
const X = "failed";
const P = "pending";

/**
 * What a test subscribes to: a trackingId (`<a>:sub-1`, every payment its
 * own) or a stream (`<a>:*`, payments spread over three trackingIds).
 */
function subject(kind) {
  const a = acct();
  if (kind === "trackingId") {
    const name = `${a}:sub-1`;
    return { kind, a, name, stream: false, tidFor: () => name };
  }
  const tids = [`${a}:sub-1`, `${a}:sub-2`, `${a}:inv:9`];
  return { kind, a, name: `${a}:*`, stream: true, tidFor: (i) => tids[i % 3] };
}

/** Ingests one payment per request with these statuses; returns {items, res}. */
async function ingestSeq(node, subj, statuses, offset = 0) {
  const items = [];
  const res = [];
  for (const [i, status] of statuses.entries()) {
    const it = payment(subj.tidFor(offset + i), { status });
    items.push(it);
    res.push(...await ingestOk(node.url, it));
  }
  return { items, res };
}

const got = (s, subj) => (subj.stream ? streamPayments(s, subj.name) : tidPayments(s, subj.name));
const waitSeq = (s, subj, seq) => (subj.stream ? waitStream(s, subj.name, seq) : waitTid(s, subj.name, seq));
/** [seq, prevSeq] of each payment; "none" where prevSeq is absent. */
const chain = (list) => list.map((p) => [p.seq, "prevSeq" in p ? p.prevSeq : "none"]);

/** Asserts an envelope of the subject exactly, with prevSeq when given. */
function assertEnv(subj, env, prevSeq) {
  if (subj.stream) assertStreamEnv(env, { stream: subj.name, prevSeq });
  else assertTidEnv(env, { prevSeq });
  if (prevSeq !== undefined) assert.equal(typeof env.prevSeq, "number");
}

/** The subject's stored envelopes (backfill, no filter). */
async function stored(node, subj) {
  const bf = await backfillOk(node.url, { trackingId: subj.name, limit: 1000 });
  for (const e of bf.data) assert.ok(!("prevSeq" in e), `no prevSeq without a filter: ${JSON.stringify(e)}`);
  return bf.data;
}

function eventLog(s) {
  return recorded(s).map((e) => {
    if (e.event === "payment") return `payment#${e.payload.seq}`;
    if (e.event === "error") return `error:${e.payload?.data?.code}`;
    return e.event;
  });
}

const BAD_FILTERS = [
  ["{}", {}],
  ["{status: []}", { status: [] }],
  ['{status: ["nope"]}', { status: ["nope"] }],
  ['{status: ["failed", "nope"]}', { status: ["failed", "nope"] }],
  ['{status: "failed"}', { status: "failed" }],
  ["{status: null}", { status: null }],
  ["{status: [1]}", { status: [1] }],
  ['{status: ["FAILED"]}', { status: ["FAILED"] }],
  ["{other: 1}", { other: 1 }],
  ['{status: ["failed"], other: 1}', { status: ["failed"], other: 1 }],
  ["5", 5],
  ['"failed"', "failed"],
  ['["failed"]', ["failed"]],
  ["false", false],
];

/**
 * Registers the filter tests of `kinds` on a setup: `ctx()` gives
 * {A, B, C, nodes, open(node, opts)}; C is a node with --history-limit 3
 * --stream-history-limit 3 on the same storage.
 */
function filterTests(kinds, ctx) {
  const T = (name, fn) => test(name, withNodeLogs(() => ctx().nodes, fn));

  for (const kind of kinds) {
    for (const transports of [["websocket"], ["polling"]]) {
      T(`${kind}, ${transports[0]}: filter {status: [failed]} without since: only failed payments are delivered, prevSeq chained from the ack's position; unfiltered subscriptions carry no prevSeq`, async () => {
        const { A, B, open } = ctx();
        const subj = subject(kind);
        await ingestSeq(A, subj, [E, X]); // seqs 1, 2
        const s = await open(B, { transports });
        const w = await open(B, { transports }); // unfiltered witness
        const ack = await sub(s, subj.name, { filter: F(X) });
        assert.deepEqual(ack.position.seq, 2, "the ack's position");
        await sub(w, subj.name);
        // The same socket holds an unfiltered trackingId (of another account).
        const other = `${acct()}:plain`;
        await sub(s, other);

        await ingestSeq(A, subj, [E, X, P, X, E, X], 2); // seqs 3..8: failed at 4, 6, 8
        const oItems = [payment(other, { status: X }), payment(other, { status: E })];
        const oRes = await ingestOk(A.url, oItems);
        await waitSeq(w, subj, 8);
        await waitSeq(s, subj, 8);
        await waitTid(s, other, 2);

        const mine = got(s, subj);
        assert.deepEqual(chain(mine), [[4, 2], [6, 4], [8, 6]]);
        const all = got(w, subj);
        assert.deepEqual(chain(all), [3, 4, 5, 6, 7, 8].map((q) => [q, "none"]), "the unfiltered witness gets all, without prevSeq");
        for (const e of mine) {
          assertEnv(subj, e, e.prevSeq);
          assert.deepEqual(withoutPrev(e), all.find((x) => x.seq === e.seq), "the same envelope plus prevSeq");
        }
        const plain = tidPayments(s, other);
        assert.equal(plain.length, 2);
        plain.forEach((e, i) => assertTidEnv(e, { item: oItems[i], result: oRes[i] }));
        assert.deepEqual(errorsOf(s), []);
      });
    }

    T(`${kind}: filter with since replays only matching payments (prevSeq from since's seq), then live ones; repeats in the list are allowed`, async () => {
      const { A, B, open } = ctx();
      const subj = subject(kind);
      await ingestSeq(A, subj, [E, X, E, P, X, E]); // seqs 1..6
      const hist = await stored(A, subj);
      assert.deepEqual(hist.map((p) => p.seq), [1, 2, 3, 4, 5, 6]);

      const s1 = await open(B);
      const s2 = await open(B);
      const s3 = await open(B);
      assert.equal((await sub(s1, subj.name, { since: hist[1].id, filter: F(X) })).position.seq, 6);
      assert.equal((await sub(s2, subj.name, { since: hist[0].id, filter: F(X, P, X) })).position.seq, 6);
      assert.equal((await sub(s3, subj.name, { since: hist[5].id, filter: F(X) })).position.seq, 6);
      await ingestSeq(A, subj, [E, X], 6); // seqs 7, 8
      for (const s of [s1, s2, s3]) await waitSeq(s, subj, 8);

      assert.deepEqual(chain(got(s1, subj)), [[5, 2], [8, 5]]);
      assert.deepEqual(chain(got(s2, subj)), [[2, 1], [4, 2], [5, 4], [8, 5]]);
      assert.deepEqual(chain(got(s3, subj)), [[8, 6]]);
      for (const s of [s1, s2, s3]) {
        assert.deepEqual(errorsOf(s), []);
        for (const e of got(s, subj)) {
          assertEnv(subj, e, e.prevSeq);
          if (e.seq <= 6) assert.deepEqual(withoutPrev(e), hist[e.seq - 1], "a replayed envelope is the stored one plus prevSeq");
        }
      }
      assert.deepEqual(eventLog(s1), ["ack", "payment#5", "payment#8"]);
    });

    T(`${kind}: filter after HISTORY_TRUNCATED (limits 3): the first prevSeq is the seq just before the oldest retained payment`, async () => {
      const { C, open } = ctx();
      const subj = subject(kind);
      await ingestSeq(C, subj, [X]);
      const id1 = (await stored(C, subj))[0].id;
      await ingestSeq(C, subj, [E, X, E, E, X], 1); // seqs 2..6; retained 4, 5, 6
      const hist = await stored(C, subj);
      assert.deepEqual(hist.map((p) => p.seq), [4, 5, 6]);

      const s1 = await open(C);
      const s2 = await open(C);
      const s3 = await open(C); // nothing retained matches: the chain still starts before the oldest retained
      assert.equal((await sub(s1, subj.name, { since: id1, filter: F(X) })).position.seq, 6);
      assert.equal((await sub(s2, subj.name, { since: id1, filter: F(E) })).position.seq, 6);
      assert.equal((await sub(s3, subj.name, { since: id1, filter: F(P) })).position.seq, 6);
      for (const s of [s1, s2, s3]) {
        const warn = await waitFor(s, "error", undefined, 5000);
        assertErr(warn, "HISTORY_TRUNCATED");
        assert.equal(warn.data.trackingId, subj.name);
      }
      await ingestSeq(C, subj, [X, E, X, P], 6); // seqs 7, 8, 9, 10
      await waitSeq(s1, subj, 9);
      await waitSeq(s2, subj, 8);
      await waitSeq(s3, subj, 10);
      assert.deepEqual(chain(got(s1, subj)), [[6, 3], [7, 6], [9, 7]]);
      assert.deepEqual(chain(got(s2, subj)), [[4, 3], [5, 4], [8, 5]]);
      assert.deepEqual(chain(got(s3, subj)), [[10, 3]]);
      assert.deepEqual(eventLog(s1), ["ack", "error:HISTORY_TRUNCATED", "payment#6", "payment#7", "payment#9"]);
      assert.deepEqual(eventLog(s3), ["ack", "error:HISTORY_TRUNCATED", "payment#10"]);
      for (const s of [s1, s2, s3]) for (const e of got(s, subj)) assertEnv(subj, e, e.prevSeq);
    });

    T(`${kind}: concurrent ingest on A and B (60 payments, mixed statuses): filtered subscribers on both nodes get exactly the matching ones in seq order, each prevSeq the seq before it`, async () => {
      const { A, B, open } = ctx();
      const subj = subject(kind);
      const sa = await open(A);
      const sb = await open(B);
      const ackA = await sub(sa, subj.name, { filter: F(X, P) });
      const ackB = await sub(sb, subj.name, { filter: F(X, P) });
      const N = 60;
      const statuses = Array.from({ length: N }, (_, i) => [E, X, P, E, E][i % 5]);
      const res = (await Promise.all(statuses.map((status, i) =>
        ingestOk(i % 2 ? B.url : A.url, payment(subj.tidFor(i), { status }))))).map((r) => r[0]);
      const all = await stored(A, subj);
      assert.equal(all.length, N);
      assert.equal(res.length, N);
      const want = all.filter((p) => p.data.status !== E);
      for (const [name, s, ack] of [["A", sa, ackA], ["B", sb, ackB]]) {
        await waitSeq(s, subj, want.at(-1).seq);
        const mine = got(s, subj);
        assert.deepEqual(mine.map(withoutPrev), want, `${name}: exactly the matching payments, in seq order`);
        assert.deepEqual(mine.map((p) => p.prevSeq), [ack.position.seq, ...want.slice(0, -1).map((p) => p.seq)], `${name}: the prevSeq chain`);
        assert.deepEqual(errorsOf(s), []);
      }
    });

    T(`${kind}: subscribing again replaces the filter (another list, null, absent); with since and a changed filter the replay is read again; with the same filter nothing is resent`, async () => {
      const { A, B, open } = ctx();
      const subj = subject(kind);
      const s = await open(B);
      const w = await open(B); // unfiltered witness on the same node: the node has handed out each payment
      const step = async (statuses, offset) => {
        await ingestSeq(A, subj, statuses, offset);
        await waitSeq(w, subj, offset + statuses.length);
      };
      await sub(w, subj.name);
      assert.deepEqual((await sub(s, subj.name, { filter: F(X) })).position, { id: null, seq: 0 });
      await step([X], 0); // 1
      await waitSeq(s, subj, 1);
      assert.equal((await sub(s, subj.name, { filter: F(E) })).position.seq, 1);
      await step([X, E], 1); // 2, 3
      await waitSeq(s, subj, 3);
      assert.equal((await sub(s, subj.name, { filter: null })).position.seq, 3);
      await step([X], 3); // 4
      await waitSeq(s, subj, 4);
      assert.equal((await sub(s, subj.name, { filter: F(P) })).position.seq, 4);
      await step([P], 4); // 5
      await waitSeq(s, subj, 5);
      assert.equal((await sub(s, subj.name)).position.seq, 5);
      await step([E], 5); // 6
      await waitSeq(s, subj, 6);
      assert.deepEqual(chain(got(s, subj)), [[1, 0], [3, 1], [4, "none"], [5, 4], [6, "none"]]);

      // since #1 with a changed filter (none -> failed): read again from since.
      const id1 = got(w, subj)[0].id;
      assert.equal((await sub(s, subj.name, { since: id1, filter: F(X) })).position.seq, 6);
      await step([X], 6); // 7
      await waitSeq(s, subj, 7);
      // since #1 with the same filter: nothing resent; the chain goes on.
      assert.equal((await sub(s, subj.name, { since: id1, filter: F(X) })).position.seq, 7);
      await step([E, X], 7); // 8, 9
      await waitSeq(s, subj, 9);
      assert.deepEqual(chain(got(s, subj)), [
        [1, 0], [3, 1], [4, "none"], [5, 4], [6, "none"],
        [2, 1], [4, 2], [7, 4],
        [9, 7],
      ]);
      for (const e of got(s, subj)) assertEnv(subj, e, "prevSeq" in e ? e.prevSeq : undefined);
      assert.deepEqual(errorsOf(s), []);
      assert.equal(got(w, subj).length, 9);
    });

    T(`${kind}: a bad filter is INVALID_PAYLOAD and changes nothing (a new name is not held, a held one keeps its filter)`, async () => {
      const { A, B, open } = ctx();
      const subj = subject(kind);
      const fresh = subject(kind);
      const s = await open(B);
      await sub(s, subj.name, { filter: F(X) });
      await ingestSeq(A, subj, [X]); // 1
      await waitSeq(s, subj, 1);
      const id1 = got(s, subj)[0].id;
      for (const [what, filter] of BAD_FILTERS) {
        for (const [name, extra] of [[subj.name, {}], [fresh.name, {}], [subj.name, { since: id1 }]]) {
          const e = await ask(s, { trackingId: name, ...extra, filter });
          try {
            assertErr(e, "INVALID_PAYLOAD", /filter|status/i);
          } catch (err) {
            err.message = `filter ${what} on ${name === subj.name ? "the held name" : "a new name"}${extra.since ? " with since" : ""}: ${err.message}`;
            throw err;
          }
        }
      }
      assert.equal(recorded(s, "ack").length, 1, "no ack but the first");
      await ingestSeq(A, fresh, [X, E]);
      await ingestSeq(A, subj, [E, P, X], 1); // 2, 3, 4
      await waitSeq(s, subj, 4);
      assert.deepEqual(chain(got(s, subj)), [[1, 0], [4, 1]], "the held filter and chain are unchanged");
      assert.equal(got(s, fresh).length, 0, "the new name is not held");
      assert.equal(recorded(s, "payment").length, 2);
    });

    T(`${kind}: backfill with status: only matching payments, prevSeq on each, limit and hasMore count matching; bad status is 400`, async () => {
      const { A, B } = ctx();
      const subj = subject(kind);
      await ingestSeq(A, subj, [E, X, E, P, X, E, X]); // failed at 2, 5, 7
      const hist = await stored(B, subj);
      assert.equal(hist.length, 7);
      const id = (q) => hist[q - 1].id;
      const page = async (params) => {
        const body = await backfillOk(B.url, { trackingId: subj.name, ...params });
        for (const e of body.data) {
          assertEnv(subj, e, e.prevSeq);
          assert.deepEqual(withoutPrev(e), hist[e.seq - 1], "the stored envelope plus prevSeq");
        }
        return [chain(body.data), body.hasMore, body.truncated];
      };
      assert.deepEqual(await page({ status: X }), [[[2, 0], [5, 2], [7, 5]], false, false]);
      assert.deepEqual(await page({ status: X, limit: 2 }), [[[2, 0], [5, 2]], true, false]);
      assert.deepEqual(await page({ status: X, since: id(5), limit: 2 }), [[[7, 5]], false, false]);
      assert.deepEqual(await page({ status: X, since: id(2), limit: 1 }), [[[5, 2]], true, false]);
      assert.deepEqual(await page({ status: X, since: id(3) }), [[[5, 3], [7, 5]], false, false]);
      assert.deepEqual(await page({ status: X, since: id(6) }), [[[7, 6]], false, false]);
      assert.deepEqual(await page({ status: X, since: id(7) }), [[], false, false]);
      assert.deepEqual(await page({ status: `${E},${X}` }), [[[1, 0], [2, 1], [3, 2], [5, 3], [6, 5], [7, 6]], false, false]);
      assert.deepEqual(await page({ status: P }), [[[4, 0]], false, false]);
      assert.deepEqual(await page({ status: `${P},${E},${X}`, since: id(5) }), [[[6, 5], [7, 6]], false, false]);

      // hasMore counts matching payments: two failed, then only an executed one.
      const tail = subject(kind);
      await ingestSeq(A, tail, [X, X, E]);
      const t1 = await backfillOk(B.url, { trackingId: tail.name, status: X, limit: 2 });
      assert.deepEqual([chain(t1.data), t1.hasMore], [[[1, 0], [2, 1]], false], "nothing matching after the page");
      const t2 = await backfillOk(B.url, { trackingId: tail.name, limit: 2 });
      assert.equal(t2.hasMore, true, "without status the executed one is more");

      for (const bad of ["", "nope", `${X},nope`, ",", "FAILED", ` ${X}`]) {
        const r = await backfillQ(B.url, { trackingId: subj.name, status: bad });
        try {
          assertHttpError(r, 400, "INVALID_PAYLOAD");
        } catch (err) {
          err.message = `status=${JSON.stringify(bad)}: ${err.message}`;
          throw err;
        }
      }
    });

    T(`${kind}: backfill with status after a truncation (limits 3): prevSeq from the seq just before the oldest retained payment`, async () => {
      const { C } = ctx();
      const subj = subject(kind);
      await ingestSeq(C, subj, [X]);
      const id1 = (await stored(C, subj))[0].id;
      await ingestSeq(C, subj, [E, X, E, E, X], 1); // retained 4 (E), 5 (E), 6 (X)
      const hist = await stored(C, subj);
      assert.deepEqual(hist.map((p) => p.seq), [4, 5, 6]);
      const page = async (params) => {
        const body = await backfillOk(C.url, { trackingId: subj.name, ...params });
        for (const e of body.data) assert.deepEqual(withoutPrev(e), hist[e.seq - 4]);
        return [chain(body.data), body.hasMore, body.truncated];
      };
      assert.deepEqual(await page({ status: X, since: id1 }), [[[6, 3]], false, true]);
      assert.deepEqual(await page({ status: X }), [[[6, 3]], false, false]);
      assert.deepEqual(await page({ status: E }), [[[4, 3], [5, 4]], false, false]);
      assert.deepEqual(await page({ status: E, since: id1, limit: 1 }), [[[4, 3]], true, true]);
      assert.deepEqual(await page({ status: X, since: hist[0].id }), [[[6, 4]], false, false]);
    });
  }
}

for (const backend of BACKENDS) {
  describe(`filters: ${backend.name}`, () => {
    let env;
    let C;
    const sockets = [];
    const open = async (node, opts = WS) => {
      const s = await connect(node.url, opts);
      sockets.push(s);
      return s;
    };
    before(async () => {
      env = await backend.start(STREAM_ARGS);
      C = await env.extra([...STREAM_ARGS, "--history-limit", "3", "--stream-history-limit", "3"]);
    });
    after(async () => {
      closeAll(sockets);
      await env?.stop();
    });
    filterTests(["trackingId", "stream"], () => ({ A: env.A, B: env.B, C, nodes: env.nodes, open }));
  });
}

describe("filters: memory without streams (trackingIds)", () => {
  let server;
  let C;
  const sockets = [];
  const open = async (node, opts = WS) => {
    const s = await connect(node.url, opts);
    sockets.push(s);
    return s;
  };
  before(async () => {
    server = await startServer([]);
    C = await startServer(["--history-limit", "3"]);
  });
  after(async () => {
    closeAll(sockets);
    await server?.stop();
    await C?.stop();
  });
  filterTests(["trackingId"], () => ({ A: server, B: server, C, nodes: [server, C], open }));
});

describe("filters: memory, --history-ttl 1 (nothing retained)", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer([...STREAM_ARGS, "--history-ttl", "1"]); });
  after(async () => { closeAll(sockets); await server?.stop(); });

  test("a filtered since whose history expired: ack (position kept), HISTORY_TRUNCATED, then the first live payment's prevSeq is the ack's position.seq", async () => {
    const subjects = [subject("trackingId"), subject("stream")];
    const first = new Map();
    for (const subj of subjects) {
      await ingestSeq(server, subj, [X, X]);
      first.set(subj, (await stored(server, subj))[0].id);
    }
    // Nothing to await but time: poll (bounded) until both histories expired.
    await until(async () => {
      for (const subj of subjects) if ((await backfillOk(server.url, { trackingId: subj.name })).data.length) return false;
      return true;
    }, 8000, "the histories to expire");
    for (const subj of subjects) {
      const s = await connect(server.url, WS);
      sockets.push(s);
      const ack = await sub(s, subj.name, { since: first.get(subj), filter: F(X) });
      assert.equal(ack.position.seq, 2, `${subj.kind}: the position is kept when no longer retained`);
      assertErr(await waitFor(s, "error", undefined, 5000), "HISTORY_TRUNCATED");
      await ingestSeq(server, subj, [E, X], 2); // 3, 4
      await waitSeq(s, subj, 4);
      assert.deepEqual(chain(got(s, subj)), [[4, 2]], `${subj.kind}: prevSeq is the ack's position.seq`);
      assert.deepEqual(eventLog(s), ["ack", "error:HISTORY_TRUNCATED", "payment#4"]);
    }
  });
});

describe("filters: a memory node restarted (the history started afresh)", () => {
  const started = [];
  const sockets = [];
  after(async () => {
    closeAll(sockets);
    for (const s of started) await s.stop();
  });

  test("a filtered since from before the restart: HISTORY_TRUNCATED, then the new history's matching payments, the first with prevSeq 0", async () => {
    const first = await startServer(STREAM_ARGS);
    started.push(first);
    const subjects = [subject("trackingId"), subject("stream")];
    const old = new Map();
    for (const subj of subjects) {
      await ingestSeq(first, subj, [X, E]);
      old.set(subj, (await stored(first, subj))[1].id);
    }
    await first.stop();
    const second = await startServer(STREAM_ARGS);
    started.push(second);
    for (const subj of subjects) {
      await ingestSeq(second, subj, [E, X]); // new history: 1 (E), 2 (X)
      const s = await connect(second.url, WS);
      sockets.push(s);
      assert.equal((await sub(s, subj.name, { since: old.get(subj), filter: F(X) })).position.seq, 2);
      assertErr(await waitFor(s, "error", undefined, 5000), "HISTORY_TRUNCATED");
      await waitSeq(s, subj, 2);
      await ingestSeq(second, subj, [X], 2); // 3
      await waitSeq(s, subj, 3);
      assert.deepEqual(chain(got(s, subj)), [[2, 0], [3, 2]], subj.kind);
      assert.deepEqual(eventLog(s), ["ack", "error:HISTORY_TRUNCATED", "payment#2", "payment#3"]);
    }
  });
});
