// The randomized, seeded delivery checker (tests/e2e/checker/): first the
// oracle's rules on synthetic traces (fast; each rule must be able to
// fail; account streams and filters in a describe of their own), then the
// checker against real clusters at CI size, every variant with account
// streams and filters (`--stream-separator :`): `redis` (three
// nodes on one redis-server), `cluster` (three nodes on a three-master
// Redis Cluster), `memory` (one node, no Redis), `cluster-replicas` (a
// Redis Cluster with a replica per master: masters killed and failed over
// under load) and `sentinel` (master, two replicas, three sentinels:
// SENTINEL FAILOVER and the master killed under load).
//
// Seed: random by default, printed with t.diagnostic and in every failure;
// TIDINGS_CHECKER_SEED=N reproduces a run (with `node checker/cli.mjs
// --variant V --seed N` for a longer one).

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Oracle, expectedData, formatReport, parseId, canon, parseStreamId, streamOf } from "./checker/oracle.mjs";
import { Rng } from "./checker/prng.mjs";
import { planFaults, REQUIRED_FAULTS } from "./checker/faults.mjs";
import { runVariant, randomSeed, formatFigures, VARIANTS } from "./checker/run.mjs";

// ---------------------------------------------------------------------------
// Synthetic traces
// ---------------------------------------------------------------------------

const E1 = Date.now() - 60_000; // an epoch
const E2 = E1 + 5_000; // a later one

let amounts = 0;
function item(tid, extra = {}) {
  const n = ++amounts;
  return { trackingId: tid, amount: 1_000_000 + n, timestamp: 1_700_000_000 + n, status: "executed", signature: `sig${n}`, ...extra };
}
/** Feeds a 202 for `items` answered with `ids` (strings "<epoch>-<seq>"). */
function accept(o, items, ids, { duplicate = false, req } = {}) {
  req ??= o.request(items);
  const att = o.attemptStart(req, "n0");
  o.attemptEnd(att, {
    status: 202,
    body: { data: items.map((it, i) => ({ id: ids[i], seq: parseId(ids[i]).seq, trackingId: it.trackingId, duplicate })) },
  });
  return req;
}
const ACCEPTED_MS = Date.now() - 1000; // one envelope timestamp for every synthetic payment
const pay = (it, id, ts = ACCEPTED_MS) => ({ type: "payment_notification", id, seq: parseId(id).seq, data: expectedData(it), timestamp: ts });
const subAck = (tid, position) => ({ type: "ack", data: `Subscribed to trackingId: ${tid}`, timestamp: Date.now(), ...(position !== undefined ? { position } : {}) });
const unsubAck = (tid) => ({ type: "ack", data: `Unsubscribed from trackingId: ${tid}`, timestamp: Date.now() });
const err = (code, data = {}) => ({ type: "error", data: { code, message: "m", ...data }, timestamp: Date.now() });
const pos = (e, s) => (e === null ? { id: null, seq: 0 } : { id: `${e}-${s}`, seq: s });

/** A client `c1` with one connection `c1#1`; returns helpers. */
function session(o, client = "c1", connId = `${client}#1`) {
  o.connOpen(client, connId, "n0", "ws");
  return {
    sub(tid, since, ack, filter) { o.subSent(connId, tid, since, filter); if (ack) o.recv(connId, "ack", ack); },
    unsub(tid, ack = true) { o.unsubSent(connId, tid); if (ack) o.recv(connId, "ack", unsubAck(tid)); },
    recv(event, payload) { o.recv(connId, event, payload); },
    close(reason = "transport close") { o.connClose(connId, reason); },
  };
}
const kinds = (o) => Object.fromEntries(o.finish().violations.map((v) => [v.kind, v.count]));

