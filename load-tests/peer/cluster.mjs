// The load-test peer in its strongest shape on one machine: Node's
// `cluster` module, one server.mjs worker per core, all sharing one
// listening port (the primary accepts and hands each connection to a worker,
// round robin), with the Redis adapter between the workers and seq, dedupe
// and history in Redis (a store per worker would break the contract: seq
// per trackingId, dedupe, replay), as socket.io documents for a cluster.
//
//   node cluster.mjs --redis-url redis://... [--workers N] [server.mjs flags]
//
// No sticky sessions: they matter only to HTTP long-polling, which the load
// generator does not use (it connects with the websocket transport), and
// @socket.io/sticky would route every ingest request's body through the
// primary over IPC. So this is the peer's best case; browsers falling back
// to polling would need @socket.io/sticky in front.

import cluster from "node:cluster";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";

function fail(message) {
  console.error(`peer cluster: ${message}`);
  process.exit(2);
}

// Our own flag (--workers N); everything else goes to every worker.
const args = process.argv.slice(2);
let workers = Number(process.env.PEER_WORKERS ?? availableParallelism());
const at = args.indexOf("--workers");
if (at >= 0) {
  workers = Number(args[at + 1]);
  args.splice(at, 2);
}
if (!Number.isInteger(workers) || workers < 1) fail(`--workers must be a positive integer, not ${workers}`);
if (!args.includes("--redis-url") && !process.env.PEER_REDIS_URL) {
  fail("--redis-url is required: the workers share seq, dedupe and history through Redis");
}

cluster.setupPrimary({ exec: fileURLToPath(new URL("./server.mjs", import.meta.url)), args });

let stopping = false;
let ready = 0;
let address;
for (let i = 0; i < workers; i++) cluster.fork();
cluster.on("listening", (worker, addr) => {
  ready += 1;
  address ??= addr;
  if (ready === workers) {
    const host = addr.address === "0.0.0.0" || addr.address === "::" || !addr.address ? "127.0.0.1" : addr.address;
    console.log(`listening on ${host}:${addr.port} (cluster of ${workers} workers, redis)`);
  }
});
// A worker lost mid-run would silently change what is measured: stop all.
cluster.on("exit", (worker, code, signal) => {
  if (stopping) return;
  console.error(`peer cluster: worker ${worker.id} exited (${signal ?? code}); stopping`);
  stop(1);
});

function stop(code) {
  if (stopping) return;
  stopping = true;
  for (const w of Object.values(cluster.workers)) w?.kill("SIGTERM");
  setTimeout(() => process.exit(code), 5000).unref();
  cluster.on("exit", () => {
    if (Object.keys(cluster.workers).length === 0) process.exit(code);
  });
}
process.on("SIGTERM", () => stop(0));
process.on("SIGINT", () => stop(0));
