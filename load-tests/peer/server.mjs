// The load-test peer: Tidings' wire contract (docs/protocol.md,
// sections 1-3) on plain Node.js socket.io 4.8, with @socket.io/redis-adapter
// for a cluster. It is the baseline Tidings is measured against, so it is
// written the idiomatic socket.io way and does no per-event logging.
//
//   node server.mjs [--listen HOST:PORT] [--redis-url redis://...]
//                   [--ingest-token TOKEN]... [--backlog N]
//
// Without --redis-url everything lives in this process's memory. With it,
// seq, dedupe keys and history live in Redis (one Lua script per ingest
// request) and payments reach the other nodes through the Redis adapter.

import cluster from "node:cluster";
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

// ---------------------------------------------------------------- config

const { values: flags } = parseArgs({
  options: {
    listen: { type: "string" },
    "redis-url": { type: "string" },
    "ingest-token": { type: "string", multiple: true },
    backlog: { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (flags.help) {
  console.log(
    "usage: node server.mjs [--listen HOST:PORT] [--redis-url redis://...] " +
      "[--ingest-token TOKEN]... [--backlog N]\n" +
      "env: PEER_LISTEN, PEER_REDIS_URL, PEER_INGEST_TOKEN (comma-separated), PEER_BACKLOG,\n" +
      "  PEER_TOKEN_SECRET (token mode: sockets present an HS256 JWT { exp, tids } as auth.token)",
  );
  process.exit(0);
}

const env = process.env;
const LISTEN = flags.listen ?? env.PEER_LISTEN ?? "0.0.0.0:3000";
const REDIS_URL = flags["redis-url"] ?? env.PEER_REDIS_URL ?? "";
// The accept backlog Tidings asks for (src/server.rs, ACCEPT_BACKLOG), so
// that a connect storm measures both systems behind the same queue (the
// kernel caps both at net.core.somaxconn).
const BACKLOG = Number(flags.backlog ?? env.PEER_BACKLOG ?? 8192);
if (!Number.isInteger(BACKLOG) || BACKLOG < 1) fail(`--backlog must be a positive integer, not ${flags.backlog ?? env.PEER_BACKLOG}`);
const INGEST_TOKENS = new Set(
  (flags["ingest-token"] ?? (env.PEER_INGEST_TOKEN ?? "test-token").split(","))
    .map((t) => t.trim())
    .filter(Boolean),
);

// Token mode, as Tidings' `--auth token` (for the token-storm benchmark):
// with a secret, a socket must present `auth: { token }`, an HS256 JWT whose
// `tids` cover what it subscribes to ("prefix*" covers a prefix).
const TOKEN_SECRET = env.PEER_TOKEN_SECRET ?? "";

// The contract's defaults (section 7).
const HISTORY_LIMIT = 1000;
const DEDUPE_TTL_SECONDS = 86400;
const MAX_SUBSCRIPTIONS = 100;
const MAX_BATCH = 1000;
const MAX_BODY = 1024 * 1024;

const MAX_ID_BYTES = 256;
const MAX_TIMESTAMP_SECONDS = 253402300799; // 9999-12-31T23:59:59Z
const STATUSES = new Set(["executed", "failed", "pending"]);
const FIELDS = new Set(["trackingId", "amount", "timestamp", "status", "signature", "idempotencyKey"]);
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const EVENT_ID = /^(0|[1-9][0-9]*)-([1-9][0-9]*)$/;

function fail(message) {
  console.error(`peer: ${message}`);
  process.exit(2);
}

// ---------------------------------------------------------------- validation

/** Why a trackingId / signature / idempotencyKey is refused, or null. */
function badKey(s, what) {
  if (typeof s !== "string") return `${what} is required and must be a string`;
  if (s.length === 0) return `${what} must not be empty`;
  if (s.length > MAX_ID_BYTES / 3 && Buffer.byteLength(s) > MAX_ID_BYTES) {
    return `${what} must be at most ${MAX_ID_BYTES} bytes`;
  }
  if (CONTROL.test(s)) return `${what} must not contain control characters`;
  return null;
}

/** Validates one ingest item; pushes a detail per bad field. */
function validateItem(item, index, details) {
  if (item === null || typeof item !== "object" || Array.isArray(item)) {
    details.push({ index, field: null, message: "A payment must be a JSON object" });
    return;
  }
  const bad = (field, message) => details.push({ index, field, message });
  for (const key of Object.keys(item)) {
    if (!FIELDS.has(key)) bad(key, `Unknown field; expected only ${[...FIELDS].join(", ")}`);
  }
  const tid = badKey(item.trackingId, "Tracking ID");
  if (tid) bad("trackingId", tid);
  const { amount, timestamp } = item;
  if (!Number.isSafeInteger(amount) || amount < 0) {
    bad("amount", "amount is required and must be a non-negative integer at most 9007199254740991 (2^53 - 1)");
  }
  if (!Number.isSafeInteger(timestamp) || timestamp < 0 || timestamp > MAX_TIMESTAMP_SECONDS) {
    bad("timestamp", "timestamp is required and must be a non-negative integer in seconds, at most 253402300799");
  }
  if (!STATUSES.has(item.status)) bad("status", "status must be one of executed, failed, pending");
  const sig = item.signature ?? null;
  const key = item.idempotencyKey ?? null;
  if (sig !== null && badKey(sig, "signature")) {
    bad("signature", `signature must be a non-empty string of at most ${MAX_ID_BYTES} bytes without control characters`);
  }
  if (key !== null && badKey(key, "idempotencyKey")) {
    bad("idempotencyKey", `idempotencyKey must be a non-empty string of at most ${MAX_ID_BYTES} bytes without control characters`);
  }
  if (sig === null && key === null) {
    bad("signature", "signature (or, for a payment that never reached the chain, idempotencyKey) is required");
  }
}

/** What `data` of the payment envelope holds (idempotencyKey is not echoed). */
function paymentData(item) {
  const data = {
    trackingId: item.trackingId,
    amount: item.amount,
    timestamp: item.timestamp,
    status: item.status,
  };
  if (item.signature != null) data.signature = item.signature;
  return data;
}

/** The identity of a payment for dedupe, within its trackingId. */
function dedupeKey(item) {
  return item.idempotencyKey != null ? `i:${item.idempotencyKey}` : `s:${item.signature}`;
}

/**
 * Parses a `since`: undefined when absent, { epoch, seq } when well formed,
 * or a string saying why it is INVALID_SINCE.
 */
function parseSince(since) {
  if (since === undefined || since === null) return undefined;
  if (typeof since !== "string") return "since must be an event id string";
  if (since === "") return "since must not be empty";
  const m = EVENT_ID.exec(since);
  if (!m || m[1].length > 15 || m[2].length > 15) return "since is not an event id this server could have issued";
  const epoch = Number(m[1]);
  if (epoch > Date.now()) return "since is not an event id this server could have issued";
  return { epoch, seq: Number(m[2]) };
}

/**
 * What to replay after `since`, given the trackingId's current history:
 * epoch and last seq (undefined when there is none) and the retained
 * envelopes after `since` (or all retained ones for another epoch), oldest
 * first, whose first seq is `first`.
 */
function replayPlan(since, epoch, lastSeq, first, events) {
  if (epoch === undefined) return { truncated: true, events: [] }; // no history left
  if (epoch !== since.epoch) return { truncated: true, events }; // history was lost since
  if (since.seq > lastSeq) return { invalid: "since is not an event id this server could have issued" };
  return { truncated: since.seq < lastSeq && first > since.seq + 1, events };
}

// ---------------------------------------------------------------- stores

/** One node, everything in memory. */
class MemoryStore {
  constructor() {
    /** trackingId -> { epoch, seq, events: envelope[], dedupe: Map<key, [id, seq]> } */
    this.histories = new Map();
  }

  /** Stores the payments (validated) and returns, per item, [id, seq, duplicate, envelope]. */
  append(items, now) {
    const out = new Array(items.length);
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      let h = this.histories.get(item.trackingId);
      if (h === undefined) {
        h = { epoch: now, seq: 0, events: [], dedupe: new Map() };
        this.histories.set(item.trackingId, h);
      }
      const key = dedupeKey(item);
      const prior = h.dedupe.get(key);
      if (prior !== undefined) {
        out[i] = [prior[0], prior[1], true, null];
        continue;
      }
      const seq = ++h.seq;
      const id = `${h.epoch}-${seq}`;
      const envelope = { type: "payment_notification", id, seq, data: paymentData(item), timestamp: now };
      h.dedupe.set(key, [id, seq]);
      h.events.push(envelope);
      if (h.events.length > HISTORY_LIMIT) h.events.shift();
      out[i] = [id, seq, false, envelope];
    }
    return out;
  }

  replay(trackingId, since) {
    const h = this.histories.get(trackingId);
    if (h === undefined) return replayPlan(since, undefined);
    const first = h.seq - h.events.length + 1;
    const from = h.epoch === since.epoch ? Math.max(0, since.seq + 1 - first) : 0;
    return replayPlan(since, h.epoch, h.seq, first, h.events.slice(from));
  }
}

// Per item: KEYS meta (hash: e = epoch, s = last seq), history (list of
// envelope JSON), dedupe key (-> event id). ARGV: now, history limit, dedupe
// TTL, then the `data` JSON of each item. Returns id, duplicate (0/1) per item.
const APPEND_LUA = `
local now, limit, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local meta, hist, dk = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local prior = redis.call('GET', dk)
  if prior then
    out[#out + 1] = prior
    out[#out + 1] = 1
  else
    redis.call('HSETNX', meta, 'e', now)
    local epoch = redis.call('HGET', meta, 'e')
    local seq = redis.call('HINCRBY', meta, 's', 1)
    local id = epoch .. '-' .. seq
    redis.call('SET', dk, id, 'NX', 'EX', ttl)
    redis.call('RPUSH', hist, '{"type":"payment_notification","id":"' .. id .. '","seq":' .. seq ..
      ',"data":' .. ARGV[4 + i] .. ',"timestamp":' .. now .. '}')
    redis.call('LTRIM', hist, -limit, -1)
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
return out`;

// KEYS meta, history; ARGV since epoch, since seq. Returns {} without a
// history, else epoch, last seq, first retained seq, envelopes to replay.
const REPLAY_LUA = `
local m = redis.call('HMGET', KEYS[1], 'e', 's')
if not m[1] then return {} end
local last = tonumber(m[2])
local len = redis.call('LLEN', KEYS[2])
local first = last - len + 1
local from = 0
if m[1] == ARGV[1] then from = math.max(0, tonumber(ARGV[2]) + 1 - first) end
return {m[1], m[2], first, redis.call('LRANGE', KEYS[2], from, -1)}`;

/** A cluster: seq, dedupe and history in Redis, shared by every node. */
class RedisStore {
  constructor(client) {
    this.client = client;
    this.scripts = new Map();
  }

  async eval(script, keys, args) {
    let sha = this.scripts.get(script);
    if (sha === undefined) {
      sha = createHash("sha1").update(script).digest("hex");
      this.scripts.set(script, sha);
    }
    const argv = [String(keys.length), ...keys, ...args];
    try {
      return await this.client.sendCommand(["EVALSHA", sha, ...argv]);
    } catch (err) {
      if (!String(err?.message).startsWith("NOSCRIPT")) throw err;
      return this.client.sendCommand(["EVAL", script, ...argv]);
    }
  }

  async append(items, now) {
    const keys = new Array(items.length * 3);
    const args = new Array(items.length + 3);
    args[0] = String(now);
    args[1] = String(HISTORY_LIMIT);
    args[2] = String(DEDUPE_TTL_SECONDS);
    const datas = new Array(items.length);
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      const base = `peer:{${item.trackingId}}:`;
      keys[3 * i] = `${base}m`;
      keys[3 * i + 1] = `${base}h`;
      keys[3 * i + 2] = `${base}d:${dedupeKey(item)}`;
      datas[i] = paymentData(item);
      args[3 + i] = JSON.stringify(datas[i]);
    }
    const reply = await this.eval(APPEND_LUA, keys, args);
    const out = new Array(items.length);
    for (let i = 0; i < items.length; i++) {
      const id = String(reply[2 * i]);
      const seq = Number(id.slice(id.indexOf("-") + 1));
      if (Number(reply[2 * i + 1]) === 1) {
        out[i] = [id, seq, true, null];
      } else {
        out[i] = [id, seq, false, { type: "payment_notification", id, seq, data: datas[i], timestamp: now }];
      }
    }
    return out;
  }

  async replay(trackingId, since) {
    const base = `peer:{${trackingId}}:`;
    const reply = await this.eval(REPLAY_LUA, [`${base}m`, `${base}h`], [String(since.epoch), String(since.seq)]);
    if (reply.length === 0) return replayPlan(since, undefined);
    const events = reply[3].map((s) => JSON.parse(s));
    return replayPlan(since, Number(reply[0]), Number(reply[1]), Number(reply[2]), events);
  }
}

// ---------------------------------------------------------------- http

function sendJson(res, status, body, headers) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "access-control-allow-origin": "*",
    ...headers,
  });
  res.end(text);
}