describe("checker oracle: synthetic traces", () => {
  test("a clean chain (fresh subscribe at position null, then seq 1, 2, 3) passes", () => {
    const o = new Oracle();
    const its = [item("t"), item("t"), item("t")];
    accept(o, its, [`${E1}-1`, `${E1}-2`, `${E1}-3`]);
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    its.forEach((it, i) => s.recv("payment", pay(it, `${E1}-${i + 1}`)));
    s.recv("payment", pay(its[1], `${E1}-2`)); // a duplicate reception is fine
    assert.deepEqual(kinds(o), {});
    assert.equal(o.stats.chained, 3);
    assert.equal(o.stats.dupReceptions, 1);
  });

  test("a fresh subscribe whose position is below what the client already had: the ids it had still carry the chain", () => {
    const o = new Oracle();
    const its = Array.from({ length: 6 }, () => item("t"));
    accept(o, its.slice(1), its.slice(1).map((_, i) => `${E1}-${i + 1}`));
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    for (let i = 1; i <= 3; i++) s.recv("payment", pay(its[i], `${E1}-${i}`));
    s.unsub("t");
    s.sub("t", undefined, subAck("t", pos(E1, 2))); // behind the 3 it received
    s.recv("payment", pay(its[3], `${E1}-3`)); // a duplicate, and the chain's next
    s.recv("payment", pay(its[4], `${E1}-4`));
    assert.deepEqual(kinds(o), {});
    assert.equal(o.finish().stats.notes["fresh-position-below-an-id-received"], 1);
  });

  test("a seq jump is a gap; the resync replay closes it without a second violation", () => {
    const o = new Oracle();
    const its = [item("t"), item("t"), item("t")];
    accept(o, its, [`${E1}-1`, `${E1}-2`, `${E1}-3`]);
    const resyncs = [];
    o.onResync = (client, tid) => resyncs.push([client, tid]);
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    s.recv("payment", pay(its[0], `${E1}-1`));
    s.recv("payment", pay(its[2], `${E1}-3`));
    assert.deepEqual(resyncs, [["c1", "t"]], "the client is asked to resubscribe with since");
    assert.equal(o.sinceFor("c1", "t"), `${E1}-1`, "since = the last id before the jump");
    s.sub("t", `${E1}-1`, subAck("t", pos(E1, 3)));
    s.recv("payment", pay(its[1], `${E1}-2`));
    s.recv("payment", pay(its[2], `${E1}-3`));
    assert.deepEqual(kinds(o), { gap: 1 });
    assert.equal(o.stats.resyncsDone, 1);
    assert.equal(o.sinceFor("c1", "t"), `${E1}-3`);
  });

  test("seq 2 after position {id: null, seq: 0} is a gap", () => {
    const o = new Oracle();
    const its = [item("t"), item("t")];
    accept(o, its, [`${E1}-1`, `${E1}-2`]);
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    s.recv("payment", pay(its[1], `${E1}-2`));
    assert.deepEqual(kinds(o), { gap: 1 });
  });

  test("an id ingest returned for two different payments is reissued", () => {
    const o = new Oracle();
    accept(o, [item("t")], [`${E1}-1`]);
    accept(o, [item("t")], [`${E1}-1`]);
    assert.deepEqual(kinds(o), { "id-reissued": 1 });
  });

  test("a payment after the unsubscribe ack (and before the next subscribe ack) is a violation", () => {
    const o = new Oracle();
    const its = [item("t"), item("t"), item("t")];
    accept(o, its, [`${E1}-1`, `${E1}-2`, `${E1}-3`]);
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    s.recv("payment", pay(its[0], `${E1}-1`));
    s.unsub("t", false);
    s.recv("payment", pay(its[1], `${E1}-2`)); // before the unsubscribe ack: fine
    s.recv("ack", unsubAck("t"));
    o.subSent("c1#1", "t", `${E1}-2`);
    s.recv("payment", pay(its[2], `${E1}-3`)); // acked unsubscribed, subscribe not acked yet
    assert.deepEqual(kinds(o), { "after-unsubscribe": 1 });
  });

  test("a payment before any subscribe ack on a connection is unsolicited", () => {
    const o = new Oracle();
    const it = item("t");
    accept(o, [it], [`${E1}-1`]);
    const s = session(o);
    o.subSent("c1#1", "t", undefined);
    s.recv("payment", pay(it, `${E1}-1`));
    assert.deepEqual(kinds(o), { unsolicited: 1 });
  });

  test("an epoch change without HISTORY_TRUNCATED is a violation; with it (named or after the since ack) it is not", () => {
    for (const warning of [null, "named", "after-since-ack"]) {
      const o = new Oracle();
      const a = item("t");
      const b = item("t");
      accept(o, [a], [`${E1}-1`]);
      const s = session(o);
      s.sub("t", undefined, subAck("t", pos(null)));
      s.recv("payment", pay(a, `${E1}-1`));
      o.dataLoss("wiped");
      accept(o, [b], [`${E2}-1`]);
      if (warning === "named") s.recv("error", err("HISTORY_TRUNCATED", { trackingId: "t" }));
      if (warning === "after-since-ack") {
        // The old server's form: no trackingId, right after the since ack.
        s.sub("t", `${E1}-1`, subAck("t"));
        s.recv("error", err("HISTORY_TRUNCATED"));
      }
      s.recv("payment", pay(b, `${E2}-1`));
      const k = kinds(o);
      if (warning === null) assert.deepEqual(k, { "epoch-change": 1 }, "no warning");
      else assert.deepEqual(Object.keys(k).filter((x) => x !== "envelope"), [], `warning ${warning}: ${JSON.stringify(k)}`);
    }
  });

  test("an unseen seq at or below last, above the ack position, is an order violation; at or below the position it is in flight", () => {
    const o = new Oracle();
    const its = Array.from({ length: 21 }, () => item("t"));
    accept(o, its.slice(1), its.slice(1).map((_, i) => `${E1}-${i + 1}`));
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(E1, 10)));
    s.recv("payment", pay(its[9], `${E1}-9`)); // in flight
    s.recv("payment", pay(its[10], `${E1}-10`)); // in flight
    s.recv("payment", pay(its[11], `${E1}-11`));
    s.recv("error", err("HISTORY_TRUNCATED", { trackingId: "t" }));
    s.recv("payment", pay(its[20], `${E1}-20`)); // new base
    s.recv("payment", pay(its[15], `${E1}-15`)); // unseen, ≤ 20, > 10
    assert.deepEqual(kinds(o), { order: 1 });
    assert.equal(o.stats.inflight, 2);
    assert.equal(o.stats.rebases, 1);
  });

  test("after a subscribe with since, only what is at or below since may be in flight; a replay that skips is a gap", () => {
    const o = new Oracle();
    const its = Array.from({ length: 14 }, () => item("t"));
    accept(o, its.slice(1), its.slice(1).map((_, i) => `${E1}-${i + 1}`));
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(E1, 10))); // fresh: 10 is the base
    s.sub("t", `${E1}-10`, subAck("t", pos(E1, 12))); // again with since before anything arrived
    s.recv("payment", pay(its[11], `${E1}-11`));
    s.recv("payment", pay(its[12], `${E1}-12`));
    s.recv("payment", pay(its[9], `${E1}-9`)); // queued before the first subscribe took effect
    s.recv("payment", pay(its[10], `${E1}-10`));
    assert.deepEqual(kinds(o), {});
    assert.equal(o.stats.inflight, 2);
    s.sub("t", `${E1}-12`, subAck("t", pos(E1, 13)));
    s.recv("payment", pay(its[13], `${E1}-13`));
    const o2 = new Oracle();
    accept(o2, its.slice(1), its.slice(1).map((_, i) => `${E1}-${i + 1}`));
    const s2 = session(o2);
    s2.sub("t", undefined, subAck("t", pos(E1, 2)));
    s2.sub("t", `${E1}-2`, subAck("t", pos(E1, 6)));
    s2.recv("payment", pay(its[4], `${E1}-4`)); // the replay skipped 3
    assert.deepEqual(kinds(o2), { gap: 1 });
  });

  test("a break no resync can fill is reported once, and the client carries on after two resyncs", () => {
    const o = new Oracle();
    const its = Array.from({ length: 6 }, () => item("t"));
    accept(o, its.slice(1), its.slice(1).map((_, i) => `${E1}-${i + 1}`));
    let resyncs = 0;
    o.onResync = () => resyncs++;
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    s.recv("payment", pay(its[1], `${E1}-1`));
    for (let i = 0; i < 3; i++) {
      s.recv("payment", pay(its[3], `${E1}-3`)); // 2 is gone for good
      if (i < 2) s.sub("t", `${E1}-1`, subAck("t", pos(E1, 3)));
    }
    s.recv("payment", pay(its[4], `${E1}-4`));
    assert.deepEqual(kinds(o), { gap: 1 });
    assert.equal(resyncs, 2);
    assert.equal(o.sinceFor("c1", "t"), `${E1}-4`);
  });

  test("INVALID_SINCE for a server-issued since is a violation; so is any other code than HISTORY_TRUNCATED / CONNECTION_ERROR", () => {
    const o = new Oracle();
    const s = session(o);
    s.sub("t", `${E1}-4`);
    s.recv("error", err("INVALID_SINCE"));
    assert.equal(o.sinceFor("c1", "t"), undefined, "the client falls back to a subscribe without since");
    s.sub("u");
    s.recv("error", err("CONNECTION_ERROR"));
    s.sub("v");
    s.recv("error", err("TOO_MANY_SUBSCRIPTIONS"));
    assert.deepEqual(kinds(o), { "invalid-since": 1, "error-code": 1 });
    assert.equal(o.stats.connectionErrors, 1);
  });

  test("a received payment must be the posted item with the accepted seq, and every reception of an id alike", () => {
    const o = new Oracle();
    const a = item("t");
    accept(o, [a], [`${E1}-1`]);
    const s1 = session(o, "c1");
    const s2 = session(o, "c2");
    s1.sub("t", undefined, subAck("t", pos(null)));
    s2.sub("t", undefined, subAck("t", pos(null)));
    const wrong = pay(a, `${E1}-1`);
    wrong.data = { ...wrong.data, amount: a.amount + 1 };
    s1.recv("payment", wrong);
    const other = pay(a, `${E1}-1`);
    other.timestamp -= 1;
    s2.recv("payment", other);
    assert.deepEqual(kinds(o), { "reception-mismatch": 1, "content-mismatch": 1 });
  });

  test("data never echoes idempotencyKey; signature only when posted", () => {
    const o = new Oracle();
    const a = item("t", { signature: undefined, idempotencyKey: "k1" });
    delete a.signature;
    accept(o, [a], [`${E1}-1`]);
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    const env = pay(a, `${E1}-1`);
    env.data = { ...env.data, idempotencyKey: "k1" };
    s.recv("payment", env);
    assert.deepEqual(kinds(o), { "content-mismatch": 1 });
  });

  test("an id ingest never returned is unknown, unless an ambiguous attempt and a storage loss explain it; a payload of no item is invented", () => {
    const o = new Oracle();
    const a = item("t");
    const b = item("t");
    // b: accepted at once as E1-2.
    accept(o, [b], [`${E1}-2`]);
    // a: one ambiguous attempt (timeout), a storage loss, then accepted as E2-1.
    const ra = o.request([a]);
    o.attemptEnd(o.attemptStart(ra, "n0"), { error: "timeout" });
    o.dataLoss("rollback");
    accept(o, [a], [`${E2}-1`], { req: ra });
    const s = session(o);
    s.sub("t", undefined, subAck("t"));
    s.recv("payment", pay(a, `${E1}-1`)); // stored by the ambiguous attempt, then lost
    s.recv("payment", pay(b, `${E1}-9`)); // b under an id ingest never gave
    s.recv("error", err("HISTORY_TRUNCATED", { trackingId: "t" }));
    s.recv("payment", pay(item("t"), `${E2}-7`)); // nobody posted that
    const r = o.finish();
    assert.deepEqual(Object.fromEntries(r.violations.map((v) => [v.kind, v.count])), { "unknown-id": 1, invented: 1, gap: 1 });
    assert.equal(r.stats.unknownAmbiguous, 1);
  });

  test("dedupe: a repeat must answer duplicate with the original id, unless storage lost data since", () => {
    const o = new Oracle();
    const a = item("t");
    const req = accept(o, [a], [`${E1}-1`]);
    accept(o, [a], [`${E1}-1`], { duplicate: true, req }); // fine
    accept(o, [a], [`${E1}-2`], { duplicate: true, req }); // another id
    accept(o, [a], [`${E1}-1`], { duplicate: false, req }); // stored again
    assert.deepEqual(kinds(o), { "dedupe-mismatch": 1, "dedupe-miss": 1 });
    const o2 = new Oracle();
    const req2 = accept(o2, [a], [`${E1}-1`]);
    o2.dataLoss("wiped");
    accept(o2, [a], [`${E2}-1`], { req: req2 });
    assert.deepEqual(kinds(o2), {});
  });

  test("a failover's loss window: a payment first accepted inside it may be stored again as new later, an old epoch answered inside it is noted; after it neither", () => {
    const o = new Oracle();
    const before = item("t");
    const inside = item("t");
    const after = item("t");
    const rb = accept(o, [before], [`${E1}-1`]);
    o.lossWindowBegin("failover begins");
    const ri = accept(o, [inside], [`${E1}-2`]); // the old master, after the promotion
    accept(o, [inside], [`${E2}-1`], { req: ri }); // still inside the window, on the new master
    o.lossWindowEnd("old master demoted");
    accept(o, [before], [`${E2}-2`], { req: rb });
    const ra = accept(o, [after], [`${E2}-3`]);
    assert.deepEqual(kinds(o), {});
    assert.deepEqual(Object.fromEntries(o.notes), {});
    const w = new Oracle();
    accept(w, [item("u")], [`${E2}-1`]);
    w.lossWindowBegin("failover begins");
    accept(w, [item("u")], [`${E1}-7`]); // a node not yet switched, on the old master
    w.lossWindowEnd("old master demoted");
    assert.deepEqual(kinds(w), {});
    assert.deepEqual(Object.fromEntries(w.notes), { "old-epoch-during-failover": 1 });
    accept(w, [item("u")], [`${E1}-8`]); // after the window: a regression
    assert.deepEqual(kinds(w), { "epoch-regress": 1 });
    accept(o, [after], [`${E2}-4`], { req: ra }); // no loss since: a dedupe miss
    accept(o, [item("t")], [`${E2}-3`]); // and an id is never reissued, window or not
    assert.deepEqual(kinds(o), { "dedupe-miss": 1, "id-reissued": 1 });
  });

  test("a new event's epoch below one answered before the request was sent regresses", () => {
    const o = new Oracle();
    accept(o, [item("t")], [`${E2}-1`]);
    o.dataLoss("restart");
    accept(o, [item("t")], [`${E1}-1`]);
    assert.deepEqual(kinds(o), { "epoch-regress": 1 });
  });

  test("ingest answers: shape, 503 without Retry-After, unexpected status", () => {
    const o = new Oracle();
    const a = item("t");
    const req = o.request([a]);
    o.attemptEnd(o.attemptStart(req), { status: 503, body: { error: { code: "UNAVAILABLE", message: "x" } }, retryAfter: null });
    o.attemptEnd(o.attemptStart(req), { status: 500, body: "boom" });
    o.attemptEnd(o.attemptStart(req), { status: 202, body: { data: [{ id: `${E1}-1`, seq: 2, trackingId: "t", duplicate: false }] } });
    assert.deepEqual(kinds(o), { "ingest-shape": 2, "ingest-status": 1 });
  });

  test("envelopes: exact keys, ms timestamps, ack position shape; acks answer commands in order", () => {
    const o = new Oracle();
    const a = item("t");
    accept(o, [a], [`${E1}-1`]);
    const s = session(o);
    s.sub("t", undefined, subAck("t", { id: `${E1}-3`, seq: 2 })); // position seq ≠ its id's
    s.recv("payment", { ...pay(a, `${E1}-1`), extra: 1 });
    s.recv("payment", { ...pay(a, `${E1}-1`), timestamp: Math.floor(Date.now() / 1000) }); // seconds
    s.sub("u");
    s.recv("ack", subAck("v", pos(null))); // not the pending command
    assert.deepEqual(kinds(o), { envelope: 3, protocol: 1 });
  });

  test("old-server leniency: an ack without position makes the first payment the base; mixing both forms is a violation", () => {
    const o = new Oracle();
    const its = [item("t"), item("t"), item("t")];
    accept(o, its, [`${E1}-5`, `${E1}-6`, `${E1}-7`]);
    const s = session(o);
    s.sub("t", undefined, subAck("t"));
    s.recv("payment", pay(its[0], `${E1}-5`));
    s.recv("payment", pay(its[1], `${E1}-6`));
    assert.deepEqual(kinds(o), {});
    s.sub("t", `${E1}-6`, subAck("t", pos(E1, 6)));
    assert.deepEqual(kinds(o), { envelope: 1 });
  });

  test("a HISTORY_TRUNCATED that names no trackingId and follows no since ack is unattributable", () => {
    const o = new Oracle();
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    s.recv("error", err("HISTORY_TRUNCATED"));
    assert.deepEqual(kinds(o), { protocol: 1 });
  });

  test("the chain survives reconnections: since continues it, a jump across connections is a gap", () => {
    const o = new Oracle();
    const its = Array.from({ length: 4 }, () => item("t"));
    accept(o, its, its.map((_, i) => `${E1}-${i + 1}`));
    const s1 = session(o, "c1", "c1#1");
    s1.sub("t", undefined, subAck("t", pos(null)));
    s1.recv("payment", pay(its[0], `${E1}-1`));
    s1.close();
    const s2 = session(o, "c1", "c1#2");
    s2.sub("t", o.sinceFor("c1", "t"), subAck("t", pos(E1, 4)));
    s2.recv("payment", pay(its[2], `${E1}-3`)); // the replay skipped 2
    const r = o.finish();
    assert.deepEqual(Object.fromEntries(r.violations.map((v) => [v.kind, v.count])), { gap: 1 });
    const trace = r.violations[0].items[0].trace.join("\n");
    assert.match(trace, /c1#1 .*connected/);
    assert.match(trace, /disconnected/);
    assert.match(trace, /c1#2 .*subscribe since=/);
  });

  test("a client still subscribed without its marker is reported, and the report carries seed, variant, client, trackingId, trace and faults", () => {
    const o = new Oracle({ seed: 1234, variant: "redis" });
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)));
    o.fault("node-kill", { node: "n1" });
    o.markerMissing("c1", "t", `${E1}-9`);
    const r = o.finish();
    assert.deepEqual(Object.fromEntries(r.violations.map((v) => [v.kind, v.count])), { "marker-missing": 1 });
    const text = formatReport(r);
    for (const needle of ["seed=1234", "variant=redis", "client=c1", "trackingId=t", "ack subscribe (fresh)", "node-kill", "marker"]) {
      assert.ok(text.includes(needle), `report must mention ${needle}:\n${text}`);
    }
  });

  test("canon is key-order independent", () => {
    assert.equal(canon({ a: 1, b: { c: 2, d: [1, 2] } }), canon({ b: { d: [1, 2], c: 2 }, a: 1 }));
    assert.notEqual(canon({ a: 1 }), canon({ a: "1" }));
  });

  test("the PRNG and the fault schedule are functions of the seed", () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const xs = Array.from({ length: 50 }, () => a.next());
    assert.deepEqual(xs, Array.from({ length: 50 }, () => b.next()));
    assert.notDeepEqual(xs, Array.from({ length: 50 }, () => new Rng(43).next()));
    assert.deepEqual(new Rng(7).fork("x").base58(20), new Rng(7).fork("x").base58(20));
    assert.notEqual(new Rng(7).fork("x").base58(20), new Rng(7).fork("y").base58(20));
    for (const variant of Object.keys(REQUIRED_FAULTS)) {
      const p1 = planFaults(new Rng(9), variant);
      assert.deepEqual(p1, planFaults(new Rng(9), variant));
      for (const k of REQUIRED_FAULTS[variant]) assert.ok(p1.some((s) => s.kind === k && !s.extra), `${variant} plans ${k}`);
      const snap = p1.findIndex((s) => s.kind === "snapshot");
      const roll = p1.findIndex((s) => s.kind === "redis-rollback");
      if (roll >= 0) assert.ok(snap >= 0 && snap < roll - 1, `${variant}: snapshot well before the rollback`);
    }
  });
});

