// Shared helpers for the Tidings end-to-end suite.
//
// Everything here is bounded in time: a helper that waits for something either
// gets it or rejects after a timeout, so a hung server fails a test quickly
// instead of stalling the run.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const here = path.dirname(fileURLToPath(import.meta.url));
export const E2E_DIR = path.resolve(here, "..");
export const REPO_ROOT = path.resolve(here, "../../..");
export const SERVER_BIN = process.env.TIDINGS_BIN
  ? path.resolve(process.env.TIDINGS_BIN)
  : path.join(REPO_ROOT, "target/debug/tidings");

export const INGEST_TOKEN = "test-token";
export const WS_PATH = "/ws/v1";

/** The three ways a client can reach the realtime endpoint. */
export const TRANSPORT_SETUPS = [
  { name: "websocket only", opts: { transports: ["websocket"] }, expect: "websocket", upgrade: false },
  { name: "polling only", opts: { transports: ["polling"] }, expect: "polling", upgrade: false },
  { name: "polling with upgrade", opts: {}, expect: "websocket", upgrade: true },
];

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/** Rejects with `message` if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${message}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A random suffix, so tests sharing a server never share a trackingId. */
export function rand(n = 8) {
  return randomBytes(n).toString("hex");
}

/** A fresh trackingId with a readable prefix. */
export function uid(prefix = "t") {
  return `${prefix}-${rand(6)}`;
}

const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/** A unique, signature-looking base58 string. */
export function signature() {
  const bytes = randomBytes(64);
  let s = "";
  for (const b of bytes) s += B58[b % B58.length];
  return s;
}

/** Builds a valid payment item for ingest. */
export function payment(trackingId, overrides = {}) {
  return {
    trackingId,
    amount: 1000000,
    timestamp: Math.floor(Date.now() / 1000),
    status: "executed",
    signature: signature(),
    ...overrides,
  };
}

/** The `data` a payment envelope must carry for an ingested item. */
export function expectedData(item) {
  const d = {
    trackingId: item.trackingId,
    amount: item.amount,
    timestamp: item.timestamp,
    status: item.status,
  };
  if (item.signature !== undefined) d.signature = item.signature;
  return d;
}

/** Asserts an envelope `timestamp` is integer milliseconds close to now. */
export function assertMillisNow(ts, what = "envelope timestamp", slackMs = 10000) {
  assert.equal(typeof ts, "number", `${what} must be a number, got ${JSON.stringify(ts)}`);
  assert.ok(Number.isInteger(ts), `${what} must be an integer, got ${ts}`);
  const now = Date.now();
  assert.ok(Math.abs(now - ts) <= slackMs,
    `${what} must be milliseconds since the epoch close to now (${now}), got ${ts}`);
}

/** Asserts the exact key set of an object. */
export function assertKeys(obj, keys, what = "object") {
  assert.ok(obj !== null && typeof obj === "object" && !Array.isArray(obj),
    `${what} must be an object, got ${JSON.stringify(obj)}`);
  assert.deepEqual(Object.keys(obj).sort(), [...keys].sort(), `${what} keys`);
}

/**
 * Asserts an `ack` envelope for subscribe/unsubscribe of `trackingId`. A
 * subscribe's ack carries `position: { id, seq }`: the trackingId's last
 * stored event (`{ id: null, seq: 0 }` without history).
 */
export function assertAck(env, kind, trackingId) {
  if (kind === "subscribe") {
    assertKeys(env, ["type", "data", "timestamp", "position"], "subscribe ack envelope");
    assertPosition(env.position);
  } else {
    assertKeys(env, ["type", "data", "timestamp"], "unsubscribe ack envelope");
  }
  assert.equal(env.type, "ack");
  const text = kind === "subscribe"
    ? `Subscribed to trackingId: ${trackingId}`
    : `Unsubscribed from trackingId: ${trackingId}`;
  assert.equal(env.data, text);
  assertMillisNow(env.timestamp, "ack timestamp");
}

