// The randomized, seeded delivery checker (tests/e2e/checker/): first the
// oracle's rules on synthetic traces (fast; each rule must be able to
// fail), then the checker against real clusters at CI size: `redis` (three
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
import { Oracle, expectedData, formatReport, parseId, canon } from "./checker/oracle.mjs";
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
    sub(tid, since, ack) { o.subSent(connId, tid, since); if (ack) o.recv(connId, "ack", ack); },
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
