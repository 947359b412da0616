// One checker run: start a variant's system (Redis / Redis Cluster / none,
// Tidings nodes on fixed ports), drive it with clients and ingesters while
// the fault lane injects faults, settle, and return the oracle's result.

import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort } from "../lib/cluster.mjs";
import { SERVER_BIN } from "../lib/harness.mjs";
import { Rng } from "./prng.mjs";
import { Oracle, parseId, formatReport } from "./oracle.mjs";
import { Client } from "./client.mjs";
import { Ingester, postUntilAccepted } from "./ingester.mjs";
import { FaultLane, planFaults, STANDING_FAULTS } from "./faults.mjs";
import { TidingsNode } from "./nodes.mjs";
import { startStandalone, startCluster, startClusterReplicas, startSentinelSet, SENTINEL_MASTER } from "./redis.mjs";
import { startRedisProxy } from "../lib/redisproxy.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Temp dirs of runs in progress: removed at exit if the run did not finish (Ctrl-C, crash). */
const tmpdirs = new Set();
process.on("exit", () => {
  for (const d of tmpdirs) {
    try { rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ }
  }
});

/** CI size per variant: seconds of fault phase, sockets. */
export const CI_SIZES = {
  redis: { duration: 22, sockets: 120 },
  cluster: { duration: 20, sockets: 100 },
  memory: { duration: 12, sockets: 100 },
  "cluster-replicas": { duration: 20, sockets: 80 },
  sentinel: { duration: 20, sockets: 80 },
};

/** Every variant, in the order `all` runs them. */
export const VARIANTS = ["redis", "cluster", "memory", "cluster-replicas", "sentinel"];

export const DEFAULT_CFG = {
  ackTimeoutMs: 15000,
  connectTimeoutMs: 5000,
  ingestTimeoutMs: 4000,
  backoffMinMs: 100,
  backoffMaxMs: 700,
  opWeights: { idle: 30, subscribe: 14, unsubscribe: 8, forget: 3, unsubDisconnect: 7, moveNode: 5, switchTransport: 5 },
  idempotencyKeyShare: 0.06,
  repostShare: 0.12,
  ingestPauseMinMs: 40,
  ingestPauseMaxMs: 450,
  ingesters: 4,
  hot: 6,
  cold: 24,
  historyLimit: 5000,
  tinyBuffer: 2,
  settleMs: 30000,
  markerWaitMs: 12000, // at most, and
  markerIdleMs: 5000, // no marker arriving for that long ends the wait
  burst: 1500,
  burstChunk: 500,
  probe: 300,
  burstHolders: 8,
  faults: true, // false: no fault lane (calibration runs)
  waves: true,
  waveEveryMinMs: 1200,
  waveEveryMaxMs: 3000,
  sentinelDirect: false, // true: the sentinel variant's nodes use the first master's URL (a node that does not follow)
};

/** A random 32-bit seed (crypto, not Math.random). */
export async function randomSeed() {
  const { randomInt } = await import("node:crypto");
  return randomInt(1, 2 ** 31);
}

/**
 * Runs one variant. Returns the oracle's result plus the run's figures
 * (`figures`), `infraErrors` (the harness could not do what it meant to),
 * and `logDir` when logs were kept (on any violation or infra error).
 */
