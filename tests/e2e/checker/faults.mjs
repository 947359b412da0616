// The fault schedule (from the seed) and the faults themselves. One lane:
// faults run one after another with random gaps, every kind the variant
// supports at least once (in a seeded order), then random extra ones until
// the fault phase ends. Each is recorded in the oracle's fault timeline
// with what it hit and for how long.

import path from "node:path";
import { waitClusterOk, until, SENTINEL_MASTER } from "./redis.mjs";
import { connect, waitFor, ingest, payment, closeAll } from "../lib/harness.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Fault kinds every run of a variant injects at least once. */
export const REQUIRED_FAULTS = {
  redis: ["node-kill", "node-stop", "pubsub-kill", "redis-pause", "redis-restart-data", "redis-restart-empty", "redis-rollback", "redis-slow-node"],
  cluster: ["node-kill", "node-stop", "pubsub-kill", "redis-pause", "redis-restart-data", "redis-restart-empty", "redis-rollback"],
  memory: ["memory-burst-restart", "node-stop", "node-kill"],
  "cluster-replicas": ["node-kill", "node-stop", "pubsub-kill", "master-failover", "manual-failover"],
  sentinel: ["node-kill", "node-stop", "pubsub-kill", "sentinel-failover", "master-kill"],
};

/** Weights of the extra faults drawn once the required ones are done. */
const EXTRA_FAULTS = {
  redis: { "node-kill": 3, "node-stop": 3, "pubsub-kill": 2, "redis-pause": 1, "redis-restart-data": 0.5, "redis-restart-empty": 0.5, "redis-rollback": 0.3, "redis-slow-node": 1 },
  cluster: { "node-kill": 3, "node-stop": 3, "pubsub-kill": 2, "redis-pause": 1, "redis-restart-data": 0.5, "redis-restart-empty": 0.5, "redis-rollback": 0.3 },
  memory: { "node-stop": 2, "node-kill": 1, "memory-burst-restart": 0.5 },
  "cluster-replicas": { "node-kill": 2, "node-stop": 2, "pubsub-kill": 1, "master-failover": 1.5, "manual-failover": 1 },
  sentinel: { "node-kill": 2, "node-stop": 2, "pubsub-kill": 1, "sentinel-failover": 1.5, "master-kill": 1.5 },
};

/** Faults that stand for the whole run (listed in the timeline at t=0). */
export const STANDING_FAULTS = {
  redis: ["delivery-buffer"],
  cluster: ["delivery-buffer"],
  memory: [],
  "cluster-replicas": ["delivery-buffer"],
  sentinel: ["delivery-buffer"],
};

/** The schedule: a deterministic function of the seed and the variant. */
export function planFaults(rng, variant, { extras = 40 } = {}) {
  const order = rng.shuffle(REQUIRED_FAULTS[variant]);
  // The rollback restarts from a snapshot taken earlier: take it first, and
  // keep the rollback away from the start so that data comes after it.
  const ri = order.indexOf("redis-rollback");
  if (ri >= 0 && ri < 2) { order.splice(ri, 1); order.splice(2 + rng.int(0, order.length - 2), 0, "redis-rollback"); }
  const steps = [];
  const param = (kind) => ({
    kind,
    gapMs: rng.int(300, 1200),
    target: rng.int(0, 1 << 20),
    ms: kind === "node-stop" ? rng.int(1000, 3000) : kind === "node-kill" ? rng.int(1000, 2500)
      : kind === "master-failover" || kind === "master-kill" ? rng.int(500, 2000) : rng.int(200, 900),
  });
  if (order.includes("redis-rollback")) steps.push(param("snapshot"));
  for (const k of order) steps.push(param(k));
  steps[0].gapMs = rng.int(1500, 2500); // some data before the first one
  for (let i = 0; i < extras; i++) steps.push({ ...param(rng.weighted(EXTRA_FAULTS[variant])), extra: true });
  return steps;
}

export class FaultLane {
  /** @param {object} ctx run context (oracle, nodes, redis, variant, tmp, memoryBurstRestart) */
  constructor(ctx, steps) {
    this.ctx = ctx;
    this.steps = steps;
    this.done = [];
    this.snapshot = null; // {master, file}
    this.stopRequested = false;
  }

  counts() {
    const c = {};
    for (const s of this.done) if (s.kind !== "snapshot") c[s.kind] = (c[s.kind] ?? 0) + 1;
    return c;
  }

