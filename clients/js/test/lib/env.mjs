// Test helpers of the SDK: the server, Redis and nginx processes come from
// ./harness.mjs and ./cluster.mjs (this package's copies of the end-to-end
// suite's helpers); here only what is about the SDK: a node on a fixed port
// (to restart it there), and a recorder of what the application sees, with
// bounded waits.

import assert from "node:assert/strict";
import { TidingsError } from "tidings-client";
import { startServer, withTimeout, INGEST_TOKEN } from "./harness.mjs";
import { freePort } from "./cluster.mjs";

export {
  startServer, ingestOk, payment, uid, withTimeout, INGEST_TOKEN, SERVER_BIN,
} from "./harness.mjs";
export {
  startRedis, startRedisCluster, startNodes, stopNodes, startNginx, freePort, readMetric, pace,
} from "./cluster.mjs";

/**
 * A node listening on `port` (a free one if not given), so that it can be
 * restarted on the same address: `node.restart()` SIGKILLs and starts it again.
 */
export async function startNode(args = [], { port } = {}) {
  const p = port ?? await freePort();
  const baseArgs = ["--listen", `127.0.0.1:${p}`, "--ingest-token", INGEST_TOKEN, "--log-format", "json"];
  let server = await startServer(args, {}, { baseArgs, timeoutMs: 20000 });
  return {
    port: p,
    url: `http://127.0.0.1:${p}`,
    get server() { return server; },
    logs: () => server.logs(),
    async kill() { await server.stop("SIGKILL"); },
    async start() { server = await startServer(args, {}, { baseArgs, timeoutMs: 20000 }); },
    async restart() { await server.stop("SIGKILL"); server = await startServer(args, {}, { baseArgs, timeoutMs: 20000 }); },
    async stop() { await server.stop(); },
  };
}

/**
 * Records what the application sees from a subscription (payments, gaps,
 * errors, acks) in order, and waits (bounded) for conditions on it.
 */
export function record(sub) {
  const events = [];
  const waiters = new Set();
  const push = (e) => {
    events.push(e);
    for (const w of [...waiters]) if (w.check()) waiters.delete(w);
  };
  const offs = [
    sub.on("payment", (p) => push({ kind: "payment", id: p.id, seq: p.seq, env: p })),
    sub.on("gap", (g) => push({ kind: "gap", gap: g })),
    sub.on("error", (err) => push({ kind: "error", err })),
    sub.on("subscribed", (a) => push({ kind: "subscribed", position: a.position })),
  ];
  const rec = {
    events,
    payments: () => events.filter((e) => e.kind === "payment").map((e) => e.env),
    ids: () => rec.payments().map((p) => p.id),
    gaps: () => events.filter((e) => e.kind === "gap").map((e) => e.gap),
    errors: () => events.filter((e) => e.kind === "error").map((e) => e.err),
    acks: () => events.filter((e) => e.kind === "subscribed"),
    /** What the application saw, for failure messages. */
    trace: () => events.map((e) => (e.kind === "payment" ? `${e.id}` : e.kind === "gap" ? `GAP${JSON.stringify(e.gap)}`
      : e.kind === "error" ? `ERR(${e.err.code})` : `ACK(${JSON.stringify(e.position)})`)).join(" "),
    /** Resolves once `cond(rec)` holds (checked at every event), or rejects after `ms`. */
    until(cond, ms, what) {
      if (cond(rec)) return Promise.resolve();
      let w;
      const p = new Promise((resolve) => { w = { check: () => { if (cond(rec)) { resolve(); return true; } return false; } }; });
      waiters.add(w);
      return withTimeout(p, ms, what).catch((err) => {
        waiters.delete(w);
        err.message += `\n  the application saw: ${rec.trace()}`;
        throw err;
      });
    },
    /** Until the application has seen every id of `ids` (202-accepted results or ids). */
    untilIds(ids, ms = 20000) {
      const want = ids.map((r) => (typeof r === "string" ? r : r.id));
      return rec.until((r) => { const got = new Set(r.ids()); return want.every((id) => got.has(id)); },
        ms, `the application receiving ${want.length} payments`);
    },
    stop: () => offs.forEach((off) => off()),
  };
  return rec;
}

/** Waits (bounded) for a client event (`connect`, `disconnect`, `error` with a predicate). */
export function clientEvent(client, event, pred = () => true, ms = 20000) {
  let off;
  const p = new Promise((resolve) => {
    off = client.on(event, (arg) => { if (pred(arg)) resolve(arg); });
  });
  return withTimeout(p, ms, `client event "${event}"`).finally(() => off());
}

/**
 * Asserts that the application saw exactly `expected` (ingest results, in
 * seq order), each once, and nothing else of that trackingId.
 */
export function assertExactlyOnce(rec, expected, what = "payments") {
  const ids = rec.ids();
  assert.equal(new Set(ids).size, ids.length, `${what}: no payment twice (saw ${rec.trace()})`);
  assert.deepEqual(ids, expected.map((r) => r.id), `${what}: every accepted payment once, in seq order (saw ${rec.trace()})`);
  const seqs = rec.payments().map((p) => p.seq);
  assert.deepEqual(seqs, expected.map((r) => r.seq), `${what}: seqs`);
}

/** Asserts an error is a TidingsError with `code`. */
export function assertTidingsError(err, code) {
  assert.ok(err instanceof TidingsError, `a TidingsError, got ${err}`);
  assert.equal(err.code, code, `error code (message: ${err.message})`);
  assert.equal(typeof err.message, "string");
}
