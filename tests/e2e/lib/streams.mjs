// Helpers for the account-stream and filter tests (contract section 8):
// the three storage setups (memory, one Redis with two nodes, a Redis Cluster
// with two nodes), stream envelopes and positions, and socket requests whose
// answer (ack or error) is taken from the callback and from the event alike.

import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import {
  startServer, emitWithAck, waitFor, recorded, httpGet, assertKeys, assertMillisNow, expectedData,
  withTimeout,
} from "./harness.mjs";
import { startRedis, startRedisCluster, startNodes, stopNodes, redisCli, logLines } from "./cluster.mjs";

export const SEP = ":";
export const STREAM_ARGS = ["--stream-separator", SEP];

/** The messages of design issue 18 for a name ending in `*`. */
export const OFF_MESSAGE = "Streams are off on this server: a name ending in * is not a trackingId";
export const badStreamMessage = (sep = SEP) =>
  `A stream is an account followed by "${sep}*" (the account not empty and without "${sep}"), like merchant-42${sep}*`;

export const STREAM_ID = /^s(\d+)-(\d+)$/;
export const TID_ID = /^(\d+)-(\d+)$/;

/**
 * The storage setups. `start(args)` resolves to
 * `{ A, B, nodes, kind, extra(args), keys(pattern), stop() }`: A and B are
 * two nodes sharing the storage (the same node in memory mode), `extra`
 * starts one more node on the same storage (memory: a server of its own),
 * `keys` lists the storage's keys matching a glob (null in memory mode).
 */
export const BACKENDS = [
  {
    name: "memory",
    kind: "memory",
    async start(args) {
      const s = await startServer(args);
      const nodes = [s];
      return {
        A: s, B: s, nodes, kind: "memory",
        async extra(a) { const x = await startServer(a); nodes.push(x); return x; },
        keys: null,
        async stop() { await stopNodes(nodes); },
      };
    },
  },
  {
    name: "one Redis, two nodes",
    kind: "redis",
    async start(args) {
      const redis = await startRedis();
      let nodes;
      try {
        nodes = await startNodes(2, redis.url, args);
      } catch (err) {
        await redis.stop();
        throw err;
      }
      return {
        A: nodes[0], B: nodes[1], nodes, kind: "redis", redis,
        async extra(a) { const [x] = await startNodes(1, redis.url, a); nodes.push(x); return x; },
        async keys(pattern) { return scanKeys(redis.port, pattern); },
        async stop() { await stopNodes(nodes); await redis.stop(); },
      };
    },
  },
  {
    name: "Redis Cluster, two nodes",
    kind: "cluster",
    async start(args) {
      const cluster = await startRedisCluster();
      let nodes;
      try {
        nodes = await startNodes(2, cluster.url, ["--redis-cluster", ...args]);
      } catch (err) {
        await cluster.stop();
        throw err;
      }
      return {
        A: nodes[0], B: nodes[1], nodes, kind: "cluster", cluster,
        async extra(a) {
          const [x] = await startNodes(1, cluster.url, ["--redis-cluster", ...a]);
          nodes.push(x);
          return x;
        },
        async keys(pattern) {
          const all = [];
          for (const p of cluster.ports) all.push(...await scanKeys(p, pattern));
          return all;
        },
        async stop() { await stopNodes(nodes); await cluster.stop(); },
      };
    },
  },
];

async function scanKeys(port, pattern) {
  const out = await redisCli(port, "--scan", "--pattern", pattern);
  return out.split("\n").map((l) => l.trim()).filter(Boolean);
}