function sendError(res, status, code, message, extra, headers) {
  sendJson(res, status, { error: { code, message, ...extra } }, headers);
}

function authorized(req) {
  const h = req.headers.authorization;
  if (typeof h !== "string") return false;
  const space = h.indexOf(" ");
  if (space < 0 || h.slice(0, space).toLowerCase() !== "bearer") return false;
  return INGEST_TOKENS.has(h.slice(space + 1).trim());
}

/** Reads the body up to MAX_BODY bytes; resolves null when it is larger. */
function readBody(req) {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"]);
    if (declared > MAX_BODY) return resolve(null);
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        req.removeAllListeners("data");
        req.pause();
        resolve(null);
      } else {
        chunks.push(chunk);
      }
    });
    req.on("end", () => resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size)));
    req.on("error", reject);
  });
}

async function ingest(req, res) {
  // The token is checked before a byte of the body is read.
  if (!authorized(req)) {
    return sendError(res, 401, "UNAUTHORIZED", "Missing or invalid Authorization: Bearer <ingest token>");
  }
  const body = await readBody(req);
  if (body === null) {
    return sendError(res, 413, "PAYLOAD_TOO_LARGE", `Request body is larger than ${MAX_BODY} bytes`, undefined, {
      connection: "close",
    });
  }
  let parsed;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch (err) {
    return sendError(res, 400, "INVALID_PAYLOAD", `Body is not valid JSON: ${err.message}`);
  }
  const items = Array.isArray(parsed) ? parsed : [parsed];
  if (items.length === 0) return sendError(res, 400, "INVALID_PAYLOAD", "A batch must hold at least one payment");
  if (items.length > MAX_BATCH) {
    return sendError(res, 413, "PAYLOAD_TOO_LARGE", `A batch holds at most ${MAX_BATCH} payments; got ${items.length}`);
  }
  const details = [];
  for (let i = 0; i < items.length; i++) validateItem(items[i], i, details);
  if (details.length > 0) {
    return sendError(res, 400, "INVALID_PAYLOAD", `${details.length} invalid field(s); nothing was stored`, { details });
  }

  let stored;
  try {
    stored = await store.append(items, Date.now());
  } catch {
    return sendError(res, 503, "UNAVAILABLE", "Storage is unavailable; retry the same request", undefined, {
      "retry-after": "1",
    });
  }
  const data = new Array(items.length);
  for (let i = 0; i < items.length; i++) {
    const [id, seq, duplicate, envelope] = stored[i];
    const trackingId = items[i].trackingId;
    if (envelope !== null) io.to(`t:${trackingId}`).emit("payment", envelope);
    data[i] = { id, seq, trackingId, duplicate };
  }
  sendJson(res, 202, { data });
}

