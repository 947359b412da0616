// The oracle: a pure checker (no I/O) fed with everything the checker sends
// and receives, that collects every departure from the wire contract.
//
// Inputs:
//   - ingest: each request's items, each attempt's outcome (202 body, 503,
//     timeout, refused ...);
//   - clients: per connection, the subscribe/unsubscribe commands sent and
//     every event received, in arrival order;
//   - faults: when storage may have lost data (`dataLoss`), and the fault
//     timeline, for the report.
//
// Rules (see README.md for the prose):
//   1. never the same id twice (ingest answers; and every reception of one
//      id is deep-equal);
//   2. byte-identical, nothing invented (received envelope = posted item +
//      accepted id/seq; unknown ids only for items with an ambiguous attempt
//      followed by a storage loss);
//   3. order and completeness per (client, trackingId) chain, across that
//      client's subscriptions and connections;
//   4. completeness after settling (markers).
//
// The oracle also keeps, per (client, trackingId), the chain a careful
// client keeps (its last id, for `since`), and asks the client to resync
// (resubscribe with since = its last id) after a jump.

import { isDeepStrictEqual } from "node:util";

export const VIOLATION_KINDS = {
  "id-reissued": "ingest returned one event id for two different payments",
  "dedupe-mismatch": "a duplicate answer gave another id than the payment's original one (no storage loss in between)",
  "dedupe-miss": "a payment already accepted was stored again as new (no storage loss in between)",
  "epoch-regress": "a new event's epoch is below one ingest had answered for that trackingId before the request was sent",
  "ingest-shape": "malformed ingest answer (202 entries, 503 body/Retry-After)",
  "ingest-status": "ingest answered an unexpected HTTP status",
  "ingest-stuck": "a request never got a 202 by the end of the settle phase",
  envelope: "malformed payment/ack/error envelope",
  "content-mismatch": "a received payment differs from the item posted / the seq accepted for its id",
  "reception-mismatch": "two receptions of one event id differ (data, seq or envelope timestamp)",
  "unknown-id": "a received event id was never returned by ingest (and no ambiguous attempt + storage loss explains it)",
  invented: "a received payment matches no posted item",
  gap: "seq jumped past last + 1 without HISTORY_TRUNCATED",
  order: "an unseen event at or below the chain's last seq (not in flight)",
  "epoch-change": "a payment of another epoch without HISTORY_TRUNCATED",
  "after-unsubscribe": "a payment after the unsubscribe ack and before the next subscribe ack",
  unsolicited: "a payment for a trackingId the connection had not (yet) been acked a subscribe for",
  "invalid-since": "INVALID_SINCE for a since the server itself issued",
  "error-code": "an error code other than HISTORY_TRUNCATED / CONNECTION_ERROR",
  protocol: "ack/error not matching the commands sent, or an unattributable HISTORY_TRUNCATED",
  "ack-timeout": "no ack/error for a subscribe/unsubscribe within the timeout",
  "marker-missing": "a client still subscribed at the end did not receive the settle marker",
  "node-crash": "a Tidings node exited without being killed",
  "client-stuck": "a client could not connect/subscribe to a live node within the settle bounds",
  "delivery-stalled": "a live payment was held back on a node while a subscribe there waited for Redis",
};

const MAX_KEPT_PER_KIND = 40;

/** `<epoch>-<seq>` → {epoch, seq}, or null when it is not one. */
export function parseId(id) {
  if (typeof id !== "string") return null;
  const m = /^(\d{1,16})-(\d{1,16})$/.exec(id);
  if (!m) return null;
  const epoch = Number(m[1]);
  const seq = Number(m[2]);
  if (!Number.isSafeInteger(epoch) || !Number.isSafeInteger(seq) || seq < 1) return null;
  return { epoch, seq };
}

