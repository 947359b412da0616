// One checker run: start a variant's system (Redis / Redis Cluster / none,
// Tidings nodes on fixed ports), drive it with clients and ingesters while
// the fault lane injects faults, settle, and return the oracle's result.

import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort } from "../lib/cluster.mjs";
import { SERVER_BIN, httpGet } from "../lib/harness.mjs";
import { Rng } from "./prng.mjs";
import { Oracle, parseId, formatReport, streamOf } from "./oracle.mjs";
import { Client, FILTERS } from "./client.mjs";
import { Ingester, postUntilAccepted } from "./ingester.mjs";
import { FaultLane, planFaults, STANDING_FAULTS } from "./faults.mjs";
import { TidingsNode } from "./nodes.mjs";
import { startStandalone, startCluster, startClusterReplicas, startSentinelSet, SENTINEL_MASTER } from "./redis.mjs";
import { startRedisProxy } from "../lib/redisproxy.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const STATUSES = ["executed", "failed", "pending"];

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
  opWeights: { idle: 30, subscribe: 14, unsubscribe: 8, forget: 3, unsubDisconnect: 7, moveNode: 5, switchTransport: 5, refilter: 3 },
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
  // Account streams and filters (section 8). false: neither (a server from before issue 18).
  streams: true,
  separator: ":",
  accounts: 3, // trackingIds of accounts a0:, a1:, a2: (three in four of them); the rest of none
  streamHistoryLimit: 50000, // retention does not trim a stream within a run
  streamHolderShare: 0.25, // clients that also hold an account's stream
  filterShare: 0.3, // a name held with a filter
  streamWaveShare: 0.2, // waves on a stream (a burst for its account)
  backfillLimit: 1000,
  filteredBackfillLimit: 150,
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
  const streams = !!cfg.streams;
  if (!streams) cfg.opWeights = { ...cfg.opWeights, refilter: 0 };
  const oracle = new Oracle({ seed, variant, separator: streams ? cfg.separator : null });
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
  // With streams, three in four trackingIds belong to an account
  // (`<prefix>-a1:h4`; one with a second separator, `…:c5:x`, which
  // belongs to the first one's account), the rest to none (one of them
  // begins with the separator: `:<prefix>-c3` belongs to none).
  const sep = cfg.separator;
  const account = (i) => (streams && i % 4 !== 3 ? `${prefix}-a${i % cfg.accounts}${sep}` : null);
  const name = (kind, i) => {
    const a = account(i);
    if (a) return kind === "c" && i === 5 ? `${a}c5${sep}x` : `${a}${kind}${i}`;
    return streams && kind === "c" && i === 3 ? `${sep}${prefix}-c3` : `${prefix}-${kind}${i}`;
  };
  const hot = Array.from({ length: cfg.hot }, (_, i) => name("h", i));
  const cold = Array.from({ length: cfg.cold }, (_, i) => name("c", i));
  const pool = [...hot, ...cold];
  const streamNames = [...new Set(pool.map((t) => streamOf(t, streams ? sep : null)).filter(Boolean))].sort();
  ctx.streamNames = streamNames;
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
    // Streams and filters from a stream of their own (the draws above stay what they were).
    const filters = new Map();
    if (streams) {
      const sr = rng.fork(`setup-streams-${i}`);
      if (sr.chance(cfg.streamHolderShare)) {
        const st = sr.pick(streamNames);
        tids.push(st);
        if (sr.chance(0.7)) initial.push(st);
      }
      for (const t of tids) {
        const f = sr.chance(cfg.filterShare) ? sr.pick(FILTERS.filter(Boolean)) : null;
        if (f) filters.set(t, f);
      }
    }
    clients.push(new Client(ctx, i, tids, initial, filters));
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
  const waveStats = { waves: 0, streamWaves: 0, remounts: 0, resubscribes: 0 };
  async function waveLoop() {
    const wr = rng.fork("waves");
    while (ctx.phase === "run") {
      await sleep(wr.int(cfg.waveEveryMinMs, cfg.waveEveryMaxMs));
      if (ctx.phase !== "run") break;
      const one = wr.chance(0.8) ? wr.pick(hot) : wr.pick(cold);
      const draws = Array.from({ length: clients.length }, () => wr.chance(0.5));
      const n = wr.int(10, 30);
      // Now and then the wave is on the stream of that id's account, with
      // a burst for trackingIds of the account.
      const stream = streams && wr.chance(cfg.streamWaveShare) ? streamOf(one, sep) : null;
      const tid = stream ?? one;
      const inAccount = stream ? pool.filter((t) => streamOf(t, sep) === stream) : null;
      const burst = Array.from({ length: n }, () => waveMaker.item(stream ? wr.pick(inAccount) : tid));
      // The node where most sockets hold that id.
      const holdersOn = (node) => clients.filter((c) => c.conn && !c.conn.closed && c.conn.open && c.conn.node === node && c.conn.subs.get(tid) === "sub");
      const node = ctx.nodes.filter((n) => n.live).map((n) => [n, holdersOn(n).length]).sort((a, b) => b[1] - a[1])[0]?.[0];
      const holders = node ? holdersOn(node) : [];
      if (holders.length < 2) continue;
      waveStats.waves++;
      if (stream) waveStats.streamWaves++;
      // ... while a burst for that id is being delivered.
      ctx.track(postUntilAccepted(ctx, oracle.request(burst, "wave burst"), wr.fork(`w${waveStats.waves}`)));
      for (const c of holders) {
        if (draws[Number(c.name.slice(1))]) { waveStats.remounts++; c.remount(tid, node).catch(() => {}); }
        else { waveStats.resubscribes++; c.ensureSub(tid, { force: true }).catch(() => {}); }
      }
    }
  }

  /**
   * After settling (nothing ingested any more): every stream read back by
   * backfill, whole (pages of backfillLimit from the oldest retained), then
   * twice with a status filter (from the start, and from since = the
   * middle event), in small pages; the oracle compares them with each
   * other and with what subscribers received. The `*` URL-encoded for
   * every other stream.
   */
  async function finalBackfill() {
    const br = rng.fork("backfill");
    const out = { streams: 0, pages: 0 };
    for (const [i, st] of streamNames.entries()) {
      const node = ctx.pickNode(br);
      const get = async (since, limit, status) => {
        let url = `${node.url}/v1/events?trackingId=${encodeURIComponent(st)}&limit=${limit}`;
        if (i % 2) url = url.replace("*", "%2A");
        if (since !== undefined) url += `&since=${encodeURIComponent(since)}`;
        if (status) url += `&status=${status.join(",")}`;
        out.pages++;
        for (let a = 0; ; a++) {
          const res = await httpGet(url, { timeoutMs: 10000 }).catch((err) => ({ status: 0, body: String(err) }));
          if ((res.status === 503 || res.status === 0) && a < 5) { await sleep(500); continue; }
          return res;
        }
      };
      const read = async (from, limit, status) => {
        const pages = [];
        let since = from;
        for (let k = 0; k < 200; k++) {
          const res = await get(since, limit, status);
          pages.push({ since, limit, res });
          const last = Array.isArray(res.body?.data) ? res.body.data.at(-1)?.id : undefined;
          if (res.status !== 200 || !res.body?.hasMore || !last) break;
          since = last;
        }
        return pages;
      };
      const full = await read(undefined, cfg.backfillLimit, null);
      const data = full.flatMap((pg) => (Array.isArray(pg.res.body?.data) ? pg.res.body.data : []));
      const filtered = [];
      for (const since of [undefined, data[Math.floor(data.length / 2)]?.id]) {
        const statuses = [...new Set(br.pick(FILTERS.filter(Boolean)))];
        filtered.push({ statuses, since, pages: await read(since, cfg.filteredBackfillLimit, statuses) });
      }
      oracle.streamBackfill(st, full, filtered);
      out.streams++;
    }
    return out;
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
    if (streams) common.push("--stream-separator", cfg.separator, "--stream-history-limit", String(cfg.streamHistoryLimit));
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

    // Markers: one payment per trackingId and status, and every client
    // still subscribed to it, or to its stream, must receive those its
    // filter matches.
    const heldTids = new Set(clients.flatMap((c) => c.subscribed()).filter((t) => !t.endsWith("*")));
    const markerTids = [...new Set([...pool, ...heldTids])];
    const markers = markerTids.flatMap((t) => STATUSES.map((status) => ({ ...markerMaker.item(t), status })));
    const mreq = oracle.request(markers, "markers");
    await postUntilAccepted(ctx, mreq, rng.fork("markers"));
    const waiting = new Map();
    for (const c of clients) {
      for (const held of c.subscribed()) {
        const filter = oracle.filterOf(c.conn.id, held);
        const isStream = held.endsWith("*");
        for (const m of markers) {
          if ((isStream ? streamOf(m.trackingId, streams ? sep : null) : m.trackingId) !== held) continue;
          if (filter && !filter.includes(m.status)) continue;
          const id = oracle.idOf(m);
          if (!id) continue;
          // A stream's event is known by its payment: trackingId and id.
          const key = isStream ? `${m.trackingId}\u0000${id}` : id;
          if (!oracle.hasSeen(c.name, held, key)) waiting.set(`${c.name}\u0000${held}\u0000${key}`, { client: c.name, tid: held, id: key.replace("\u0000", " ") });
        }
      }
    }
    figures.markerPairs = clients.reduce((s, c) => s + c.subscribed().length, 0);
    figures.markersAwaited = waiting.size;
    if (waiting.size) {
      // Until every marker arrived; at most markerWaitMs, and no longer
      // than markerIdleMs after the last one that did.
      let done;
      const over = new Promise((r) => { done = r; });
      let idle = setTimeout(done, cfg.markerIdleMs);
      const cap = setTimeout(done, cfg.markerWaitMs);
      oracle.onSeen = (client, held, key) => {
        const k = `${client}\u0000${held}\u0000${key}`;
        if (!waiting.has(k)) return;
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
        // The name as it stands in a key: whole (not ck-c1 in ck-c10), or
        // with streams `{<account>}<rest>}` (hash tag = the account).
        const cut = streams ? tid.indexOf(sep) : -1;
        const forms = cut > 0 ? [tid, `${tid.slice(0, cut + 1)}}${tid.slice(cut + 1)}`] : [tid];
        const word = /[A-Za-z0-9_-]/;
        const own = (ch) => forms.some((f) => {
          const j = ch.indexOf(f);
          return j >= 0 && !word.test(ch[j - 1] ?? "") && !word.test(ch[j + f.length] ?? "");
        });
        for (const m of ctx.redis.masters) {
          for (const [list, num] of [["CHANNELS", "NUMSUB"], ["SHARDCHANNELS", "SHARDNUMSUB"]]) {
            const chans = (await m.cli("PUBSUB", list, `*${prefix}*`).catch(() => "")).split("\n").filter((ch) => ch && own(ch));
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
    // Each stream's final history, read back whole, and filtered.
    if (streams) figures.backfill = await finalBackfill();
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
    streams: streams ? streamNames.length : 0,
    streamPayments: streams ? [...oracle.idents.values()].filter((d) => d.ids.size && streamOf(d.item.trackingId, sep)).length : 0,
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
    `${f.streams ? `streams: ${f.streamPayments} payments in ${f.streams} streams, ${s.streamReceptions} stream deliveries ` +
      `(${s.streamEventsKnown} stream events in ${s.streamEpochs} stream epochs known, ${s.streamOrderPairs} order pairs, ` +
      `${s.streamCompleteChecked} payments found in the final histories), ${s.filteredReceptions} filtered deliveries ` +
      `(${s.prevSeqChained} prevSeq chained, ${s.filteredBases} bases, ${s.refilterRestarts} refilter restarts, ` +
      `${s.holeLinksChecked} prevSeq links / ${s.holeSeqsChecked} skipped payments checked), ` +
      `backfill ${s.backfillEvents} events + ${s.backfillFilteredEvents} filtered in ${s.backfillPages} pages, ` : ""}` +
    `${Object.keys(s.notes ?? {}).length ? `notes ${JSON.stringify(s.notes)}, ` : ""}` +
    `${result.violationCount} violations, ${f.seconds.toFixed(1)} s (fault phase ${f.faultPhaseS?.toFixed(1)} s, settle ${f.settleS?.toFixed(1)} s)`;
}