/** Asserts the shape of a subscribe ack's `position`. */
export function assertPosition(position) {
  assertKeys(position, ["id", "seq"], "ack position");
  assert.ok(Number.isInteger(position.seq) && position.seq >= 0, `position.seq: ${JSON.stringify(position)}`);
  if (position.seq === 0) {
    assert.equal(position.id, null, `position.id is null at seq 0: ${JSON.stringify(position)}`);
  } else {
    assert.match(position.id, /^\d+-\d+$/, `position.id: ${JSON.stringify(position)}`);
    assert.equal(position.id.split("-")[1], String(position.seq), `position id and seq agree: ${JSON.stringify(position)}`);
  }
}

/** Asserts an `error` envelope with `code`. */
export function assertError(env, code) {
  assertKeys(env, ["type", "data", "timestamp"], "error envelope");
  assert.equal(env.type, "error");
  assert.ok(env.data && typeof env.data === "object", `error data must be an object, got ${JSON.stringify(env.data)}`);
  assert.equal(env.data.code, code, `error code (envelope ${JSON.stringify(env)})`);
  assert.equal(typeof env.data.message, "string", "error message must be a string");
  assert.ok(env.data.message.length > 0, "error message must not be empty");
  assertMillisNow(env.timestamp, "error timestamp");
}

/** Asserts a `payment` envelope matches an ingested item and its ingest result. */
export function assertPayment(env, item, result) {
  assertKeys(env, ["type", "id", "seq", "data", "timestamp"], "payment envelope");
  assert.equal(env.type, "payment_notification");
  assert.equal(typeof env.id, "string");
  assert.ok(env.id.length > 0, "event id must not be empty");
  assert.ok(Number.isInteger(env.seq) && env.seq >= 1, `seq must be a positive integer, got ${env.seq}`);
  assert.deepEqual(env.data, expectedData(item), "payment data");
  assertMillisNow(env.timestamp, "payment envelope timestamp");
  if (result) {
    assert.equal(env.id, result.id, "envelope id equals the id ingest returned");
    assert.equal(env.seq, result.seq, "envelope seq equals the seq ingest returned");
  }
}

/** Asserts an HTTP error body `{error:{code,message,...}}`. */
export function assertHttpError(res, status, code) {
  assert.equal(res.status, status, `HTTP status (body ${JSON.stringify(res.body)})`);
  assert.ok(res.body && typeof res.body === "object" && res.body.error,
    `error body must be {error:{...}}, got ${JSON.stringify(res.body)}`);
  assert.equal(res.body.error.code, code, `error code (body ${JSON.stringify(res.body)})`);
  assert.equal(typeof res.body.error.message, "string");
  assert.ok(res.body.error.message.length > 0, "error message must not be empty");
}

