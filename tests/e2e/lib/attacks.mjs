// Hostile clients, as reusable functions: raw Engine.IO handshakes over
// node:http, a raw websocket client over node:net (so that a test controls
// every frame and can stop reading), and attacks built on them.
//
// Every function is bounded in time (it resolves or rejects within its
// timeout) and cleans up after itself: connections it opens are closed when
// it settles, unless it hands back a handle whose `close()` the caller owns.

import http from "node:http";
import net from "node:net";
import { randomBytes } from "node:crypto";
import { withTimeout, WS_PATH } from "./harness.mjs";

// ---------------------------------------------------------------------------
// Raw HTTP (polling handshakes)
// ---------------------------------------------------------------------------

/**
 * One HTTP request with an optional local address; resolves with
 * {status, headers, text, body} (body parsed as JSON when it is).
 */
export function rawHttp(url, { method = "GET", path = "/", headers = {}, body, localAddress, timeoutMs = 5000 } = {}) {
  const u = new URL(url);
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.request({
      host: u.hostname, port: u.port, method, path, headers, localAddress, agent: false,
    }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c) => { text += c; });
      res.on("end", () => {
        let parsed = text;
        try { parsed = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, text, body: parsed });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.setTimeout(timeoutMs, () => req.destroy(new Error("request timed out")));
    req.end(body);
  }), timeoutMs + 500, `${method} ${path}`);
}

/**
 * An Engine.IO polling handshake (`GET /ws/v1/?EIO=4&transport=polling`);
 * resolves with the response and, when it opened a session, its `sid`.
 */
export async function pollingHandshake(url, { localAddress, timeoutMs = 5000 } = {}) {
  const res = await rawHttp(url, { path: `${WS_PATH}/?EIO=4&transport=polling`, localAddress, timeoutMs });
  let sid = null;
  if (res.status === 200 && res.text.startsWith("0")) {
    try { sid = JSON.parse(res.text.slice(1)).sid; } catch { /* not an open packet */ }
  }
  return { ...res, sid };
}

/** A polling request of session `sid`: `GET` (receive) or `POST` `body` (send). */
export function poll(url, sid, { method = "GET", body, localAddress, timeoutMs = 5000 } = {}) {
  const headers = body === undefined ? {} : { "content-type": "text/plain;charset=UTF-8" };
  return rawHttp(url, {
    method, body, headers, localAddress, timeoutMs,
    path: `${WS_PATH}/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`,
  });
}

// ---------------------------------------------------------------------------
// Raw websocket
// ---------------------------------------------------------------------------

const OP = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 };

/** Encodes one masked client frame. */
function frame(opcode, payload, fin = true) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const len = data.length;
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = Buffer.alloc(head + 4 + len);
  out[0] = (fin ? 0x80 : 0) | opcode;
  if (len < 126) {
    out[1] = 0x80 | len;
  } else if (len < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(len), 2);
  }
  const mask = randomBytes(4);
  mask.copy(out, head);
  for (let i = 0; i < len; i++) out[head + 4 + i] = data[i] ^ mask[i & 3];
  return out;
}

/**
 * A websocket client over a raw TCP socket. `open(url, opts)` resolves
 * with either `{ refused: {status, headers, text, body} }` (the server
 * answered the upgrade with anything but 101) or `{ ws }`.
 */