export async function runVariant({ variant, seed, duration, sockets, cfg: overrides = {}, log = () => {} }) {
  if (!VARIANTS.includes(variant)) throw new Error(`unknown variant ${variant}`);
  const cfg = { ...DEFAULT_CFG, ...overrides };
  const size = CI_SIZES[variant];
  duration ??= size.duration;
  sockets ??= size.sockets;
  const startedAt = Date.now();
  const rng = new Rng(seed);
  const oracle = new Oracle({ seed, variant });
  const tmp = mkdtempSync(path.join(os.tmpdir(), `tidings-checker-${variant}-${seed}-`));
  tmpdirs.add(tmp);
  const dataDir = path.join(tmp, "data");
  mkdirSync(dataDir);

  const ctx = {
    variant, oracle, rng, cfg, dataDir,
    phase: "setup",
    nodes: [],
    redis: null,
    infraErrors: [],
    stats: { connectFailures: 0 },
    giveUpAt: null,
    gate: null,
  };
  const tracked = new Set();
  ctx.track = (p) => {
    tracked.add(p);
    p.finally(() => tracked.delete(p)).catch(() => {});
    return p;
  };
  ctx.ingestGate = () => ctx.gate ?? Promise.resolve();
  ctx.pickNode = (r, exclude = null, idx = undefined) => {
    let list = ctx.nodes.filter((n) => n.live);
    if (exclude && list.length > 1) list = list.filter((n) => n !== exclude);
    if (list.length === 0) list = ctx.nodes;
    return idx !== undefined ? list[idx % list.length] : r.pick(list);
  };
  ctx.pickIngestNode = (r) => (r.chance(0.08) ? r.pick(ctx.nodes) : ctx.pickNode(r));

  // trackingIds: a few hot ones (many sockets per node share them), more cold ones.
  const prefix = `ck${seed.toString(36)}${{ "cluster-replicas": "k", sentinel: "s" }[variant] ?? variant[0]}`;
  ctx.prefix = prefix;
  const hot = Array.from({ length: cfg.hot }, (_, i) => `${prefix}-h${i}`);
  const cold = Array.from({ length: cfg.cold }, (_, i) => `${prefix}-c${i}`);
  const pool = [...hot, ...cold];
  ctx.pickIngestTid = (r) => (r.chance(0.45) ? r.pick(hot) : r.pick(cold));
  const burstTids = variant === "memory" ? Array.from({ length: cfg.burst }, (_, i) => `${prefix}-b${i}`) : [];
  const probeTids = variant === "memory" ? Array.from({ length: cfg.probe }, (_, i) => `${prefix}-p${i}`) : [];

  // Clients and their programs.
  const setup = rng.fork("setup");
  const clients = [];
  for (let i = 0; i < sockets; i++) {
    const tids = [...setup.sample(hot, setup.chance(0.3) ? 2 : 1), ...setup.sample(cold, setup.int(1, 3))];
    if (i < cfg.burstHolders && burstTids.length) tids.push(burstTids[setup.int(Math.floor(cfg.burst * 0.66), cfg.burst - 1)]);
    const initial = tids.filter((t, j) => j === 0 || burstTids.includes(t) || setup.chance(0.6));
    clients.push(new Client(ctx, i, tids, initial));
  }
  const byName = new Map(clients.map((c) => [c.name, c]));
  oracle.onResync = (client, tid) => byName.get(client)?.requestResync(tid);
  const ingesters = Array.from({ length: cfg.ingesters }, (_, i) => new Ingester(ctx, i));
  const burstMaker = new Ingester(ctx, 90);
  const markerMaker = new Ingester(ctx, 99);
  const waveMaker = new Ingester(ctx, 80);

  let burstRounds = 0;
  ctx.memoryBurstRestart = async () => {
    // ≥1,000 new trackingIds within about a second, then SIGKILL and a
    // restart on the same port; then a probe: a batch of fresh ids, then
    // burst ids again in the order of their first epochs, starting just
    // above the probe's last epoch. A server that derives new epochs from
    // a counter that restarts with the process hands out the old ids again.
    // (The probe's choice of ids depends on the epochs answered: the one
    // place where the run depends on the server's answers.)
    const node = ctx.nodes[0];
    const chance = rng.fork("burst-retry");
    let release;
    ctx.gate = new Promise((r) => { release = r; });
    try {
      // The first burst is of the ids some clients hold; later ones (extra
      // faults in long runs) of fresh ids again.
      const round = burstRounds++;
      const ids = round === 0 ? burstTids : burstTids.map((t) => `${t}r${round}`);
      const items = ids.map((t) => burstMaker.item(t));
      const t0 = Date.now();
      for (let i = 0; i < items.length; i += cfg.burstChunk) {
        const req = oracle.request(items.slice(i, i + cfg.burstChunk), "burst");
        req.fault = true;
        await postUntilAccepted(ctx, req, chance, { nodes: [node] });
      }
      const burstMs = Date.now() - t0;
      const t1 = Date.now();
      await node.kill();
      oracle.dataLoss(`memory node ${node.name} killed after a burst of ${items.length} new trackingIds`);
      await node.start();
      const restartMs = Date.now() - t1;
      const probe = probeTids.map((t) => burstMaker.item(round === 0 ? t : `${t}r${round}`));
      const preq = oracle.request(probe, "probe");
      preq.fault = true;
      await postUntilAccepted(ctx, preq, chance, { nodes: [node] });
      const emax = Math.max(...probe.map((it) => parseId(oracle.idOf(it))?.epoch ?? 0));
      const again = items
        .map((it) => ({ tid: it.trackingId, e: parseId(oracle.idOf(it))?.epoch ?? 0 }))
        .filter((x) => x.e > emax)
        .sort((a, b) => a.e - b.e)
        .slice(0, 400)
        .map((x) => burstMaker.item(x.tid));
      if (again.length) {
        const areq = oracle.request(again, "burst-again");
        areq.fault = true;
        await postUntilAccepted(ctx, areq, chance, { nodes: [node] });
      }
      return { node: node.name, burst: items.length, burstMs, restartMs, probe: probe.length, again: again.length };
    } finally {
      ctx.gate = null;
      release();
    }
  };

  // Remount waves: now and then, the sockets of one node that hold one
  // trackingId all act at once, half of them remounting (unsubscribe and
  // disconnect at once, then connect and subscribe again with since), half
  // subscribing again with since (a frontend deploy reloading many tabs).
  const waveStats = { waves: 0, remounts: 0, resubscribes: 0 };
  async function waveLoop() {
    const wr = rng.fork("waves");
    while (ctx.phase === "run") {
      await sleep(wr.int(cfg.waveEveryMinMs, cfg.waveEveryMaxMs));
      if (ctx.phase !== "run") break;
      const tid = wr.chance(0.8) ? wr.pick(hot) : wr.pick(cold);
      const draws = Array.from({ length: clients.length }, () => wr.chance(0.5));
      const burst = Array.from({ length: wr.int(10, 30) }, () => waveMaker.item(tid));
      // The node where most sockets hold that id.
      const holdersOn = (node) => clients.filter((c) => c.conn && !c.conn.closed && c.conn.open && c.conn.node === node && c.conn.subs.get(tid) === "sub");
      const node = ctx.nodes.filter((n) => n.live).map((n) => [n, holdersOn(n).length]).sort((a, b) => b[1] - a[1])[0]?.[0];
      const holders = node ? holdersOn(node) : [];
      if (holders.length < 2) continue;
      waveStats.waves++;
      // ... while a burst for that id is being delivered.
      ctx.track(postUntilAccepted(ctx, oracle.request(burst, "wave burst"), wr.fork(`w${waveStats.waves}`)));
      for (const c of holders) {
        if (draws[Number(c.name.slice(1))]) { waveStats.remounts++; c.remount(tid, node).catch(() => {}); }
        else { waveStats.resubscribes++; c.ensureSub(tid, { force: true }).catch(() => {}); }
      }
    }
  }

  let lane = null;
  const figures = {};
  try {
    // --- the system under test
    if (variant === "redis") ctx.redis = await startStandalone(dataDir);
    if (variant === "cluster") ctx.redis = await startCluster(dataDir);
    if (variant === "cluster-replicas") ctx.redis = await startClusterReplicas(dataDir);
    if (variant === "sentinel") ctx.redis = await startSentinelSet(dataDir);
    const common = ["--history-limit", String(cfg.historyLimit)];
    // In the redis variant, n1 reaches Redis through a TCP proxy: the
    // redis-slow-node fault holds back Redis' answers to that node alone.
    if (variant === "redis") ctx.proxy = await startRedisProxy(ctx.redis.masters[0].port);
    const redisArgs = (i) => variant === "redis" ? ["--redis-url", i === 1 ? ctx.proxy.url : ctx.redis.url]
      : variant === "cluster" || variant === "cluster-replicas" ? ["--redis-cluster", "--redis-url", ctx.redis.url]
        : variant === "sentinel" ? (cfg.sentinelDirect
          // Calibration: nodes on the first master's address, not following the sentinels.
          ? ["--redis-url", ctx.redis.masters[0].url]
          : ["--redis-sentinel", SENTINEL_MASTER, "--redis-url", ctx.redis.url]) : [];
    const nNodes = variant === "memory" ? 1 : 3;
    for (let i = 0; i < nNodes; i++) {
      const tiny = variant !== "memory" && i === nNodes - 1 && cfg.tinyBuffer ? ["--delivery-buffer", String(cfg.tinyBuffer)] : [];
      ctx.nodes.push(new TidingsNode({
        name: `n${i}`, port: await freePort(), args: [...redisArgs(i), ...common, ...tiny],
        onCrash: (node, info) => {
          oracle.violate("node-crash", { msg: `${node.name} exited by itself: ${JSON.stringify(info)}` });
          if (ctx.phase === "run" || ctx.phase === "settle") sleep(500).then(() => node.state === "down" && node.start()).catch(() => {});
        },
      }));
    }
    await Promise.all(ctx.nodes.map((n) => n.start()));
    const ready = await Promise.all(ctx.nodes.map((n) => n.waitReady()));
    figures.setupS = (Date.now() - startedAt) / 1000;
    if (!ready.every(Boolean)) throw new Error(`nodes not ready: ${ctx.nodes.filter((_, i) => !ready[i]).map((n) => n.name)}`);
    if (cfg.tinyBuffer) for (const k of STANDING_FAULTS[variant]) oracle.fault(k, { node: ctx.nodes.at(-1).name, deliveryBuffer: cfg.tinyBuffer, standing: true });
    log(`${variant} seed=${seed}: ${ctx.nodes.length} node(s) up (${SERVER_BIN}), ${sockets} clients, ${duration}s of faults`);

    // --- workload
    ctx.phase = "run";
    const stagger = 1000 / Math.max(1, sockets);
    const clientRuns = clients.map((c, i) => sleep(i * stagger).then(() => c.run()).catch((err) => {
      ctx.infraErrors.push(`client ${c.name}: ${err.stack ?? err}`);
    }));
    await sleep(800);
    const ingestRuns = ingesters.map((g) => g.run().catch((err) => ctx.infraErrors.push(`ingester ${g.idx}: ${err.stack ?? err}`)));
    const waves = cfg.waves ? waveLoop() : Promise.resolve();
    lane = new FaultLane(ctx, planFaults(rng.fork("faults"), variant));
    if (cfg.faults) await lane.run(Date.now() + duration * 1000);
    else await sleep(duration * 1000);
    figures.faultPhaseS = (Date.now() - startedAt) / 1000;

    // --- settle
    ctx.phase = "settle";
    await waves;
    await lane.restoreAll();
    for (const n of ctx.nodes) if (!(await n.waitReady())) ctx.infraErrors.push(`${n.name} not ready after the faults`);
    ctx.giveUpAt = Date.now() + cfg.settleMs;
    await Promise.all(ingestRuns);
    while (tracked.size) await Promise.all([...tracked]);
    await Promise.all(clientRuns);
    const stableBy = Date.now() + 20000;
    const stable = await Promise.all(clients.map((c) => c.stabilize(stableBy)));
    clients.forEach((c, i) => {
      if (!stable[i]) oracle.violate("client-stuck", { client: c.name, msg: `${c.name} not connected and subscribed to ${[...c.held].join(",")} 20 s into the settle phase (conn ${c.conn?.id}, node ${c.conn?.node.name} ${c.conn?.node.state})` });
    });

    // Markers: one payment per trackingId, and every client still
    // subscribed to it must receive it.
    const heldTids = new Set(clients.flatMap((c) => c.subscribed()));
    const markerTids = [...new Set([...pool, ...heldTids])];
    const markers = markerTids.map((t) => markerMaker.item(t));
    const mreq = oracle.request(markers, "markers");
    await postUntilAccepted(ctx, mreq, rng.fork("markers"));
    const markerId = new Map(markers.map((it) => [it.trackingId, oracle.idOf(it)]));
    const waiting = new Map();
    for (const c of clients) {
      for (const tid of c.subscribed()) {
        const id = markerId.get(tid);
        if (id && !oracle.hasSeen(c.name, tid, id)) waiting.set(`${c.name}\u0000${tid}`, { client: c.name, tid, id });
      }
    }
    figures.markerPairs = clients.reduce((s, c) => s + c.subscribed().length, 0);
    if (waiting.size) {
      // Until every marker arrived; at most markerWaitMs, and no longer
      // than markerIdleMs after the last one that did.
      let done;
      const over = new Promise((r) => { done = r; });
      let idle = setTimeout(done, cfg.markerIdleMs);
      const cap = setTimeout(done, cfg.markerWaitMs);
      oracle.onSeen = (client, tid, id) => {
        const k = `${client}\u0000${tid}`;
        if (waiting.get(k)?.id !== id) return;
        waiting.delete(k);
        clearTimeout(idle);
        idle = setTimeout(done, cfg.markerIdleMs);
        if (waiting.size === 0) done();
      };
      await over;
      clearTimeout(idle);
      clearTimeout(cap);
      oracle.onSeen = null;
    }
    // Diagnostics for missing markers: who listens to those trackingIds'
    // channels in Redis now (the channel names are the server's business:
    // matched by the trackingId), and where their holders are.
    const pubsub = new Map();
    if (waiting.size && ctx.redis) {
      for (const tid of new Set([...waiting.values()].map((w) => w.tid))) {
        const parts = [];
        for (const m of ctx.redis.masters) {
          for (const [list, num] of [["CHANNELS", "NUMSUB"], ["SHARDCHANNELS", "SHARDNUMSUB"]]) {
            const own = (ch) => ch.split(/[^A-Za-z0-9_-]+/).includes(tid); // not ck-c1 in ck-c10
            const chans = (await m.cli("PUBSUB", list, `*${tid}*`).catch(() => "")).split("\n").filter((ch) => ch && own(ch));
            for (const ch of chans) {
              const n = (await m.cli("PUBSUB", num, ch).catch(() => "")).split("\n")[1];
              parts.push(`${m.name} ${ch}: ${n} subscriber(s)`);
            }
          }
        }
        const holders = {};
        for (const c of clients) if (c.subscribed().includes(tid)) holders[c.conn.node.name] = (holders[c.conn.node.name] ?? 0) + 1;
        pubsub.set(tid, `redis pub/sub at settle: ${parts.join("; ") || "no channel of it has a subscriber"}; holders per node ${JSON.stringify(holders)}`);
      }
    }
    for (const w of waiting.values()) oracle.markerMissing(w.client, w.tid, w.id, pubsub.get(w.tid));
    figures.settleS = (Date.now() - startedAt) / 1000 - figures.faultPhaseS;
  } catch (err) {
    ctx.infraErrors.push(`run: ${err.stack ?? err}`);
  } finally {
    ctx.phase = "done";
    const t0 = Date.now();
    for (const c of clients) c.close();
    await Promise.all(ctx.nodes.map((n) => n.stop()));
    ctx.proxy?.release();
    await ctx.proxy?.stop().catch(() => {});
    await ctx.redis?.stop().catch(() => {});
    figures.teardownS = (Date.now() - t0) / 1000;
  }

  tmpdirs.delete(tmp);
  const result = oracle.finish();
  const faultCounts = lane ? lane.counts() : {};
  if (cfg.tinyBuffer) for (const k of STANDING_FAULTS[variant]) faultCounts[k] = "standing";
  Object.assign(figures, {
    seconds: (Date.now() - startedAt) / 1000,
    sockets,
    connections: result.stats.conns,
    requests: result.stats.requests,
    eventsAccepted: result.stats.accepted,
    deliveriesChecked: result.stats.receptions,
    faults: faultCounts,
    connectFailures: ctx.stats.connectFailures,
    waves: waveStats,
    clientOps: clients.reduce((acc, c) => { for (const [k, v] of Object.entries(c.ops)) acc[k] = (acc[k] ?? 0) + v; return acc; }, {}),
  });
  Object.assign(result, { figures, infraErrors: ctx.infraErrors, config: { duration, sockets }, binary: SERVER_BIN });

  if (result.violationCount > 0 || ctx.infraErrors.length > 0) {
    const logDir = path.join(tmp, "logs");
    mkdirSync(logDir, { recursive: true });
    for (const n of ctx.nodes) writeFileSync(path.join(logDir, `${n.name}.log`), n.logs());
    for (const m of [...ctx.redis?.masters ?? [], ...ctx.redis?.sentinels ?? []]) writeFileSync(path.join(logDir, `redis-${m.name}.log`), m.output());
    writeFileSync(path.join(logDir, "report.txt"), `${formatReport(result, { examplesPerKind: 20 })}\n\ninfra errors:\n${ctx.infraErrors.join("\n")}\n`);
    writeFileSync(path.join(logDir, "summary.json"), JSON.stringify({ figures, stats: result.stats, faults: result.faults }, null, 2));
    rmSync(dataDir, { recursive: true, force: true });
    result.logDir = logDir;
  } else {
    rmSync(tmp, { recursive: true, force: true });
  }
  return result;
}

/** One line of figures for t.diagnostic / the CLI. */
export function formatFigures(result) {
  const f = result.figures;
  const s = result.stats;
  return `${result.variant} seed=${result.seed}: ${f.sockets} sockets (${f.connections} connections), ` +
    `${f.eventsAccepted} events accepted in ${f.requests} requests, ${f.deliveriesChecked} deliveries checked ` +
    `(${s.dupReceptions} dup, ${s.inflight} in flight, ${s.rebases} rebased after HISTORY_TRUNCATED, ${s.unknownAmbiguous} unknown-but-ambiguous), ` +
    `faults ${JSON.stringify(f.faults)}, ingest failures ${JSON.stringify(s.attemptFailures)}, CONNECTION_ERROR ${s.connectionErrors}, ` +
    `HISTORY_TRUNCATED ${s.truncPrompted}+${s.truncUnprompted} unprompted, resyncs ${s.resyncs}, ` +
    `${Object.keys(s.notes ?? {}).length ? `notes ${JSON.stringify(s.notes)}, ` : ""}` +
    `${result.violationCount} violations, ${f.seconds.toFixed(1)} s (fault phase ${f.faultPhaseS?.toFixed(1)} s, settle ${f.settleS?.toFixed(1)} s)`;
}
