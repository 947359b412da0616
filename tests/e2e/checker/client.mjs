// A checker client: one logical client (its chains survive its
// connections), running a random program over a few trackingIds and
// reconnecting by itself (socket.io-client with reconnection: false: the
// checker decides when and where).
//
// Every received event goes to the oracle first, in arrival order; the
// client's own control flow (awaiting acks, retrying CONNECTION_ERROR,
// resyncing after a jump) comes after.

import { io } from "socket.io-client";
import { WS_PATH } from "../lib/harness.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * The filters a client draws from (section 8): none, and lists of statuses
 * (a repeat, and all three, among them).
 */
export const FILTERS = [
  null,
  ["executed"],
  ["failed", "pending"],
  ["executed", "failed"],
  ["pending"],
  ["failed"],
  ["pending", "executed", "failed"],
  ["failed", "failed", "executed"],
];

/** The filter at `idx` (mod the list) that differs, as a set of statuses, from `current`. */
export function otherFilter(idx, current) {
  const key = (f) => (f ? [...new Set(f)].sort().join(",") : "");
  for (let k = 0; k < FILTERS.length; k++) {
    const f = FILTERS[(idx + k) % FILTERS.length];
    if (key(f) !== key(current)) return f;
  }
  return null;
}

export const TRANSPORTS = [
  { name: "ws", opts: { transports: ["websocket"] } },
  { name: "polling", opts: { transports: ["polling"] } },
  { name: "upgrade", opts: { transports: ["polling", "websocket"], upgrade: true } },
];

/** One socket.io-client connection to one node. */
class Conn {
  constructor(client, node, transport) {
    this.client = client;
    this.oracle = client.ctx.oracle;
    this.id = `${client.name}#${++client.connN}`;
    this.node = node;
    this.process = node.h; // the node process this connection is to
    this.transport = transport;
    this.pending = []; // { op, tid, resolve, timer }
    this.subs = new Map(); // tid → "sub" | "unsub" (from acks)
    this.inflight = new Map(); // tid → promise of a subscribe in flight
    this.open = false;
    this.closed = false;
    this.planned = false;
    this.socket = io(node.url, {
      path: WS_PATH, forceNew: true, reconnection: false, timeout: client.ctx.cfg.connectTimeoutMs, ...transport.opts,
    });
    this.socket.on("disconnect", (reason) => this.#closed(reason));
    this.socket.onAny((event, payload) => this.#onEvent(event, payload));
  }

  /** Resolves true once connected, false on connect_error / timeout. */
  connect() {
    return new Promise((resolve) => {
      const timer = setTimeout(() => { cleanup(); this.close(); resolve(false); }, this.client.ctx.cfg.connectTimeoutMs + 1000);
      const cleanup = () => { clearTimeout(timer); this.socket.off("connect", ok); this.socket.off("connect_error", bad); };
      const ok = () => {
        cleanup();
        this.open = true;
        this.oracle.connOpen(this.client.name, this.id, this.node.name, this.transport.name);
        this.socket.io.engine?.on("upgrade", (t) => this.oracle.connUpgraded(this.id, `${this.transport.name}→${t?.name ?? "?"}`));
        resolve(true);
      };
      const bad = () => { cleanup(); this.close(); resolve(false); };
      this.socket.once("connect", ok);
      this.socket.once("connect_error", bad);
    });
  }

  #onEvent(event, payload) {
    if (this.closed) return;
    this.oracle.recv(this.id, event, payload);
    if (event === "ack" || (event === "error" && payload?.data?.code !== "HISTORY_TRUNCATED")) {
      const head = this.pending.shift();
      if (!head) return;
      clearTimeout(head.timer);
      if (event === "ack") this.subs.set(head.tid, head.op === "sub" ? "sub" : "unsub");
      head.resolve(event === "ack" ? { ok: true } : { ok: false, code: payload?.data?.code });
    }
  }

  #closed(reason) {
    if (this.closed) return;
    this.closed = true;
    if (this.open) this.oracle.connClose(this.id, reason);
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.resolve({ ok: false, code: "closed" });
    }
    this.client.onConnClosed(this, reason);
  }

  close(reason = "client close") {
    if (!this.closed) {
      try { this.socket.disconnect(); } catch { /* closed */ }
      this.#closed(reason); // no-op if disconnect already reported it
    }
    try { this.socket.io.engine?.close(); } catch { /* closed */ }
  }

  #send(op, tid, payload, extra) {
    if (this.closed || !this.open) return Promise.resolve({ ok: false, code: "closed" });
    return new Promise((resolve) => {
      const head = { op, tid, resolve, timer: null };
      head.timer = setTimeout(() => {
        // No answer in time: a violation; drop this connection to recover.
        const i = this.pending.indexOf(head);
        if (i < 0) return;
        if (this.node.h !== this.process) {
          // The process this connection was to was killed (maybe another
          // started on its port) and the client never noticed (seen once:
          // polling with upgrade, connected 70 ms before the SIGKILL):
          // nobody is left to answer. Not the server's fault; the client
          // reconnects.
          this.oracle.note("no-answer-from-a-killed-node");
          this.close("ack timeout: the node was killed");
          return;
        }
        this.oracle.violate("ack-timeout", {
          client: this.client.name, tid, conn: this.id,
          msg: `no ack/error for ${op} ${tid} within ${this.client.ctx.cfg.ackTimeoutMs} ms (node ${this.node.name}, state ${this.node.state})`,
        });
        this.close("ack timeout");
      }, this.client.ctx.cfg.ackTimeoutMs);
      this.pending.push(head);
      if (op === "sub") this.oracle.subSent(this.id, tid, payload.since, payload.filter?.status);
      else this.oracle.unsubSent(this.id, tid, extra);
      this.socket.emit(op === "sub" ? "subscribe" : "unsubscribe", payload);
    });
  }

  subscribe(tid, since, filter) {
    const payload = { trackingId: tid };
    if (since !== undefined) payload.since = since;
    if (filter) payload.filter = { status: filter };
    return this.#send("sub", tid, payload);
  }

  unsubscribe(tid, extra = {}) {
    return this.#send("unsub", tid, { trackingId: tid }, extra);
  }
}

