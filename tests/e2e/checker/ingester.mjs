// Ingesters: post random batches to random live nodes, retry every failed
// request (same body) with back-off until it gets a 202, and deliberately
// post some accepted requests again (dedupe must answer the original ids).

import { INGEST_TOKEN } from "../lib/harness.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Why a fetch failed, in the oracle's words. */
export function classifyFetchError(err) {
  if (err?.name === "TimeoutError" || err?.name === "AbortError") return "timeout";
  const code = err?.cause?.code ?? err?.code;
  if (code === "ECONNREFUSED") return "refused";
  if (code === "ECONNRESET" || code === "UND_ERR_SOCKET" || code === "EPIPE" || code === "UND_ERR_CLOSED") return "reset";
  return `error:${code ?? err?.message ?? err}`;
}

/**
 * Posts `req` (an oracle request) until a 202, or until `ctx.giveUpAt`
 * (set when the settle phase starts) has passed. Returns true on 202.
 * `single` posts a one-item request as an object rather than an array.
 */
export async function postUntilAccepted(ctx, req, rng, { single = false, nodes = null } = {}) {
  const body = JSON.stringify(single && req.items.length === 1 ? req.items[0] : req.items);
  for (let attempt = 0; ; attempt++) {
    if (!req.fault) await ctx.ingestGate();
    const node = nodes ? rng.pick(nodes) : ctx.pickIngestNode(rng);
    const att = ctx.oracle.attemptStart(req, node.name);
    let outcome;
    try {
      const res = await fetch(`${node.url}/v1/payments`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${INGEST_TOKEN}` },
        body,
        signal: AbortSignal.timeout(ctx.cfg.ingestTimeoutMs),
      });
      const text = await res.text();
      let parsed = text;
      try { parsed = JSON.parse(text); } catch { /* not JSON */ }
      outcome = { status: res.status, body: parsed, retryAfter: res.headers.get("retry-after") };
    } catch (err) {
      outcome = { error: classifyFetchError(err) };
    }
    if (ctx.oracle.attemptEnd(att, outcome)) return true;
    if (ctx.phase === "done") return false; // the run ended (aborted): nothing more to check
    if (ctx.giveUpAt !== null && Date.now() > ctx.giveUpAt) {
      ctx.oracle.violate("ingest-stuck", { msg: `request #${req.n} (${req.items.length} items, ${req.label}) got no 202 after ${attempt + 1} attempts; last: ${JSON.stringify(outcome).slice(0, 300)}` });
      return false;
    }
    await sleep(Math.min(2000, 100 * 2 ** Math.min(attempt, 5)) * (0.5 + rng.next()));
  }
}

export class Ingester {
  constructor(ctx, idx) {
    this.ctx = ctx;
    this.idx = idx;
    this.rng = ctx.rng.fork(`ingester-${idx}`); // batches and their contents
    this.chance = ctx.rng.fork(`ingester-${idx}-retry`); // nodes and back-offs
    this.k = 0;
  }

  /** A fresh item for `tid`; amounts are unique per run (they identify an item in a payload). */
  item(tid) {
    const r = this.rng;
    const amount = (this.idx + 1) * 1_000_000_000 + (++this.k) * 1000 + r.int(0, 999);
    const it = {
      trackingId: tid,
      amount,
      timestamp: 1_700_000_000 + r.int(0, 90_000_000),
      status: r.pick(["executed", "executed", "executed", "failed", "pending"]),
    };
    if (r.chance(this.ctx.cfg.idempotencyKeyShare)) it.idempotencyKey = `idem-${r.hex(24)}`;
    else it.signature = r.base58(r.int(86, 88));
    return it;
  }

  async run() {
    const { ctx } = this;
    while (ctx.phase === "run") {
      const r = this.rng;
      const size = r.chance(0.15) ? r.int(11, 50) : r.int(1, 10);
      const items = [];
      for (let i = 0; i < size; i++) items.push(this.item(ctx.pickIngestTid(r)));
      const single = size === 1 && r.chance(0.5);
      const repost = r.chance(ctx.cfg.repostShare);
      const repostDelay = r.int(0, 2500);
      const pause = r.int(ctx.cfg.ingestPauseMinMs, ctx.cfg.ingestPauseMaxMs);
      const req = ctx.oracle.request(items, `ingester ${this.idx}`);
      await ctx.track(postUntilAccepted(ctx, req, this.chance, { single }));
      if (repost) {
        // The same body again after its 202: every entry must answer
        // duplicate with the original id.
        ctx.track(sleep(repostDelay).then(() => postUntilAccepted(ctx, req, this.chance, { single })));
      }
      await sleep(pause);
    }
  }
}