/** Replaces the seq part of an event id `<epoch>-<seq>` with seq + delta. */
export function futureId(id, delta = 100) {
  const m = /^(\d+)-(\d+)$/.exec(id);
  assert.ok(m, `event id ${JSON.stringify(id)} does not look like <epoch>-<seq>`);
  return `${m[1]}-${BigInt(m[2]) + BigInt(delta)}`;
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

const live = new Set();
process.on("exit", () => {
  for (const p of live) {
    try { p.kill("SIGKILL"); } catch { /* already gone */ }
  }
});

/**
 * Spawns the Tidings binary on an ephemeral port.
 *
 * @param {string[]} args extra CLI flags
 * @param {Record<string,string>} env extra environment variables
 * @param {{ baseArgs?: string[], timeoutMs?: number }} options
 *   `baseArgs` replaces the default `--listen 127.0.0.1:0 --ingest-token test-token --log-format json`.
 */
export function startServer(args = [], env = {}, options = {}) {
  const baseArgs = options.baseArgs ?? [
    "--listen", "127.0.0.1:0",
    "--ingest-token", INGEST_TOKEN,
    "--log-format", "json",
  ];
  const timeoutMs = options.timeoutMs ?? 10000;
  if (!existsSync(SERVER_BIN)) {
    return Promise.reject(new Error(
      `server binary not found at ${SERVER_BIN}: build it with \`cargo build\` or set TIDINGS_BIN`));
  }
  const childEnv = { ...process.env, ...env };
  // Keep the server's own log level as configured by the caller; make sure the
  // "listening" line (info) is printed.
  if (!("RUST_LOG" in env)) childEnv.RUST_LOG = process.env.TIDINGS_TEST_RUST_LOG ?? "info";
  const proc = spawn(SERVER_BIN, [...baseArgs, ...args], {
    env: childEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  live.add(proc);
  const lines = [];
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on("exit", (code, signal) => {
      exitInfo = { code, signal };
      live.delete(proc);
      resolve(exitInfo);
    });
  });
  const logs = () => lines.join("\n");

  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (err, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        try { proc.kill("SIGKILL"); } catch { /* gone */ }
        reject(err);
      } else {
        resolve(value);
      }
    };
    const timer = setTimeout(() => finish(new Error(
      `server did not report "listening on" within ${timeoutMs} ms; output:\n${logs()}`)), timeoutMs);

    const onLine = (line) => {
      lines.push(line);
      if (done) return;
      const m = /listening on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(line);
      if (m) {
        const port = Number(m[1].split(":")[1]);
        const url = `http://127.0.0.1:${port}`;
        finish(null, {
          url,
          port,
          proc,
          logs,
          exited,
          get exitInfo() { return exitInfo; },
          /** Sends `signal`, awaits exit (bounded), SIGKILLs if needed. */
          async stop(signal = "SIGTERM", graceMs = 10000) {
            if (exitInfo) return exitInfo;
            try { proc.kill(signal); } catch { /* gone */ }
            let t;
            const timedOut = await Promise.race([
              exited.then(() => false),
              new Promise((r) => { t = setTimeout(() => r(true), graceMs); }),
            ]);
            clearTimeout(t);
            if (timedOut) {
              try { proc.kill("SIGKILL"); } catch { /* gone */ }
              await exited;
              return { ...exitInfo, timedOut: true };
            }
            return exitInfo;
          },
        });
      }
    };
    for (const stream of [proc.stdout, proc.stderr]) {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          onLine(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      });
      stream.on("end", () => { if (buf) onLine(buf); buf = ""; });
    }
    proc.on("error", (err) => finish(new Error(`could not spawn ${SERVER_BIN}: ${err.message}`)));
    exited.then((info) => finish(new Error(
      `server exited (${JSON.stringify(info)}) before listening; output:\n${logs()}`)));
  });
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

async function readBody(res) {
  const text = await res.text();
  let body = text;
  if (text.length > 0) {
    try { body = JSON.parse(text); } catch { body = text; }
  }
  return { status: res.status, body, text, headers: res.headers };
}

/**
 * POSTs to /v1/payments. `body` is JSON-encoded unless it is a string.
 * `token: null` sends no Authorization header.
 */