// ---------------------------------------------------------------------------
// Synthetic traces: account streams and filters (contract section 8)
// ---------------------------------------------------------------------------

const S1 = E1 + 700; // a stream epoch
const S2 = S1 + 5_000; // a later one
/** A stream event of `it`, stream id `s<epoch>-<seq>`, for the trackingId event `srcId`. */
const spay = (it, sid, srcId, extra = {}) => ({
  type: "payment_notification", stream: streamOf(it.trackingId, ":"), id: sid, seq: parseStreamId(sid).seq,
  source: { id: srcId, seq: parseId(srcId).seq }, data: expectedData(it), timestamp: ACCEPTED_MS, ...extra,
});
const sid = (e, q) => `s${e}-${q}`;
const spos = (e, q) => (e === null ? { id: null, seq: 0 } : { id: sid(e, q), seq: q });
const withStatus = (tid, status) => item(tid, { status });
/** An oracle with streams on (separator ":"). */
const streamsOracle = () => new Oracle({ separator: ":" });
/** A page answer of GET /v1/events. */
const page = (data, hasMore = false, truncated = false) => ({ status: 200, body: { data, hasMore, truncated } });

describe("checker oracle: streams and filters", () => {
  /** Three payments of two trackingIds of account a: (ids E1-1, E1-1, E1-2) and their stream events s1..s3. */
  function account(o) {
    const x = [item("a:x"), item("a:x")];
    const y = item("a:y");
    accept(o, [x[0], y, x[1]], [`${E1}-1`, `${E1}-1`, `${E1}-2`]);
    return [spay(x[0], sid(S1, 1), `${E1}-1`), spay(y, sid(S1, 2), `${E1}-1`), spay(x[1], sid(S1, 3), `${E1}-2`)];
  }

  test("a clean stream chain passes; its events are checked against ingest (content, source, trackingId timestamp)", () => {
    const o = streamsOracle();
    const ev = account(o);
    const s = session(o);
    s.sub("a:*", undefined, subAck("a:*", spos(null)));
    s.sub("a:x", undefined, subAck("a:x", pos(null)));
    for (const e of ev) s.recv("payment", e);
    s.recv("payment", pay(ev[0].data, `${E1}-1`)); // the trackingId's own event of it
    s.recv("payment", ev[1]); // a duplicate reception
    const r = o.finish();
    assert.deepEqual(kinds(o), {});
    assert.equal(r.stats.streamReceptions, 4);
    assert.equal(r.stats.streamEventsKnown, 3);
    assert.equal(r.stats.streamOrderPairs, 1);
  });

  test("a dropped stream event is a gap, two swapped ones too; the resync replay closes it", () => {
    for (const order of [[0, 2], [0, 2, 1]]) {
      const o = streamsOracle();
      const ev = account(o);
      const resyncs = [];
      o.onResync = (client, name) => resyncs.push(name);
      const s = session(o);
      s.sub("a:*", undefined, subAck("a:*", spos(null)));
      for (const i of order) s.recv("payment", ev[i]);
      assert.deepEqual(kinds(o), { gap: 1 }, `received ${order}`);
      assert.deepEqual(resyncs, ["a:*"]);
      assert.equal(o.sinceFor("c1", "a:*"), sid(S1, 1), "the resync's since is the stream id before the jump");
      s.sub("a:*", sid(S1, 1), subAck("a:*", spos(S1, 3)));
      s.recv("payment", ev[1]);
      s.recv("payment", ev[2]);
      assert.deepEqual(kinds(o), { gap: 1 });
      assert.equal(o.sinceFor("c1", "a:*"), sid(S1, 3));
    }
  });

  test("a stream epoch change without HISTORY_TRUNCATED is a violation; with it, the next event is the new base", () => {
    for (const warned of [false, true]) {
      const o = streamsOracle();
      const ev = account(o);
      const s = session(o);
      s.sub("a:*", undefined, subAck("a:*", spos(null)));
      s.recv("payment", ev[0]);
      o.dataLoss("wiped");
      const z = item("a:z");
      accept(o, [z], [`${E2}-1`]);
      if (warned) s.recv("error", err("HISTORY_TRUNCATED", { trackingId: "a:*" }));
      s.recv("payment", spay(z, sid(S2, 1), `${E2}-1`));
      assert.deepEqual(kinds(o), warned ? {} : { "epoch-change": 1 });
    }
  });

  test("a trackingId's payments out of their order inside the stream", () => {
    const o = streamsOracle();
    const x = [item("a:x"), item("a:x")];
    accept(o, x, [`${E1}-1`, `${E1}-2`]);
    const s = session(o);
    s.sub("a:*", undefined, subAck("a:*", spos(null)));
    s.recv("payment", spay(x[1], sid(S1, 1), `${E1}-2`));
    s.recv("payment", spay(x[0], sid(S1, 2), `${E1}-1`));
    assert.deepEqual(kinds(o), { "stream-order": 1 });
  });

  test("one payment twice in a stream epoch (same source.id, or stored again with no loss since) is a duplicate", () => {
    const o = streamsOracle();
    const x = [item("a:x"), item("a:x")];
    accept(o, x, [`${E1}-1`, `${E1}-2`]);
    const s = session(o);
    s.sub("a:*", undefined, subAck("a:*", spos(null)));
    s.recv("payment", spay(x[0], sid(S1, 1), `${E1}-1`));
    s.recv("payment", spay(x[0], sid(S1, 2), `${E1}-1`));
    s.recv("payment", spay(x[1], sid(S1, 3), `${E1}-2`));
    assert.deepEqual(kinds(o), { "stream-duplicate": 1 });
    // The same payment under a second trackingId id, and no loss: a dedupe miss, and a duplicate in the stream.
    const o2 = streamsOracle();
    const y = item("a:y");
    const req = accept(o2, [y], [`${E1}-1`]);
    accept(o2, [y], [`${E1}-2`], { req });
    const s2 = session(o2);
    s2.sub("a:*", undefined, subAck("a:*", spos(null)));
    s2.recv("payment", spay(y, sid(S1, 1), `${E1}-1`));
    s2.recv("payment", spay(y, sid(S1, 2), `${E1}-2`));
    assert.deepEqual(kinds(o2), { "dedupe-miss": 1, "stream-duplicate": 1 });
    // After a storage loss, it may be stored again (its dedupe key lost too): a note.
    const o3 = streamsOracle();
    const req3 = accept(o3, [y], [`${E1}-1`]);
    o3.dataLoss("rollback");
    accept(o3, [y], [`${E1}-2`], { req: req3 });
    const s3 = session(o3);
    s3.sub("a:*", undefined, subAck("a:*", spos(null)));
    s3.recv("payment", spay(y, sid(S1, 1), `${E1}-1`));
    s3.recv("payment", spay(y, sid(S1, 2), `${E1}-2`));
    assert.deepEqual(kinds(o3), {});
    assert.equal(o3.finish().stats.notes["stream-payment-again-after-a-loss"], 1);
  });

  test("a stream id seen for two payments is reissued; a payment in the wrong stream; a source that is not the payment's", () => {
    const o = streamsOracle();
    const ev = account(o);
    const s1 = session(o, "c1");
    const s2 = session(o, "c2");
    s1.sub("a:*", undefined, subAck("a:*", spos(null)));
    s2.sub("a:*", undefined, subAck("a:*", spos(null)));
    s1.recv("payment", ev[0]);
    s2.recv("payment", { ...ev[1], id: sid(S1, 1), seq: 1 });
    assert.deepEqual(kinds(o), { "stream-id-reissued": 1, "reception-mismatch": 1 });
    const o2 = streamsOracle();
    const b = item("b:x");
    const x = item("a:x");
    accept(o2, [b, x], [`${E1}-1`, `${E1}-1`]);
    const s = session(o2);
    s.sub("a:*", undefined, subAck("a:*", spos(null)));
    s.recv("payment", { ...spay(b, sid(S1, 1), `${E1}-1`), stream: "a:*" });
    s.recv("payment", spay(x, sid(S1, 2), `${E1}-2`)); // x was accepted as E1-1
    const k = kinds(o2);
    assert.equal(k["wrong-stream"], 1);
    assert.equal(k["unknown-id"], 1, JSON.stringify(k));
    const o3 = streamsOracle();
    const ev3 = account(o3);
    const s3 = session(o3);
    s3.sub("a:*", undefined, subAck("a:*", spos(null)));
    s3.sub("a:x", undefined, subAck("a:x", pos(null)));
    s3.recv("payment", { ...ev3[0], timestamp: ACCEPTED_MS + 1 });
    s3.recv("payment", pay(ev3[0].data, `${E1}-1`));
    s3.recv("payment", { ...ev3[1], source: { id: `${E1}-2`, seq: 2 } }); // y's source is E1-1; a:y E1-2 was never accepted
    s3.recv("payment", { ...ev3[2], source: { id: `${E1}-1`, seq: 1 } }); // x[1]'s source is E1-2, not x[0]'s E1-1
    // (and then x[0]'s E1-1 is twice in the stream)
    assert.deepEqual(kinds(o3), { "content-mismatch": 2, "unknown-id": 1, "stream-duplicate": 1 });
  });

  test("stream envelopes: exact keys, s-ids, source; prevSeq only on a filtered subscription's payments", () => {
    const o = streamsOracle();
    const ev = account(o);
    const s = session(o);
    s.sub("a:*", undefined, subAck("a:*", spos(null)));
    const { source, ...noSource } = ev[0];
    s.recv("payment", noSource);
    s.recv("payment", { ...ev[0], id: `${S1}-1` }); // a trackingId's id form
    s.recv("payment", { ...ev[0], prevSeq: 0 });
    s.sub("a:y", undefined, subAck("a:y", pos(null)), ["executed"]);
    s.recv("payment", pay(ev[1].data, `${E1}-1`)); // filtered: no prevSeq
    s.sub("a:x", undefined, subAck("a:x", { id: `${E1}-1`, seq: 1 }));
    s.sub("a:*", undefined, subAck("a:*", { id: `${S1}-1`, seq: 1 })); // a stream position needs s<epoch>-<seq>
    assert.deepEqual(kinds(o), { envelope: 5 });
  });

  test("a filtered chain: prevSeq from the ack's position, then the previous seq; a clean run passes", () => {
    const o = streamsOracle();
    const its = ["executed", "failed", "executed", "pending", "executed"].map((st) => withStatus("t", st));
    accept(o, its, its.map((_, i) => `${E1}-${i + 1}`));
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(E1, 1)), ["executed"]);
    s.recv("payment", { ...pay(its[2], `${E1}-3`), prevSeq: 1 });
    s.recv("payment", { ...pay(its[4], `${E1}-5`), prevSeq: 3 });
    const r = o.finish();
    assert.deepEqual(kinds(o), {});
    assert.equal(r.stats.prevSeqChained, 2);
    assert.equal(r.stats.holeLinksChecked, 2);
    assert.equal(r.stats.holeSeqsChecked, 2, "E1-2 and E1-4 were checked not to match");
  });

  test("a filtered subscription: a status its filter does not list, a prevSeq hole, a prevSeq below the last, a skipped match", () => {
    const cases = [
      // [statuses, [seq, prevSeq]... received, expected violations]
      [["executed", "failed", "executed"], [[1, 0], [2, 1]], { "filter-mismatch": 1 }],
      [["executed", "failed", "executed"], [[1, 0], [3, 2]], { gap: 1 }],
      // (a prevSeq below the last claims that the last one did not match: a hole too)
      [["executed", "failed", "executed", "executed"], [[1, 0], [3, 1], [4, 1]], { "prev-seq": 1, "filter-hole": 1 }],
      [["executed", "executed", "executed"], [[1, 0], [3, 1]], { "filter-hole": 1 }],
      [["failed", "executed"], [[2, 0]], {}],
      [["failed", "executed"], [[2, 2]], { gap: 1 }],
    ];
    for (const [statuses, recv, expected] of cases) {
      const o = streamsOracle();
      const its = statuses.map((st) => withStatus("t", st));
      accept(o, its, its.map((_, i) => `${E1}-${i + 1}`));
      const s = session(o);
      s.sub("t", undefined, subAck("t", pos(null)), ["executed"]);
      for (const [q, prevSeq] of recv) s.recv("payment", { ...pay(its[q - 1], `${E1}-${q}`), prevSeq });
      assert.deepEqual(kinds(o), expected, `${statuses} received ${JSON.stringify(recv)}`);
    }
  });

  test("prevSeq chains through a payment sent again (the seq of the previous payment this subscription was sent); a duplicate off the chain is a break", () => {
    for (const [dupPrev, expected] of [[4, {}], [2, { "prev-seq": 1 }], [5, { gap: 1 }]]) {
      const o = streamsOracle();
      const its = ["executed", "failed", "executed", "failed", "executed"].map((st) => withStatus("t", st));
      accept(o, its, its.map((_, i) => `${E1}-${i + 1}`));
      const s = session(o);
      s.sub("t", undefined, subAck("t", pos(null)));
      for (let i = 0; i < 4; i++) s.recv("payment", pay(its[i], `${E1}-${i + 1}`));
      // Another filter, since E1-4: the room, behind, sends E1-3 again.
      s.sub("t", `${E1}-4`, subAck("t", pos(E1, 4)), ["executed"]);
      s.recv("payment", { ...pay(its[2], `${E1}-3`), prevSeq: dupPrev });
      s.recv("payment", { ...pay(its[4], `${E1}-5`), prevSeq: 3 });
      assert.deepEqual(kinds(o), expected, `the duplicate with prevSeq ${dupPrev}`);
    }
    // One the subscription never had (it matches the new filter only),
    // sent again by the room after the replay: in flight, its prevSeq above
    // its seq; the chain goes on through it.
    const o = streamsOracle();
    const its = ["pending", "executed", "executed", "pending"].map((st) => withStatus("t", st));
    accept(o, its, its.map((_, i) => `${E1}-${i + 1}`));
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)), ["executed"]);
    s.recv("payment", { ...pay(its[1], `${E1}-2`), prevSeq: 0 });
    s.recv("payment", { ...pay(its[2], `${E1}-3`), prevSeq: 2 });
    s.sub("t", `${E1}-3`, subAck("t", pos(E1, 3)), ["pending"]);
    s.recv("payment", { ...pay(its[0], `${E1}-1`), prevSeq: 3 });
    s.recv("payment", { ...pay(its[3], `${E1}-4`), prevSeq: 1 });
    assert.deepEqual(kinds(o), {});
    assert.equal(o.stats.inflight, 1);
  });

  test("a subscribe again with since and the same filter: prevSeq goes on from the last payment, or from since when the replay is read again", () => {
    for (const [prev, expected] of [[3, {}], [1, {}], [2, { "prev-seq": 1, "filter-hole": 1 }]]) {
      const o = streamsOracle();
      const its = ["executed", "failed", "executed", "executed"].map((st) => withStatus("t", st));
      accept(o, its, its.map((_, i) => `${E1}-${i + 1}`));
      const s = session(o);
      s.sub("t", undefined, subAck("t", pos(null)), ["executed"]);
      s.recv("payment", { ...pay(its[0], `${E1}-1`), prevSeq: 0 });
      o.subSent("c1#1", "t", `${E1}-1`, ["executed"]);
      s.recv("payment", { ...pay(its[2], `${E1}-3`), prevSeq: 1 }); // before the ack
      s.recv("ack", subAck("t", pos(E1, 3)));
      if (prev === 1) s.recv("payment", { ...pay(its[2], `${E1}-3`), prevSeq: 1 }); // read again from since
      s.recv("payment", { ...pay(its[3], `${E1}-4`), prevSeq: prev === 1 ? 3 : prev });
      assert.deepEqual(kinds(o), expected, `prevSeq ${prev}`);
    }
  });

  test("a filtered stream: a skipped match is a hole, known from another subscriber's or a backfill's events", () => {
    const o = streamsOracle();
    const ev = account(o); // s1 x executed, s2 y executed, s3 x executed
    const s1 = session(o, "c1");
    const s2 = session(o, "c2");
    s1.sub("a:*", undefined, subAck("a:*", spos(null)));
    s2.sub("a:*", undefined, subAck("a:*", spos(null)), ["executed", "failed"]);
    s1.recv("payment", ev[0]);
    s1.recv("payment", ev[1]);
    s2.recv("payment", { ...ev[0], prevSeq: 0 });
    s2.recv("payment", { ...ev[2], prevSeq: 1 }); // skips s2 (executed)
    assert.deepEqual(kinds(o), { "filter-hole": 1 });
  });

  test("after HISTORY_TRUNCATED a filtered chain restarts at the next payment (prevSeq below its seq)", () => {
    const o = streamsOracle();
    const its = Array.from({ length: 8 }, () => withStatus("t", "failed"));
    accept(o, its, its.map((_, i) => `${E1}-${i + 1}`));
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)), ["failed"]);
    s.recv("payment", { ...pay(its[0], `${E1}-1`), prevSeq: 0 });
    s.sub("t", `${E1}-1`, subAck("t", pos(E1, 8)), ["failed"]);
    s.recv("error", err("HISTORY_TRUNCATED", { trackingId: "t" }));
    s.recv("payment", { ...pay(its[5], `${E1}-6`), prevSeq: 5 }); // the oldest retained
    s.recv("payment", { ...pay(its[6], `${E1}-7`), prevSeq: 6 });
    assert.deepEqual(kinds(o), {});
    s.recv("error", err("HISTORY_TRUNCATED", { trackingId: "t" }));
    s.recv("payment", { ...pay(its[7], `${E1}-8`), prevSeq: 8 }); // not below its seq
    assert.deepEqual(kinds(o), { "prev-seq": 1 });
  });

  test("subscribing again with since and another filter restarts the chain at since; with the same filter it goes on", () => {
    const o = streamsOracle();
    const its = ["executed", "failed", "executed", "failed", "executed"].map((st) => withStatus("t", st));
    accept(o, its, its.map((_, i) => `${E1}-${i + 1}`));
    const s = session(o);
    s.sub("t", undefined, subAck("t", pos(null)), ["executed"]);
    s.recv("payment", { ...pay(its[0], `${E1}-1`), prevSeq: 0 });
    s.recv("payment", { ...pay(its[2], `${E1}-3`), prevSeq: 1 });
    // Another filter, since E1-1: the replay is read again from there.
    s.sub("t", `${E1}-1`, subAck("t", pos(E1, 3)), ["failed", "executed"]);
    s.recv("payment", { ...pay(its[1], `${E1}-2`), prevSeq: 1 });
    s.recv("payment", { ...pay(its[2], `${E1}-3`), prevSeq: 2 }); // had it: the chain's next
    s.recv("payment", { ...pay(its[3], `${E1}-4`), prevSeq: 3 });
    // The same filter (another order, a repeat), since E1-4: the chain goes on.
    s.sub("t", `${E1}-4`, subAck("t", pos(E1, 4)), ["executed", "failed", "failed"]);
    s.recv("payment", { ...pay(its[4], `${E1}-5`), prevSeq: 4 });
    const r = o.finish();
    assert.deepEqual(kinds(o), {});
    assert.equal(r.stats.refilterRestarts, 1);
    // No filter any more, with since: payments without prevSeq, from since.
    s.sub("t", `${E1}-4`, subAck("t", pos(E1, 5)));
    s.recv("payment", pay(its[4], `${E1}-5`));
    assert.deepEqual(kinds(o), {});
    // A replay after another filter that skips a match is a gap.
    const o2 = streamsOracle();
    accept(o2, its, its.map((_, i) => `${E1}-${i + 1}`));
    const s2 = session(o2);
    s2.sub("t", undefined, subAck("t", pos(null)), ["executed"]);
    s2.recv("payment", { ...pay(its[0], `${E1}-1`), prevSeq: 0 });
    s2.recv("payment", { ...pay(its[2], `${E1}-3`), prevSeq: 1 });
    s2.sub("t", `${E1}-1`, subAck("t", pos(E1, 3)), ["failed"]);
    s2.recv("payment", { ...pay(its[3], `${E1}-4`), prevSeq: 2 }); // E1-2 was not sent
    assert.deepEqual(kinds(o2), { gap: 1 });
  });

  test("the final backfill: contiguous, the subscribers' envelopes; filtered reads are its matching payments with prevSeq", () => {
    const build = () => {
      const o = streamsOracle();
      const its = ["executed", "failed", "pending", "failed", "executed"].map((st, i) => withStatus(i % 2 ? "a:x" : "a:y", st));
      const ids = its.map((it, i) => `${E1}-${its.slice(0, i + 1).filter((j) => j.trackingId === it.trackingId).length}`);
      accept(o, its, ids);
      const ev = its.map((it, i) => spay(it, sid(S1, i + 1), ids[i]));
      return { o, ev };
    };
    const fil = (e, prevSeq) => ({ ...e, prevSeq });
    const full = (ev) => [{ since: undefined, limit: 3, res: page(ev.slice(0, 3), true) }, { since: ev[2].id, limit: 3, res: page(ev.slice(3)) }];
    {
      const { o, ev } = build();
      o.streamBackfill("a:*", full(ev), [
        { statuses: ["failed"], since: undefined, pages: [{ since: undefined, limit: 1, res: page([fil(ev[1], 0)], true) }, { since: ev[1].id, limit: 1, res: page([fil(ev[3], 2)]) }] },
        { statuses: ["executed", "pending"], since: ev[1].id, pages: [{ since: ev[1].id, limit: 5, res: page([fil(ev[2], 2), fil(ev[4], 3)]) }] },
      ]);
      const r = o.finish();
      assert.deepEqual(kinds(o), {});
      assert.equal(r.stats.backfillEvents, 5);
      assert.equal(r.stats.backfillFilteredEvents, 4);
      assert.equal(r.stats.streamCompleteChecked, 5);
    }
    const planted = [
      ["a filtered prevSeq off", (ev) => [{ statuses: ["failed"], since: undefined, pages: [{ since: undefined, limit: 5, res: page([fil(ev[1], 1), fil(ev[3], 2)]) }] }]],
      ["a filtered read that skips a match", (ev) => [{ statuses: ["failed"], since: undefined, pages: [{ since: undefined, limit: 5, res: page([fil(ev[3], 0)]) }] }]],
      ["hasMore with nothing left", (ev) => [{ statuses: ["failed"], since: undefined, pages: [{ since: undefined, limit: 5, res: page([fil(ev[1], 0), fil(ev[3], 2)], true) }] }]],
      ["more than limit", (ev) => [{ statuses: ["failed"], since: undefined, pages: [{ since: undefined, limit: 1, res: page([fil(ev[1], 0), fil(ev[3], 2)]) }] }]],
      ["a filtered event without prevSeq", (ev) => [{ statuses: ["failed"], since: undefined, pages: [{ since: undefined, limit: 5, res: page([ev[1], fil(ev[3], 2)]) }] }]],
    ];
    for (const [what, reads] of planted) {
      const { o, ev } = build();
      o.streamBackfill("a:*", full(ev), reads(ev));
      assert.deepEqual(kinds(o), { backfill: 1 }, what);
    }
    {
      const { o, ev } = build();
      o.streamBackfill("a:*", [{ since: undefined, limit: 9, res: page([ev[0], ev[2], ev[3]]) }]);
      assert.deepEqual(kinds(o), { backfill: 1 }, "not contiguous");
    }
    {
      // An accepted payment (no loss since) missing from the final
      // history; one a subscriber received as another envelope.
      const { o, ev } = build();
      const s = session(o);
      s.sub("a:*", undefined, subAck("a:*", spos(null)));
      for (const e of ev.slice(0, 4)) s.recv("payment", e);
      o.streamBackfill("a:*", [{ since: undefined, limit: 9, res: page([ev[0], ev[1], ev[2], { ...ev[3], timestamp: ev[3].timestamp + 1 }]) }]);
      assert.deepEqual(kinds(o), { "stream-missing": 1, "reception-mismatch": 1 }, "missing");
      {
        // Stored by an ambiguous attempt (a 503) before a storage restart,
        // answered duplicate after it: it may be gone too.
        const { o: o3, ev: ev3 } = build();
        const late = withStatus("a:x", "executed");
        const rq = o3.request([late]);
        o3.attemptEnd(o3.attemptStart(rq, "n0"), { status: 503, body: { error: { code: "UNAVAILABLE", message: "m" } }, retryAfter: "1" });
        o3.storageRestart("between");
        accept(o3, [late], [`${E1}-3`], { req: rq, duplicate: true });
        o3.streamBackfill("a:*", [{ since: undefined, limit: 9, res: page(ev3) }]);
        assert.deepEqual(kinds(o3), {}, "ambiguous before a restart");
        const { o: o4, ev: ev4 } = build();
        const rq4 = o4.request([late]);
        o4.storageRestart("before");
        o4.attemptEnd(o4.attemptStart(rq4, "n0"), { status: 503, body: { error: { code: "UNAVAILABLE", message: "m" } }, retryAfter: "1" });
        accept(o4, [late], [`${E1}-3`], { req: rq4, duplicate: true });
        o4.streamBackfill("a:*", [{ since: undefined, limit: 9, res: page(ev4) }]);
        assert.deepEqual(kinds(o4), { "stream-missing": 1 }, "ambiguous after the last restart");
      }
      for (const reset of ["dataLoss", "storageRestart"]) {
        // A loss, or a storage restart (a sealed history starts afresh,
        // with a warning), after its acceptance: it may be gone.
        const { o: o2, ev: ev2 } = build();
        o2[reset]("after its acceptance");
        o2.streamBackfill("a:*", [{ since: undefined, limit: 9, res: page(ev2.slice(0, 4)) }]);
        assert.deepEqual(kinds(o2), {}, reset);
      }
    }
  });
});

