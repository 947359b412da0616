// Self-check of the peer (not part of any test suite): starts it on free
// ports, single node and as a two-node cluster on a private redis-server,
// and drives it with socket.io-client and fetch. Exits non-zero on failure.
//
//   node selfcheck.mjs

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

import { io } from "socket.io-client";

const SERVER = fileURLToPath(new URL("./server.mjs", import.meta.url));
const TOKEN = "selfcheck-token";
const children = [];
const sockets = [];

function log(msg) {
  console.log(`selfcheck: ${msg}`);
}

/** Resolves after `ms`, or rejects `what` if `promise` does not settle first. */
function within(promise, what, ms = 5000) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function freePort() {
  const srv = createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const { port } = srv.address();
  srv.close();
  await once(srv, "close");
  return port;
}

/** Starts a peer; resolves its base URL once it prints its address. */
async function startPeer(...args) {
  return startPeerWith({}, ...args);
}

/** startPeer with `env` added to its environment. */
async function startPeerWith(env, ...args) {
  const child = spawn(process.execPath, [SERVER, "--listen", "127.0.0.1:0", "--ingest-token", TOKEN, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...env },
  });
  children.push(child);
  let out = "";
  child.stdout.setEncoding("utf8");
  const addr = await within(
    new Promise((resolve, reject) => {
      child.stdout.on("data", (chunk) => {
        out += chunk;
        const m = /listening on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(out);
        if (m) resolve(m[1]);
      });
      child.on("exit", (code) => reject(new Error(`peer exited with ${code} before listening: ${out}`)));
    }),
    "the peer to listen",
  );
  return `http://${addr}`;
}

async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  child.isRedis = true;
  children.push(child);
  let out = "";
  child.stdout.setEncoding("utf8");
  await within(
    new Promise((resolve, reject) => {
      child.stdout.on("data", (chunk) => {
        out += chunk;
        if (out.includes("Ready to accept connections")) resolve();
      });
      child.on("exit", (code) => reject(new Error(`redis-server exited with ${code}: ${out}`)));
    }),
    "redis-server",
  );
  return `redis://127.0.0.1:${port}`;
}

/** A connected client that records every event it gets, in order. */
async function connect(base, transports) {
  const socket = io(base, { path: "/ws/v1", transports, reconnection: false, forceNew: true });
  sockets.push(socket);
  socket.events = [];
  socket.onAny((event, payload) => socket.events.push({ event, payload }));
  await within(once(socket, "connect"), "connect");
  return socket;
}

/** Waits until `socket` has recorded at least `n` events named `event`. */
async function waitFor(socket, event, n, what = `${n} ${event} event(s)`) {
  await within(
    new Promise((resolve) => {
      const check = () => {
        if (socket.events.filter((e) => e.event === event).length >= n) {
          socket.offAny(check);
          resolve();
        }
      };
      socket.onAny(check);
      check();
    }),
    what,
  );
  return socket.events.filter((e) => e.event === event).map((e) => e.payload);
}

async function subscribe(socket, payload) {
  const reply = await within(socket.emitWithAck("subscribe", payload), "subscribe callback");
  return reply;
}