export async function ingest(url, body, { token = INGEST_TOKEN, headers = {}, timeoutMs = 10000 } = {}) {
  const h = { "content-type": "application/json", ...headers };
  if (token !== null && token !== undefined) h.authorization = `Bearer ${token}`;
  const res = await fetch(`${url}/v1/payments`, {
    method: "POST",
    headers: h,
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return readBody(res);
}

/** Ingests and asserts 202; returns the result entries. */
export async function ingestOk(url, body) {
  const res = await ingest(url, body);
  assert.equal(res.status, 202, `ingest must answer 202, got ${res.status}: ${res.text}`);
  assert.ok(res.body && Array.isArray(res.body.data), `ingest body must be {data:[...]}, got ${res.text}`);
  return res.body.data;
}

/** GET with a bounded timeout; returns {status, body, text, headers}. */
export async function httpGet(url, { headers = {}, timeoutMs = 10000, method = "GET" } = {}) {
  const res = await fetch(url, { method, headers, signal: AbortSignal.timeout(timeoutMs) });
  return readBody(res);
}

/** GET /v1/events with the given query parameters. */
export async function backfill(url, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, String(v));
  return httpGet(`${url}/v1/events?${q}`);
}

// ---------------------------------------------------------------------------
// Socket.IO
// ---------------------------------------------------------------------------

const REC = Symbol("tidings.recorder");

/**
 * Records every event a socket receives, in arrival order, from the moment
 * the socket is created (events that arrive within one network read are
 * dispatched synchronously, so a listener attached after awaiting one of them
 * could miss the next). `waitFor` consumes from this log.
 */
function attachRecorder(socket) {
  const rec = {
    log: [],          // { event, payload, args, consumed }
    waiters: [],      // { event, pred, resolve, reject }
    disconnected: null,
  };
  socket[REC] = rec;
  socket.onAny((event, ...args) => {
    const entry = { event, payload: args[0], args, consumed: false };
    rec.log.push(entry);
    for (let i = 0; i < rec.waiters.length; i++) {
      const w = rec.waiters[i];
      if (w.event === event && safeMatch(w.pred, entry.payload)) {
        entry.consumed = true;
        rec.waiters.splice(i, 1);
        w.resolve(entry.payload);
        break;
      }
    }
  });
  socket.on("disconnect", (reason) => {
    rec.disconnected = reason;
    const pending = rec.waiters.splice(0);
    for (const w of pending) w.reject(new Error(`socket disconnected (${reason}) while waiting for "${w.event}"`));
  });
  return rec;
}

function safeMatch(pred, payload) {
  if (!pred) return true;
  try { return !!pred(payload); } catch { return false; }
}

/** The recorded log of a socket created by `connect`/`makeSocket`. */
export function recorded(socket, event) {
  const rec = socket[REC];
  assert.ok(rec, "socket has no recorder (create it with connect())");
  return rec.log.filter((e) => event === undefined || e.event === event).map((e) => event === undefined ? e : e.payload);
}

/** Recorded `payment` envelopes of a socket, optionally for one trackingId. */
export function payments(socket, trackingId) {
  return recorded(socket, "payment").filter((p) => trackingId === undefined || p?.data?.trackingId === trackingId);
}

/**
 * Resolves with the next matching payload of `event` not consumed by an
 * earlier waitFor (including ones already recorded), or rejects after
 * `timeoutMs`.
 */
export function waitFor(socket, event, predicate, timeoutMs = 5000) {
  const rec = socket[REC];
  if (!rec) {
    return withTimeout(new Promise((resolve) => {
      const h = (payload) => {
        if (safeMatch(predicate, payload)) { socket.off(event, h); resolve(payload); }
      };
      socket.on(event, h);
    }), timeoutMs, `waiting for "${event}"`);
  }
  for (const entry of rec.log) {
    if (!entry.consumed && entry.event === event && safeMatch(predicate, entry.payload)) {
      entry.consumed = true;
      return Promise.resolve(entry.payload);
    }
  }
  if (rec.disconnected !== null) {
    return Promise.reject(new Error(`socket is disconnected (${rec.disconnected}); "${event}" cannot arrive`));
  }
  let waiter;
  const p = new Promise((resolve, reject) => {
    waiter = { event, pred: predicate, resolve, reject };
    rec.waiters.push(waiter);
  });
  return withTimeout(p, timeoutMs, `waiting for "${event}"`).catch((err) => {
    const i = rec.waiters.indexOf(waiter);
    if (i >= 0) rec.waiters.splice(i, 1);
    const seen = rec.log.map((e) => `${e.event}${e.consumed ? "(consumed)" : ""}:${JSON.stringify(e.payload)}`);
    err.message += `\n  recorded events: ${seen.length ? seen.join("\n    ") : "(none)"}`;
    throw err;
  });
}

/** Collects every `event` payload from now on, in arrival order. */
export function collect(socket, event) {
  const out = [];
  socket.on(event, (payload) => out.push(payload));
  return out;
}

/** Resolves with the connect_error's message, or rejects if the socket connects. */
export function connectRefused(url, opts = {}, timeoutMs = 10000) {
  const socket = makeSocket(url, opts);
  return withTimeout(new Promise((resolve, reject) => {
    socket.once("connect", () => { socket.close(); reject(new Error("connected, but should have been refused")); });
    socket.once("connect_error", (err) => { socket.close(); resolve(err.message); });
  }), timeoutMs, "waiting for connect_error").finally(() => socket.close());
}

/** Creates a socket with a recorder, without waiting for it to connect. */
export function makeSocket(url, opts = {}) {
  const socket = io(url, {
    path: WS_PATH,
    forceNew: true,
    reconnection: false,
    timeout: 10000,
    ...opts,
  });
  attachRecorder(socket);
  // Track engine upgrades from the very start (the manager opens its engine
  // synchronously in the constructor).
  socket.initialTransport = socket.io.engine?.transport?.name ?? null;
  socket.upgraded = new Promise((resolve) => {
    const engine = socket.io.engine;
    if (!engine) return;
    engine.on("upgrade", (transport) => resolve(transport?.name ?? engine.transport?.name));
  });
  socket.upgraded.catch(() => {});
  return socket;
}

/** Connects and resolves once `connect` fired; rejects on `connect_error` or timeout. */
export function connect(url, opts = {}, timeoutMs = 10000) {
  const socket = makeSocket(url, opts);
  const p = new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(new Error(`connect_error: ${err?.message ?? err}`));
    });
  });
  return withTimeout(p, timeoutMs, `connecting to ${url}`).catch((err) => {
    socket.close();
    throw err;
  });
}

