// Hostile HTTP clients for the end-to-end suite: raw TCP requests that
// socket.io-client and fetch cannot send (heads dribbled a byte at a time,
// bodies shorter than their Content-Length), Node's http.request writing a
// whole oversized body before reading, and the list of ATTACKS that
// hostile.test.mjs runs all at once.
//
// Every wait here is bounded; an attack runs until its AbortSignal fires and
// then destroys what it opened.

import net from "node:net";
import http from "node:http";
import { readFileSync } from "node:fs";
import { INGEST_TOKEN, payment, uid, ingestOk } from "./harness.mjs";
import { oversizedMessage, binaryAttachment, pollingHandshake, slowConsumer } from "./attacks.mjs";

/** The per-address cap the combined test's server runs with (`--max-connections-per-ip`). */
export const FLOOD_CAP = 30;
/** The address the connection flood comes from (honest clients use 127.0.0.1). */
export const FLOOD_ADDRESS = "127.0.0.3";

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

/** The resident memory of process `pid`, in bytes (VmRSS). */
export function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** Formats bytes as MiB with one decimal. */
export const mib = (n) => `${(n / (1024 * 1024)).toFixed(1)} MiB`;

// ---------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------

/**
 * A raw TCP connection that records what the server sends and how the
 * connection ends. `closed` resolves with { at (ms since open), error
 * (code or null), data (Buffer) } whenever the server closes it, resets it
 * or we destroy it.
 */
export function rawConnection(port) {
  const socket = net.connect(port, "127.0.0.1");
  const opened = Date.now();
  const chunks = [];
  let error = null;
  const connected = new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  connected.catch(() => {});
  socket.on("data", (d) => chunks.push(d));
  socket.on("error", (e) => { error ??= e.code ?? e.message; });
  const closed = new Promise((resolve) => {
    socket.once("close", () => resolve({ at: Date.now() - opened, error, data: Buffer.concat(chunks) }));
  });
  return { socket, connected, closed, data: () => Buffer.concat(chunks), opened };
}

/**
 * Parses the first HTTP response in `buf`, or returns null while it is
 * incomplete: { status, headers (lower-case names), text, json, length }.
 */
export function parseResponse(buf) {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) return null;
  const lines = buf.subarray(0, end).toString("latin1").split("\r\n");
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0])?.[1]);
  const headers = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(":");
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  const length = Number(headers["content-length"] ?? 0);
  if (buf.length < end + 4 + length) return null;
  const text = buf.subarray(end + 4, end + 4 + length).toString("utf8");
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status, headers, text, json, length: end + 4 + length };
}

/** Resolves with the first full response on `conn`, or rejects after `timeoutMs` or at close. */
export function nextResponse(conn, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const r = parseResponse(conn.data());
      if (r) { done(); resolve(r); }
    };
    const onClose = () => {
      const r = parseResponse(conn.data());
      done();
      if (r) resolve(r);
      else reject(new Error(`connection closed without a full response; got ${JSON.stringify(conn.data().toString("latin1").slice(0, 200))}`));
    };
    const timer = setTimeout(() => { done(); reject(new Error(`no full response within ${timeoutMs} ms`)); }, timeoutMs);
    const done = () => { clearTimeout(timer); conn.socket.off("data", check); conn.socket.off("close", onClose); };
    conn.socket.on("data", check);
    conn.socket.on("close", onClose);
    check();
  });
}

/** Resolves with `promise`'s value, or with `fallback` after `ms`. */
export function within(promise, ms, fallback) {
  let t;
  return Promise.race([promise, new Promise((r) => { t = setTimeout(() => r(fallback), ms); })])
    .finally(() => clearTimeout(t));
}

/** The head of an ingest POST declaring `length` body bytes. */
export function ingestHead(length, { token = INGEST_TOKEN, extra = "" } = {}) {
  return "POST /v1/payments HTTP/1.1\r\nHost: tidings\r\n" +
    `Authorization: Bearer ${token}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${length}\r\n${extra}\r\n`;
}

/**
 * Writes `data` to a raw connection in chunks, respecting backpressure,
 * until done or the connection fails; resolves with the bytes written.
 */
export async function writeAll(conn, data, chunkSize = 256 * 1024) {
  let written = 0;
  while (written < data.length && !conn.socket.destroyed) {
    const chunk = data.subarray(written, written + chunkSize);
    const ok = conn.socket.write(chunk);
    written += chunk.length;
    if (!ok) {
      await new Promise((resolve) => {
        conn.socket.once("drain", resolve);
        conn.socket.once("close", resolve);
      });
    }
  }
  return written;
}

// ---------------------------------------------------------------------------
// Node's http.request
// ---------------------------------------------------------------------------

/**
 * POSTs `body` with Node's http.request, writing all of it before reading
 * (as a backend with a large batch does). Resolves once the request is
 * over with { status, headers, text, json, error }: `error` is the first
 * error the request saw (EPIPE, ECONNRESET...), even after a response.
 */
