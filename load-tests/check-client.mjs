// Checks that the load generator's lean client reads what socket.io-client
// reads: both subscribe to one trackingId on a real Tidings server, three
// payments are ingested, and the events each saw (names, payloads, order)
// must be equal; the send time the lean client extracts must be the one
// written in the signature. Run from the repository root after
// `cargo build --release -p tidings -p tidings-load` and
// `(cd load-tests/peer && npm ci)`:  node load-tests/check-client.mjs
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(new URL("./peer/package.json", import.meta.url));
const { io } = require("socket.io-client");

const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms))]);

const server = spawn("target/release/tidings", ["--listen", "127.0.0.1:0", "--ingest-token", "t", "--log-format", "json"]);
const children = [server];
process.on("exit", () => children.forEach((c) => c.kill("SIGKILL")));

const addr = await withTimeout(new Promise((resolve) => {
  createInterface({ input: server.stdout }).on("line", (l) => {
    const m = /listening on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(l);
    if (m) resolve(m[1]);
  });
}), 10000, "server start");

const tid = "check-client";
const official = [];
const socket = io(`http://${addr}`, { path: "/ws/v1", transports: ["websocket"], reconnection: false });
socket.onAny((event, payload) => official.push([event, payload]));
await withTimeout(new Promise((r) => socket.on("connect", r)), 5000, "socket.io-client connect");
socket.emit("subscribe", { trackingId: tid });

const probe = spawn("target/release/tidings-load", ["probe", "--target", addr, "--tracking-id", tid, "--events", "4"]);
children.push(probe);
const lean = [];
const leanDone = new Promise((resolve) => {
  createInterface({ input: probe.stdout }).on("line", (l) => {
    lean.push(JSON.parse(l));
    if (lean.length === 4) resolve();
  });
});
await withTimeout((async () => { while (lean.length < 1 || official.length < 1) await new Promise((r) => setTimeout(r, 10)); })(), 5000, "both acked");

const sent = 1795324094902123; // any ns value a JS number holds exactly
const body = [0, 1, 2].map((n) => ({
  trackingId: tid, amount: 1000 + n, timestamp: 1699876543, status: "executed", signature: `lt-${sent}-${n}`,
}));
const res = await fetch(`http://${addr}/v1/payments`, {
  method: "POST", headers: { authorization: "Bearer t", "content-type": "application/json" }, body: JSON.stringify(body),
});
assert.equal(res.status, 202);
await withTimeout(leanDone, 5000, "lean client events");
await withTimeout((async () => { while (official.length < 4) await new Promise((r) => setTimeout(r, 10)); })(), 5000, "official events");

assert.deepEqual(lean.map((l) => [l.event, l.payload]), official.slice(0, 4).map(([e, p]) => [e, p]).map(([e, p]) =>
  [e, e === "ack" ? { ...p, timestamp: lean[0].payload.timestamp } : p]));
assert.equal(lean[0].acked, true);
for (const l of lean.slice(1)) assert.equal(l.sent_ns, sent, "send time read from the signature");
console.log(`ok: the lean client read the same ${lean.length} events as socket.io-client`);
socket.close();
process.exit(0);
