// Redis (standalone or a Redis Cluster), several Tidings nodes sharing it, and nginx in front of them (with
// the project's shipped deploy/nginx/tidings.conf), for the SDK's tests:
// taken from the end-to-end suite's tests/e2e/lib/cluster.mjs and trimmed to
// what the SDK's tests use.
//
// Every helper that starts a process also stops it: the returned handle has a
// `stop()` for `after` hooks, and whatever is still running when the test
// process exits (failure, timeout, Ctrl-C) is killed by the exit handlers
// below. Every wait is bounded.

import { spawn, execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, chmodSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import assert from "node:assert/strict";
import { startServer, REPO_ROOT, withTimeout, httpGet } from "./harness.mjs";

export const REDIS_SERVER = process.env.TIDINGS_REDIS_SERVER ?? "/usr/bin/redis-server";
export const REDIS_CLI = process.env.TIDINGS_REDIS_CLI ?? "/usr/bin/redis-cli";
export const NGINX = process.env.TIDINGS_NGINX ?? "/usr/sbin/nginx";
/** The project's shipped nginx snippet (override with TIDINGS_NGINX_CONF). */
export const NGINX_CONF = process.env.TIDINGS_NGINX_CONF
  ? path.resolve(process.env.TIDINGS_NGINX_CONF)
  : path.join(REPO_ROOT, "deploy/nginx/tidings.conf");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// Leftover cleanup
// ---------------------------------------------------------------------------

/** Child processes (redis, nginx) started here and not yet exited. */
const live = new Set();
/** Temporary directories to remove at exit. */
const tmpdirs = new Set();

function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function killLeftovers() {
  for (const p of live) {
    // nginx: SIGKILL on the master would orphan its worker; kill the worker(s) too.
    for (const c of childPids(p.pid)) {
      try { process.kill(c, "SIGKILL"); } catch { /* gone */ }
    }
    try { p.kill("SIGKILL"); } catch { /* gone */ }
  }
  live.clear();
  for (const d of tmpdirs) {
    try { rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ }
  }
  tmpdirs.clear();
}
process.on("exit", killLeftovers);
for (const [sig, n] of [["SIGINT", 2], ["SIGTERM", 15], ["SIGHUP", 1]]) {
  process.once(sig, () => {
    killLeftovers();
    // process.exit runs harness.mjs's exit handler too (it kills tidings nodes).
    process.exit(128 + n);
  });
}

function makeTmp(prefix) {
  const d = mkdtempSync(path.join(os.tmpdir(), `tidings-client-test-${prefix}-`));
  tmpdirs.add(d);
  return d;
}

function removeTmp(d) {
  tmpdirs.delete(d);
  try { rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ }
}

/**
 * Spawns a long-running child, keeps its output (bounded) and tracks it for
 * the exit handler. Returns {proc, output(), exited, exitInfo()}.
 */
function spawnTracked(cmd, args, opts = {}) {
  if (!existsSync(cmd)) {
    throw new Error(`${cmd} not found: install it (Debian packages redis-server, redis-tools, nginx) or set the matching TIDINGS_* variable`);
  }
  const proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
  live.add(proc);
  let out = "";
  const keep = (chunk) => {
    out += chunk;
    if (out.length > 200000) out = out.slice(-100000);
  };
  proc.stdout.setEncoding("utf8").on("data", keep);
  proc.stderr.setEncoding("utf8").on("data", keep);
  let info = null;
  const exited = new Promise((resolve) => {
    proc.on("exit", (code, signal) => {
      info = { code, signal };
      live.delete(proc);
      resolve(info);
    });
    proc.on("error", (err) => {
      info = { code: null, signal: null, error: err.message };
      live.delete(proc);
      resolve(info);
    });
  });
  return { proc, output: () => out, exited, exitInfo: () => info };
}

/** Sends `signal`, waits (bounded) for the exit, then SIGKILLs. */
async function terminate(child, signal = "SIGTERM", graceMs = 5000) {
  if (child.exitInfo()) return child.exitInfo();
  const kids = childPids(child.proc.pid);
  try { child.proc.kill(signal); } catch { /* gone */ }
  const ok = await Promise.race([child.exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!ok) {
    try { child.proc.kill("SIGKILL"); } catch { /* gone */ }
    await withTimeout(child.exited, 5000, "process exit after SIGKILL");
  }
  for (const c of kids) {
    try { process.kill(c, 0); process.kill(c, "SIGKILL"); } catch { /* gone */ }
  }
  return child.exitInfo();
}

/** Runs a command to completion (bounded); resolves {code, stdout, stderr}. */
function run(cmd, args, timeoutMs = 10000) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? -1) : 0, stdout: String(stdout), stderr: String(stderr), err });
    });
  });
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on `port` (bounded). */
async function waitPortOpen(port, timeoutMs = 10000, isDead = () => null) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ port, host: "127.0.0.1" });
      s.once("connect", () => { s.destroy(); resolve(true); });
      s.once("error", () => { s.destroy(); resolve(false); });
    });
    if (ok) return;
    const dead = isDead();
    if (dead) throw new Error(dead);
    if (Date.now() > deadline) throw new Error(`nothing accepts connections on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

async function waitRedisPing(port, child, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitInfo()) {
      const e = new Error(`redis-server on port ${port} exited (${JSON.stringify(child.exitInfo())}):\n${child.output()}`);
      e.bindFailure = /Address already in use|bind/i.test(child.output());
      throw e;
    }
    const r = await run(REDIS_CLI, ["-h", "127.0.0.1", "-p", String(port), "ping"], 2000);
    if (r.code === 0 && r.stdout.trim() === "PONG") return;
    if (Date.now() > deadline) {
      throw new Error(`redis-server on port ${port} did not answer PONG within ${timeoutMs} ms:\n${child.output()}`);
    }
    await sleep(50);
  }
}

/**
 * Starts a standalone redis-server on a free port (another one if that bind
 * fails) with an empty data set and no persistence. Returns {port, url, stop()}.
 */
export async function startRedis() {
  if (!existsSync(REDIS_CLI)) {
    throw new Error(`${REDIS_CLI} not found: install it (Debian package redis-tools) or set TIDINGS_REDIS_CLI`);
  }
  const dir = makeTmp("redis");
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const child = spawnTracked(REDIS_SERVER, [
      "--port", String(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
      "--protected-mode", "no", "--dir", dir,
    ]);
    try {
      await waitRedisPing(port, child);
    } catch (err) {
      lastErr = err;
      await terminate(child, "SIGKILL");
      if (err.bindFailure) continue;
      removeTmp(dir);
      throw err;
    }
    return {
      port,
      url: `redis://127.0.0.1:${port}`,
      async stop() {
        await terminate(child, "SIGTERM");
        removeTmp(dir);
      },
    };
  }
  removeTmp(dir);
  throw lastErr;
}