export function postWhole(url, path, body, { headers = {}, timeoutMs = 60000 } = {}) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    let error = null;
    let response = null;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      let json = null;
      try { json = JSON.parse(response?.text); } catch { /* not JSON */ }
      resolve({ status: response?.status ?? null, headers: response?.headers ?? {}, text: response?.text ?? null, json, error });
    };
    const timer = setTimeout(() => { error ??= "TIMEOUT"; req.destroy(); finish(); }, timeoutMs);
    const req = http.request({
      hostname, port, path, method: "POST", agent: false,
      headers: {
        authorization: `Bearer ${INGEST_TOKEN}`, "content-type": "application/json",
        "content-length": body.length, ...headers,
      },
    });
    req.on("error", (e) => { error ??= e.code ?? e.message; finish(); });
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c) => { text += c; });
      res.on("error", (e) => { error ??= e.code ?? e.message; });
      res.on("end", () => {
        response = { status: res.statusCode, headers: res.headers, text };
        // Let an error that follows the answer (a reset while we still
        // write) be seen: the request is over when its socket is.
        if (req.socket && !req.socket.destroyed) req.socket.once("close", finish);
        else finish();
      });
    });
    req.end(body);
  });
}

/** A JSON array of valid payments for `trackingId` at least `bytes` long. */
export function bigBatch(trackingId, bytes) {
  const one = JSON.stringify(payment(trackingId));
  const n = Math.ceil(bytes / (one.length + 1));
  const items = [];
  for (let i = 0; i < n; i++) items.push(JSON.stringify(payment(trackingId)));
  return Buffer.from(`[${items.join(",")}]`);
}

/**
 * One payment object for `trackingId` padded with unknown fields to about
 * `bytes` bytes. Returns { body: Buffer, unknown: number of unknown fields }.
 */
export function detailBomb(trackingId, bytes = 960 * 1024) {
  const parts = [JSON.stringify(payment(trackingId)).slice(0, -1)];
  let size = parts[0].length;
  let unknown = 0;
  while (size < bytes) {
    const field = `,"f${unknown}":1`;
    parts.push(field);
    size += field.length;
    unknown++;
  }
  parts.push("}");
  return { body: Buffer.from(parts.join("")), unknown };
}

// ---------------------------------------------------------------------------
// Attacks run all at once by "hostile clients at once"
// ---------------------------------------------------------------------------

/**
 * Each attack: { name, run(target, signal, stats), check(stats) }.
 * `target` is { url, port }; `run` keeps attacking until `signal` aborts,
 * then closes what it opened and resolves; it counts what it saw in `stats`
 * (a plain object of counters). Attacks never throw: the server refusing
 * them is the point. `check` returns null when every attempt was refused as
 * designed (and at least one was), else what went wrong.
 *
 * Add new kinds here (websocket or Engine.IO-level ones): hostile.test.mjs
 * runs every entry concurrently with honest clients.
 */
