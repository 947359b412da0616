// 2,000 websocket clients connecting and subscribing at once.
//
// Each test starts its own server and its own storm of sockets, so either
// runs (and fails) on its own (`--test-name-pattern`).

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  startServer, ingestOk, makeSocket, payment, rand, withTimeout, closeAll, waitFor, payments, assertAck,
} from "./lib/harness.mjs";
import { readMetric } from "./lib/cluster.mjs";

const N = Number(process.env.TIDINGS_STORM_SOCKETS ?? 2000);
const DEADLINE_MS = 30000;
// Every socket comes from 127.0.0.1: lift the per-address limit (on by
// default, 200) above N.
// Every client is 127.0.0.1; and a storm on a busy machine may take a
// socket's CONNECT longer than the default 5 s --connect-timeout (tested in
// security.test.mjs), which would close it: not what this test is about.
const SERVER_ARGS = ["--max-connections-per-ip", String(N + 100), "--connect-timeout", "60"];

/** The server's warnings and errors, for a failure message. */
function serverTrouble(server) {
  return server.logs().split("\n").filter((l) => /"level":"(WARN|ERROR)"|panicked/.test(l)).slice(0, 5).join(" | ");
}

/**
 * Opens N websocket sockets at once, each subscribing to a trackingId of its
 * own as soon as it connects. Every socket's wait ends at its first outcome:
 * its first `ack` (whatever it says), an `error` or a `connect_error`; so a
 * wrong ack or a refusal shows up in the assertions below, not as a timeout.
 * Asserts every outcome is the subscribe ack of that socket's own trackingId
 * and that the server holds N sockets. Returns { sockets, ids }.
 */
async function storm(server, t) {
  const run = rand(4);
  const sockets = [];
  const ids = [];
  const outcomes = new Array(N).fill(null);
  const all = [];
  for (let i = 0; i < N; i++) {
    const id = `storm-${run}-${i}`;
    ids.push(id);
    const s = makeSocket(server.url, { transports: ["websocket"], timeout: DEADLINE_MS });
    sockets.push(s);
    all.push(new Promise((resolve) => {
      const settle = (outcome) => {
        if (outcomes[i] === null) outcomes[i] = outcome;
        resolve();
      };
      s.once("connect_error", (e) => settle({ kind: "connect_error", detail: e.message }));
      s.once("connect", () => s.emit("subscribe", { trackingId: id }));
      s.once("ack", (a) => settle({ kind: "ack", ack: a }));
      s.once("error", (e) => settle({ kind: "error", detail: JSON.stringify(e) }));
    }));
  }
  t.after(() => closeAll(sockets));
  await withTimeout(Promise.all(all), DEADLINE_MS, "every socket's subscribe answered").catch((err) => {
    const pending = outcomes.filter((o) => o === null).length;
    err.message += `; ${pending} of ${N} unanswered; connected: ${sockets.filter((s) => s.connected).length}; ` +
      `server warnings/errors (first 5): ${serverTrouble(server)}`;
    throw err;
  });

  const failures = outcomes.flatMap((o, i) => (o.kind === "ack" ? [] : [`${i}: ${o.kind} ${o.detail}`]));
  assert.deepEqual(failures.slice(0, 5), [], `${failures.length} of ${N} sockets refused or got an error; ` +
    `server warnings/errors (first 5): ${serverTrouble(server)}`);
  for (const [i, o] of outcomes.entries()) {
    // Its own trackingId, a fresh one: position { id: null, seq: 0 }.
    assertAck(o.ack, "subscribe", ids[i]);
    assert.deepEqual(o.ack.position, { id: null, seq: 0 }, `socket ${i}: a fresh trackingId has no history`);
  }
  const disconnected = sockets.filter((s) => !s.connected).length;
  assert.equal(disconnected, 0, `${disconnected} of ${N} sockets were disconnected after their ack`);
  const { value: held } = await readMetric(server.url, "tidings_sockets");
  assert.equal(held, N, "the server holds every socket (tidings_sockets)");
  return { sockets, ids };
}

describe(`storm: ${N} sockets`, () => {
  test(`${N} sockets connect and subscribe to distinct ids at once; every one is acked within ${DEADLINE_MS / 1000} s`, async (t) => {
    const server = await startServer(SERVER_ARGS);
    t.after(() => server.stop());
    await storm(server, t);
  });

  test(`every one of the ${N} sockets gets its own payment`, async (t) => {
    const server = await startServer(SERVER_ARGS);
    t.after(() => server.stop());
    const { sockets, ids } = await storm(server, t);

    // Each socket's first payment, whatever trackingId it is for: a payment
    // delivered to the wrong socket is caught by the checks below.
    const waits = sockets.map((s) => waitFor(s, "payment", null, DEADLINE_MS));
    const items = ids.map((id) => payment(id));
    const results = [];
    for (let i = 0; i < N; i += 1000) {
      results.push(...await ingestOk(server.url, items.slice(i, i + 1000)));
    }
    assert.equal(results.length, N, "one ingest result per payment");
    const got = await Promise.allSettled(waits);
    const missing = got.filter((r) => r.status === "rejected");
    assert.equal(missing.length, 0, `${missing.length} sockets missed their payment: ${missing[0]?.reason?.message?.slice(0, 300)}`);
    for (const [i, r] of got.entries()) {
      const env = r.value;
      assert.equal(env.data.trackingId, ids[i], `socket ${i}: its first payment is for its own trackingId`);
      assert.equal(env.data.signature, items[i].signature, `socket ${i}: the payment ingested for it`);
      assert.deepEqual([env.id, env.seq], [results[i].id, 1], `socket ${i}: the id ingest returned, seq 1`);
    }
    // Nothing for another trackingId arrived meanwhile.
    const extra = sockets.flatMap((s, i) => (payments(s).length === 1 ? [] : [`${i}: ${payments(s).length}`]));
    assert.deepEqual(extra.slice(0, 5), [], `${extra.length} sockets got more than one payment`);
  });
});