/** Wraps a test body so that its failure message ends with the nodes' WARN/ERROR lines. */
export function withNodeLogs(getNodes, fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (err) {
      const nodes = (getNodes() ?? []).filter(Boolean);
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes.map((n, i) => `[node ${i}]\n${logLines(n)}`).join("\n")}`;
      throw err;
    }
  };
}

// ---------------------------------------------------------------------------
// Socket requests
// ---------------------------------------------------------------------------

/**
 * Emits `event` with `payload` and a callback; resolves with the callback's
 * envelope after consuming the matching `ack`/`error` event from the socket's
 * log (the contract: the callback gets the same envelope as the event).
 */
export async function ask(socket, payload, event = "subscribe") {
  const env = await emitWithAck(socket, event, payload);
  assert.ok(env && (env.type === "ack" || env.type === "error"),
    `${event} ${JSON.stringify(payload)}: the callback gets an ack or error envelope, got ${JSON.stringify(env)}`);
  const same = await waitFor(socket, env.type, (e) => isDeepStrictEqual(e, env), 5000);
  assert.deepEqual(same, env);
  return env;
}

/** Asserts an ack of a subscribe to `name` and the shape of its position (stream or trackingId). */
export function assertSubAck(env, name) {
  assert.equal(env?.type, "ack", `subscribe ${name} is acked, got ${JSON.stringify(env)}`);
  assertKeys(env, ["type", "data", "timestamp", "position"], "subscribe ack envelope");
  assert.equal(env.data, `Subscribed to trackingId: ${name}`);
  assertMillisNow(env.timestamp, "ack timestamp");
  assertPositionOf(env.position, name.endsWith("*"));
}

export function assertPositionOf(position, stream) {
  assertKeys(position, ["id", "seq"], "ack position");
  assert.ok(Number.isInteger(position.seq) && position.seq >= 0, `position.seq: ${JSON.stringify(position)}`);
  if (position.seq === 0) {
    assert.equal(position.id, null, `position.id is null at seq 0: ${JSON.stringify(position)}`);
    return;
  }
  const m = (stream ? STREAM_ID : TID_ID).exec(position.id);
  assert.ok(m, `position.id of a ${stream ? "stream (s<epoch>-<seq>)" : "trackingId (<epoch>-<seq>)"}: ${JSON.stringify(position)}`);
  assert.equal(m[2], String(position.seq), `position id and seq agree: ${JSON.stringify(position)}`);
}

/** Subscribes (callback and event) and asserts the ack; returns it. */
export async function sub(socket, name, extra = {}) {
  const env = await ask(socket, { trackingId: name, ...extra });
  assertSubAck(env, name);
  return env;
}

/** Subscribes as the reference client does (no callback) and awaits the ack event. */
export async function subPlain(socket, name, extra = {}) {
  const wait = waitFor(socket, "ack", (a) => a?.data === `Subscribed to trackingId: ${name}`, 5000);
  socket.emit("subscribe", { trackingId: name, ...extra });
  const env = await wait;
  assertSubAck(env, name);
  return env;
}

export async function unsub(socket, name) {
  const env = await ask(socket, { trackingId: name }, "unsubscribe");
  assert.equal(env.type, "ack", `unsubscribe ${name}: ${JSON.stringify(env)}`);
  assert.equal(env.data, `Unsubscribed from trackingId: ${name}`);
  return env;
}

/** Asserts an error envelope with `code` (and `message` when given). */
export function assertErr(env, code, message) {
  assert.equal(env?.type, "error", `an error envelope, got ${JSON.stringify(env)}`);
  assertKeys(env, ["type", "data", "timestamp"], "error envelope");
  assert.equal(env.data?.code, code, `error code (envelope ${JSON.stringify(env)})`);
  assert.equal(typeof env.data.message, "string");
  assert.ok(env.data.message.length > 0, "error message must not be empty");
  if (message !== undefined) {
    if (message instanceof RegExp) assert.match(env.data.message, message, `error message of ${JSON.stringify(env)}`);
    else assert.equal(env.data.message, message, `error message of ${JSON.stringify(env)}`);
  }
  assertMillisNow(env.timestamp, "error timestamp");
}

// ---------------------------------------------------------------------------
// Payments a socket received
// ---------------------------------------------------------------------------

/** Stream envelopes of `stream` a socket received, in arrival order. */
export function streamPayments(socket, stream) {
  return recorded(socket, "payment").filter((p) => p && p.stream === stream);
}

/** A trackingId's own envelopes (not stream ones) a socket received, in arrival order. */
export function tidPayments(socket, trackingId) {
  return recorded(socket, "payment").filter((p) => p && !("stream" in p) && p.data?.trackingId === trackingId);
}

export function waitStream(socket, stream, seq, timeoutMs = 8000) {
  return waitFor(socket, "payment", (p) => p.stream === stream && p.seq === seq, timeoutMs);
}

export function waitTid(socket, trackingId, seq, timeoutMs = 8000) {
  return waitFor(socket, "payment", (p) => !("stream" in p) && p.data.trackingId === trackingId && p.seq === seq, timeoutMs);
}

/** Errors a socket received (all, or with `code`). */
export function errorsOf(socket, code) {
  return recorded(socket, "error").filter((e) => code === undefined || e?.data?.code === code);
}

/** The epoch and seq of a stream id `s<epoch>-<seq>`. */
export function parseStreamId(id) {
  const m = STREAM_ID.exec(id);
  assert.ok(m, `a stream id looks like s<epoch>-<seq>: ${JSON.stringify(id)}`);
  return { epoch: BigInt(m[1]), seq: Number(m[2]) };
}

export function parseTidId(id) {
  const m = TID_ID.exec(id);
  assert.ok(m, `a trackingId id looks like <epoch>-<seq>: ${JSON.stringify(id)}`);
  return { epoch: BigInt(m[1]), seq: Number(m[2]) };
}

/**
 * Asserts a stream envelope exactly: keys (prevSeq only when `prevSeq` is
 * given), type, stream, an `s<epoch>-<seq>` id agreeing with seq, source
 * {id, seq}, data, and timestamp.
 */
export function assertStreamEnv(env, { stream, item, source, seq, timestamp, prevSeq }) {
  const keys = ["type", "stream", "id", "seq", "source", "data", "timestamp"];
  if (prevSeq !== undefined) keys.push("prevSeq");
  assertKeys(env, keys, "stream payment envelope");
  assert.equal(env.type, "payment_notification");
  assert.equal(env.stream, stream, "envelope stream");
  assert.ok(Number.isInteger(env.seq) && env.seq >= 1, `seq: ${env.seq}`);
  assert.equal(parseStreamId(env.id).seq, env.seq, `stream id ${env.id} agrees with seq ${env.seq}`);
  if (seq !== undefined) assert.equal(env.seq, seq, "stream seq");
  assertKeys(env.source, ["id", "seq"], "source");
  parseTidId(env.source.id);
  if (source) {
    assert.equal(env.source.id, source.id, "source.id is the payment's id in its trackingId's history");
    assert.equal(env.source.seq, source.seq, "source.seq is the payment's seq in its trackingId's history");
  }
  if (item) assert.deepEqual(env.data, expectedData(item), "stream envelope data");
  assertMillisNow(env.timestamp, "stream envelope timestamp", 60000);
  if (timestamp !== undefined) assert.equal(env.timestamp, timestamp, "the acceptance time of the trackingId's envelope");
  if (prevSeq !== undefined) assert.equal(env.prevSeq, prevSeq, `prevSeq of seq ${env.seq}`);
}

/** Asserts a trackingId envelope exactly (prevSeq only when given). */
export function assertTidEnv(env, { item, result, prevSeq }) {
  const keys = ["type", "id", "seq", "data", "timestamp"];
  if (prevSeq !== undefined) keys.push("prevSeq");
  assertKeys(env, keys, "trackingId payment envelope");
  assert.equal(env.type, "payment_notification");
  parseTidId(env.id);
  if (item) assert.deepEqual(env.data, expectedData(item), "payment data");
  if (result) {
    assert.equal(env.id, result.id, "id equals the id ingest returned");
    assert.equal(env.seq, result.seq, "seq equals the seq ingest returned");
  }
  assertMillisNow(env.timestamp, "payment envelope timestamp", 60000);
  if (prevSeq !== undefined) assert.equal(env.prevSeq, prevSeq, `prevSeq of seq ${env.seq}`);
}

/** An envelope without its prevSeq. */
export function withoutPrev(env) {
  const { prevSeq, ...rest } = env;
  return rest;
}

// ---------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------

/**
 * GET /v1/events with a raw query string (so that `*` and `:` travel as
 * written: `trackingId=m-1:*` or `trackingId=m-1%3A%2A`).
 */
export function backfillRaw(url, query, headers = {}) {
  return httpGet(`${url}/v1/events?${query}`, { headers });
}

/** Backfill with the usual encoding for every parameter but `*` (kept as `%2A`). */
export function backfillQ(url, params, headers = {}) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined) continue;
    parts.push(`${k}=${encodeURIComponent(String(v)).replace(/\*/g, "%2A")}`);
  }
  return backfillRaw(url, parts.join("&"), headers);
}

/** Backfill that must answer 200; returns the body. */
export async function backfillOk(url, params, headers = {}) {
  const r = await backfillQ(url, params, headers);
  assert.equal(r.status, 200, `backfill ${JSON.stringify(params)}: ${r.status} ${r.text}`);
  assertKeys(r.body, ["data", "hasMore", "truncated"], "backfill body");
  return r.body;
}

/** Resolves once `cond()` holds, polling every 100 ms (for states with no event to await), bounded. */
export async function until(cond, timeoutMs, what) {
  let stop = false;
  return withTimeout((async () => {
    while (!stop) {
      if (await cond()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  })(), timeoutMs, what).finally(() => { stop = true; });
}