function onRequest(req, res) {
  const url = req.url;
  const path = url.includes("?") ? url.slice(0, url.indexOf("?")) : url;
  if (req.method === "OPTIONS") {
    res.writeHead(204, {
      "access-control-allow-origin": "*",
      "access-control-allow-methods": "GET, POST, OPTIONS",
      "access-control-allow-headers": req.headers["access-control-request-headers"] ?? "authorization, content-type",
      "access-control-max-age": "86400",
    });
    return res.end();
  }
  if (path === "/v1/payments") {
    if (req.method !== "POST") return sendError(res, 405, "METHOD_NOT_ALLOWED", "Use POST", undefined, { allow: "POST" });
    return ingest(req, res).catch(() => {
      if (!res.headersSent) sendError(res, 500, "INTERNAL", "Internal error");
    });
  }
  if (path === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain", "access-control-allow-origin": "*" });
    return res.end("ok\n");
  }
  sendError(res, 404, "NOT_FOUND", `No route for ${req.method} ${path}`);
}

// ---------------------------------------------------------------- socket.io

function envelope(type, data) {
  return { type, data, timestamp: Date.now() };
}

/** Emits `event` and answers the ack callback, if any, with the same envelope. */
function reply(socket, ack, event, env) {
  socket.emit(event, env);
  if (ack) ack(env);
}