/** JSON with sorted keys: equal strings ⇔ deep-equal JSON values. */
export function canon(v) {
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canon).join(",")}]`;
  return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canon(v[k])}`).join(",")}}`;
}

/** The `data` a payment envelope must carry for a posted item. */
export function expectedData(item) {
  const d = { trackingId: item.trackingId, amount: item.amount, timestamp: item.timestamp, status: item.status };
  if (item.signature !== undefined && item.signature !== null) d.signature = item.signature;
  return d;
}

/** The payment's identity for idempotency: (trackingId, idempotencyKey) else (trackingId, signature). */
export function identityKey(item) {
  const k = item.idempotencyKey !== undefined && item.idempotencyKey !== null
    ? `k:${item.idempotencyKey}` : `s:${item.signature}`;
  return `${item.trackingId}\u0000${k}`;
}

const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const sameKeys = (obj, keys) => {
  const k = Object.keys(obj).sort();
  return k.length === keys.length && [...keys].sort().every((x, i) => x === k[i]);
};
const fmtPos = (p) => (p ? `${p.id ?? "null"}/${p.seq}` : "none");
const short = (s, n = 300) => (s.length > n ? `${s.slice(0, n)}…` : s);

export class Oracle {
  /**
   * @param {object} o
   * @param {number} o.seed
   * @param {string} o.variant
   * @param {() => number} [o.clock] ms since the run started (for traces)
   * @param {() => number} [o.wallClock] ms since the Unix epoch (envelope timestamps)
   * @param {number} [o.traceLen]
   */
  constructor({ seed = 0, variant = "synthetic", clock, wallClock = () => Date.now(), traceLen = 20 } = {}) {
    this.seed = seed;
    this.variant = variant;
    const t0 = performance.now();
    this.clock = clock ?? (() => performance.now() - t0);
    this.wallClock = wallClock;
    this.startedWall = wallClock();
    this.wallStart = Date.now() - this.clock(); // t=0 of traces, for matching node logs
    this.traceLen = traceLen;
    this.traceAll = !!process.env.TIDINGS_CHECKER_TRACE_ALL; // keep whole traces (debugging small runs)
    /** Called (client, tid) when a chain needs a resubscribe with since. */
    this.onResync = null;
    /** Called (client, tid, id) when a chain accepted an id. */
    this.onSeen = null;

    this.loss = 0; // storage-loss counter
    this.lossWindow = false; // a failover in progress: what storage acknowledges now may be lost
    this.faults = [];
    this.violations = new Map(); // kind → {count, items: []}
    this.notes = new Map(); // kind → count (suspicious but allowed)
    this.stats = {
      requests: 0, attempts: 0, accepted: 0, dupAnswers: 0,
      attemptFailures: {}, // kind → count
      receptions: 0, dupReceptions: 0, inflight: 0, chained: 0, rebases: 0, unchained: 0,
      truncPrompted: 0, truncUnprompted: 0, truncIgnored: 0,
      connectionErrors: 0, resyncs: 0, resyncsDone: 0,
      unknownAmbiguous: 0, positionAcks: 0, positionlessAcks: 0,
      subsSent: 0, unsubsSent: 0, acks: 0, conns: 0,
    };

    // ingest side
    this.reqN = 0;
    this.idents = new Map(); // identityKey → ident
    this.byAmount = new Map(); // tid \0 amount → ident
    this.idOwner = new Map(); // tid \0 id → ident
    this.maxEpoch = new Map(); // tid → highest epoch answered
    // receive side
    this.conns = new Map(); // connId → conn
    this.chains = new Map(); // client \0 tid → chain
    this.clientTids = new Map(); // client → Set(tid)
    this.firstRecv = new Map(); // tid \0 id → {env, canon, client}
    this.mismatchReported = new Set();
    this.positionMode = null; // true once an ack carried position, false once one did not
  }

  // ---------------------------------------------------------------------
  // Faults
  // ---------------------------------------------------------------------

  /** Records a fault (for the report); returns the record so `end` can be filled in. */
  fault(kind, detail = {}) {
    const rec = { t: this.clock(), kind, ...detail };
    this.faults.push(rec);
    return rec;
  }

  /** Storage may have lost data from now on (wipe, rollback, memory restart). */
  dataLoss(what) {
    this.loss++;
    this.fault("data-loss", { what, loss: this.loss });
  }

  /**
   * A failover begins (a loss now), and until lossWindowEnd() what storage
   * acknowledges may be lost as well: the old master goes on accepting
   * writes after a replica was promoted, until it is demoted, and nodes
   * that have not switched yet write there. A payment first accepted in the
   * window may later be stored again as new (like one accepted before a
   * loss); the end is a loss too (the old master's writes are discarded).
   */
  lossWindowBegin(what) {
    this.dataLoss(what);
    this.lossWindow = true;
  }

  lossWindowEnd(what) {
    this.lossWindow = false;
    this.dataLoss(what);
  }

  // ---------------------------------------------------------------------
  // Violations
  // ---------------------------------------------------------------------

  violate(kind, { client, tid, msg, conn }) {
    if (!(kind in VIOLATION_KINDS)) throw new Error(`unknown violation kind ${kind}`);
    let v = this.violations.get(kind);
    if (!v) this.violations.set(kind, (v = { count: 0, items: [] }));
    v.count++;
    if (v.items.length < MAX_KEPT_PER_KIND) {
      const chain = client !== undefined && tid !== undefined ? this.chains.get(`${client}\u0000${tid}`) : null;
      v.items.push({
        kind, t: this.clock(), client, tid, conn, msg,
        trace: chain ? chain.trace.slice(-this.traceLen) : null,
        chain, at: chain ? chain.traceCount : 0,
      });
    }
  }

  note(kind) {
    this.notes.set(kind, (this.notes.get(kind) ?? 0) + 1);
  }

  violationCount() {
    let n = 0;
    for (const v of this.violations.values()) n += v.count;
    return n;
  }

  // ---------------------------------------------------------------------
  // Ingest
  // ---------------------------------------------------------------------

  /** Registers a request (one body, possibly posted several times). */
  request(items, label = "batch") {
    this.stats.requests++;
    const req = { n: ++this.reqN, label, items, idents: [], accepted: false };
    for (const item of items) {
      const key = identityKey(item);
      let ident = this.idents.get(key);
      if (!ident) {
        ident = { key, item, ids: new Map(), firstLoss: null, ambiguousLoss: Infinity };
        this.idents.set(key, ident);
        const ak = `${item.trackingId}\u0000${item.amount}`;
        const other = this.byAmount.get(ak);
        if (other && other !== ident) throw new Error(`checker bug: amount ${item.amount} reused for ${item.trackingId}`);
        this.byAmount.set(ak, ident);
      }
      req.idents.push(ident);
    }
    return req;
  }

  attemptStart(req, node = "?") {
    this.stats.attempts++;
    const epochSnap = new Map();
    for (const item of req.items) epochSnap.set(item.trackingId, this.maxEpoch.get(item.trackingId));
    return { req, node, t: this.clock(), loss: this.loss, window: this.lossWindow, epochSnap };
  }

  /**
   * An attempt's outcome: `{status, body, retryAfter}` for an HTTP answer,
   * `{error: "timeout" | "refused" | "reset" | string}` for none.
   */
  attemptEnd(att, outcome) {
    const { req } = att;
    const ambiguous = () => {
      for (const ident of req.idents) ident.ambiguousLoss = Math.min(ident.ambiguousLoss, att.loss);
    };
    const fail = (kind) => { this.stats.attemptFailures[kind] = (this.stats.attemptFailures[kind] ?? 0) + 1; };
    if (outcome.error !== undefined) {
      fail(outcome.error);
      if (outcome.error !== "refused") ambiguous();
      return false;
    }
    if (outcome.status === 503) {
      fail("503");
      ambiguous();
      const code = outcome.body?.error?.code;
      if (code !== "UNAVAILABLE" || !outcome.retryAfter) {
        this.violate("ingest-shape", { msg: `503 must carry code UNAVAILABLE and Retry-After; got code ${JSON.stringify(code)}, Retry-After ${JSON.stringify(outcome.retryAfter)} (req #${req.n} to ${att.node})` });
      }
      return false;
    }
    if (outcome.status !== 202) {
      fail(String(outcome.status));
      ambiguous();
      this.violate("ingest-status", { msg: `req #${req.n} to ${att.node}: HTTP ${outcome.status} ${short(JSON.stringify(outcome.body) ?? "")}` });
      return false;
    }
    const data = outcome.body?.data;
    if (!Array.isArray(data) || data.length !== req.items.length) {
      this.violate("ingest-shape", { msg: `req #${req.n}: 202 body must have data[${req.items.length}], got ${short(JSON.stringify(outcome.body) ?? "")}` });
      ambiguous();
      return true; // accepted, even if we cannot read it
    }
    req.accepted = true;
    data.forEach((e, i) => this.#acceptEntry(att, req.idents[i], e, i));
    return true;
  }

  #acceptEntry(att, ident, e, index) {
    const { item } = ident;
    const tid = item.trackingId;
    const p = isObj(e) ? parseId(e.id) : null;
    if (!isObj(e) || !sameKeys(e, ["id", "seq", "trackingId", "duplicate"]) || !p || e.seq !== p.seq
      || e.trackingId !== tid || typeof e.duplicate !== "boolean") {
      this.violate("ingest-shape", { tid, msg: `req #${att.req.n} entry ${index}: expected {id,seq,trackingId:${JSON.stringify(tid)},duplicate} with seq = the id's seq, got ${JSON.stringify(e)}` });
      return;
    }
    const key = `${tid}\u0000${e.id}`;
    const owner = this.idOwner.get(key);
    if (owner && owner !== ident) {
      this.violate("id-reissued", {
        tid,
        msg: `id ${e.id} of ${tid} answered for two payments: first amount=${owner.item.amount} ${owner.key.split("\u0000")[1].slice(0, 14)}…, now amount=${item.amount} ${ident.key.split("\u0000")[1].slice(0, 14)}… (req #${att.req.n} via ${att.node}, duplicate=${e.duplicate})`,
      });
    }
    if (!owner) this.idOwner.set(key, ident);
    // After a storage loss, a payment accepted before it may be stored again
    // under a new id (its dedupe key was lost too): only then is a second
    // id, or a second "new" answer, allowed.
    const relaxed = (ident.firstLoss !== null && this.loss > ident.firstLoss) || ident.windowed;
    if (ident.ids.size > 0 && !relaxed && (!e.duplicate || !ident.ids.has(e.id))) {
      this.violate(e.duplicate ? "dedupe-mismatch" : "dedupe-miss", {
        tid,
        msg: `payment amount=${item.amount} of ${tid} was accepted as ${[...ident.ids.keys()].join(",")}; req #${att.req.n} via ${att.node} now answers ${e.id} duplicate=${e.duplicate}`,
      });
    }
    if (!e.duplicate) {
      const snap = att.epochSnap.get(tid);
      if (snap !== undefined && p.epoch < snap && (att.window || this.lossWindow)) {
        // During a failover a node not yet switched still writes to the old
        // master (the old history) after another wrote a new epoch on the
        // new one; the old master's writes are discarded when it is demoted.
        this.note("old-epoch-during-failover");
      } else if (snap !== undefined && p.epoch < snap) {
        this.violate("epoch-regress", { tid, msg: `new event ${e.id} of ${tid} (req #${att.req.n} via ${att.node}) has an epoch below ${snap}, answered before the request was sent` });
      }
      this.stats.accepted++;
    } else {
      this.stats.dupAnswers++;
    }
    if (!ident.ids.has(e.id)) ident.ids.set(e.id, p.seq);
    if (ident.firstLoss === null) {
      ident.firstLoss = att.loss;
      // Accepted during a failover: possibly on the branch that is discarded.
      if (att.window || this.lossWindow) ident.windowed = true;
    }
    if (!(this.maxEpoch.get(tid) >= p.epoch)) this.maxEpoch.set(tid, p.epoch);
  }

  /** The accepted id of an item (its first), or undefined. */
  idOf(item) {
    const ident = this.idents.get(identityKey(item));
    return ident && ident.ids.size ? [...ident.ids.keys()].at(-1) : undefined;
  }

  // ---------------------------------------------------------------------
  // Clients
  // ---------------------------------------------------------------------

  chain(client, tid) {
    const key = `${client}\u0000${tid}`;
    let c = this.chains.get(key);
    if (!c) {
      c = {
        client, tid, last: null, unset: false, truncated: false, resync: null, seen: new Set(),
        ackPos: null, dropped: false, trace: [], resyncs: 0,
      };
      this.chains.set(key, c);
      let set = this.clientTids.get(client);
      if (!set) this.clientTids.set(client, (set = new Set()));
      set.add(tid);
    }
    return c;
  }

  #trace(chain, conn, text, payRun = null) {
    const tag = conn ? `${conn.id} ${conn.node}/${conn.transport}` : chain.client;
    const stamp = `+${(this.clock() / 1000).toFixed(3)}s [${tag}]`;
    // Contiguous payments on one connection collapse into one line.
    const run = chain.run;
    if (payRun && run && run.conn === conn?.id && chain.trace.at(-1) === run.line) {
      run.n++;
      run.line = `${run.stamp} payments ${run.first} … ${payRun} (${run.n})`;
      chain.trace[chain.trace.length - 1] = run.line;
      return;
    }
    const line = `${stamp} ${text}`;
    chain.trace.push(line);
    chain.traceCount = (chain.traceCount ?? 0) + 1;
    chain.run = payRun ? { conn: conn?.id, stamp, first: payRun, n: 1, line } : null;
    if (chain.trace.length > this.traceLen * 3 && !this.traceAll) chain.trace.splice(0, chain.trace.length - this.traceLen);
  }

  #traceClient(client, conn, text) {
    for (const tid of this.clientTids.get(client) ?? []) this.#trace(this.chains.get(`${client}\u0000${tid}`), conn, text);
  }

  /** The since a careful client passes for `tid`: its last id, or undefined. */
  sinceFor(client, tid) {
    const c = this.chains.get(`${client}\u0000${tid}`);
    if (!c || c.dropped || !c.last || c.last.id === null) return undefined;
    return c.last.id;
  }

  /** Whether the (client, tid) chain accepted `id`. */
  hasSeen(client, tid, id) {
    return this.chains.get(`${client}\u0000${tid}`)?.seen.has(id) ?? false;
  }

  /** The client forgets what it knew of `tid` (its next subscribe has no since). */
  forget(client, tid) {
    const c = this.chains.get(`${client}\u0000${tid}`);
    if (!c) return;
    c.last = null; c.unset = false; c.truncated = false; c.resync = null; c.dropped = false; c.ackPos = null;
    this.#trace(c, null, "forgets this trackingId (next subscribe without since)");
  }

  connOpen(client, connId, node, transport) {
    this.stats.conns++;
    const conn = { id: connId, client, node, transport, pending: [], subs: new Map(), lastAck: null, lastWasAckOf: null, closed: false };
    this.conns.set(connId, conn);
    this.#traceClient(client, conn, "connected");
    return conn;
  }

  connUpgraded(connId, transport) {
    const conn = this.conns.get(connId);
    if (conn) conn.transport = transport;
  }

  connClose(connId, reason) {
    const conn = this.conns.get(connId);
    if (!conn || conn.closed) return;
    conn.closed = true;
    conn.pending.length = 0;
    for (const [tid, st] of conn.subs) {
      if (st === "sub") {
        const c = this.chains.get(`${conn.client}\u0000${tid}`);
        if (c) c.ackPos = null;
      }
    }
    this.#traceClient(conn.client, conn, `disconnected (${reason})`);
    this.conns.delete(connId);
  }

  subSent(connId, tid, since) {
    const conn = this.conns.get(connId);
    if (!conn) return;
    this.stats.subsSent++;
    conn.pending.push({ op: "sub", tid, since });
    const c = this.chain(conn.client, tid);
    this.#trace(c, conn, `subscribe since=${since ?? "-"}${c.resync ? " (resync)" : ""}`);
  }

  unsubSent(connId, tid, { thenDisconnect = false } = {}) {
    const conn = this.conns.get(connId);
    if (!conn) return;
    this.stats.unsubsSent++;
    conn.pending.push({ op: "unsub", tid });
    const c = this.chain(conn.client, tid);
    this.#trace(c, conn, `unsubscribe${thenDisconnect ? " + disconnect at once" : ""}`);
  }

  /** Whether `tid` is acked-subscribed on the connection. */
  isSubscribed(connId, tid) {
    return this.conns.get(connId)?.subs.get(tid) === "sub";
  }

  /** Everything a connection receives, in arrival order. */
  recv(connId, event, payload) {
    const conn = this.conns.get(connId);
    if (!conn) return;
    if (event === "payment") this.#onPayment(conn, payload);
    else if (event === "ack") this.#onAck(conn, payload);
    else if (event === "error") this.#onError(conn, payload);
    else this.violate("protocol", { client: conn.client, conn: conn.id, msg: `unexpected event ${JSON.stringify(event)}: ${short(JSON.stringify(payload) ?? "")}` });
  }

  #isMillis(ts) {
    return Number.isSafeInteger(ts) && ts > this.startedWall - 3600_000 && ts < this.wallClock() + 600_000;
  }

  #onAck(conn, env) {
    this.stats.acks++;
    const { client } = conn;
    if (!isObj(env) || env.type !== "ack" || typeof env.data !== "string" || !this.#isMillis(env.timestamp)
      || !Object.keys(env).every((k) => ["type", "data", "timestamp", "position"].includes(k))) {
      this.violate("envelope", { client, conn: conn.id, msg: `malformed ack ${short(JSON.stringify(env) ?? "")}` });
      if (!isObj(env) || typeof env.data !== "string") return;
    }
    const head = conn.pending.shift();
    if (!head) {
      this.violate("protocol", { client, conn: conn.id, msg: `ack with no command pending: ${JSON.stringify(env)}` });
      return;
    }
    const text = head.op === "sub" ? `Subscribed to trackingId: ${head.tid}` : `Unsubscribed from trackingId: ${head.tid}`;
    const c = this.chain(client, head.tid);
    if (env.data !== text) {
      this.violate("protocol", { client, tid: head.tid, conn: conn.id, msg: `expected ack "${text}" (commands are answered in order), got ${JSON.stringify(env)}` });
      return;
    }
    conn.lastWasAckOf = null;
    if (head.op === "unsub") {
      if ("position" in env) this.violate("envelope", { client, tid: head.tid, conn: conn.id, msg: `unsubscribe ack must not carry position: ${JSON.stringify(env)}` });
      conn.subs.set(head.tid, "unsub");
      conn.lastAck = { tid: head.tid, since: undefined, op: "unsub" };
      this.#trace(c, conn, "ack unsubscribe");
      return;
    }
    let pos = null;
    if ("position" in env) {
      this.stats.positionAcks++;
      const P = env.position;
      const ok = isObj(P) && sameKeys(P, ["id", "seq"]) && (
        (P.id === null && P.seq === 0) || (parseId(P.id)?.seq === P.seq));
      if (!ok) {
        this.violate("envelope", { client, tid: head.tid, conn: conn.id, msg: `bad ack position ${JSON.stringify(P)}: {id: "<epoch>-<seq>", seq} or {id: null, seq: 0}` });
      } else {
        pos = P.id === null ? { epoch: null, seq: 0, id: null } : { ...parseId(P.id), id: P.id };
      }
      if (this.positionMode === false) this.violate("envelope", { client, tid: head.tid, conn: conn.id, msg: "some subscribe acks carry position, some do not" });
      this.positionMode = true;
    } else {
      // Leniency for servers that predate `position` (the old binary): the
      // ack carries no position, and a fresh chain restarts at the first
      // payment instead.
      this.stats.positionlessAcks++;
      if (this.positionMode === true) this.violate("envelope", { client, tid: head.tid, conn: conn.id, msg: `subscribe ack without position: ${JSON.stringify(env)}` });
      this.positionMode = false;
    }
    conn.subs.set(head.tid, "sub");
    conn.lastAck = { tid: head.tid, since: head.since, op: "sub" };
    conn.lastWasAckOf = head.since !== undefined ? head.tid : null;
    // In flight: an unseen payment at or below the position may still come
    // (published before the subscription took effect). After a subscribe
    // with since, the replay covers (since, position] in order, so only
    // what is at or below since itself may still be in flight.
    const sinceP = head.since !== undefined ? parseId(head.since) : null;
    c.ackPos = !pos || pos.id === null ? null
      : head.since === undefined ? { epoch: pos.epoch, seq: pos.seq }
        : sinceP && sinceP.epoch === pos.epoch ? { epoch: pos.epoch, seq: Math.min(pos.seq, sinceP.seq) } : null;
    if (head.since === undefined) {
      c.resync = null; c.truncated = false; c.dropped = false;
      if (pos) { c.last = pos; c.unset = false; } else { c.last = null; c.unset = true; }
      if (pos && pos.id !== null && c.maxSeen && c.maxSeen.epoch === pos.epoch && pos.seq < c.maxSeen.seq) {
        // The contract's position is the last event stored; this client
        // already received a later one of that history.
        this.note("fresh-position-below-an-id-received");
      }
      this.#trace(c, conn, `ack subscribe (fresh) position=${fmtPos(pos)}`);
    } else {
      const s = parseId(head.since);
      if (pos && pos.id !== null && s && pos.epoch === s.epoch && pos.seq < s.seq) this.note("position-behind-since");
      if (c.resync && this.#covers(s, c.last)) {
        c.resync = null;
        this.stats.resyncsDone++;
      }
      this.#trace(c, conn, `ack subscribe since=${head.since} position=${fmtPos(pos)}; chain continues from ${c.last?.id ?? "-"}`);
    }
  }

  /** Whether a replay after `since` covers everything after `last`. */
  #covers(since, last) {
    if (!since || !last || last.id === null) return true;
    return since.epoch === last.epoch && since.seq <= last.seq;
  }

  #onError(conn, env) {
    const { client } = conn;
    if (!isObj(env) || env.type !== "error" || !isObj(env.data) || typeof env.data.code !== "string"
      || typeof env.data.message !== "string" || !this.#isMillis(env.timestamp) || !sameKeys(env, ["type", "data", "timestamp"])) {
      this.violate("envelope", { client, conn: conn.id, msg: `malformed error ${short(JSON.stringify(env) ?? "")}` });
      if (!isObj(env) || !isObj(env.data)) return;
    }
    const code = env.data.code;
    if (code === "HISTORY_TRUNCATED") {
      // New servers name the trackingId in data.trackingId; the old one
      // does not (leniency: then it belongs to the subscribe-with-since
      // acked just before, the only place the old server sends it).
      let tid = typeof env.data.trackingId === "string" ? env.data.trackingId : null;
      const prompted = conn.lastWasAckOf !== null && (tid === null || tid === conn.lastWasAckOf);
      if (tid === null && conn.lastAck && conn.lastAck.op === "sub" && conn.lastAck.since !== undefined) tid = conn.lastAck.tid;
      conn.lastWasAckOf = null;
      if (tid === null) {
        this.violate("protocol", { client, conn: conn.id, msg: `HISTORY_TRUNCATED that names no trackingId and follows no subscribe-with-since ack: ${JSON.stringify(env)}` });
        return;
      }
      const held = conn.subs.get(tid) === "sub" || conn.pending.some((p) => p.op === "sub" && p.tid === tid);
      const c = this.chains.get(`${client}\u0000${tid}`);
      if (!held || !c) {
        this.stats.truncIgnored++;
        if (c) this.#trace(c, conn, "HISTORY_TRUNCATED (not held: ignored)");
        return;
      }
      if (prompted) this.stats.truncPrompted++; else this.stats.truncUnprompted++;
      c.truncated = true;
      this.#trace(c, conn, `error HISTORY_TRUNCATED (${prompted ? "after the since ack" : "unprompted"})`);
      return;
    }
    conn.lastWasAckOf = null;
    const head = conn.pending.shift();
    if (!head) {
      this.violate("protocol", { client, conn: conn.id, msg: `error with no command pending: ${JSON.stringify(env)}` });
      return;
    }
    const c = this.chain(client, head.tid);
    this.#trace(c, conn, `error ${code} for ${head.op === "sub" ? `subscribe since=${head.since ?? "-"}` : "unsubscribe"}`);
    if (code === "CONNECTION_ERROR") {
      this.stats.connectionErrors++;
      return;
    }
    if (code === "INVALID_SINCE" && head.op === "sub" && head.since !== undefined) {
      this.violate("invalid-since", { client, tid: head.tid, conn: conn.id, msg: `INVALID_SINCE for since=${head.since}, an id this server issued: ${env.data.message}` });
      c.dropped = true; // the client falls back to a subscribe without since
      return;
    }
    this.violate("error-code", { client, tid: head.tid, conn: conn.id, msg: `unexpected error ${JSON.stringify(env.data)} for ${head.op}` });
  }

  #onPayment(conn, env) {
    const { client } = conn;
    conn.lastWasAckOf = null;
    const p = isObj(env) ? parseId(env.id) : null;
    if (!isObj(env) || !sameKeys(env, ["type", "id", "seq", "data", "timestamp"]) || env.type !== "payment_notification"
      || !p || env.seq !== p.seq || !isObj(env.data) || typeof env.data.trackingId !== "string" || !this.#isMillis(env.timestamp)) {
      this.violate("envelope", { client, conn: conn.id, msg: `malformed payment envelope (keys exactly type,id,seq,data,timestamp; seq = the id's seq; timestamp ms): ${short(JSON.stringify(env) ?? "")}` });
      return;
    }
    const tid = env.data.trackingId;
    this.stats.receptions++;
    const key = `${tid}\u0000${env.id}`;
    const cs = canon(env);
    const first = this.firstRecv.get(key);
    if (!first) {
      this.firstRecv.set(key, { env, canon: cs, client });
    } else if (first.canon !== cs && !this.mismatchReported.has(`${key}\u0000${client}`)) {
      this.mismatchReported.add(`${key}\u0000${client}`);
      this.violate("reception-mismatch", { client, tid, conn: conn.id, msg: `id ${env.id} received as ${short(cs)} but ${first.client} received ${short(first.canon)}` });
    }
    const state = conn.subs.get(tid);
    const c = this.chains.get(`${client}\u0000${tid}`);
    if (state !== "sub") {
      if (c) this.#trace(c, conn, `payment ${env.id} while ${state === "unsub" ? "unsubscribed (acked)" : "not (yet) subscribed"}`);
      this.violate(state === "unsub" ? "after-unsubscribe" : "unsolicited", {
        client, tid, conn: conn.id,
        msg: `payment ${env.id} for ${tid} ${state === "unsub" ? "after the unsubscribe ack" : "before any subscribe ack on this connection"}`,
      });
      return;
    }
    this.#chainStep(conn, c ?? this.chain(client, tid), env.id, p);
  }

  #chainStep(conn, c, id, p) {
    const { client, tid } = c;
    if (c.seen.has(id)) {
      this.stats.dupReceptions++;
      // Already had, but the chain's next (a fresh subscribe restarted the
      // chain at a position below what the client had): the chain moves on.
      const L = c.last;
      if (!c.resync && !c.truncated && L && L.epoch === p.epoch && p.seq === L.seq + 1) {
        c.last = { epoch: p.epoch, seq: p.seq, id };
        c.gapAt = null;
        this.#trace(c, conn, `payment ${id} (had it already; the chain's next)`);
      }
      return;
    }
    if (c.resync) {
      this.stats.unchained++;
      this.#trace(c, conn, `payment ${id} (waiting for the resync replay)`);
      return;
    }
    const accept = (how) => {
      c.seen.add(id);
      if (!c.maxSeen || c.maxSeen.epoch !== p.epoch || c.maxSeen.seq < p.seq) c.maxSeen = { epoch: p.epoch, seq: p.seq };
      if (how !== "inflight") c.last = { epoch: p.epoch, seq: p.seq, id };
      c.gapAt = null;
      this.#trace(c, conn, `payment ${id}${how === "next" ? "" : ` (${how})`}`, how === "next" ? id : null);
      this.onSeen?.(client, tid, id);
    };
    if (c.truncated || c.unset || !c.last) {
      if (c.truncated) this.stats.rebases++;
      const how = c.truncated ? "new base after HISTORY_TRUNCATED" : "base: first payment (ack had no position)";
      c.truncated = false; c.unset = false;
      this.stats.chained++;
      accept(how);
      return;
    }
    const L = c.last;
    if ((L.epoch === null && p.seq === 1) || (L.epoch === p.epoch && p.seq === L.seq + 1)) {
      this.stats.chained++;
      accept("next");
      return;
    }
    if (c.ackPos && p.epoch === c.ackPos.epoch && p.seq <= c.ackPos.seq) {
      this.stats.inflight++;
      accept("inflight");
      return;
    }
    let kind;
    if (L.epoch === null) kind = "gap";
    else if (p.epoch !== L.epoch) kind = "epoch-change";
    else kind = p.seq > L.seq + 1 ? "gap" : "order";
    this.#trace(c, conn, `payment ${id} ✗ ${kind} (last ${L.id ?? "none"}/${L.seq})`);
    const key = `${L.id}`;
    if (c.gapAt !== key) {
      // One violation per break in the chain, however many resyncs it takes.
      c.gapAt = key;
      c.gapTries = 0;
      this.violate(kind, {
        client, tid, conn: conn.id,
        msg: `${tid}: after ${L.id ?? "position {id:null,seq:0}"} came ${id} (${kind === "epoch-change" ? "another epoch, no HISTORY_TRUNCATED" : kind === "gap" ? `seq ${p.seq}, expected ${L.seq + 1}` : `seq ${p.seq} ≤ last ${L.seq}, unseen, above the ack position ${c.ackPos ? c.ackPos.seq : "none"}`})`,
      });
    }
    c.gapTries++;
    if (c.gapTries > 2 || L.id === null) {
      // Resubscribing with since did not fill the hole (or there is no id
      // to resubscribe from): the client carries on from this payment.
      this.note("chain-rebased-after-violation");
      this.stats.chained++;
      c.gapAt = null;
      accept("taken as the new base after a violation");
      return;
    }
    // A careful client resubscribes with since = its last id; meanwhile
    // payments are not chained (they will come again in the replay).
    c.resync = { since: L.id, at: this.clock() };
    c.resyncs++;
    this.stats.resyncs++;
    this.onResync?.(client, tid);
  }

  // ---------------------------------------------------------------------
  // End of run
  // ---------------------------------------------------------------------

  /** Rule 4: `client` still holds `tid` at the end but never received its marker. */
  markerMissing(client, tid, markerId, diagnostic) {
    const c = this.chains.get(`${client}\u0000${tid}`);
    if (c) this.#trace(c, null, `settle: marker ${markerId} not received`);
    this.violate("marker-missing", { client, tid, msg: `${client} holds ${tid} but never received its marker ${markerId}${c?.resync ? " (still waiting for a resync replay)" : ""}${diagnostic ? `\n  ${diagnostic}` : ""}` });
  }

  /** Deferred rule 2 checks; returns the result object. */
  finish() {
    for (const [key, f] of this.firstRecv) {
      const [tid, id] = key.split("\u0000");
      const env = f.env;
      const owner = this.idOwner.get(key);
      if (owner) {
        const exp = expectedData(owner.item);
        if (!isDeepStrictEqual(env.data, exp) || owner.ids.get(id) !== env.seq) {
          this.violate("content-mismatch", { tid, msg: `${f.client} received ${id} as ${short(canon(env))}; ingest accepted ${id} for ${canon(exp)}` });
        }
        continue;
      }
      const ident = this.byAmount.get(`${tid}\u0000${env.data.amount}`);
      if (!ident || !isDeepStrictEqual(env.data, expectedData(ident.item))) {
        this.violate("invented", { tid, msg: `${f.client} received ${id}: ${short(canon(env))}, which matches no posted item` });
      } else if (ident.ambiguousLoss < this.loss) {
        this.stats.unknownAmbiguous++;
      } else {
        this.violate("unknown-id", { tid, msg: `${f.client} received ${id} for the item amount=${env.data.amount}, which ingest accepted as ${[...ident.ids.keys()].join(",") || "nothing"} (no ambiguous attempt followed by a storage loss explains it)` });
      }
    }
    const violations = [];
    for (const [kind, v] of this.violations) {
      for (const it of v.items) {
        // What that chain saw next (for diagnosis), when still in its ring.
        if (it.chain) {
          const later = (it.chain.traceCount ?? 0) - it.at;
          it.after = later > 0 ? it.chain.trace.slice(-later).slice(0, 6) : [];
        }
        delete it.chain;
      }
      violations.push({ kind, count: v.count, items: v.items });
    }
    violations.sort((a, b) => b.count - a.count);
    return {
      seed: this.seed,
      variant: this.variant,
      startedIso: new Date(this.wallStart).toISOString(),
      violations,
      violationCount: this.violationCount(),
      stats: { ...this.stats, distinctReceived: this.firstRecv.size, notes: Object.fromEntries(this.notes) },
      faults: this.faults,
    };
  }
}