export const ATTACKS = [
  {
    name: "slow headers (200 connections, a byte a second)",
    async run({ port }, signal, stats) {
      const head = "GET /healthz HTTP/1.1\r\nHost: tidings\r\nX-Slow: " + "a".repeat(4096);
      const one = async () => {
        while (!signal.aborted) {
          const conn = rawConnection(port);
          stats.opened = (stats.opened ?? 0) + 1;
          let i = 0;
          const timer = setInterval(() => { if (!conn.socket.destroyed) conn.socket.write(head[i++ % head.length]); }, 1000);
          const onAbort = () => conn.socket.destroy();
          signal.addEventListener("abort", onAbort, { once: true });
          const end = await conn.closed;
          clearInterval(timer);
          signal.removeEventListener("abort", onAbort);
          if (!signal.aborted) stats.closedByServer = (stats.closedByServer ?? 0) + 1;
          if (end.data.length > 0) stats.answered = (stats.answered ?? 0) + 1;
        }
      };
      await Promise.all(Array.from({ length: 200 }, one));
    },
    check: (stats) => (stats.closedByServer > 0 && !stats.answered ? null : "no slow head was closed by the server, or one was answered"),
  },
  {
    name: "oversized bodies (33 MiB, written whole before reading)",
    async run({ url }, signal, stats) {
      const body = Buffer.alloc(33 * 1024 * 1024, "a");
      while (!signal.aborted) {
        const r = await postWhole(url, "/v1/payments", body);
        const key = r.status === 413 && !r.error ? "answered413" : `other:${r.status}:${r.error}`;
        stats[key] = (stats[key] ?? 0) + 1;
        await sleep(20, signal); // leave the (shared) CPU some air
      }
    },
    check: (stats) => only(stats, "answered413"),
  },
  {
    name: "short bodies (20 at a time, 10 of 1000 bytes sent)",
    async run({ port }, signal, stats) {
      const one = async () => {
        while (!signal.aborted) {
          const conn = rawConnection(port);
          const onAbort = () => conn.socket.destroy();
          signal.addEventListener("abort", onAbort, { once: true });
          conn.socket.write(ingestHead(1000) + '{"trackin');
          const r = await nextResponse(conn, 30000).catch(() => null);
          conn.socket.destroy();
          signal.removeEventListener("abort", onAbort);
          if (signal.aborted) break;
          const key = r ? `status${r.status}` : "noAnswer";
          stats[key] = (stats[key] ?? 0) + 1;
        }
      };
      await Promise.all(Array.from({ length: 20 }, one));
    },
    check: (stats) => only(stats, "status408"),
  },
  {
    name: "detail bombs (960 KB of unknown fields)",
    async run({ url }, signal, stats) {
      const { body } = detailBomb(uid("bomb"));
      while (!signal.aborted) {
        const r = await postWhole(url, "/v1/payments", body);
        const key = r.status === 400 && r.text.length < 64 * 1024 ? "answeredSmall400" : `other:${r.status}:${r.text?.length}`;
        stats[key] = (stats[key] ?? 0) + 1;
      }
    },
    check: (stats) => only(stats, "answeredSmall400"),
  },
  {
    name: "invalid UTF-8 queries (trackingId=%FF)",
    async run({ url }, signal, stats) {
      while (!signal.aborted) {
        const r = await fetch(`${url}/v1/events?trackingId=%FF`, { signal: AbortSignal.timeout(10000) })
          .then(async (res) => ({ status: res.status, body: await res.json().catch(() => null) }))
          .catch((e) => ({ status: e.name }));
        const key = r.status === 400 && r.body?.error?.code === "INVALID_TRACKING_ID" ? "answered400" : `other:${r.status}`;
        stats[key] = (stats[key] ?? 0) + 1;
        await sleep(20, signal);
      }
    },
    check: (stats) => only(stats, "answered400"),
  },
  {
    name: "oversized websocket messages (1 MiB, in one frame and in 16 KiB frames)",
    async run({ url }, signal, stats) {
      for (let n = 0; !signal.aborted; n++) {
        const r = await oversizedMessage(url, { frameSize: n % 2 ? 16 * 1024 : undefined })
          .catch((e) => ({ error: e.message }));
        const key = r.closed && !r.acked ? "closed" : `other:${JSON.stringify(r)}`;
        stats[key] = (stats[key] ?? 0) + 1;
        await sleep(50, signal);
      }
    },
    check: (stats) => only(stats, "closed"),
  },
  {
    name: "binary attachments (a subscribe with one, sent a second after its header)",
    async run({ url }, signal, stats) {
      while (!signal.aborted) {
        const r = await binaryAttachment(url, { delayMs: 1000 }).catch((e) => ({ error: e.message }));
        const key = r.answered === "INVALID_PAYLOAD" && !r.closed && r.worksAfter ? "refusedAndWorking" : `other:${JSON.stringify(r)}`;
        stats[key] = (stats[key] ?? 0) + 1;
        await sleep(50, signal);
      }
    },
    check: (stats) => only(stats, "refusedAndWorking"),
  },
  {
    name: `connection flood from ${FLOOD_ADDRESS} (abandoned polling sessions; cap ${FLOOD_CAP} per address)`,
    async run({ url }, signal, stats) {
      while (!signal.aborted) {
        const r = await pollingHandshake(url, { localAddress: FLOOD_ADDRESS })
          .catch((e) => ({ status: e.message }));
        const key = r.sid ? "held" : r.status === 429 && r.body?.error?.code === "RATE_LIMITED" ? "refused429" : `other:${r.status}`;
        stats[key] = (stats[key] ?? 0) + 1;
        await sleep(20, signal);
      }
    },
    // Abandoned sessions are reaped after the ping timeout, so more than the
    // cap may be held over the whole run, never more at once (limits.test.mjs).
    check: (stats) => (stats.held >= FLOOD_CAP && stats.refused429 > 0 && Object.keys(stats).length === 2
      ? null : `expected held ≥ ${FLOOD_CAP} and refused429, got ${JSON.stringify(stats)}`),
  },
  {
    name: "a slow consumer (stops reading; its trackingId gets payments in bulk until it is dropped)",
    async run({ url }, signal, stats) {
      const tid = `slow-${"x".repeat(200)}-${uid()}`;
      const slow = await slowConsumer(url, tid);
      let closed = false;
      slow.closed.then(() => { closed = true; });
      // Runs on after the others stopped, until the server drops it (bounded).
      const deadline = Date.now() + 55000;
      try {
        while (!closed && Date.now() < deadline) {
          const batch = Array.from({ length: 200 }, () => payment(tid, { signature: "S".repeat(200) + uid() }));
          await ingestOk(url, batch);
          stats.payments = (stats.payments ?? 0) + batch.length;
          await sleep(100);
        }
      } finally {
        slow.close();
      }
      stats.droppedByServer = closed;
    },
    check: (stats) => (stats.droppedByServer === true ? null : `the slow consumer was not dropped: ${JSON.stringify(stats)}`),
  },
];

/** null when `stats` counts only `key`, at least once. */
function only(stats, key) {
  const keys = Object.keys(stats);
  return stats[key] > 0 && keys.length === 1 ? null : `expected only ${key}, got ${JSON.stringify(stats)}`;
}