export class RawWs {
  static open(url, { query = "EIO=4&transport=websocket", localAddress, timeoutMs = 5000 } = {}) {
    const u = new URL(url);
    const sock = net.connect({ host: u.hostname, port: Number(u.port), localAddress });
    const key = randomBytes(16).toString("base64");
    const p = new Promise((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const onData = (chunk) => {
        buf = Buffer.concat([buf, chunk]);
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString("latin1");
        const rest = buf.subarray(end + 4);
        const [statusLine, ...lines] = head.split("\r\n");
        const status = Number(statusLine.split(" ")[1]);
        const headers = {};
        for (const l of lines) {
          const i = l.indexOf(":");
          headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
        }
        if (status === 101) {
          sock.off("data", onData);
          resolve({ ws: new RawWs(sock, rest) });
          return;
        }
        // Not upgraded: read the (short) body to its declared length.
        const want = Number(headers["content-length"] ?? 0);
        if (rest.length < want) return;
        sock.off("data", onData);
        sock.destroy();
        const text = rest.subarray(0, want).toString("utf8");
        let body = text;
        try { body = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ refused: { status, headers, text, body } });
      };
      sock.on("data", onData);
      sock.on("error", reject);
      sock.on("close", () => reject(new Error("connection closed during the websocket handshake")));
      sock.on("connect", () => {
        sock.write(
          `GET ${WS_PATH}/?${query} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
      });
    });
    return withTimeout(p, timeoutMs, "websocket handshake").catch((err) => {
      sock.destroy();
      throw err;
    });
  }

  constructor(sock, initial) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.messages = [];
    this.waiters = [];
    this.fragments = null;
    this.autoPong = true;
    this.closeFrame = null;
    this.closed = new Promise((resolve) => {
      sock.on("close", () => {
        for (const w of this.waiters.splice(0)) w.reject(new Error("websocket closed"));
        resolve(this.closeFrame ?? { code: null });
      });
    });
    sock.on("error", () => { /* surfaced as close */ });
    sock.on("data", (chunk) => this.onData(chunk));
    if (initial.length) this.onData(initial);
  }

  onData(chunk) {
    this.buf = Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (this.buf.length < 2) return;
      const fin = (this.buf[0] & 0x80) !== 0;
      const opcode = this.buf[0] & 0x0f;
      let len = this.buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (this.buf.length < 4) return;
        len = this.buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return;
        len = Number(this.buf.readBigUInt64BE(2));
        off = 10;
      }
      if (this.buf.length < off + len) return;
      const payload = this.buf.subarray(off, off + len);
      this.buf = this.buf.subarray(off + len);
      this.onFrame(fin, opcode, Buffer.from(payload));
    }
  }

  onFrame(fin, opcode, payload) {
    if (opcode === OP.close) {
      this.closeFrame = { code: payload.length >= 2 ? payload.readUInt16BE(0) : null, reason: payload.subarray(2).toString() };
      this.sock.end();
      return;
    }
    if (opcode === OP.ping) {
      this.write(frame(OP.pong, payload));
      return;
    }
    if (opcode === OP.pong) return;
    if (opcode !== OP.continuation) this.fragments = { opcode, parts: [] };
    if (!this.fragments) return;
    this.fragments.parts.push(payload);
    if (!fin) return;
    const data = Buffer.concat(this.fragments.parts);
    const msg = this.fragments.opcode === OP.text ? data.toString("utf8") : data;
    this.fragments = null;
    // Engine.IO heartbeat: answer the server's ping, as a client does.
    if (msg === "2" && this.autoPong) this.sendText("3");
    const i = this.waiters.findIndex((w) => w.pred(msg));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      w.resolve(msg);
    } else {
      this.messages.push(msg);
    }
  }

  /** The next received message matching `pred` (already received ones first). */
  next(pred = () => true, timeoutMs = 5000) {
    const i = this.messages.findIndex((m) => pred(m));
    if (i >= 0) return Promise.resolve(this.messages.splice(i, 1)[0]);
    if (this.sock.destroyed) return Promise.reject(new Error("websocket closed"));
    let waiter;
    const p = new Promise((resolve, reject) => {
      waiter = { pred, resolve, reject };
      this.waiters.push(waiter);
    });
    return withTimeout(p, timeoutMs, "waiting for a websocket message").catch((err) => {
      const k = this.waiters.indexOf(waiter);
      if (k >= 0) this.waiters.splice(k, 1);
      throw err;
    });
  }

  write(bytes) {
    if (!this.sock.destroyed) this.sock.write(bytes);
  }

  sendText(text) {
    this.write(frame(OP.text, text));
  }

  sendBinary(bytes) {
    this.write(frame(OP.binary, bytes));
  }

  /** Sends one text message split into frames of `frameSize` bytes. */
  sendFragmented(text, frameSize) {
    const data = Buffer.from(text);
    for (let off = 0; off < data.length; off += frameSize) {
      const last = off + frameSize >= data.length;
      this.write(frame(off === 0 ? OP.text : OP.continuation, data.subarray(off, off + frameSize), last));
    }
  }

  /** Stops reading from the TCP socket (the kernel buffers fill, then the server's). */
  stopReading() {
    this.sock.pause();
  }

  /** Resolves with true if the server closed the connection within `ms`. */
  closedWithin(ms) {
    let t;
    return Promise.race([
      this.closed.then(() => true),
      new Promise((r) => { t = setTimeout(() => r(false), ms); }),
    ]).finally(() => clearTimeout(t));
  }

  close() {
    this.sock.destroy();
  }
}

/**
 * A raw websocket Socket.IO client: handshake, open packet, namespace
 * connect. Resolves with `{ ws, sid }`, or `{ refused }` when the upgrade
 * was answered with an HTTP error.
 */
export async function rawSocketIo(url, { localAddress, timeoutMs = 5000 } = {}) {
  const opened = await RawWs.open(url, { localAddress, timeoutMs });
  if (opened.refused) return opened;
  const { ws } = opened;
  try {
    const open = await ws.next((m) => typeof m === "string" && m.startsWith("0{"), timeoutMs);
    ws.sendText("40");
    await ws.next((m) => typeof m === "string" && m.startsWith("40"), timeoutMs);
    return { ws, sid: JSON.parse(open.slice(1)).sid };
  } catch (err) {
    ws.close();
    throw err;
  }
}

/** Socket.IO event packet text for `emit(event, data)`. */
export function eventPacket(event, data) {
  return `42${JSON.stringify([event, data])}`;
}

// ---------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------

/**
 * Sends one Socket.IO `subscribe` whose payload pads it to `bytes` (a
 * message the server would otherwise accept and ack), in one frame or in
 * frames of `frameSize`. Resolves with `{ closed, acked }`: whether the
 * server closed the connection within `waitMs`, and whether it acked.
 */
export async function oversizedMessage(url, { bytes = 1 << 20, frameSize, waitMs = 5000 } = {}) {
  const { ws } = await rawSocketIo(url);
  try {
    const trackingId = `big-${randomBytes(4).toString("hex")}`;
    const skeleton = eventPacket("subscribe", { trackingId, pad: "" });
    const text = eventPacket("subscribe", { trackingId, pad: "x".repeat(Math.max(0, bytes - skeleton.length)) });
    if (frameSize) ws.sendFragmented(text, frameSize); else ws.sendText(text);
    // Whichever comes first: the ack (the server took it) or the close.
    const outcome = await Promise.race([
      ws.next((m) => typeof m === "string" && m.includes(`Subscribed to trackingId: ${trackingId}`), waitMs)
        .then(() => "acked", () => ws.closed.then(() => "closed")),
      ws.closedWithin(waitMs).then((closed) => (closed ? "closed" : "neither")),
    ]);
    return { closed: outcome === "closed", acked: outcome === "acked" };
  } finally {
    ws.close();
  }
}

/**
 * The polling variant: a session that joined the namespace POSTs one
 * `subscribe` padded to `bytes`. Resolves with the POST's status and the
 * status of a poll of that session afterwards.
 */
export async function oversizedPost(url, { bytes = 1 << 20, timeoutMs = 5000 } = {}) {
  const { sid } = await abandonedPolling(url, { timeoutMs });
  const trackingId = `big-${randomBytes(4).toString("hex")}`;
  const skeleton = eventPacket("subscribe", { trackingId, pad: "" });
  const body = eventPacket("subscribe", { trackingId, pad: "x".repeat(Math.max(0, bytes - skeleton.length)) });
  const posted = await poll(url, sid, { method: "POST", body, timeoutMs });
  const after = await poll(url, sid, { timeoutMs });
  return { posted: posted.status, after: after.status, afterText: after.text };
}

/**
 * Sends a binary-event `subscribe` header announcing one attachment, and
 * the attachment `delayMs` later (never, with `delayMs: null`). Resolves
 * with { answered (the error code or "ack" the server answered within
 * `waitMs` of the attachment, or null), closed (whether the server closed
 * the connection by then), worksAfter (whether a plain subscribe sent
 * afterwards was acked) }.
 */
export async function binaryAttachment(url, { delayMs = 0, waitMs = 5000 } = {}) {
  const { ws } = await rawSocketIo(url);
  try {
    const trackingId = `bin-${randomBytes(4).toString("hex")}`;
    ws.sendText(`451-${JSON.stringify(["subscribe", { trackingId, blob: { _placeholder: true, num: 0 } }])}`);
    if (delayMs === null) return { answered: null, closed: await ws.closedWithin(waitMs), worksAfter: false };
    if (delayMs > 0 && await ws.closedWithin(delayMs)) return { answered: null, closed: true, worksAfter: false };
    ws.sendBinary(Buffer.from([1, 2, 3]));
    const answer = await ws.next((m) => typeof m === "string" && m.startsWith("42"), waitMs).catch(() => null);
    let answered = null;
    if (answer) {
      const [, env] = JSON.parse(answer.slice(2));
      answered = env?.type === "error" ? env.data?.code : env?.type ?? answer;
    }
    let worksAfter = false;
    if (!ws.sock.destroyed) {
      const other = `ok-${randomBytes(4).toString("hex")}`;
      ws.sendText(eventPacket("subscribe", { trackingId: other }));
      worksAfter = await ws.next((m) => typeof m === "string" && m.includes(`Subscribed to trackingId: ${other}`), waitMs)
        .then(() => true, () => false);
    }
    return { answered, closed: ws.sock.destroyed, worksAfter };
  } finally {
    ws.close();
  }
}

/**
 * A client that subscribes to `trackingId`, then stops reading from its TCP
 * socket but keeps answering the server's heartbeat blindly (a pong every
 * `pongEveryMs`, without reading the pings), so that only the server's
 * buffer limits can end it. Returns a handle: `closed` (resolves when the
 * server closed the connection), `close()`.
 */
export async function slowConsumer(url, trackingId, { pongEveryMs = 500, timeoutMs = 5000 } = {}) {
  const { ws, sid } = await rawSocketIo(url, { timeoutMs });
  try {
    ws.sendText(eventPacket("subscribe", { trackingId }));
    await ws.next((m) => typeof m === "string" && m.includes(`Subscribed to trackingId: ${trackingId}`), timeoutMs);
  } catch (err) {
    ws.close();
    throw err;
  }
  ws.autoPong = false;
  ws.stopReading();
  const pong = setInterval(() => ws.sendText("3"), pongEveryMs);
  ws.closed.finally(() => clearInterval(pong));
  return {
    sid,
    ws,
    closed: ws.closed,
    close() {
      clearInterval(pong);
      ws.close();
    },
  };
}

/**
 * A websocket client that completes the Engine.IO handshake and answers
 * every ping but never joins the Socket.IO namespace. Returns the raw
 * websocket (the caller closes it).
 */
export async function neverJoins(url, { localAddress, timeoutMs = 5000 } = {}) {
  const opened = await RawWs.open(url, { localAddress, timeoutMs });
  if (opened.refused) throw new Error(`websocket handshake refused: ${opened.refused.status}`);
  const { ws } = opened;
  try {
    await ws.next((m) => typeof m === "string" && m.startsWith("0{"), timeoutMs);
  } catch (err) {
    ws.close();
    throw err;
  }
  return ws;
}

/**
 * A polling client that handshakes, joins the namespace, then goes silent
 * (never polls again, never answers a ping). Resolves with its `sid`.
 */
export async function abandonedPolling(url, { localAddress, timeoutMs = 5000 } = {}) {
  const hs = await pollingHandshake(url, { localAddress, timeoutMs });
  if (!hs.sid) throw new Error(`polling handshake failed: ${hs.status} ${hs.text}`);
  const posted = await poll(url, hs.sid, { method: "POST", body: "40", localAddress, timeoutMs });
  if (posted.status !== 200) throw new Error(`namespace connect failed: ${posted.status} ${posted.text}`);
  const joined = await poll(url, hs.sid, { localAddress, timeoutMs });
  if (!joined.text.split("\x1e").some((p) => p.startsWith("40"))) throw new Error(`no namespace connect answer: ${joined.text}`);
  return { sid: hs.sid };
}
