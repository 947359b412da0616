// Helpers for the cluster end-to-end tests: Redis (single and Redis Cluster),
// several Tidings nodes sharing it, and nginx in front of them.
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
    // process.exit runs the harness's exit handler too (it kills tidings nodes).
    process.exit(128 + n);
  });
}

export function makeTmp(prefix) {
  const d = mkdtempSync(path.join(os.tmpdir(), `tidings-e2e-${prefix}-`));
  tmpdirs.add(d);
  return d;
}

export function removeTmp(d) {
  tmpdirs.delete(d);
  try { rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ }
}

/**
 * Spawns a long-running child, keeps its output (bounded) and tracks it for
 * the exit handler. Returns {proc, output(), exited, exitInfo()}.
 */
export function spawnTracked(cmd, args, opts = {}) {
  if (!existsSync(cmd)) {
    throw new Error(`${cmd} not found: install it (Debian packages redis-server, nginx) or set the matching TIDINGS_* variable`);
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
export async function terminate(child, signal = "SIGTERM", graceMs = 5000) {
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
export function run(cmd, args, timeoutMs = 10000) {
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
export async function waitPortOpen(port, timeoutMs = 10000, isDead = () => null) {
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

/** `redis-cli -p port args...` (bounded); resolves trimmed stdout, rejects on failure. */
export async function redisCli(port, ...args) {
  const r = await run(REDIS_CLI, ["-h", "127.0.0.1", "-p", String(port), ...args], 15000);
  if (r.code !== 0) throw new Error(`redis-cli -p ${port} ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout.trim();
}

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

function redisArgs(port, dir, extra) {
  return [
    "--port", String(port),
    "--save", "",
    "--appendonly", "no",
    "--bind", "127.0.0.1",
    "--protected-mode", "no",
    "--dir", dir,
    ...extra,
  ];
}

/** Starts one redis-server on `port` (or a free one, retried on bind failure). */
async function spawnRedis({ port, dir, extra = () => [], attempts = 5 }) {
  let lastErr;
  for (let i = 0; i < attempts; i++) {
    const p = port ?? await freePort();
    const child = spawnTracked(REDIS_SERVER, redisArgs(p, dir, await extra(p)));
    try {
      await waitRedisPing(p, child);
      return { port: p, child };
    } catch (err) {
      lastErr = err;
      await terminate(child, "SIGKILL");
      if (!err.bindFailure) throw err;
      if (port !== undefined) await sleep(200); // same port requested: give the old one time to go
    }
  }
  throw lastErr;
}

/**
 * Starts a standalone redis-server on a free port with an empty data set and
 * no persistence. Returns {port, url, stop(), kill(), restart(), cli(...args)}.
 * `{ replicaOf: port }` starts a read-only replica of the redis-server on
 * that port instead, resolved once it follows its master.
 * `{ cluster: true }` starts a Redis Cluster instead (see startRedisCluster).
 */
export async function startRedis({ cluster = false, replicaOf } = {}) {
  if (cluster) return startRedisCluster();
  const dir = makeTmp("redis");
  const extra = replicaOf === undefined ? () => [] : () => ["--replicaof", "127.0.0.1", String(replicaOf)];
  let { port, child } = await spawnRedis({ dir, extra });
  if (replicaOf !== undefined) {
    // A replica answers PING at once; wait until it follows its master.
    const deadline = Date.now() + 10000;
    while (!/master_link_status:up/.test(await redisCli(port, "info", "replication"))) {
      if (Date.now() > deadline) {
        await terminate(child, "SIGKILL");
        removeTmp(dir);
        throw new Error(`redis-server on ${port} did not link to its master on ${replicaOf} within 10 s`);
      }
      await sleep(50);
    }
  }
  const handle = {
    port,
    url: `redis://127.0.0.1:${port}`,
    /** The data directory: `SAVE` writes dump.rdb here, and restart() loads it. */
    dir,
    get pid() { return child.proc.pid; },
    output: () => child.output(),
    cli: (...args) => redisCli(port, ...args),
    /** SIGKILLs the server (a crash) and awaits its exit. */
    async kill() { return terminate(child, "SIGKILL"); },
    /**
     * SIGKILLs the server and starts a new one on the same port and
     * directory, which loads dump.rdb if there is one (else starts empty).
     */
    async restart() {
      await terminate(child, "SIGKILL");
      ({ child } = await spawnRedis({ port, dir, extra, attempts: 10 }));
    },
    async stop() {
      await terminate(child, "SIGTERM");
      removeTmp(dir);
    },
  };
  return handle;
}

/**
 * Starts a three-master Redis Cluster (no replicas) on free ports.
 * Returns {ports, url: "redis://127.0.0.1:P1,redis://...:P2,...", stop(), cli(i, ...args)}.
 */
export async function startRedisCluster() {
  const dir = makeTmp("redis-cluster");
  const masters = [];
  const stopAll = async () => {
    for (const m of masters) await terminate(m.child, "SIGTERM");
    removeTmp(dir);
  };
  try {
    for (let i = 0; i < 3; i++) {
      const m = await spawnRedis({
        dir,
        extra: async (p) => [
          "--cluster-enabled", "yes",
          "--cluster-config-file", path.join(dir, `nodes-${p}.conf`),
          // The bus port defaults to port + 10000, which may be taken or out of range.
          "--cluster-port", String(await freePort()),
          "--cluster-node-timeout", "5000",
        ],
      });
      masters.push(m);
    }
    const ports = masters.map((m) => m.port);
    const create = await run(REDIS_CLI, [
      "--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`),
      "--cluster-replicas", "0", "--cluster-yes",
    ], 30000);
    assert.equal(create.code, 0, `redis-cli --cluster create failed:\n${create.stdout}\n${create.stderr}`);
    const deadline = Date.now() + 20000;
    for (;;) {
      const infos = await Promise.all(ports.map((p) => redisCli(p, "cluster", "info").catch((e) => e.message)));
      if (infos.every((t) => /cluster_state:ok/.test(t))) break;
      if (Date.now() > deadline) {
        throw new Error(`Redis Cluster not ok within 20 s:\n${infos.join("\n---\n")}`);
      }
      await sleep(100);
    }
    return {
      ports,
      url: ports.map((p) => `redis://127.0.0.1:${p}`).join(","),
      cli: (i, ...args) => redisCli(ports[i], ...args),
      outputs: () => masters.map((m) => m.child.output()),
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** CRC16/XMODEM as Redis Cluster uses it, and the key's hash slot (honours {hash tags}). */
export function keySlot(key) {
  let k = Buffer.from(key, "utf8");
  const open = k.indexOf("{");
  if (open >= 0) {
    const close = k.indexOf("}", open + 1);
    if (close > open + 1) k = k.subarray(open + 1, close);
  }
  let crc = 0;
  for (const b of k) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
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
 * Wraps a test body so that a failure's message ends with the WARN/ERROR
 * log lines of the nodes `nodes()` returns.
 */
export function withLogs(nodes, fn) {
  return async () => {
    try {
      await fn();
    } catch (err) {
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes().filter(Boolean).map((n, i) => `[node ${i}]\n${logLines(n)}`).join("\n")}`;
      throw err;
    }
  };
}

/** Log lines of a node matching `re`, for failure messages. */
export function logLines(node, re = /"level":"(WARN|ERROR)"|panicked/, max = 20) {
  const lines = node.logs().split("\n").filter((l) => re.test(l));
  return lines.slice(-max).join("\n");
}

/**
 * Sums the samples of a Prometheus metric in `/metrics` text: every label
 * set, or only those carrying every label of `labels` ({ reason: "gap" }).
 * Null when no sample matches.
 */
export function metricValue(text, name, labels = {}) {
  let sum = null;
  const re = new RegExp(`^${name}(\\{[^}]*\\})?\\s+([0-9.eE+-]+|NaN|[+-]Inf)\\s*(\\d+)?$`, "gm");
  for (const m of text.matchAll(re)) {
    const set = m[1] ?? "";
    if (Object.entries(labels).every(([k, v]) => set.includes(`${k}="${v}"`))) sum = (sum ?? 0) + Number(m[2]);
  }
  return sum;
}

/** GETs a node's /metrics and returns the (summed) value of `name`, or null when absent. */
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
export function rewriteNginxSnippet(snippet, ports, listenPort) {
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
 * rewritten for `upstreamPorts`. Returns {port, url, stop(), config, errorLog(),
 * accessLog(), shippedAccessLog()}. With `accessLog: true`, every request is
 * also logged in a test format (method, URI, status and each upstream
 * attempt's status, `$upstream_status`) for accessLog() to return.
 *
 * shippedAccessLog() is the log an operator gets: the `http { }` block has
 * `access_log ... combined` as Debian's nginx.conf (and the official image)
 * has it, and the snippet's own `access_log /var/log/nginx/access.log FORMAT;`
 * (if any) is pointed at the same test file, so it applies as shipped.
 * `edit(text)`, if given, rewrites the snippet first (a test narrowing a
 * value; every other directive stays as shipped).
 */
export async function startNginx(upstreamPorts, { confPath = NGINX_CONF, accessLog = false, edit = (t) => t } = {}) {
  if (!existsSync(confPath)) {
    throw new Error(`nginx config ${confPath} does not exist (the project ships deploy/nginx/tidings.conf; ` +
      "TIDINGS_NGINX_CONF overrides the path)");
  }
  const snippet = edit(readFileSync(confPath, "utf8"));
  const dir = makeTmp("nginx");
  const shippedLogFile = path.join(dir, "logs/tidings.access.log");
  const testLogFile = path.join(dir, "logs/access.log");
  chmodSync(dir, 0o755);
  for (const sub of ["client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"]) {
    mkdirSync(path.join(dir, sub));
    chmodSync(path.join(dir, sub), 0o777); // workers may run as another user when we are root
  }
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    let httpBody = rewriteNginxSnippet(snippet, upstreamPorts, port);
    // The snippet's own access log (server level: it replaces the http
    // block's) goes to the test's file; the test format is logged next to it.
    let ownLog = false;
    httpBody = httpBody.replace(/^([ \t]*)access_log\s+\/var\/log\/nginx\/access\.log\b([^;]*);/gm, (_all, indent, rest) => {
      ownLog = true;
      return `${indent}access_log ${shippedLogFile}${rest};` +
        (accessLog ? `\n${indent}access_log ${testLogFile} tidings_test;` : "");
    });
    const config = [
      "daemon off;",
      "worker_processes 1;",
      `pid ${path.join(dir, "nginx.pid")};`,
      `error_log ${path.join(dir, "logs/error.log")} info;`,
      "events { worker_connections 4096; }",
      "http {",
      // Debian's nginx.conf: `access_log /var/log/nginx/access.log;` (combined).
      `  access_log ${shippedLogFile} combined;`,
      "  log_format tidings_test '$request_method $uri $status upstream=$upstream_status';",
      accessLog && !ownLog ? `  access_log ${testLogFile} tidings_test;` : "",
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
        accessLog: () => {
          try { return readFileSync(testLogFile, "utf8"); } catch { return ""; }
        },
        shippedAccessLog: () => {
          try { return readFileSync(shippedLogFile, "utf8"); } catch { return ""; }
        },
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

// ---------------------------------------------------------------------------
// Socket-side helpers
// ---------------------------------------------------------------------------

/**
 * Resolves once `cond()` holds, re-checking on every `event` the socket
 * receives (after the recorder has logged it); rejects after `timeoutMs`
 * with `what()` in the message.
 */
export function waitUntil(socket, cond, timeoutMs, what = () => "condition", event = "payment") {
  if (cond()) return Promise.resolve();
  let h;
  const p = new Promise((resolve) => {
    h = () => { if (cond()) resolve(); };
    socket.on(event, h);
  });
  return withTimeout(p, timeoutMs, typeof what === "function" ? "" : what)
    .catch((err) => {
      if (typeof what === "function") err.message += `: ${what()}`;
      throw err;
    })
    .finally(() => socket.off(event, h));
}

/** Resolves after `ms`: for pacing a writer, never for synchronisation. */
export const pace = sleep;
