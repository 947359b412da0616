// Redis as operators run it, for the end-to-end tests: TLS on a throwaway
// test CA (server certificate, client certificate for mutual TLS, and an
// unrelated CA for the wrong-CA case), ACL users, a TLS Redis Cluster
// (optionally with replicas), and Redis Sentinel (a master, replicas and
// three sentinels), with or without TLS.
//
// Built on lib/cluster.mjs: processes are spawned with spawnTracked (killed
// at exit), temp dirs come from makeTmp (removed at exit), ports from
// freePort, and every wait is bounded.

import { writeFileSync } from "node:fs";
import path from "node:path";
import assert from "node:assert/strict";
import { httpGet } from "./harness.mjs";
import {
  REDIS_SERVER, REDIS_CLI, spawnTracked, terminate, run, freePort, makeTmp, removeTmp,
} from "./cluster.mjs";

export const OPENSSL = process.env.TIDINGS_OPENSSL ?? "/usr/bin/openssl";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// The test PKI
// ---------------------------------------------------------------------------

async function openssl(args, what) {
  const r = await run(OPENSSL, args, 30000);
  if (r.code !== 0) throw new Error(`openssl ${what} failed (${r.code}):\n${r.stderr}${r.stdout}`);
}

/** An EC P-256 key (PKCS#8 PEM) at `file`. */
async function newKey(file) {
  await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", file], `key ${file}`);
}

/** A self-signed CA certificate (v3, CA:TRUE, keyCertSign). */
async function newCa(dir, name, cn) {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.pem`);
  await newKey(key);
  await openssl([
    "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj", `/CN=${cn}`,
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    "-addext", "subjectKeyIdentifier=hash",
  ], `CA ${name}`);
  return { key, cert };
}

/** A leaf certificate signed by `ca`, with the given extensions. */
async function newLeaf(dir, name, cn, ca, ext) {
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const cert = path.join(dir, `${name}.pem`);
  const extFile = path.join(dir, `${name}.ext`);
  await newKey(key);
  await openssl(["req", "-new", "-key", key, "-out", csr, "-subj", `/CN=${cn}`], `CSR ${name}`);
  writeFileSync(extFile, [
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    "authorityKeyIdentifier=keyid",
    "subjectKeyIdentifier=hash",
    ...ext,
    "",
  ].join("\n"));
  await openssl([
    "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
    "-out", cert, "-days", "2", "-extfile", extFile,
  ], `certificate ${name}`);
  return { key, cert };
}

/**
 * Makes a throwaway PKI in a temp dir (removed at exit):
 * - `ca`: the test CA ({cert, key}: PEM paths) that signs
 * - `server`: a server certificate for 127.0.0.1 / localhost (SAN IP and
 *   DNS; usable as a client certificate too, as Redis replicas and cluster
 *   nodes present it to each other),
 * - `client`: a client certificate (mutual TLS),
 * - `otherCa`: an unrelated CA (the wrong-CA case), and `otherClient`, a
 *   client certificate it signs.
 */
export async function makeTestPki() {
  const dir = makeTmp("pki");
  const ca = await newCa(dir, "ca", "Tidings test CA");
  const otherCa = await newCa(dir, "other-ca", "Unrelated test CA");
  const server = await newLeaf(dir, "server", "127.0.0.1", ca, [
    "subjectAltName=IP:127.0.0.1,DNS:localhost",
    "extendedKeyUsage=serverAuth,clientAuth",
  ]);
  const client = await newLeaf(dir, "client", "tidings-client", ca, ["extendedKeyUsage=clientAuth"]);
  const otherClient = await newLeaf(dir, "other-client", "tidings-client", otherCa, ["extendedKeyUsage=clientAuth"]);
  return { dir, ca, otherCa, server, client, otherClient, remove: () => removeTmp(dir) };
}

// ---------------------------------------------------------------------------
// redis-server / redis-cli with TLS and ACL users
// ---------------------------------------------------------------------------

/** The ACL user every helper here creates (besides `default`, which is disabled). */
export const ACL_USER = "tidings";
export const ACL_PASS = "s3cret-Pw-9f2c";

/**
 * redis-server arguments for TLS on `port` (plain TCP off). `authClients`:
 * "no" | "yes" | "optional". `cluster` adds TLS on the cluster bus,
 * replication always uses TLS.
 */
export function tlsServerArgs(pki, port, { authClients = "no" } = {}) {
  return [
    "--port", "0",
    "--tls-port", String(port),
    "--tls-cert-file", pki.server.cert,
    "--tls-key-file", pki.server.key,
    "--tls-ca-cert-file", pki.ca.cert,
    "--tls-auth-clients", authClients,
    "--tls-replication", "yes",
  ];
}

/** ACL: `tidings` with every right, `default` off. Replicas authenticate as `tidings`. */
export function aclArgs(user = ACL_USER, pass = ACL_PASS) {
  return [
    "--user", "default", "off",
    "--user", user, "on", `>${pass}`, "~*", "&*", "+@all",
    "--masteruser", user, "--masterauth", pass,
  ];
}

/**
 * redis-cli connection arguments: TLS when `pki` is given (with the client
 * certificate: works whatever --tls-auth-clients says), the ACL user when
 * `auth` is given ({user, pass}).
 */
export function cliArgs(port, { pki, auth } = {}) {
  const a = ["-h", "127.0.0.1", "-p", String(port)];
  if (pki) a.push("--tls", "--cacert", pki.ca.cert, "--cert", pki.client.cert, "--key", pki.client.key);
  if (auth) a.push("--user", auth.user, "--pass", auth.pass, "--no-auth-warning");
  return a;
}

/** `redis-cli` (bounded) with TLS / ACL as `conn` says; resolves trimmed stdout. */
export async function cli(port, conn, ...args) {
  const r = await run(REDIS_CLI, [...cliArgs(port, conn), ...args], 15000);
  if (r.code !== 0 || /^(ERR|NOAUTH|WRONGPASS|NOPERM)\b/.test(r.stdout.trim())) {
    throw new Error(`redis-cli -p ${port} ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
  }
  return r.stdout.trim();
}