// ---------------------------------------------------------------------------
// The checker against real clusters, at CI size
// ---------------------------------------------------------------------------

const envSeed = process.env.TIDINGS_CHECKER_SEED;
const SEED = envSeed !== undefined && envSeed !== "" ? Number(envSeed) : await randomSeed();
if (!Number.isSafeInteger(SEED) || SEED < 0) throw new Error(`TIDINGS_CHECKER_SEED must be a non-negative integer, got ${envSeed}`);

describe(`randomized delivery checker (seed ${SEED}; reproduce with TIDINGS_CHECKER_SEED=${SEED})`, () => {
  for (const variant of VARIANTS) {
    test(`${variant}: every accepted payment delivered, in order, exactly as posted`, { timeout: 240_000 }, async (t) => {
      t.diagnostic(`seed ${SEED} (TIDINGS_CHECKER_SEED=${SEED} reproduces it)`);
      const result = await runVariant({ variant, seed: SEED, log: (m) => t.diagnostic(m) });
      const f = result.figures;
      t.diagnostic(formatFigures(result));
      t.diagnostic(`sockets ${f.sockets}, events accepted ${f.eventsAccepted}, deliveries checked ${f.deliveriesChecked}, ` +
        `faults ${JSON.stringify(f.faults)}, ${f.seconds.toFixed(1)} s`);
      const problems = [];
      if (result.violationCount > 0) problems.push(formatReport(result, { examplesPerKind: 3 }));
      if (result.infraErrors.length) {
        problems.push(`seed ${SEED}, variant ${variant}: the checker could not run as planned:\n  ${result.infraErrors.join("\n  ")}` +
          (result.logDir ? `\nlogs: ${result.logDir}` : ""));
      }
      assert.ok(problems.length === 0, problems.join("\n\n"));
      assert.ok(f.eventsAccepted > 0 && f.deliveriesChecked > 0, `seed ${SEED}: the run must accept and deliver something`);
    });
  }
});