export class Client {
  /**
   * @param {object} ctx run context: oracle, rng, cfg, phase, pickNode(rng, exclude), nodes
   * @param {number} idx
   * @param {string[]} tids this client's trackingIds (and streams)
   * @param {string[]} initial the ones it subscribes to first
   * @param {Map<string, string[]>} [filters] the filter it subscribes to a name with (none when absent)
   */
  constructor(ctx, idx, tids, initial, filters = new Map()) {
    this.ctx = ctx;
    this.name = `c${idx}`;
    this.program = ctx.rng.fork(`client-${idx}`); // the program: drawn whatever happens
    this.chance = ctx.rng.fork(`client-${idx}-retry`); // back-offs, node picks after failures
    this.tids = tids;
    this.initial = initial;
    this.held = new Set();
    this.filters = filters; // name → statuses: sent with every subscribe to it
    this.conn = null;
    this.connN = 0;
    this.reconnecting = null;
    this.stopped = false;
    this.resyncing = new Set();
    this.ops = {};
  }

  get oracle() { return this.ctx.oracle; }

  /** The program, until the run phase ends. */
  async run() {
    await this.reconnect({ node: this.ctx.pickNode(this.program), transport: this.program.pick(TRANSPORTS) });
    for (const tid of this.initial) {
      this.held.add(tid);
      await this.ensureSub(tid);
    }
    while (this.ctx.phase === "run" && !this.stopped) {
      // Every step draws the same numbers whatever the state, so the
      // program is a function of the seed; what an op does depends on
      // the state (an op that does not apply idles).
      const op = this.program.weighted(this.ctx.cfg.opWeights);
      const tidIdx = this.program.int(0, 1 << 20);
      const nodeIdx = this.program.int(0, 1 << 20);
      const trIdx = this.program.int(0, TRANSPORTS.length - 1);
      const idleMs = this.program.int(50, 1500);
      const gapMs = this.program.int(20, 400);
      const filterIdx = this.program.int(0, 1 << 20);
      this.ops[op] = (this.ops[op] ?? 0) + 1;
      await this.step(op, tidIdx, nodeIdx, trIdx, idleMs, filterIdx);
      await sleep(gapMs);
    }
  }

