// redis-server processes the checker can SAVE, snapshot, SIGKILL and start
// again on the same port: from their data, empty, or from an older
// snapshot. lib/cluster.mjs starts Redis without persistence and cannot
// restart from a dump, so the checker has its own (it reuses the helpers
// that are exported there).

import { spawn } from "node:child_process";
import { copyFileSync, rmSync } from "node:fs";
import path from "node:path";
import { REDIS_SERVER, REDIS_CLI, redisCli, run, freePort } from "../lib/cluster.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** redis-server processes started here and not yet exited: killed at exit. */
const live = new Set();
process.on("exit", () => {
  for (const p of live) {
    try { p.kill("SIGKILL"); } catch { /* gone */ }
  }
});

export class RedisProc {
  /**
   * @param {object} o
   * @param {string} o.name  for logs ("redis", "m0" …)
   * @param {number} o.port
   * @param {string} o.dir   data directory (dump, nodes.conf)
   * @param {number} [o.busPort] cluster bus port: makes it a cluster node
   */
  constructor({ name, port, dir, busPort }) {
    this.name = name;
    this.port = port;
    this.dir = dir;
    this.busPort = busPort;
    this.proc = null;
    this.out = [];
    this.exited = null;
    this.starts = 0;
  }

  get dump() { return path.join(this.dir, `dump-${this.port}.rdb`); }
  get url() { return `redis://127.0.0.1:${this.port}`; }
  get up() { return this.proc !== null; }

  args() {
    const a = [
      "--port", String(this.port), "--bind", "127.0.0.1", "--protected-mode", "no",
      "--save", "", "--appendonly", "no", "--dir", this.dir, "--dbfilename", path.basename(this.dump),
    ];
    if (this.busPort) {
      a.push("--cluster-enabled", "yes", "--cluster-config-file", path.join(this.dir, `nodes-${this.port}.conf`),
        "--cluster-port", String(this.busPort), "--cluster-node-timeout", "5000");
    }
    return a;
  }

  /** Starts redis-server on its port (from whatever dump is in place) and waits for PONG. */
  async start(timeoutMs = 10000) {
    if (this.proc) throw new Error(`${this.name} already running`);
    for (let attempt = 0; ; attempt++) {
      const proc = spawn(REDIS_SERVER, this.args(), { stdio: ["ignore", "pipe", "pipe"] });
      this.starts++;
      live.add(proc);
      let text = "";
      const keep = (c) => {
        text += c;
        this.out.push(String(c));
        if (this.out.length > 2000) this.out.splice(0, 1000);
      };
      proc.stdout.setEncoding("utf8").on("data", keep);
      proc.stderr.setEncoding("utf8").on("data", keep);
      let info = null;
      const exited = new Promise((resolve) => {
        proc.on("exit", (code, signal) => { info = { code, signal }; live.delete(proc); resolve(info); });
        proc.on("error", (err) => { info = { error: err.message }; live.delete(proc); resolve(info); });
      });
      const deadline = Date.now() + timeoutMs;
      let ok = false;
      while (!info && Date.now() < deadline) {
        const r = await run(REDIS_CLI, ["-h", "127.0.0.1", "-p", String(this.port), "ping"], 2000);
        if (r.code === 0 && r.stdout.trim() === "PONG") { ok = true; break; }
        await sleep(30);
      }
      if (ok) {
        this.proc = proc;
        this.exited = exited;
        return;
      }
      try { proc.kill("SIGKILL"); } catch { /* gone */ }
      await exited;
      if (/Address already in use/i.test(text) && attempt < 20) { await sleep(200); continue; }
      throw new Error(`${this.name}: redis-server on ${this.port} did not start (${JSON.stringify(info)}):\n${text.slice(-2000)}`);
    }
  }

  /** SIGKILL (a crash) and wait for the exit. */
  async kill() {
    const p = this.proc;
    if (!p) return;
    this.proc = null;
    try { p.kill("SIGKILL"); } catch { /* gone */ }
    await this.exited;
  }

  /** Graceful stop, for the end of a run (no save: --save ""). */
  async stop() {
    const p = this.proc;
    if (!p) return;
    this.proc = null;
    try { p.kill("SIGTERM"); } catch { /* gone */ }
    const done = await Promise.race([this.exited.then(() => true), sleep(5000).then(() => false)]);
    if (!done) {
      try { p.kill("SIGKILL"); } catch { /* gone */ }
      await this.exited;
    }
  }

  cli(...args) { return redisCli(this.port, ...args); }

  /** SAVE to this server's dump file. */
  async save() { return this.cli("SAVE"); }

  /** SAVE, then copy the dump to `dest` (an older snapshot to restart from later). */
  async snapshot(dest) {
    await this.save();
    copyFileSync(this.dump, dest);
  }

  /**
   * SIGKILL, then start again on the same port: `data` from the current
   * dump file, `empty` with no dump, `snapshot` from `from` (an older copy).
   * `between` runs while the server is down.
   */
  async restart(mode, { from, downMs = 0, between } = {}) {
    await this.kill();
    if (mode === "empty") rmSync(this.dump, { force: true });
    else if (mode === "snapshot") copyFileSync(from, this.dump);
    else if (mode !== "data") throw new Error(`unknown restart mode ${mode}`);
    if (between) await between();
    if (downMs) await sleep(downMs);
    await this.start();
  }

  output() { return this.out.join(""); }
}

/** One redis-server on a free port. */
export async function startStandalone(dir) {
  let lastErr;
  for (let i = 0; i < 5; i++) {
    const r = new RedisProc({ name: "redis", port: await freePort(), dir });
    try {
      await r.start();
      return { masters: [r], url: r.url, cluster: false, async stop() { await r.stop(); } };
    } catch (err) { lastErr = err; }
  }
  throw lastErr;
}

/** Waits (bounded) until every master reports cluster_state:ok. */
export async function waitClusterOk(masters, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const infos = await Promise.all(masters.map((m) => m.cli("cluster", "info").catch((e) => e.message)));
    if (infos.every((t) => /cluster_state:ok/.test(t))) return;
    if (Date.now() > deadline) throw new Error(`Redis Cluster not ok within ${timeoutMs} ms:\n${infos.join("\n---\n")}`);
    await sleep(100);
  }
}

/** A three-master Redis Cluster (no replicas) whose masters can be restarted. */
export async function startCluster(dir) {
  const masters = [];
  try {
    for (let i = 0; i < 3; i++) {
      let started = false;
      for (let a = 0; a < 5 && !started; a++) {
        const m = new RedisProc({ name: `m${i}`, port: await freePort(), dir, busPort: await freePort() });
        try { await m.start(); masters.push(m); started = true; } catch (err) { if (a === 4) throw err; }
      }
    }
    const create = await run(REDIS_CLI, [
      "--cluster", "create", ...masters.map((m) => `127.0.0.1:${m.port}`),
      "--cluster-replicas", "0", "--cluster-yes",
    ], 30000);
    if (create.code !== 0) throw new Error(`redis-cli --cluster create failed:\n${create.stdout}\n${create.stderr}`);
    await waitClusterOk(masters);
    return {
      masters,
      url: masters.map((m) => m.url).join(","),
      cluster: true,
      async stop() { for (const m of masters) await m.stop(); },
    };
  } catch (err) {
    for (const m of masters) await m.stop();
    throw err;
  }
}