/**
 * Starts a redis-server with `args(port)` (plus the common ones: bind,
 * no persistence, `dir`) on a free port (or `port`), retried on bind
 * failures, and waits until it answers PING through `conn`. For sentinels,
 * `config` is a file body written to `dir/sentinel-PORT.conf` first
 * (sentinels rewrite it) and the server runs with --sentinel.
 */
export async function spawnServer({ dir, port, args, conn = {}, config, attempts = 5 }) {
  let lastErr;
  for (let i = 0; i < attempts; i++) {
    const p = port ?? await freePort();
    const extra = await args(p);
    let argv;
    if (config) {
      const file = path.join(dir, `sentinel-${p}.conf`);
      writeFileSync(file, await config(p));
      argv = [file, "--sentinel", "--bind", "127.0.0.1", "--protected-mode", "no", "--dir", dir, ...extra];
    } else {
      argv = [
        "--bind", "127.0.0.1", "--protected-mode", "no", "--save", "", "--appendonly", "no",
        "--dir", dir, "--dbfilename", `dump-${p}.rdb`,
        // Replicas link at once instead of after the 5 s diskless-sync delay.
        "--repl-diskless-sync-delay", "0",
        ...extra,
      ];
    }
    const child = spawnTracked(REDIS_SERVER, argv);
    const deadline = Date.now() + 10000;
    let ok = false;
    while (!child.exitInfo() && Date.now() < deadline) {
      const r = await run(REDIS_CLI, [...cliArgs(p, conn), "ping"], 2000);
      if (r.code === 0 && r.stdout.trim() === "PONG") { ok = true; break; }
      await sleep(50);
    }
    if (ok) return { port: p, child };
    const out = child.output();
    await terminate(child, "SIGKILL");
    lastErr = new Error(`redis-server on ${p} did not answer PONG within 10 s (${JSON.stringify(child.exitInfo())}):\n${out.slice(-3000)}`);
    if (!/Address already in use/i.test(out)) throw lastErr;
    await sleep(200);
  }
  throw lastErr;
}

