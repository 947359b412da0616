// Helpers for the tests of the shipped deploy files (deploy/): HAProxy run
// from deploy/haproxy/tidings.cfg, clients that connect from a source
// address of their own (so that a proxy hashing the client address spreads
// them over the nodes), and finding which node holds a new connection.
//
// Processes started here are tracked by lib/cluster.mjs (killed at exit);
// every wait is bounded.

import http from "node:http";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { REPO_ROOT, SERVER_BIN, httpGet } from "./harness.mjs";
import {
  freePort, makeTmp, metricValue, removeTmp, run, spawnTracked, terminate, waitPortOpen,
} from "./cluster.mjs";

export const HAPROXY = process.env.TIDINGS_HAPROXY ?? "/usr/sbin/haproxy";
/** The project's shipped HAProxy configuration (override with TIDINGS_HAPROXY_CONF). */
export const HAPROXY_CONF = process.env.TIDINGS_HAPROXY_CONF
  ? path.resolve(process.env.TIDINGS_HAPROXY_CONF)
  : path.join(REPO_ROOT, "deploy/haproxy/tidings.cfg");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Rewrites the shipped HAProxy configuration for a test: every
 * `127.0.0.1:300N` (a node's address) becomes `127.0.0.1:<ports[N-1]>`, the
 * public `bind :8080` becomes `bind 127.0.0.1:<listenPort>` and the stats
 * `bind 127.0.0.1:8404` becomes `bind 127.0.0.1:<statsPort>`. Nothing else
 * changes.
 */
export function rewriteHaproxyConfig(text, ports, listenPort, statsPort) {
  let nodes = 0;
  let out = text.replace(/\b127\.0\.0\.1:300(\d)\b/g, (all, n) => {
    const p = ports[Number(n) - 1];
    if (p === undefined) throw new Error(`the HAProxy config names ${all} but the test has ${ports.length} nodes`);
    nodes++;
    return `127.0.0.1:${p}`;
  });
  if (nodes === 0) throw new Error("the HAProxy config has no `server ... 127.0.0.1:300N` line");
  let binds = 0;
  out = out.replace(/^([ \t]*)bind[ \t]+(?:\*|0\.0\.0\.0)?:8080\b/gm, (_all, indent) => {
    binds++;
    return `${indent}bind 127.0.0.1:${listenPort}`;
  });
  if (binds !== 1) throw new Error(`the HAProxy config must have one \`bind :8080\` line, found ${binds}`);
  let stats = 0;
  out = out.replace(/^([ \t]*)bind[ \t]+127\.0\.0\.1:8404\b/gm, (_all, indent) => {
    stats++;
    return `${indent}bind 127.0.0.1:${statsPort}`;
  });
  if (stats !== 1) throw new Error(`the HAProxy config must have one \`bind 127.0.0.1:8404\` (stats) line, found ${stats}`);
  return out;
}

/**
 * Parses HAProxy's `/stats;csv` into rows keyed by their column names
 * (`pxname`, `svname`, `status`, ...).
 */
export function parseStatsCsv(text) {
  const lines = text.split("\n").filter((l) => l.length > 0);
  const header = lines[0].replace(/^# /, "").split(",");
  return lines.slice(1).map((l) => {
    const cells = l.split(",");
    return Object.fromEntries(header.map((h, i) => [h, cells[i]]));
  });
}

/**
 * Starts HAProxy with the shipped configuration rewritten for
 * `upstreamPorts` (`haproxy -c` first, then in the foreground).
 * Returns {url, port, statsUrl, config, output(), states(), waitState(), stop()}.
 */
export async function startHaproxy(upstreamPorts, { confPath = HAPROXY_CONF, edit = (t) => t } = {}) {
  if (!existsSync(HAPROXY)) {
    throw new Error(`${HAPROXY} not found: install it (Debian package haproxy) or set TIDINGS_HAPROXY`);
  }
  if (!existsSync(confPath)) throw new Error(`HAProxy config ${confPath} does not exist`);
  // `edit(text)`: a test narrowing a value; everything else as shipped.
  const text = edit(readFileSync(confPath, "utf8"));
  const dir = makeTmp("haproxy");
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const statsPort = await freePort();
    const config = rewriteHaproxyConfig(text, upstreamPorts, port, statsPort);
    const file = path.join(dir, "haproxy.cfg");
    writeFileSync(file, config);
    const check = await run(HAPROXY, ["-c", "-f", file], 10000);
    if (check.code !== 0) {
      removeTmp(dir);
      throw new Error(`haproxy -c rejects the config built from ${confPath}:\n${check.stderr}${check.stdout}\n--- config ---\n${config}`);
    }
    const child = spawnTracked(HAPROXY, ["-db", "-f", file]);
    const statsUrl = `http://127.0.0.1:${statsPort}`;
    const states = async () => {
      const r = await httpGet(`${statsUrl}/stats;csv`);
      if (r.status !== 200) throw new Error(`GET /stats;csv: ${r.status} ${r.text.slice(0, 200)}`);
      const out = {};
      for (const row of parseStatsCsv(r.text)) {
        if (row.svname !== "FRONTEND" && row.svname !== "BACKEND") out[`${row.pxname}/${row.svname}`] = row.status;
      }
      return out;
    };
    try {
      for (const p of [port, statsPort]) {
        await waitPortOpen(p, 10000, () => child.exitInfo()
          ? `haproxy exited (${JSON.stringify(child.exitInfo())}): ${child.output()}` : null);
      }
      return {
        port,
        url: `http://127.0.0.1:${port}`,
        statsUrl,
        config,
        output: () => child.output(),
        states,
        /**
         * Resolves once every named server (`backend/server`) has a
         * status starting with `want` ("UP", "DOWN"); HAProxy's health
         * checks change it, so this polls the stats page (bounded).
         */
        async waitState(servers, want, timeoutMs = 15000) {
          const deadline = Date.now() + timeoutMs;
          for (;;) {
            const s = await states();
            if (servers.every((n) => String(s[n] ?? "").startsWith(want))) return s;
            if (Date.now() > deadline) {
              throw new Error(`HAProxy servers ${servers.join(", ")} not ${want} within ${timeoutMs} ms: ${JSON.stringify(s)}`);
            }
            await sleep(100);
          }
        },
        async stop() {
          await terminate(child, "SIGTERM", 5000).catch(() => {});
          removeTmp(dir);
        },
      };
    } catch (err) {
      lastErr = err;
      await terminate(child, "SIGKILL");
      if (!/Address already in use|cannot bind/i.test(`${err.message}`)) {
        removeTmp(dir);
        throw err;
      }
    }
  }
  removeTmp(dir);
  throw lastErr;
}

/**
 * socket.io-client options that make every connection of a client (polling
 * requests and the websocket) start from `address` (any of 127.0.0.0/8 is
 * local on Linux), so that a proxy hashing the client address treats it as
 * a client of its own.
 */
export function fromAddress(address) {
  return {
    agent: new http.Agent({ localAddress: address, keepAlive: true }),
    localAddress: address,
  };
}

/**
 * An HTTP request (with `body`, a string, if given) from source address
 * `address` (bounded); resolves {status, text, headers}.
 */
export function requestFrom(url, address, { method = "GET", headers = {}, body, timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, localAddress: address, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => { text += d; });
      res.on("end", () => resolve({ status: res.statusCode, text, headers: res.headers }));
      res.on("error", reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${url} from ${address}: no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

/** The `tidings_connections` gauge of each node, in order. */
export async function connectionCounts(nodes) {
  return Promise.all(nodes.map(async (n) => {
    const r = await httpGet(`${n.url}/metrics`);
    if (r.status !== 200) throw new Error(`GET ${n.url}/metrics: ${r.status}`);
    return metricValue(r.text, "tidings_connections") ?? 0;
  }));
}

/**
 * Index of the one node whose connection count grew by one since `before`
 * (the node that holds a connection just made); throws if it is not exactly
 * one node.
 */
export async function nodeOfNewConnection(nodes, before) {
  const after = await connectionCounts(nodes);
  const grew = after.map((c, i) => c - before[i]);
  const idx = grew.findIndex((d) => d === 1);
  if (idx < 0 || grew.some((d, i) => i !== idx && d !== 0)) {
    throw new Error(`expected exactly one node to hold one more connection: before ${before}, after ${after}`);
  }
  return idx;
}

/**
 * The server's options as `tidings --help` lists them: a Map from flag name
 * (`listen`) to `{ flag: "--listen", env: "TIDINGS_LISTEN", default, takesValue }`.
 * The help text is the source of truth for flag and variable names (the
 * contract's section 7 plus docs/reference.md's extra flags).
 */
export async function tidingsOptions(bin = SERVER_BIN) {
  const r = await run(bin, ["--help"], 10000);
  if (r.code !== 0) throw new Error(`${bin} --help failed (${r.code}): ${r.stderr}`);
  const opts = new Map();
  let cur = null;
  for (const line of r.stdout.split("\n")) {
    const m = /^\s+(?:-\w, )?--([a-z0-9-]+)(?: <([A-Z_]+)>)?\s*$/.exec(line);
    if (m) {
      cur = { flag: `--${m[1]}`, env: null, default: null, takesValue: m[2] !== undefined };
      opts.set(m[1], cur);
      continue;
    }
    if (!cur) continue;
    const env = /\[env: ([A-Z0-9_]+)=?[^\]]*\]/.exec(line);
    if (env) cur.env = env[1];
    const def = /\[default: ([^\]]*)\]/.exec(line);
    if (def) cur.default = def[1];
  }
  if (!opts.has("listen") || opts.get("listen").env !== "TIDINGS_LISTEN") {
    throw new Error(`could not read the options from ${bin} --help:\n${r.stdout}`);
  }
  return opts;
}

/** HAProxy / nginx time values ("75s", "500ms", "2m", "1h", bare = ms for HAProxy) in seconds. */
export function durationSeconds(v, bareUnit = "ms") {
  const m = /^(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?$/.exec(String(v).trim());
  if (!m) throw new Error(`not a duration: ${JSON.stringify(v)}`);
  const mult = { us: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600, d: 86400 }[m[2] ?? bareUnit];
  return Number(m[1]) * mult;
}