/**
 * Connects with a transport setup from TRANSPORT_SETUPS; for the upgrade
 * setup it also waits until the engine has upgraded to websocket.
 */
export async function connectWith(url, setup, extra = {}) {
  const socket = await connect(url, { ...setup.opts, ...extra });
  if (setup.upgrade) {
    if (socket.io.engine.transport.name !== "websocket") {
      await withTimeout(socket.upgraded, 10000, "waiting for the transport upgrade");
    }
    assert.equal(socket.io.engine.transport.name, "websocket", "transport after upgrade");
  } else {
    assert.equal(socket.io.engine.transport.name, setup.expect, "transport");
  }
  return socket;
}

/** Awaits the socket's disconnect (resolves immediately if already disconnected). */
export function waitDisconnect(socket, timeoutMs = 10000) {
  const rec = socket[REC];
  if (rec && rec.disconnected !== null) return Promise.resolve(rec.disconnected);
  return withTimeout(new Promise((resolve) => socket.once("disconnect", resolve)),
    timeoutMs, "waiting for disconnect");
}

/** Subscribes and awaits the `ack` event for that id; returns the ack envelope. */
export async function subscribe(socket, trackingId, extra = {}, timeoutMs = 5000) {
  const wait = waitFor(socket, "ack", (a) => a?.data === `Subscribed to trackingId: ${trackingId}`, timeoutMs);
  socket.emit("subscribe", { trackingId, ...extra });
  const ack = await wait;
  assertAck(ack, "subscribe", trackingId);
  return ack;
}

/** Unsubscribes and awaits the `ack` event; returns the ack envelope. */
export async function unsubscribe(socket, trackingId, timeoutMs = 5000) {
  const wait = waitFor(socket, "ack", (a) => a?.data === `Unsubscribed from trackingId: ${trackingId}`, timeoutMs);
  socket.emit("unsubscribe", { trackingId });
  const ack = await wait;
  assertAck(ack, "unsubscribe", trackingId);
  return ack;
}

/** Emits with a Socket.IO acknowledgement callback; resolves with the callback's argument. */
export function emitWithAck(socket, event, ...args) {
  return socket.timeout(5000).emitWithAck(event, ...args);
}

/**
 * Barrier: ingests one payment for `barrierId` (which `socket` holds) and
 * waits until the socket receives it. Everything the server published to
 * this socket before that ingest has arrived by the time this resolves.
 */
export async function barrier(url, socket, barrierId, timeoutMs = 5000) {
  const item = payment(barrierId);
  const wait = waitFor(socket, "payment", (p) => p?.data?.signature === item.signature, timeoutMs);
  const [r] = await ingestOk(url, item);
  const env = await wait;
  assert.equal(env.id, r.id);
  return env;
}

/** Closes sockets, ignoring ones already closed. */
export function closeAll(...sockets) {
  for (const s of sockets.flat()) {
    try { s?.close(); } catch { /* closed */ }
  }
}