function replyError(socket, ack, code, message) {
  reply(socket, ack, "error", envelope("error", { code, message }));
}

/** The payload's trackingId, or replies the error and returns null. */
function trackingIdOf(socket, ack, payload) {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    replyError(socket, ack, "INVALID_PAYLOAD", 'Payload must be an object like { "trackingId": "..." }');
    return null;
  }
  const why = badKey(payload.trackingId, "Tracking ID");
  if (why) {
    replyError(socket, ack, "INVALID_TRACKING_ID", why);
    return null;
  }
  return payload.trackingId;
}

/** The `tids` of a valid token (HS256 over `TOKEN_SECRET`, `exp` at most
 * 60 s past), or a reason it is refused. */
function verifyToken(token) {
  if (typeof token !== "string") return { refused: "no token" };
  const parts = token.split(".");
  if (parts.length !== 3) return { refused: "malformed token" };
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  } catch {
    return { refused: "malformed token" };
  }
  if (header?.alg !== "HS256") return { refused: "only HS256 is accepted" };
  const want = createHmac("sha256", TOKEN_SECRET).update(`${parts[0]}.${parts[1]}`).digest();
  const got = Buffer.from(parts[2], "base64url");
  if (got.length !== want.length || !timingSafeEqual(got, want)) return { refused: "bad signature" };
  if (typeof claims?.exp !== "number" || claims.exp * 1000 + 60_000 < Date.now()) return { refused: "the token has expired" };
  if (!Array.isArray(claims.tids)) return { refused: "malformed token" };
  return { tids: claims.tids };
}