/**
 * Starts a three-master Redis Cluster (no replicas, no persistence) on free
 * ports, resolved once every master says cluster_state:ok. Returns
 * {ports, url: "redis://127.0.0.1:P1,redis://127.0.0.1:P2,...", stop()}.
 * Taken from tests/e2e/lib/cluster.mjs.
 */
export async function startRedisCluster() {
  if (!existsSync(REDIS_CLI)) {
    throw new Error(`${REDIS_CLI} not found: install it (Debian package redis-tools) or set TIDINGS_REDIS_CLI`);
  }
  const dir = makeTmp("redis-cluster");
  const masters = [];
  const stopAll = async () => {
    for (const m of masters) await terminate(m, "SIGTERM");
    removeTmp(dir);
  };
  try {
    while (masters.length < 3) {
      const port = await freePort();
      const child = spawnTracked(REDIS_SERVER, [
        "--port", String(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
        "--protected-mode", "no", "--dir", dir,
        "--cluster-enabled", "yes", "--cluster-config-file", path.join(dir, `nodes-${port}.conf`),
        // The bus port defaults to port + 10000, which may be taken or out of range.
        "--cluster-port", String(await freePort()), "--cluster-node-timeout", "5000",
      ]);
      try {
        await waitRedisPing(port, child);
      } catch (err) {
        await terminate(child, "SIGKILL");
        if (err.bindFailure) continue;
        throw err;
      }
      child.port = port;
      masters.push(child);
    }
    const ports = masters.map((m) => m.port);
    const create = await run(REDIS_CLI, [
      "--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "0", "--cluster-yes",
    ], 30000);
    assert.equal(create.code, 0, `redis-cli --cluster create failed:\n${create.stdout}\n${create.stderr}`);
    const deadline = Date.now() + 20000;
    for (;;) {
      const infos = await Promise.all(ports.map((p) =>
        run(REDIS_CLI, ["-h", "127.0.0.1", "-p", String(p), "cluster", "info"], 5000).then((r) => r.stdout)));
      if (infos.every((t) => /cluster_state:ok/.test(t))) break;
      if (Date.now() > deadline) throw new Error(`Redis Cluster not ok within 20 s:\n${infos.join("\n---\n")}`);
      await sleep(100);
    }
    return { ports, url: ports.map((p) => `redis://127.0.0.1:${p}`).join(","), stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Tidings nodes
// ---------------------------------------------------------------------------

/**
 * Starts `n` Tidings nodes sharing `redisUrl`, each on its own free port.
 * If one fails to start, the others are stopped. Each node is the handle of
 * harness.startServer (`url`, `port`, `logs()`, `stop(signal)`, `exited`);
 * `stop("SIGKILL")` kills it hard.
 */
export async function startNodes(n, redisUrl, extraArgs = [], env = {}) {
  const results = await Promise.allSettled(
    Array.from({ length: n }, () => startServer(["--redis-url", redisUrl, ...extraArgs], env, { timeoutMs: 20000 })));
  const failed = results.find((r) => r.status === "rejected");
  if (failed) {
    await stopNodes(results.filter((r) => r.status === "fulfilled").map((r) => r.value));
    throw failed.reason;
  }
  return results.map((r) => r.value);
}

/** Stops nodes (SIGTERM, bounded, then SIGKILL), ignoring ones already gone. */
export async function stopNodes(nodes) {
  await Promise.all((nodes ?? []).filter(Boolean).map((s) => s.stop("SIGTERM", 8000).catch(() => {})));
}

/**
 * Sums the samples of a Prometheus metric in `/metrics` text: every label
 * set, or only those carrying every label of `labels` ({ reason: "gap" }).
 * Null when no sample matches.
 */
function metricValue(text, name, labels = {}) {
  let sum = null;
  const re = new RegExp(`^${name}(\\{[^}]*\\})?\\s+([0-9.eE+-]+|NaN|[+-]Inf)\\s*(\\d+)?$`, "gm");
  for (const m of text.matchAll(re)) {
    const set = m[1] ?? "";
    if (Object.entries(labels).every(([k, v]) => set.includes(`${k}="${v}"`))) sum = (sum ?? 0) + Number(m[2]);
  }
  return sum;
}

/** GETs a node's /metrics and returns {value, text}: the (summed) value of `name`, or null when absent. */
export async function readMetric(url, name, labels = {}) {
  const r = await httpGet(`${url}/metrics`);
  assert.equal(r.status, 200, `GET /metrics: ${r.status} ${r.text.slice(0, 300)}`);
  return { value: metricValue(r.text, name, labels), text: r.text };
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/**
 * Rewrites the shipped nginx snippet for a test: in every `upstream` block,
 * the `server 127.0.0.1:300N ...;` lines are replaced by one line per test
 * node (same parameters), and `listen 8080` becomes
 * `listen 127.0.0.1:<listenPort>`.
 */
function rewriteNginxSnippet(snippet, ports, listenPort) {
  const serverLine = /^([ \t]*)server\s+127\.0\.0\.1:300\d\b([^;]*);[ \t]*(#.*)?$/gm;
  let upstreams = 0;
  let out = snippet.replace(/(upstream\s+[\w.-]+\s*\{)([^}]*)(\})/g, (all, head, body, tail) => {
    const lines = [...body.matchAll(serverLine)];
    if (lines.length === 0) return all;
    upstreams++;
    const [, indent, params] = lines[0];
    let first = true;
    const nb = body.replace(serverLine, () => {
      if (!first) return "";
      first = false;
      return ports.map((p) => `${indent}server 127.0.0.1:${p}${params};`).join("\n");
    });
    return head + nb + tail;
  });
  if (upstreams === 0) throw new Error("the nginx snippet has no `upstream { server 127.0.0.1:300N; ... }` block");

  let listens = 0;
  out = out.replace(/^([ \t]*)listen\s+(?:\S*:)?8080\b([^;]*);/gm, (_all, indent2, params2) => {
    listens++;
    // Keep only the first (IPv4) listen line; an IPv6 one might not bind here.
    if (listens > 1) return `${indent2}# (test) further listen line removed`;
    const kept = params2.replace(/\b(ipv6only=\S+)/g, "");
    return `${indent2}listen 127.0.0.1:${listenPort}${kept};`;
  });
  if (listens === 0) throw new Error("the nginx snippet has no `listen 8080` line");
  return out;
}

/**
 * Starts nginx with the project's shipped snippet (deploy/nginx/tidings.conf)
 * rewritten for `upstreamPorts`. Returns {port, url, stop(), config, errorLog()}.
 */
export async function startNginx(upstreamPorts, { confPath = NGINX_CONF } = {}) {
  if (!existsSync(confPath)) {
    throw new Error(`nginx config ${confPath} does not exist (the project ships deploy/nginx/tidings.conf; ` +
      "TIDINGS_NGINX_CONF overrides the path)");
  }
  const snippet = readFileSync(confPath, "utf8");
  const dir = makeTmp("nginx");
  chmodSync(dir, 0o755);
  for (const sub of ["client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"]) {
    mkdirSync(path.join(dir, sub));
    chmodSync(path.join(dir, sub), 0o777); // workers may run as another user when we are root
  }
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const httpBody = rewriteNginxSnippet(snippet, upstreamPorts, port);
    const config = [
      "daemon off;",
      "worker_processes 1;",
      `pid ${path.join(dir, "nginx.pid")};`,
      `error_log ${path.join(dir, "logs/error.log")} info;`,
      "events { worker_connections 4096; }",
      "http {",
      /\baccess_log\b/.test(httpBody) ? "" : "  access_log off;",
      `  client_body_temp_path ${path.join(dir, "client_body")};`,
      `  proxy_temp_path ${path.join(dir, "proxy")};`,
      `  fastcgi_temp_path ${path.join(dir, "fastcgi")};`,
      `  uwsgi_temp_path ${path.join(dir, "uwsgi")};`,
      `  scgi_temp_path ${path.join(dir, "scgi")};`,
      httpBody,
      "}",
      "",
    ].join("\n");
    const file = path.join(dir, "nginx.conf");
    writeFileSync(file, config);
    if (!existsSync(NGINX)) {
      removeTmp(dir);
      throw new Error(`${NGINX} not found: install it (Debian package nginx) or set TIDINGS_NGINX`);
    }
    const test = await run(NGINX, ["-t", "-c", file, "-p", dir, "-e", path.join(dir, "logs/error.log")], 10000);
    if (test.code !== 0) {
      removeTmp(dir);
      throw new Error(`nginx -t rejects the config built from ${confPath}:\n${test.stderr}${test.stdout}\n--- config ---\n${config}`);
    }
    const child = spawnTracked(NGINX, ["-c", file, "-p", dir, "-e", path.join(dir, "logs/error.log")]);
    const errorLog = () => {
      try { return readFileSync(path.join(dir, "logs/error.log"), "utf8"); } catch { return ""; }
    };
    try {
      await waitPortOpen(port, 10000, () => child.exitInfo()
        ? `nginx exited (${JSON.stringify(child.exitInfo())}): ${child.output()}\n${errorLog()}` : null);
      return {
        port,
        url: `http://127.0.0.1:${port}`,
        config,
        errorLog,
        async stop() {
          // SIGTERM: fast shutdown (SIGQUIT would wait for open websockets).
          await terminate(child, "SIGTERM", 5000).catch(() => {});
          removeTmp(dir);
        },
      };
    } catch (err) {
      lastErr = err;
      await terminate(child, "SIGKILL");
      if (!/Address already in use/.test(err.message)) {
        removeTmp(dir);
        throw err;
      }
    }
  }
  removeTmp(dir);
  throw lastErr;
}

/** Resolves after `ms`: for pacing a writer, never for synchronisation. */
export const pace = sleep;