  async step(op, tidIdx, nodeIdx, trIdx, idleMs, filterIdx = 0) {
    if (this.reconnecting) await this.reconnecting;
    const heldList = [...this.held].sort();
    const tid = this.tids[tidIdx % this.tids.length];
    const heldTid = heldList.length ? heldList[tidIdx % heldList.length] : null;
    const conn = this.conn;
    if (!conn || conn.closed) return;
    switch (op) {
      case "subscribe":
        if (!this.held.has(tid)) this.held.add(tid);
        await this.ensureSub(tid, { force: true }); // repeated on a held id: a subscribe with since again
        return;
      case "refilter": {
        // Subscribe again to a held name with another filter (or none),
        // with since: the server reads the replay again from since with
        // the new filter.
        if (!heldTid) return;
        const f = otherFilter(filterIdx, this.filters.get(heldTid) ?? null);
        if (f) this.filters.set(heldTid, f);
        else this.filters.delete(heldTid);
        await this.ensureSub(heldTid, { force: true });
        return;
      }
      case "unsubscribe":
        if (heldTid && this.held.size > 1) {
          this.held.delete(heldTid);
          await conn.unsubscribe(heldTid);
        }
        return;
      case "forget":
        if (heldTid && this.held.size > 1) {
          this.held.delete(heldTid);
          const r = await conn.unsubscribe(heldTid);
          if (r.ok) this.oracle.forget(this.name, heldTid);
        }
        return;
      case "unsubDisconnect":
        // As the public React example does on unmount: unsubscribe and
        // disconnect at once, without waiting for the ack.
        if (heldTid && this.held.size > 1) {
          this.held.delete(heldTid);
          conn.unsubscribe(heldTid, { thenDisconnect: true });
          conn.planned = true;
          conn.close("unsubscribe then disconnect");
          await this.reconnect({ node: this.ctx.pickNode(this.program, null, nodeIdx), transport: TRANSPORTS[trIdx] });
        }
        return;
      case "moveNode":
        conn.planned = true;
        conn.close("move to another node");
        await this.reconnect({ node: this.ctx.pickNode(this.program, conn.node, nodeIdx), transport: conn.transport });
        return;
      case "switchTransport": {
        conn.planned = true;
        conn.close("switch transport");
        const tr = TRANSPORTS[trIdx] === conn.transport ? TRANSPORTS[(trIdx + 1) % TRANSPORTS.length] : TRANSPORTS[trIdx];
        await this.reconnect({ node: conn.node.live ? conn.node : this.ctx.pickNode(this.program, null, nodeIdx), transport: tr });
        return;
      }
      case "idle":
      default:
        await sleep(idleMs);
    }
  }

  /**
   * Subscribes to `tid` on the current connection (with since = the
   * chain's last id when there is one), retrying CONNECTION_ERROR with a
   * back-off. One subscribe per trackingId in flight; `force` sends a new
   * one even when the id is already subscribed.
   */
  ensureSub(tid, { force = false } = {}) {
    const conn = this.conn;
    if (!conn || conn.closed) return Promise.resolve();
    if (conn.inflight.has(tid)) return conn.inflight.get(tid);
    if (!force && conn.subs.get(tid) === "sub") return Promise.resolve();
    const p = (async () => {
      for (let attempt = 0; attempt < 40; attempt++) {
        if (conn.closed || !this.held.has(tid)) return;
        const r = await conn.subscribe(tid, this.oracle.sinceFor(this.name, tid), this.filters.get(tid));
        if (r.ok || r.code === "closed") return;
        if (r.code === "CONNECTION_ERROR") {
          await sleep(Math.min(2000, 150 * 2 ** Math.min(attempt, 4)) * (0.5 + this.chance.next()));
          continue;
        }
        if (r.code === "INVALID_SINCE") continue; // the chain was dropped: subscribe afresh
        return; // any other error: a violation, recorded by the oracle
      }
    })().finally(() => conn.inflight.delete(tid));
    conn.inflight.set(tid, p);
    return p;
  }

