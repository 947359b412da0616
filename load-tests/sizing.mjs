// Sizing: bytes retained per payment in memory mode (RSS growth of the
// process, and the store's own accounting, tidings_store_memory_bytes) and
// in Redis (INFO memory used_memory), for the shapes of traffic that cost
// differently: payments for trackingIds that keep receiving (event + dedupe
// key), the same with --history-limit 1 (dedupe keys alone: the events are
// dropped), and one-shot trackingIds (event + key + a whole history).
//
//   node load-tests/sizing.mjs [payments per scenario, default 100000]
//
// Uses the binary of tests/e2e (target/debug/tidings, or TIDINGS_BIN) and
// /usr/bin/redis-server; prints a report to paste into
// load-tests/results/sizing-<date>.txt.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { startServer, ingestOk, payment, uid, SERVER_BIN, REPO_ROOT } from "../tests/e2e/lib/harness.mjs";
import { startRedis, readMetric, redisCli } from "../tests/e2e/lib/cluster.mjs";

const N = Number(process.argv[2] ?? 100000);
const BATCH = 1000;
const REPEATED_TIDS = 100;

function rss(pid) {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m[1]) * 1024;
}

const git = (...args) => execFileSync("git", ["-C", REPO_ROOT, ...args], { encoding: "utf8" }).trim();

/** Batches of the scenario's items: `shape` picks each item's trackingId. */
function* batches(shape) {
  const repeated = Array.from({ length: REPEATED_TIDS }, () => uid("t"));
  for (let i = 0; i < N; i += BATCH) {
    yield Array.from({ length: Math.min(BATCH, N - i) }, (_, j) =>
      payment(shape === "one-shot" ? uid("t") : repeated[(i + j) % REPEATED_TIDS]));
  }
}

async function ingestAll(url, shape) {
  for (const items of batches(shape)) await ingestOk(url, items);
}

const SCENARIOS = [
  { name: "repeated trackingIds (event + dedupe key)", shape: "repeated", args: [] },
  { name: "dedupe keys alone (--history-limit 1)", shape: "repeated", args: ["--history-limit", "1"] },
  { name: "one-shot trackingIds (event + key + history)", shape: "one-shot", args: [] },
];

async function memoryScenario({ name, shape, args }) {
  const server = await startServer(["--memory-limit", "16GiB", ...args]);
  try {
    await ingestOk(server.url, Array.from({ length: BATCH }, () => payment(uid("warm"))));
    const rss0 = rss(server.proc.pid);
    const acc0 = (await readMetric(server.url, "tidings_store_memory_bytes")).value;
    await ingestAll(server.url, shape);
    const rss1 = rss(server.proc.pid);
    const acc1 = (await readMetric(server.url, "tidings_store_memory_bytes")).value;
    const evicted = (await readMetric(server.url, "tidings_store_evictions_total")).value ?? 0;
    return `memory | ${name.padEnd(46)} | RSS +${((rss1 - rss0) / N).toFixed(0).padStart(5)} B/payment | accounted +${((acc1 - acc0) / N).toFixed(0).padStart(5)} B/payment | evicted ${evicted}`;
  } finally {
    await server.stop();
  }
}

async function usedMemory(port) {
  const info = await redisCli(port, "info", "memory");
  return Number(/used_memory:(\d+)/.exec(info)[1]);
}

async function redisScenario({ name, shape, args }) {
  const redis = await startRedis();
  const server = await startServer(["--redis-url", redis.url, ...args]);
  try {
    await ingestOk(server.url, Array.from({ length: BATCH }, () => payment(uid("warm"))));
    const used0 = await usedMemory(redis.port);
    await ingestAll(server.url, shape);
    const used1 = await usedMemory(redis.port);
    return `redis  | ${name.padEnd(46)} | used_memory +${((used1 - used0) / N).toFixed(0).padStart(5)} B/payment`;
  } finally {
    await server.stop();
    await redis.stop();
  }
}

const dirty = git("status", "--porcelain", "--untracked-files=no").length > 0;
console.log(`# Tidings sizing, ${new Date().toISOString()}`);
console.log(`# commit ${git("rev-parse", "HEAD")}${dirty ? " (dirty)" : ""}, binary ${SERVER_BIN}`);
console.log(`# ${execFileSync("/usr/bin/redis-server", ["--version"], { encoding: "utf8" }).trim()}`);
console.log(`# ${N} payments per scenario in batches of ${BATCH}; repeated = ${REPEATED_TIDS} trackingIds;`);
console.log("# items as tests/e2e payment(): 64-char base58 signature, trackingId t-<12 hex>; default history settings");
console.log("# memory: RSS of the tidings process and its accounting (tidings_store_memory_bytes); redis: INFO memory used_memory");
for (const s of SCENARIOS) console.log(await memoryScenario(s));
for (const s of SCENARIOS) console.log(await redisScenario(s));