  /** Runs the schedule until every required fault ran and `endAt` (ms) has passed. */
  async run(endAt) {
    const required = new Set(REQUIRED_FAULTS[this.ctx.variant]);
    for (const step of this.steps) {
      const requiredLeft = [...required].some((k) => !this.done.some((d) => d.kind === k));
      if (this.stopRequested || (!requiredLeft && Date.now() + step.gapMs > endAt)) break;
      if (step.extra && requiredLeft) continue;
      await sleep(step.gapMs);
      await this.exec(step);
      this.done.push(step);
    }
  }

  /**
   * A restarted master takes about 2 s to report cluster_state:ok: waited
   * for in the background, before the next Redis fault and at settle.
   */
  #clusterBack() {
    const { redis } = this.ctx;
    if (redis.sentinel) {
      this.clusterOk = redis.waitSettled().catch((err) => {
        this.ctx.infraErrors.push(`Sentinel did not settle after a failover: ${err.message}`);
      });
      return;
    }
    if (!redis.cluster) return;
    this.clusterOk = (redis.replicas ? redis.waitHealthy() : waitClusterOk(redis.masters)).catch((err) => {
      this.ctx.infraErrors.push(`Redis Cluster did not come back after a master restart: ${err.message}`);
    });
  }

  async exec(step) {
    const { ctx } = this;
    if (/^(redis|pubsub|snapshot|master|manual|sentinel)/.test(step.kind) && this.clusterOk) await this.clusterOk;
    const { oracle, nodes } = ctx;
    const masters = ctx.redis?.masters ?? [];
    const t0 = Date.now();
    const rec = oracle.fault(step.kind, {});
    const finish = (extra = {}) => Object.assign(rec, { tookMs: Date.now() - t0 }, extra);
    try {
      switch (step.kind) {
        case "node-kill": {
          const node = nodes[step.target % nodes.length];
          rec.node = node.name;
          await node.kill();
          if (ctx.variant === "memory") oracle.dataLoss(`memory node ${node.name} killed`);
          await sleep(step.ms);
          await node.start();
          finish({ downMs: step.ms });
          break;
        }
        case "node-stop": {
          const node = nodes[step.target % nodes.length];
          rec.node = node.name;
          node.pause();
          await sleep(step.ms);
          node.resume();
          finish({ stoppedMs: step.ms });
          break;
        }
        case "pubsub-kill": {
          const killed = [];
          for (const m of masters.filter((x) => x.up)) killed.push(Number(await m.cli("CLIENT", "KILL", "TYPE", "pubsub")));
          finish({ killed });
          break;
        }
        case "redis-pause": {
          await Promise.all(masters.map((m) => m.cli("CLIENT", "PAUSE", "3000", "ALL")));
          await sleep(3300);
          finish({ pausedMs: 3000, masters: masters.map((m) => m.name) });
          break;
        }
        case "snapshot": {
          const m = masters[step.target % masters.length];
          const file = path.join(ctx.dataDir, `older-snapshot-${m.port}.rdb`);
          await m.snapshot(file);
          this.snapshot = { master: m, file };
          finish({ master: m.name });
          break;
        }
        case "redis-restart-data": {
          // Lossless: writes paused, SAVE, SIGKILL, start from that dump.
          const m = masters[step.target % masters.length];
          rec.master = m.name;
          await m.cli("CLIENT", "PAUSE", "10000", "WRITE");
          await m.save();
          await m.restart("data", { downMs: step.ms, between: () => oracle.storageRestart(`${m.name} restarted from its own dump`) });
          this.#clusterBack();
          finish({ downMs: step.ms });
          break;
        }
        case "redis-restart-empty": {
          const m = masters[step.target % masters.length];
          rec.master = m.name;
          await m.restart("empty", { downMs: step.ms, between: () => oracle.dataLoss(`${m.name} restarted empty`) });
          this.#clusterBack();
          finish({ downMs: step.ms });
          break;
        }
        case "redis-rollback": {
          const snap = this.snapshot;
          if (!snap) throw new Error("no snapshot to roll back to");
          rec.master = snap.master.name;
          rec.snapshotAt = this.done.find((d) => d.kind === "snapshot")?.at;
          await snap.master.restart("snapshot", {
            from: snap.file, downMs: step.ms,
            between: () => oracle.dataLoss(`${snap.master.name} restarted from an older snapshot`),
          });
          this.#clusterBack();
          finish({ downMs: step.ms });
          break;
        }
        case "redis-slow-node": {
          Object.assign(rec, await this.#slowNode(step));
          finish();
          break;
        }
        case "master-failover": {
          // Redis Cluster: SIGKILL a master under load; its replica is
          // promoted (node timeout 2 s); the killed one comes back as a
          // replica. Writes it acknowledged but had not replicated are lost.
          const ms = await ctx.redis.currentMasters();
          const m = ms[step.target % ms.length];
          rec.master = m.name;
          await m.kill();
          oracle.dataLoss(`master ${m.name} killed (Redis Cluster failover)`);
          const t1 = Date.now();
          await until(async () => {
            const now = await ctx.redis.currentMasters();
            if (now.length < 3 || now.includes(m)) return false;
            return (await Promise.all(now.map((x) => x.cli("CLUSTER", "INFO")))).every((t) => /cluster_state:ok/.test(t));
          }, 30000, `a replica of ${m.name} promoted and cluster_state:ok`);
          rec.promotedMs = Date.now() - t1;
          rec.newMaster = (await ctx.redis.currentMasters()).map((x) => x.name).join(",");
          await sleep(step.ms);
          await m.start(); // rejoins as a replica of the promoted one (its nodes.conf is older)
          this.#clusterBack();
          finish({ downMs: Date.now() - t1 });
          break;
        }
        case "manual-failover": {
          // Redis Cluster: CLUSTER FAILOVER on a linked replica (coordinated,
          // lossless: the master stops writes until the replica caught up).
          const reps = await ctx.redis.linkedReplicas();
          if (!reps.length) throw new Error("no linked replica for CLUSTER FAILOVER");
          const r = reps[step.target % reps.length];
          rec.replica = r.name;
          await r.cli("CLUSTER", "FAILOVER");
          await until(async () => /role:master/.test(await r.cli("INFO", "replication")), 15000, `${r.name} master after CLUSTER FAILOVER`);
          // Lossless, but another Redis process now writes those slots.
          oracle.storageRestart(`CLUSTER FAILOVER to ${r.name}`);
          this.#clusterBack();
          finish();
          break;
        }
        case "sentinel-failover": {
          // SENTINEL FAILOVER: a replica is promoted, then the old master is
          // made its replica; what the old master acknowledged meanwhile is lost.
          const old = await ctx.redis.master();
          rec.master = old.name;
          const s = ctx.redis.sentinels.find((x) => x.up);
          oracle.lossWindowBegin(`sentinel failover from ${old.name} begins`);
          try {
            await until(async () => {
              const r = await s.cli("SENTINEL", "FAILOVER", SENTINEL_MASTER);
              if (/^OK/.test(r)) return true;
              throw new Error(r); // e.g. NOGOODSLAVE / INPROG: retried, bounded
            }, 15000, "SENTINEL FAILOVER accepted");
            await until(async () => (await ctx.redis.masterPort()) !== old.port, 20000, "sentinels name a new master");
            rec.promotedMs = Date.now() - t0;
            await until(async () => (await ctx.redis.roleOf(old)) === "slave", 30000, `${old.name} demoted (about 10 s after the promotion)`);
          } finally {
            oracle.lossWindowEnd(`sentinel failover: ${old.name} demoted`);
          }
          rec.newMaster = (await ctx.redis.master())?.name;
          this.#clusterBack();
          finish();
          break;
        }
        case "master-kill": {
          // Sentinel: SIGKILL the master; the sentinels promote a replica
          // (down-after 1 s); the killed one comes back (empty) as a replica.
          const old = await ctx.redis.master();
          rec.master = old.name;
          await old.kill();
          oracle.dataLoss(`master ${old.name} killed (sentinel failover)`);
          const t1 = Date.now();
          const p = await until(async () => { const q = await ctx.redis.masterPort(); return q !== old.port && q; }, 30000, "sentinels promote a replica");
          rec.promotedMs = Date.now() - t1;
          rec.newMaster = ctx.redis.masters.find((d) => d.port === p)?.name;
          await sleep(step.ms);
          old.extra = ["--repl-diskless-sync-delay", "0", "--replicaof", "127.0.0.1", String(p)];
          await old.restart("empty");
          this.#clusterBack();
          finish({ downMs: Date.now() - t1 });
          break;
        }
        case "memory-burst-restart": {
          const info = await ctx.memoryBurstRestart(step);
          finish(info);
          break;
        }
        default:
          throw new Error(`unknown fault ${step.kind}`);
      }
    } catch (err) {
      finish({ error: err.message.slice(0, 500) });
      ctx.infraErrors.push(`fault ${step.kind}: ${err.message}`);
    }
    step.at = rec.t;
  }

  /**
   * Redis answers one node (n1, behind the proxy) slowly: its command
   * replies are held for up to 1.5 s (below the server's 2 s call timeout)
   * while its pub/sub keeps flowing. Meanwhile a socket on it resubscribes
   * with since to a trackingId that gets a payment, so that the node has a
   * replay read waiting on Redis and a publication for the same trackingId
   * to deliver; then a probe payment for another trackingId, which a probe
   * socket on that node holds, must reach it before Redis answers again. A
   * subscribe may wait on Redis; delivery must not (`delivery-stalled`).
   * The fault's sockets and trackingIds are its own: no client holds them.
   */
  async #slowNode(step) {
    const { ctx } = this;
    const node = ctx.nodes[1];
    const other = ctx.nodes.find((n) => n !== node && n.live) ?? ctx.nodes[0];
    if (!ctx.proxy || !node.live || !(await node.waitReady(5000))) return { skipped: `${node.name} not ready` };
    const k = this.done.filter((d) => d.kind === "redis-slow-node").length;
    const [busy, probe] = [`${ctx.prefix}-slow${k}`, `${ctx.prefix}-probe${k}`];
    const WS = { transports: ["websocket"] };
    const sockets = [];
    const post = async (tid) => {
      const res = await ingest(other.url, payment(tid), { timeoutMs: 4000 });
      if (res.status !== 202) throw new Error(`probe ingest for ${tid} on ${other.name}: ${res.status} ${res.text.slice(0, 200)}`);
      return res.body.data[0];
    };
    const subscribe = async (s, tid, extra = {}) => {
      const ack = waitFor(s, "ack", (a) => a?.data === `Subscribed to trackingId: ${tid}`, 5000);
      s.emit("subscribe", { trackingId: tid, ...extra });
      await ack;
    };
    try {
      const [r, q] = [await connect(node.url, WS), await connect(node.url, WS)];
      sockets.push(r, q);
      await subscribe(r, busy);
      await subscribe(q, probe);
      const first = await post(busy);
      await waitFor(r, "payment", (p) => p.id === first.id, 5000);

      ctx.proxy.hold();
      const sent = ctx.proxy.seen(/EVALSHA|EVAL/, 3000);
      r.emit("subscribe", { trackingId: busy, since: first.id }); // its read waits on Redis
      await sent;
      const t0 = Date.now();
      await post(busy); // a publication for the trackingId being read
      const p = await post(probe);
      const delivered = await waitFor(q, "payment", (m) => m.id === p.id, Math.max(0, 1500 - (Date.now() - t0)))
        .then(() => Date.now() - t0, () => null);
      ctx.proxy.release();
      if (delivered === null) {
        ctx.oracle.violate("delivery-stalled", {
          msg: `${node.name}: the probe payment ${p.id} for ${probe} was not delivered while a subscribe on that node waited for Redis (held ${Date.now() - t0} ms)`,
        });
      }
      return { node: node.name, probeMs: delivered };
    } finally {
      ctx.proxy.release();
      closeAll(sockets);
    }
  }

  /** Settle: whatever a fault left down or stopped is brought back. */
  async restoreAll() {
    const { ctx } = this;
    if (this.clusterOk) await this.clusterOk;
    for (const m of ctx.redis?.masters ?? []) {
      if (!m.up) await m.start();
      await m.cli("CLIENT", "UNPAUSE").catch(() => {});
    }
    if (ctx.redis?.sentinel) await ctx.redis.waitSettled();
    else if (ctx.redis?.replicas) await ctx.redis.waitHealthy();
    else if (ctx.redis?.cluster) await waitClusterOk(ctx.redis.masters);
    for (const n of ctx.nodes) {
      if (n.state === "stopped") n.resume();
      if (n.state === "down") await n.start();
    }
  }
}