  /** The oracle saw a jump: resubscribe with since = the last id (a careful client). */
  requestResync(tid) {
    if (this.resyncing.has(tid) || this.stopped) return;
    this.resyncing.add(tid);
    (async () => {
      for (let i = 0; i < 5; i++) {
        const conn = this.conn;
        if (!conn || conn.closed || !this.held.has(tid)) break;
        if (conn.inflight.has(tid)) await conn.inflight.get(tid);
        const chain = this.oracle.chains.get(`${this.name}\u0000${tid}`);
        if (!chain?.resync) break;
        await this.ensureSub(tid, { force: true });
      }
    })().finally(() => this.resyncing.delete(tid));
  }

  /**
   * A remount (wave): unsubscribe `tid` and disconnect at once, then
   * connect again (the component mounts again) and subscribe to
   * everything, `tid` included, with since.
   */
  async remount(tid, node) {
    const conn = this.conn;
    if (this.reconnecting || !conn || conn.closed || !this.held.has(tid)) return;
    this.held.delete(tid);
    conn.unsubscribe(tid, { thenDisconnect: true });
    conn.planned = true;
    conn.close("remount (unsubscribe then disconnect)");
    this.held.add(tid);
    await this.reconnect({ node, transport: conn.transport });
  }

  onConnClosed(conn, reason) {
    if (conn !== this.conn || conn.planned || this.stopped) return;
    // Unplanned (node killed, transport error, ack timeout): move to a live node after a short back-off.
    this.reconnect({ reason });
  }

  /**
   * Opens a new connection (to `node` if live, else a random live node),
   * with a random back-off between attempts, then subscribes again to
   * everything held, with since.
   */
  reconnect({ node, transport, reason } = {}) {
    if (this.reconnecting) return this.reconnecting;
    this.reconnecting = (async () => {
      const old = this.conn;
      if (old && !old.closed) { old.planned = true; old.close("reconnect"); }
      const cfg = this.ctx.cfg;
      for (let attempt = 0; !this.stopped; attempt++) {
        if (reason || attempt > 0) await sleep(this.chance.int(cfg.backoffMinMs, cfg.backoffMaxMs) * Math.min(4, 1 + attempt));
        // The node asked for, if it is up; else (and after a failed attempt) a random live one.
        const target = node && node.live && attempt === 0 ? node : this.ctx.pickNode(this.chance);
        const tr = transport ?? this.chance.pick(TRANSPORTS);
        const c = new Conn(this, target, tr);
        this.conn = c;
        if (await c.connect()) break;
        this.ctx.stats.connectFailures++;
        if (this.ctx.phase === "done") return;
      }
      const conn = this.conn;
      await Promise.all([...this.held].map((tid) => this.ensureSub(tid)));
      return conn;
    })().finally(() => { this.reconnecting = null; });
    return this.reconnecting;
  }

  /** Settle: connected, and every held trackingId acked on the connection (bounded). */
  async stabilize(deadline) {
    while (Date.now() < deadline && !this.stopped) {
      if (this.reconnecting) await this.reconnecting;
      const conn = this.conn;
      if (!conn || conn.closed || !conn.open) { await this.reconnect({ reason: "settle" }); continue; }
      const missing = [...this.held].filter((t) => conn.subs.get(t) !== "sub");
      if (missing.length === 0) return true;
      await Promise.all(missing.map((t) => this.ensureSub(t)));
      if (missing.every((t) => conn.subs.get(t) === "sub")) return true;
      await sleep(200);
    }
    return false;
  }

  /** The trackingIds acked on the current connection. */
  subscribed() {
    const conn = this.conn;
    if (!conn || conn.closed) return [];
    return [...this.held].filter((t) => conn.subs.get(t) === "sub");
  }

  close() {
    this.stopped = true;
    if (this.conn) { this.conn.planned = true; this.conn.close("end of run"); }
  }
}