/** Whether a token's entries cover `tid`. */
function covers(tids, tid) {
  return tids.some((t) => (t.endsWith("*") ? tid.startsWith(t.slice(0, -1)) : t === tid));
}

/** Handles one subscribe; returns a promise only when it must wait on Redis. */
function subscribe(socket, payload, ack) {
  const tid = trackingIdOf(socket, ack, payload);
  if (tid === null) return;
  if (socket.data.tids && !covers(socket.data.tids, tid)) {
    return replyError(socket, ack, "FORBIDDEN", "The token does not cover this trackingId");
  }
  const since = parseSince(payload.since);
  if (typeof since === "string") return replyError(socket, ack, "INVALID_SINCE", since);
  const subs = socket.data.subs;
  const held = subs.has(tid);
  if (!held && subs.size >= MAX_SUBSCRIPTIONS) {
    return replyError(socket, ack, "TOO_MANY_SUBSCRIPTIONS", `A socket may hold at most ${MAX_SUBSCRIPTIONS} subscriptions`);
  }
  // Join first, then read the history: no gap between replay and live.
  const room = `t:${tid}`;
  socket.join(room);
  if (since === undefined) {
    subs.add(tid);
    return reply(socket, ack, "ack", envelope("ack", `Subscribed to trackingId: ${tid}`));
  }
  const finish = (plan) => {
    if (plan.invalid) {
      if (!held) socket.leave(room);
      return replyError(socket, ack, "INVALID_SINCE", plan.invalid);
    }
    subs.add(tid);
    reply(socket, ack, "ack", envelope("ack", `Subscribed to trackingId: ${tid}`));
    if (plan.truncated) {
      socket.emit(
        "error",
        envelope("error", {
          code: "HISTORY_TRUNCATED",
          message: `Some payments of trackingId ${tid} after the given since are no longer retained; replay starts at the oldest retained one`,
        }),
      );
    }
    for (const event of plan.events) socket.emit("payment", event);
  };
  const plan = store.replay(tid, since);
  if (!(plan instanceof Promise)) return finish(plan);
  return plan.then(
    (p) => socket.connected && finish(p),
    () => {
      if (!held) socket.leave(room);
      if (socket.connected) replyError(socket, ack, "CONNECTION_ERROR", "Storage is unavailable; try again");
    },
  );
}