/** A readable report of a result: counts per kind, then examples with traces, then the fault timeline. */
export function formatReport(result, { examplesPerKind = 3, header = "" } = {}) {
  const out = [];
  const { seed, variant } = result;
  out.push(`${header}tidings checker: variant=${variant} seed=${seed} — ${result.violationCount} violation(s)` +
    ` (reproduce: node checker/cli.mjs --variant ${variant} --seed ${seed}${result.config ? ` --duration ${result.config.duration} --sockets ${result.config.sockets}` : ""})`);
  if (result.startedIso) out.push(`  (times are seconds since ${result.startedIso}, the node logs' clock)`);
  for (const v of result.violations) out.push(`  ${v.kind}: ${v.count} — ${VIOLATION_KINDS[v.kind]}`);
  for (const v of result.violations) {
    for (const it of v.items.slice(0, examplesPerKind)) {
      out.push(`\n[${v.kind}] seed=${seed} variant=${variant} t=+${(it.t / 1000).toFixed(3)}s` +
        `${it.client ? ` client=${it.client}` : ""}${it.tid ? ` trackingId=${it.tid}` : ""}${it.conn ? ` conn=${it.conn}` : ""}`);
      out.push(`  ${it.msg}`);
      if (it.trace) for (const line of it.trace) out.push(`    ${line}`);
      if (it.after?.length) {
        out.push("    … then:");
        for (const line of it.after) out.push(`    ${line}`);
      }
    }
  }
  if (result.faults?.length) {
    out.push("\nfault timeline:");
    for (const f of result.faults) {
      const { t, kind, ...rest } = f;
      out.push(`  +${(t / 1000).toFixed(3)}s ${kind} ${JSON.stringify(rest)}`);
    }
  }
  if (result.logDir) out.push(`\nnode and redis logs: ${result.logDir}`);
  return out.join("\n");
}