async function post(base, body, token = TOKEN) {
  const headers = { "content-type": "application/json" };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${base}/v1/payments`, { method: "POST", headers, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json() };
}

function payment(trackingId, n, extra = {}) {
  return { trackingId, amount: 1000 * n, timestamp: 1699876543 + n, status: "executed", signature: `sig-${n}`, ...extra };
}

function assertAck(env, text) {
  assert.equal(env.type, "ack");
  assert.equal(env.data, text);
  assert.ok(Number.isInteger(env.timestamp) && Math.abs(env.timestamp - Date.now()) < 60_000, "ack timestamp in ms");
  assert.deepEqual(Object.keys(env).sort(), ["data", "timestamp", "type"]);
}

function assertPayment(env, trackingId, seq, n) {
  assert.equal(env.type, "payment_notification");
  assert.equal(env.seq, seq);
  assert.match(env.id, new RegExp(`^\\d+-${seq}$`));
  assert.deepEqual(env.data, {
    trackingId,
    amount: 1000 * n,
    timestamp: 1699876543 + n,
    status: "executed",
    signature: `sig-${n}`,
  });
  assert.ok(Number.isInteger(env.timestamp) && env.timestamp > 1e12, "envelope timestamp in ms");
}

/**
 * The main scenario: subscribe on `subBase`, ingest on `ingestBase` (the
 * same node, or another node of the cluster).
 */
async function scenario(label, subBase, ingestBase, transports) {
  const tid = `sc-${label}-${Date.now()}`;
  const socket = await connect(subBase, transports);

  // ack: event and callback, the same envelope.
  const cb = await subscribe(socket, { trackingId: tid });
  assertAck(cb, `Subscribed to trackingId: ${tid}`);
  const [ackEvent] = await waitFor(socket, "ack", 1);
  assert.deepEqual(ackEvent, cb, "ack event and callback carry the same envelope");

  // A batch of 3, then a duplicate of the second.
  const batch = await post(ingestBase, [payment(tid, 1), payment(tid, 2), payment(tid, 3)]);
  assert.equal(batch.status, 202, JSON.stringify(batch.body));
  assert.equal(batch.body.data.length, 3);
  batch.body.data.forEach((r, i) => {
    assert.deepEqual(Object.keys(r).sort(), ["duplicate", "id", "seq", "trackingId"]);
    assert.equal(r.seq, i + 1);
    assert.equal(r.trackingId, tid);
    assert.equal(r.duplicate, false);
  });
  const payments = await waitFor(socket, "payment", 3);
  assert.deepEqual(payments.map((p) => p.seq), [1, 2, 3], "payments arrive in seq order 1..3");
  payments.forEach((p, i) => {
    assertPayment(p, tid, i + 1, i + 1);
    assert.equal(p.id, batch.body.data[i].id, "event id matches the 202 answer");
  });

  // (Posted to the subscriber's node: in a cluster, dedupe holds across nodes.)
  const dup = await post(subBase, payment(tid, 2));
  assert.equal(dup.status, 202);
  assert.deepEqual(dup.body.data, [{ id: batch.body.data[1].id, seq: 2, trackingId: tid, duplicate: true }]);

  // A 400 on one bad item stores nothing (the good item does not get seq 4).
  const bad = await post(ingestBase, [payment(tid, 4), payment(tid, 5, { amount: -1, status: "done" })]);
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.code, "INVALID_PAYLOAD");
  assert.equal(typeof bad.body.error.message, "string");
  assert.deepEqual(
    bad.body.error.details.map((d) => [d.index, d.field]),
    [
      [1, "amount"],
      [1, "status"],
    ],
  );

  // Sentinel: the next stored payment is seq 4 and is the next one delivered,
  // so neither the duplicate nor the rejected batch was delivered.
  const next = await post(ingestBase, payment(tid, 4));
  assert.equal(next.body.data[0].seq, 4);
  const all = await waitFor(socket, "payment", 4);
  assert.deepEqual(all.map((p) => p.seq), [1, 2, 3, 4], "duplicate and rejected items were not delivered");
  assertPayment(all[3], tid, 4, 4);

  // Replay: a second client resumes after seq 1.
  const late = await connect(subBase, transports);
  await subscribe(late, { trackingId: tid, since: payments[0].id });
  const replayed = await waitFor(late, "payment", 3);
  assert.deepEqual(replayed, all.slice(1), "replay after since is the stored envelopes, unchanged");
  assert.equal(late.events[0].event, "ack", "ack comes before the replay");

  // Unsubscribe: acked, and nothing more arrives.
  const unsub = await within(socket.emitWithAck("unsubscribe", { trackingId: tid }), "unsubscribe callback");
  assertAck(unsub, `Unsubscribed from trackingId: ${tid}`);
  await post(ingestBase, payment(tid, 5));
  await waitFor(late, "payment", 4);
  assert.equal(socket.events.filter((e) => e.event === "payment").length, 4, "no payment after unsubscribe");

  socket.close();
  late.close();
  log(`ok: ${label}`);
}

async function errorsAndAuth(base) {
  const socket = await connect(base, ["websocket"]);
  const cases = [
    [undefined, "INVALID_PAYLOAD"],
    ["sub-1", "INVALID_PAYLOAD"],
    [{}, "INVALID_TRACKING_ID"],
    [{ trackingId: "" }, "INVALID_TRACKING_ID"],
    [{ trackingId: 42 }, "INVALID_TRACKING_ID"],
    [{ trackingId: "a\u0001b" }, "INVALID_TRACKING_ID"],
    [{ trackingId: "é".repeat(129) }, "INVALID_TRACKING_ID"],
    [{ trackingId: "ok", since: "" }, "INVALID_SINCE"],
    [{ trackingId: "ok", since: "nope" }, "INVALID_SINCE"],
  ];
  for (const [payload, code] of cases) {
    const env = await subscribe(socket, payload);
    assert.equal(env.type, "error", JSON.stringify(payload));
    assert.equal(env.data.code, code, JSON.stringify(payload));
    assert.equal(typeof env.data.message, "string");
    assert.ok(Number.isInteger(env.timestamp));
  }
  const errors = await waitFor(socket, "error", cases.length);
  assert.deepEqual(errors.map((e) => e.data.code), cases.map((c) => c[1]), "error events mirror the callbacks");

  // 256 bytes is fine, and resubscribing is one subscription.
  assert.equal((await subscribe(socket, { trackingId: "x".repeat(256) })).type, "ack");
  assert.equal((await subscribe(socket, { trackingId: "x".repeat(256) })).type, "ack");
  for (let i = 1; i < 100; i++) assert.equal((await subscribe(socket, { trackingId: `many-${i}` })).type, "ack");
  const over = await subscribe(socket, { trackingId: "one-too-many" });
  assert.equal(over.data.code, "TOO_MANY_SUBSCRIPTIONS");

  // A since from a history that does not exist: ack, then HISTORY_TRUNCATED.
  const fresh = await connect(base, ["websocket"]);
  const ack = await subscribe(fresh, { trackingId: `nohistory-${Date.now()}`, since: "1700000000000-3" });
  assert.equal(ack.type, "ack");
  const [warning] = await waitFor(fresh, "error", 1);
  assert.equal(warning.data.code, "HISTORY_TRUNCATED");
  socket.close();
  fresh.close();

  // Ingest auth and limits.
  const good = payment(`auth-${Date.now()}`, 1);
  const wrong = await post(base, good, "wrong-token");
  assert.equal(wrong.status, 401);
  assert.equal(wrong.body.error.code, "UNAUTHORIZED");
  assert.equal((await post(base, good, null)).status, 401);
  const empty = await post(base, []);
  assert.equal(empty.status, 400);
  const tooMany = await post(base, Array.from({ length: 1001 }, (_, i) => payment("big", i)));
  assert.equal(tooMany.status, 413);
  assert.equal(tooMany.body.error.code, "PAYLOAD_TOO_LARGE");
  const noSig = await post(base, { ...good, signature: undefined, amount: 2 ** 53 });
  assert.equal(noSig.status, 400);
  assert.deepEqual(noSig.body.error.details.map((d) => [d.index, d.field]), [
    [0, "amount"],
    [0, "signature"],
  ]);
  const keyed = await post(base, [
    { ...good, signature: undefined, idempotencyKey: "k1" },
    { ...good, signature: undefined, idempotencyKey: "k1" },
  ]);
  assert.deepEqual(keyed.body.data.map((r) => [r.seq, r.duplicate]), [
    [1, false],
    [1, true],
  ]);

  const health = await fetch(`${base}/healthz`);
  assert.equal(health.status, 200);
  const preflight = await fetch(`${base}/v1/payments`, {
    method: "OPTIONS",
    headers: { origin: "http://elsewhere.test", "access-control-request-method": "POST" },
  });
  assert.equal(preflight.headers.get("access-control-allow-origin"), "*");
  log("ok: errors, limits, auth, healthz, CORS");
}

/** Replay at the edges of the retained history (1000 per trackingId). */
async function replayEdges(base) {
  const tid = `edges-${Date.now()}`;
  const posted = await post(base, Array.from({ length: 1000 }, (_, i) => payment(tid, i + 1)));
  assert.equal(posted.status, 202);
  await post(base, Array.from({ length: 5 }, (_, i) => payment(tid, 1001 + i)));
  const [epoch] = posted.body.data[0].id.split("-");

  // seq 1..5 were trimmed: a since of seq 2 warns, then replays 6..1005.
  const s1 = await connect(base, ["websocket"]);
  assert.equal((await subscribe(s1, { trackingId: tid, since: `${epoch}-2` })).type, "ack");
  const replay = await waitFor(s1, "payment", 1000);
  assert.deepEqual(s1.events.slice(0, 2).map((e) => [e.event, e.payload.type]), [
    ["ack", "ack"],
    ["error", "error"],
  ]);
  assert.equal(s1.events[1].payload.data.code, "HISTORY_TRUNCATED");
  assert.equal(replay[0].seq, 6);
  assert.equal(replay[999].seq, 1005);

  // Within the retained range: no warning; since = last: nothing to replay.
  const s2 = await connect(base, ["websocket"]);
  await subscribe(s2, { trackingId: tid, since: `${epoch}-1003` });
  const tail = await waitFor(s2, "payment", 2);
  assert.deepEqual(tail.map((p) => p.seq), [1004, 1005]);
  assert.equal(s2.events.filter((e) => e.event === "error").length, 0);
  assert.equal((await subscribe(s2, { trackingId: tid, since: `${epoch}-1005` })).type, "ack");

  // A seq this history never reached is INVALID_SINCE; another epoch warns.
  assert.equal((await subscribe(s2, { trackingId: tid, since: `${epoch}-1006` })).data.code, "INVALID_SINCE");
  const s3 = await connect(base, ["websocket"]);
  await subscribe(s3, { trackingId: tid, since: `${Number(epoch) - 1}-7` });
  const all = await waitFor(s3, "payment", 1000);
  assert.equal(s3.events[1].payload.data.code, "HISTORY_TRUNCATED");
  assert.equal(all[0].seq, 6);
  s1.close();
  s2.close();
  s3.close();
  log("ok: replay at the history's edges");
}

/** An HS256 JWT over `secret` with `claims`. */
function jwt(secret, claims, alg = "HS256") {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const signed = `${part({ alg, typ: "JWT" })}.${part(claims)}`;
  return `${signed}.${createHmac("sha256", secret).update(signed).digest("base64url")}`;
}

/** The connect_error message a socket presenting `auth` gets (null if it connects). */
async function refusal(base, auth) {
  const socket = io(base, { path: "/ws/v1", transports: ["websocket"], reconnection: false, forceNew: true, auth });
  sockets.push(socket);
  const outcome = await within(
    Promise.race([once(socket, "connect").then(() => null), once(socket, "connect_error").then(([e]) => e.message)]),
    "connect or connect_error",
  );
  socket.close();
  return outcome;
}

async function tokenMode() {
  const secret = "selfcheck-secret";
  const base = await startPeerWith({ PEER_TOKEN_SECRET: secret });
  const exp = Math.floor(Date.now() / 1000) + 60;
  const good = jwt(secret, { exp, tids: ["tok-1", "shop:*"] });
  assert.equal(await refusal(base, {}), "UNAUTHORIZED: no token");
  assert.equal(await refusal(base, { token: "a.b" }), "UNAUTHORIZED: malformed token");
  assert.equal(await refusal(base, { token: jwt("other", { exp, tids: ["tok-1"] }) }), "UNAUTHORIZED: bad signature");
  assert.equal(await refusal(base, { token: jwt(secret, { exp, tids: ["tok-1"] }, "HS512") }), "UNAUTHORIZED: only HS256 is accepted");
  assert.equal(await refusal(base, { token: jwt(secret, { exp: exp - 200, tids: ["tok-1"] }) }), "UNAUTHORIZED: the token has expired");
  assert.equal(await refusal(base, { token: good }), null);
  const socket = io(base, { path: "/ws/v1", transports: ["websocket"], reconnection: false, forceNew: true, auth: { token: good } });
  sockets.push(socket);
  socket.events = [];
  socket.onAny((event, payload) => socket.events.push({ event, payload }));
  await within(once(socket, "connect"), "connect with a token");
  assert.equal((await subscribe(socket, { trackingId: "tok-1" })).type, "ack");
  assert.equal((await subscribe(socket, { trackingId: "shop:42" })).type, "ack");
  const forbidden = await subscribe(socket, { trackingId: "tok-2" });
  assert.equal(forbidden.data.code, "FORBIDDEN");
  // Refused: not joined, so a payment to it does not arrive.
  assert.equal((await post(base, payment("tok-2", 1))).status, 202);
  assert.equal((await post(base, payment("tok-1", 2))).status, 202);
  const [p] = await waitFor(socket, "payment", 1);
  assert.equal(p.data.trackingId, "tok-1");
  socket.close();
  log("ok: token mode (PEER_TOKEN_SECRET)");
}

async function main() {
  log("single node");
  const single = await startPeer();
  await scenario("single-websocket", single, single, ["websocket"]);
  await scenario("single-polling", single, single, ["polling"]);
  await scenario("single-upgrade", single, single, ["polling", "websocket"]);
  await errorsAndAuth(single);
  await replayEdges(single);
  await tokenMode();

  const redisUrl = await startRedis();
  log(`cluster: two peers on ${redisUrl}`);
  const a = await startPeer("--redis-url", redisUrl);
  const b = await startPeer("--redis-url", redisUrl);
  await scenario("cluster-a-to-b", a, b, ["websocket"]);
  await scenario("cluster-b-to-a-upgrade", b, a, ["polling", "websocket"]);
  await errorsAndAuth(a);
  await replayEdges(b);
}

let failed = false;
try {
  await main();
  log("all checks passed");
} catch (err) {
  failed = true;
  console.error("selfcheck: FAILED:", err);
} finally {
  for (const s of sockets) s.close();
  // Peers first (each must exit 0 on SIGTERM), then redis-server.
  for (const c of [...children.filter((c) => !c.isRedis), ...children.filter((c) => c.isRedis)]) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    c.kill("SIGTERM");
    const [code, signal] = await once(c, "exit");
    if (!c.isRedis && code !== 0) {
      failed = true;
      console.error(`selfcheck: FAILED: a peer exited with ${code ?? signal} on SIGTERM`);
    }
  }
}
process.exit(failed ? 1 : 0);