function unsubscribe(socket, payload, ack) {
  const tid = trackingIdOf(socket, ack, payload);
  if (tid === null) return;
  if (socket.data.subs.delete(tid)) socket.leave(`t:${tid}`);
  reply(socket, ack, "ack", envelope("ack", `Unsubscribed from trackingId: ${tid}`));
}

/**
 * Runs one socket's commands in the order they arrived: synchronously while
 * nothing is pending, behind the pending one otherwise (only a subscribe with
 * `since` in Redis mode waits).
 */
function schedule(socket, handler, args) {
  const ack = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
  const run = () => handler(socket, args[0], ack);
  const st = socket.data;
  const r = st.tail ? st.tail.then(run) : run();
  if (r instanceof Promise) {
    const p = r.then(noop, noop);
    st.tail = p;
    p.then(() => {
      if (st.tail === p) st.tail = null;
    });
  }
}

function noop() {}

// ---------------------------------------------------------------- start

function parseListen(s) {
  const colon = s.lastIndexOf(":");
  if (colon < 0) fail(`--listen must be HOST:PORT, not ${s}`);
  const host = s.slice(0, colon).replace(/^\[(.*)\]$/, "$1") || "0.0.0.0";
  const port = Number(s.slice(colon + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad port in --listen ${s}`);
  return { host, port };
}

function logRedisErrors(client, name) {
  let last = "";
  client.on("error", (err) => {
    if (err.message !== last) console.error(`peer: redis ${name}: ${err.message}`);
    last = err.message;
  });
  client.on("ready", () => {
    last = "";
  });
}

const httpServer = createServer(onRequest);
const io = new Server(httpServer, {
  path: "/ws/v1",
  serveClient: false,
  cors: { origin: "*" },
});

const redisClients = [];
let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  io.close(() => {
    for (const c of redisClients) c.destroy();
    process.exit(0);
  });
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

let store;
if (REDIS_URL) {
  // Ingest fails fast (503) while Redis is away instead of queueing.
  const data = createClient({ url: REDIS_URL, disableOfflineQueue: true });
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  logRedisErrors(data, "data");
  logRedisErrors(pub, "pub");
  logRedisErrors(sub, "sub");
  redisClients.push(data, pub, sub);
  await Promise.all(redisClients.map((c) => c.connect()));
  io.adapter(createAdapter(pub, sub));
  io.of("/").adapter.on?.("error", (err) => console.error(`peer: adapter: ${err?.message ?? err}`));
  store = new RedisStore(data);
} else {
  store = new MemoryStore();
}

if (TOKEN_SECRET) {
  io.use((socket, next) => {
    const { tids, refused } = verifyToken(socket.handshake.auth?.token);
    if (refused) return next(new Error(`UNAUTHORIZED: ${refused}`));
    socket.data.tids = tids;
    next();
  });
}

io.on("connection", (socket) => {
  socket.data.subs = new Set();
  socket.data.tail = null;
  socket.on("subscribe", (...args) => schedule(socket, subscribe, args));
  socket.on("unsubscribe", (...args) => schedule(socket, unsubscribe, args));
});

const { host, port } = parseListen(LISTEN);
httpServer.listen({ host, port, backlog: BACKLOG }, () => {
  const addr = httpServer.address();
  const shown = addr.address === "0.0.0.0" || addr.address === "::" ? "127.0.0.1" : addr.address;
  // Under cluster.mjs the primary announces the address once every worker
  // listens (a reader takes the first "listening on" line).
  if (cluster.isWorker) {
    console.log(`peer worker ${cluster.worker.id} ready on ${shown}:${addr.port}`);
    return;
  }
  console.log(
    `listening on ${shown}:${addr.port} (bound ${addr.address}:${addr.port}, ${REDIS_URL ? "redis" : "memory"}, backlog ${BACKLOG})`,
  );
});