/** A handle over one spawned redis-server: cli, kill, restart on the same port, stop. */
function serverHandle({ dir, port, child, spawnArgs, conn }) {
  const h = {
    port,
    conn,
    get child() { return child; },
    get pid() { return child.proc.pid; },
    get up() { return !child.exitInfo(); },
    output: () => child.output(),
    cli: (...args) => cli(port, conn, ...args),
    /** SIGKILL (a crash), awaits the exit. */
    async kill() { await terminate(child, "SIGKILL"); },
    /** Starts it again on the same port and directory (after kill()). */
    async start() {
      if (!child.exitInfo()) throw new Error(`redis-server on ${port} is still running`);
      ({ child } = await spawnServer({ ...spawnArgs, dir, port, conn, attempts: 20 }));
    },
    async stop() { await terminate(child, "SIGTERM"); },
  };
  return h;
}

/** Waits (bounded) until `fn()` resolves truthy; `what()` for the error. */
export async function until(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (err) { last = err.message; }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${typeof what === "function" ? what() : what} (last: ${String(last).slice(0, 500)})`);
    await sleep(100);
  }
}

/** The `role` field of INFO replication. */
export async function roleOf(h) {
  return /role:(\w+)/.exec(await h.cli("info", "replication"))?.[1];
}

/** Resolves once a replica reports master_link_status:up (bounded). */
export async function waitLinked(h, timeoutMs = 15000) {
  await until(async () => /master_link_status:up/.test(await h.cli("info", "replication")), timeoutMs,
    `redis-server on ${h.port} linked to its master`);
}

/**
 * Starts a standalone TLS redis-server with the ACL user (default user off)
 * on a free port. `authClients` as --tls-auth-clients; `replicaOf`: a port
 * to replicate (over TLS). Returns a handle with `url` =
 * `rediss://tidings:PASS@127.0.0.1:PORT`, `urlNoAuth`, `cli(...)`,
 * `kill()`, `start()`, `stop()` (also removes its dir).
 */
export async function startTlsRedis(pki, { authClients = "no", replicaOf, user = ACL_USER, pass = ACL_PASS } = {}) {
  const dir = makeTmp("redis-tls");
  const conn = { pki, auth: { user, pass } };
  const spawnArgs = {
    args: (p) => [
      ...tlsServerArgs(pki, p, { authClients }), ...aclArgs(user, pass),
      ...(replicaOf !== undefined ? ["--replicaof", "127.0.0.1", String(replicaOf)] : []),
    ],
  };
  const { port, child } = await spawnServer({ dir, conn, ...spawnArgs });
  const h = serverHandle({ dir, port, child, spawnArgs, conn });
  const stop = h.stop;
  Object.assign(h, {
    dir,
    url: `rediss://${user}:${pass}@127.0.0.1:${port}`,
    urlNoAuth: `rediss://127.0.0.1:${port}`,
    user, pass,
    async stop() { await stop(); removeTmp(dir); },
  });
  if (replicaOf !== undefined) await waitLinked(h);
  return h;
}

/**
 * A plain (no TLS) redis-server handle; `replicaOf` makes it a replica,
 * `extra` adds arguments (e.g. --requirepass), `conn.auth` how redis-cli logs in.
 */
export async function startPlainRedis({ replicaOf, dir: given, extra = [], conn = {} } = {}) {
  const dir = given ?? makeTmp("redis");
  const spawnArgs = {
    args: (p) => ["--port", String(p), ...(replicaOf !== undefined ? ["--replicaof", "127.0.0.1", String(replicaOf)] : []), ...extra],
  };
  const { port, child } = await spawnServer({ dir, conn, ...spawnArgs });
  const h = serverHandle({ dir, port, child, spawnArgs, conn });
  const stop = h.stop;
  Object.assign(h, {
    dir,
    url: `redis://127.0.0.1:${port}`,
    async stop() { await stop(); if (!given) removeTmp(dir); },
  });
  if (replicaOf !== undefined) await waitLinked(h);
  return h;
}

// ---------------------------------------------------------------------------
// Redis Cluster (TLS or not, with or without replicas)
// ---------------------------------------------------------------------------

/** CLUSTER NODES, parsed: [{id, port, flags, master (id or "-"), slots: [..]}]. */
export async function clusterNodes(h) {
  const out = [];
  for (const line of (await h.cli("cluster", "nodes")).split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    out.push({
      id: f[0], port: Number(/:(\d+)@/.exec(f[1])?.[1]), flags: f[2].split(","), master: f[3],
      linkState: f[7], slots: f.slice(8),
    });
  }
  return out;
}

/**
 * Starts a Redis Cluster of `masters` masters with `replicas` replicas each
 * on free ports. With `pki`: TLS everywhere (clients, cluster bus,
 * replication) and the ACL user. `nodeTimeout`: --cluster-node-timeout
 * (ms). Resolves once every node reports cluster_state:ok and every replica
 * is linked. Returns {nodes (handles), ports, url (comma-separated seeds:
 * `rediss://user:pass@...` with TLS), masterPorts(), stop()}.
 */
export async function startCluster({ pki, masters = 3, replicas = 0, nodeTimeout = 5000, authClients = "no" } = {}) {
  const dir = makeTmp(pki ? "redis-cluster-tls" : "redis-cluster");
  const conn = pki ? { pki, auth: { user: ACL_USER, pass: ACL_PASS } } : {};
  const nodes = [];
  const stopAll = async () => {
    for (const n of nodes) await n.stop();
    removeTmp(dir);
  };
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      const busPort = await freePort();
      const spawnArgs = {
        args: (p) => [
          ...(pki ? [...tlsServerArgs(pki, p, { authClients }), "--tls-cluster", "yes", ...aclArgs()] : ["--port", String(p)]),
          "--cluster-enabled", "yes",
          "--cluster-config-file", path.join(dir, `nodes-${p}.conf`),
          "--cluster-port", String(busPort),
          "--cluster-node-timeout", String(nodeTimeout),
          // A replica promotes whatever its link's age: tests kill masters under load.
          "--cluster-replica-validity-factor", "0",
        ],
      };
      const { port, child } = await spawnServer({ dir, conn, ...spawnArgs });
      nodes.push(serverHandle({ dir, port, child, spawnArgs, conn }));
    }
    const ports = nodes.map((n) => n.port);
    const create = await run(REDIS_CLI, [
      ...cliArgs(ports[0], conn).slice(4), // --tls/--user options without -h/-p
      "--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`),
      "--cluster-replicas", String(replicas), "--cluster-yes",
    ], 30000);
    assert.equal(create.code, 0, `redis-cli --cluster create failed:\n${create.stdout}\n${create.stderr}`);
    const handle = {
      dir,
      nodes,
      ports,
      conn,
      url: ports.map((p) => pki ? `rediss://${ACL_USER}:${ACL_PASS}@127.0.0.1:${p}` : `redis://127.0.0.1:${p}`).join(","),
      byPort: (p) => nodes.find((n) => n.port === p),
      /** Resolves (bounded) once every live node says cluster_state:ok and every live replica is linked. */
      async waitOk(timeoutMs = 30000) {
        await until(async () => {
          for (const n of nodes.filter((x) => x.up)) {
            if (!/cluster_state:ok/.test(await n.cli("cluster", "info"))) return false;
            const repl = await n.cli("info", "replication");
            if (/role:slave/.test(repl) && !/master_link_status:up/.test(repl)) return false;
          }
          return true;
        }, timeoutMs, "Redis Cluster ok and replicas linked");
      },
      /** The live nodes that are masters owning slots, per a live node's view. */
      async masters() {
        const view = await clusterNodes(nodes.find((n) => n.up));
        return view.filter((v) => v.flags.includes("master") && !v.flags.includes("fail") && v.slots.length)
          .map((v) => nodes.find((n) => n.port === v.port)).filter((n) => n?.up);
      },
      outputs: () => nodes.map((n) => n.output()),
      stop: stopAll,
    };
    await handle.waitOk();
    return handle;
  } catch (err) {
    await stopAll();
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Redis Sentinel
// ---------------------------------------------------------------------------

/**
 * Starts a master, `replicas` replicas and `sentinels` sentinels watching
 * master `name` (quorum 2, down-after `downAfterMs`, failover-timeout
 * `failoverTimeoutMs`). With `pki`: TLS and the ACL user on the data nodes
 * and on the sentinels (the sentinels authenticate to the data nodes as
 * that user, and require it from their own clients). Resolves once every
 * sentinel knows every replica and the other sentinels.
 *
 * Returns {name, master (handle at start), data (all data-node handles),
 * sentinels (handles), url (comma-separated sentinel URLs: `redis://` or
 * `rediss://user:pass@`), masterPort() (the sentinels' current answer),
 * currentMaster() (its handle), failover(), stop()}.
 */
export async function startSentinel({
  pki, name = "mymaster", replicas = 1, sentinels = 3, downAfterMs = 1000, failoverTimeoutMs = 3000,
} = {}) {
  const dir = makeTmp(pki ? "sentinel-tls" : "sentinel");
  const auth = pki ? { user: ACL_USER, pass: ACL_PASS } : undefined;
  const conn = { pki, auth };
  const data = [];
  const sents = [];
  const stopAll = async () => {
    for (const s of sents) await s.stop();
    for (const n of data) await n.stop();
    removeTmp(dir);
  };
  const dataArgs = (replicaOf) => ({
    args: (p) => [
      ...(pki ? [...tlsServerArgs(pki, p), ...aclArgs()] : ["--port", String(p)]),
      ...(replicaOf !== undefined ? ["--replicaof", "127.0.0.1", String(replicaOf)] : []),
      // Sentinel announces what the replica reports: keep it 127.0.0.1.
      "--replica-announce-ip", "127.0.0.1",
    ],
  });
  try {
    const m = await spawnServer({ dir, conn, ...dataArgs() });
    // A restarted data node comes back as a replica of whoever is master
    // then (sentinel would reconfigure it anyway; this is faster).
    const mk = (r, replicaOf) => {
      const h = serverHandle({ dir, port: r.port, child: r.child, spawnArgs: dataArgs(replicaOf), conn });
      return h;
    };
    data.push(mk(m));
    for (let i = 0; i < replicas; i++) {
      const r = await spawnServer({ dir, conn, ...dataArgs(m.port) });
      data.push(mk(r, m.port));
    }
    for (const r of data.slice(1)) await waitLinked(r);
    for (let i = 0; i < sentinels; i++) {
      const spawnArgs = {
        args: () => [],
        config: (p) => [
          pki ? `port 0\ntls-port ${p}\ntls-cert-file ${pki.server.cert}\ntls-key-file ${pki.server.key}\n` +
            `tls-ca-cert-file ${pki.ca.cert}\ntls-auth-clients no\ntls-replication yes` : `port ${p}`,
          "sentinel resolve-hostnames no",
          `sentinel announce-ip 127.0.0.1`,
          `sentinel monitor ${name} 127.0.0.1 ${m.port} 2`,
          `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
          `sentinel failover-timeout ${name} ${failoverTimeoutMs}`,
          `sentinel parallel-syncs ${name} 1`,
          ...(pki ? [
            `sentinel auth-user ${name} ${ACL_USER}`, `sentinel auth-pass ${name} ${ACL_PASS}`,
            // The sentinels' own clients (the node) and each other authenticate as the ACL user.
            `user default off`, `user ${ACL_USER} on >${ACL_PASS} ~* &* +@all`,
            `sentinel sentinel-user ${ACL_USER}`, `sentinel sentinel-pass ${ACL_PASS}`,
          ] : []),
          "",
        ].join("\n"),
      };
      const s = await spawnServer({ dir, conn, ...spawnArgs });
      sents.push(serverHandle({ dir, port: s.port, child: s.child, spawnArgs, conn }));
    }
    const handle = {
      name,
      dir,
      conn,
      data,
      sentinels: sents,
      url: sents.map((s) => pki ? `rediss://${ACL_USER}:${ACL_PASS}@127.0.0.1:${s.port}` : `redis://127.0.0.1:${s.port}`).join(","),
      /** The master's port according to the first live sentinel. */
      async masterPort() {
        const s = sents.find((x) => x.up);
        const out = (await s.cli("sentinel", "get-master-addr-by-name", name)).split("\n");
        return Number(out[1]);
      },
      async currentMaster() {
        const p = await handle.masterPort();
        return data.find((d) => d.port === p);
      },
      /** Resolves once every live sentinel knows `replicas` replicas and the other sentinels. */
      async waitSettled(timeoutMs = 20000, wantReplicas = replicas) {
        await until(async () => {
          const ports = new Set();
          for (const s of sents.filter((x) => x.up)) {
            const info = await s.cli("sentinel", "master", name);
            const f = info.split("\n");
            const get = (k) => f[f.indexOf(k) + 1];
            if (Number(get("num-slaves")) < wantReplicas || Number(get("num-other-sentinels")) < sents.length - 1) return false;
            if (/s_down|o_down|failover/.test(get("flags"))) return false;
            ports.add(get("port"));
          }
          return ports.size === 1;
        }, timeoutMs, `sentinels agree on master ${name} with ${wantReplicas} replica(s) and ${sents.length} sentinels`);
      },
      /** SENTINEL FAILOVER on a sentinel; resolves once the sentinels name a new master. */
      async failover(timeoutMs = 20000) {
        const before = await handle.masterPort();
        await sents.find((x) => x.up).cli("sentinel", "failover", name);
        await until(async () => (await handle.masterPort()) !== before, timeoutMs, `sentinel failover away from ${before}`);
        return handle.masterPort();
      },
      /**
       * Restarts a data node that was killed, as a replica of the current
       * master (as the sentinels would reconfigure it).
       */
      async restartAsReplica(h) {
        const mp = await handle.masterPort();
        const idx = data.indexOf(h);
        const r = await spawnServer({ dir, conn, port: h.port, attempts: 20, ...dataArgs(mp) });
        const nh = mk(r, mp);
        data[idx] = nh;
        return nh;
      },
      stop: stopAll,
    };
    await handle.waitSettled();
    return handle;
  } catch (err) {
    await stopAll();
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Node readiness (there is no event to await: bounded polling)
// ---------------------------------------------------------------------------

/** GET /readyz status (0 when the node does not answer within 2 s). */
export async function readyz(url) {
  const r = await httpGet(`${url}/readyz`, { timeoutMs: 2000 }).catch(() => null);
  return r?.status ?? 0;
}

/** Polls /readyz until it answers `status`; resolves the ms it took, rejects after `timeoutMs`. */
export async function waitReadyz(url, status, timeoutMs, what = url) {
  const t0 = Date.now();
  let last;
  for (;;) {
    last = await readyz(url);
    if (last === status) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: /readyz did not answer ${status} within ${timeoutMs} ms (last ${last})`);
    await sleep(100);
  }
}

/** Polls /readyz for `ms`; rejects as soon as it answers anything but `status`. */
export async function holdsReadyz(url, status, ms, what = url) {
  const end = Date.now() + ms;
  let n = 0;
  while (Date.now() < end) {
    const s = await readyz(url);
    n++;
    if (s !== status) throw new Error(`${what}: /readyz answered ${s} (poll ${n}), expected ${status} throughout ${ms} ms`);
    await sleep(150);
  }
  return n;
}

/** Resolves once `node.logs()` matches `re` (bounded); resolves the matching line. */
export async function waitLog(node, re, timeoutMs, what = String(re)) {
  return until(() => node.logs().split("\n").find((l) => re.test(l)) ?? false, timeoutMs, `log line matching ${what}`);
}
