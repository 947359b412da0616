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
//   4. completeness after settling (markers);
//   5. account streams (section 8): every reception of a stream id alike,
//      the stream event's payment and `source` as ingest accepted them,
//      one payment at most once per stream epoch, a trackingId's payments
//      in their own order inside the stream, every payment accepted with
//      no storage loss since in the stream's final history (backfill), and
//      the stream's backfill pages (filtered ones included) consistent;
//   6. filters: a filtered subscription gets matching statuses only, and
//      its `prevSeq` chain has no hole it was not told about (rule 3 with
//      prevSeq in place of seq - 1), nor one that prevSeq hides (a known
//      matching payment between prevSeq and seq).
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
  "wrong-stream": "a stream event whose payment's trackingId belongs to another stream (or to none)",
  "filter-mismatch": "a filtered subscription received a payment whose status its filter does not list",
  "prev-seq": "a filtered subscription's prevSeq is below the seq of the last payment it received (no HISTORY_TRUNCATED), or, for the first after one, not below its own seq",
  "filter-hole": "a filtered subscription's prevSeq..seq skips a payment of that history that matches its filter",
  "stream-duplicate": "one payment stored twice in one stream epoch (same source.id, or same payment with no storage loss since its first acceptance)",
  "stream-id-reissued": "one stream event id seen for two different payments",
  "stream-order": "a trackingId's payments out of their own seq order inside a stream epoch",
  "stream-missing": "a payment accepted with no storage loss or restart since is missing from its stream's final history",
  backfill: "a backfill answer that is malformed or disagrees with the stream's history (contiguity, filter, prevSeq, limit/hasMore)",
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

/** `s<epoch>-<seq>` (a stream's event id) → {epoch, seq}, or null when it is not one. */
export function parseStreamId(id) {
  if (typeof id !== "string" || id[0] !== "s") return null;
  return parseId(id.slice(1));
}

/** Whether `name` is a stream (a name ending in `*`). */
export const isStreamName = (name) => typeof name === "string" && name.endsWith("*");

/** The id parser for a subscription name's histories. */
export const parseFor = (name, id) => (isStreamName(name) ? parseStreamId(id) : parseId(id));

/** The stream a trackingId belongs to (`<account><sep>*`), or null (no separator, or none in it, or at its start). */
export function streamOf(tid, sep) {
  if (!sep || typeof tid !== "string") return null;
  const i = tid.indexOf(sep);
  return i > 0 ? `${tid.slice(0, i + 1)}*` : null;
}

/** A filter's statuses as a sorted, deduplicated list; null for no filter. */
export function filterKey(filter) {
  return filter === undefined || filter === null ? null : [...new Set(filter)].sort().join(",");
}

/** An envelope without its per-subscription `prevSeq` (what every reception of one id shares). */
export function shared(env) {
  if (!isObj(env) || !("prevSeq" in env)) return env;
  const { prevSeq, ...rest } = env;
  return rest;
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
   * @param {string|null} [o.separator] the servers' --stream-separator (null: streams off)
   */
  constructor({ seed = 0, variant = "synthetic", clock, wallClock = () => Date.now(), traceLen = 20, separator = null } = {}) {
    this.seed = seed;
    this.variant = variant;
    this.separator = separator;
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
    this.resets = 0; // storage losses and restarts: histories may have started afresh since (with HISTORY_TRUNCATED)
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
      // streams and filters
      streamReceptions: 0, filteredReceptions: 0, prevSeqChained: 0, filteredBases: 0,
      refilterRestarts: 0, holeLinksChecked: 0, holeSeqsChecked: 0,
      streamEventsKnown: 0, streamEpochs: 0, streamOrderPairs: 0, streamCompleteChecked: 0,
      backfillEvents: 0, backfillFilteredEvents: 0, backfillPages: 0,
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
    this.firstRecv = new Map(); // name \0 id → {env, canon, client} (name: the trackingId, or the stream)
    // streams and filters
    this.streamHist = new Map(); // stream \0 epoch → Map(seq → {tid, sourceId, src, status, amount, who})
    this.reissueReported = new Set();
    this.links = new Map(); // name \0 epoch \0 prevSeq \0 seq \0 filterKey → {client, statuses} (a filtered reception's claim)
    this.finalStreams = new Map(); // stream → {epoch, firstSeq, lastSeq, sources: Set(tid \0 sourceId)}
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
    this.resets++;
    this.fault("data-loss", { what, loss: this.loss });
  }

  /**
   * Storage restarted without losing data (a Redis restarted from its own
   * dump, a coordinated failover). The server may still start histories
   * afresh (it cannot tell a restart from a loss: a history last written
   * by another Redis process is sealed), with HISTORY_TRUNCATED: a warned
   * gap, which rule 3 allows; rule 5's completeness counts from the last
   * such point.
   */
  storageRestart(what) {
    this.resets++;
    this.fault("storage-restart", { what, resets: this.resets });
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
        ident = { key, item, ids: new Map(), firstLoss: null, ambiguousLoss: Infinity, ambiguousReset: Infinity };
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
    return { req, node, t: this.clock(), loss: this.loss, resets: this.resets, window: this.lossWindow, epochSnap };
  }

  /**
   * An attempt's outcome: `{status, body, retryAfter}` for an HTTP answer,
   * `{error: "timeout" | "refused" | "reset" | string}` for none.
   */
  attemptEnd(att, outcome) {
    const { req } = att;
    const ambiguous = () => {
      for (const ident of req.idents) {
        ident.ambiguousLoss = Math.min(ident.ambiguousLoss, att.loss);
        ident.ambiguousReset = Math.min(ident.ambiguousReset, att.resets);
      }
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
      ident.firstReset = att.resets;
      // Its acceptance time is at most now (the stream check below).
      ident.answeredWall = this.wallClock();
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
        seenSrc: isStreamName(tid) ? new Set() : null, // stream chains: tid \0 source.id of what they accepted
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

  /**
   * Whether the (client, name) chain accepted `id` (a trackingId's event
   * id), or, for a stream, the payment `tid \0 sourceId`.
   */
  hasSeen(client, name, id) {
    const c = this.chains.get(`${client}\u0000${name}`);
    if (!c) return false;
    return (c.seenSrc ?? c.seen).has(id);
  }

  /** The filter (a list of statuses, or null) of the subscription to `name` acked on a connection; undefined when not held. */
  filterOf(connId, name) {
    const conn = this.conns.get(connId);
    if (!conn || conn.subs.get(name) !== "sub") return undefined;
    return conn.filters.get(name) ?? null;
  }

  /** The client forgets what it knew of `tid` (its next subscribe has no since). */
  forget(client, tid) {
    const c = this.chains.get(`${client}\u0000${tid}`);
    if (!c) return;
    c.last = null; c.unset = false; c.truncated = false; c.resync = null; c.dropped = false; c.ackPos = null;
    c.got = null; c.gotAlt = null;
    this.#trace(c, null, "forgets this trackingId (next subscribe without since)");
  }

  connOpen(client, connId, node, transport) {
    this.stats.conns++;
    const conn = { id: connId, client, node, transport, pending: [], subs: new Map(), filters: new Map(), lastAck: null, lastWasAckOf: null, closed: false };
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

  subSent(connId, tid, since, filter) {
    const conn = this.conns.get(connId);
    if (!conn) return;
    this.stats.subsSent++;
    conn.pending.push({ op: "sub", tid, since, filter: filter ?? null });
    const c = this.chain(conn.client, tid);
    this.#trace(c, conn, `subscribe since=${since ?? "-"}${filter ? ` filter=${filter.join(",")}` : ""}${c.resync ? " (resync)" : ""}`);
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
    const parse = (id) => parseFor(head.tid, id);
    let pos = null;
    if ("position" in env) {
      this.stats.positionAcks++;
      const P = env.position;
      const ok = isObj(P) && sameKeys(P, ["id", "seq"]) && (
        (P.id === null && P.seq === 0) || (parse(P.id)?.seq === P.seq));
      if (!ok) {
        this.violate("envelope", { client, tid: head.tid, conn: conn.id, msg: `bad ack position ${JSON.stringify(P)}: {id: "${isStreamName(head.tid) ? "s" : ""}<epoch>-<seq>", seq} or {id: null, seq: 0}` });
      } else {
        pos = P.id === null ? { epoch: null, seq: 0, id: null } : { ...parse(P.id), id: P.id };
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
    // A subscribe again on a held name sets its filter anew; with since and
    // another filter than held, the replay is read again from since with
    // the new one (the chain restarts at since).
    const wasHeld = conn.subs.get(head.tid) === "sub";
    const refiltered = wasHeld && filterKey(conn.filters.get(head.tid)) !== filterKey(head.filter);
    conn.filters.set(head.tid, head.filter ?? null);
    conn.subs.set(head.tid, "sub");
    conn.lastAck = { tid: head.tid, since: head.since, op: "sub" };
    conn.lastWasAckOf = head.since !== undefined ? head.tid : null;
    // In flight: an unseen payment at or below the position may still come
    // (published before the subscription took effect). After a subscribe
    // with since, the replay covers (since, position] in order, so only
    // what is at or below since itself may still be in flight.
    const sinceP = head.since !== undefined ? parse(head.since) : null;
    c.ackPos = !pos || pos.id === null ? null
      : head.since === undefined ? { epoch: pos.epoch, seq: pos.seq }
        : sinceP && sinceP.epoch === pos.epoch ? { epoch: pos.epoch, seq: Math.min(pos.seq, sinceP.seq) } : null;
    if (head.since === undefined) {
      c.resync = null; c.truncated = false; c.dropped = false;
      if (pos) { c.last = pos; c.unset = false; } else { c.last = null; c.unset = true; }
      c.got = pos ? { epoch: pos.epoch, seq: pos.seq } : null;
      c.gotAlt = null;
      if (pos && pos.id !== null && c.maxSeen && c.maxSeen.epoch === pos.epoch && pos.seq < c.maxSeen.seq) {
        // The contract's position is the last event stored; this client
        // already received a later one of that history.
        this.note("fresh-position-below-an-id-received");
      }
      this.#trace(c, conn, `ack subscribe (fresh) position=${fmtPos(pos)}`);
    } else {
      const s = sinceP;
      if (pos && pos.id !== null && s && pos.epoch === s.epoch && pos.seq < s.seq) this.note("position-behind-since");
      if (c.resync && this.#covers(s, c.last)) {
        c.resync = null;
        this.stats.resyncsDone++;
      }
      // Where a filtered chain's prevSeq goes on from: since (a new
      // subscription on this connection, or another filter); a held one
      // with the same filter goes on, or restarts at since when the node
      // reads the replay again.
      if (s && (refiltered || !wasHeld)) { c.got = { epoch: s.epoch, seq: s.seq }; c.gotAlt = null; }
      else if (s) c.gotAlt = { epoch: s.epoch, seq: s.seq };
      if (refiltered && s) {
        this.stats.refilterRestarts++;
        c.last = { epoch: s.epoch, seq: s.seq, id: head.since };
        c.unset = false;
        this.#trace(c, conn, `ack subscribe since=${head.since} position=${fmtPos(pos)} with another filter (${filterKey(head.filter) ?? "none"}): the chain restarts at since`);
      } else {
        this.#trace(c, conn, `ack subscribe since=${head.since} position=${fmtPos(pos)}; chain continues from ${c.last?.id ?? "-"}`);
      }
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

  /**
   * A payment envelope's shape: `{problem}` when malformed, else its kind
   * (`stream`), parsed id and, for a stream event, its parsed source id.
   * prevSeq, when present, must be a non-negative integer (whether it may
   * be there depends on the subscription: checked by the caller).
   */
  #paymentShape(env) {
    if (!isObj(env)) return { problem: "not an object" };
    const stream = "stream" in env;
    const keys = stream ? ["type", "stream", "id", "seq", "source", "data", "timestamp"] : ["type", "id", "seq", "data", "timestamp"];
    const p = stream ? parseStreamId(env.id) : parseId(env.id);
    if (!sameKeys(shared(env), keys) || env.type !== "payment_notification" || !p || env.seq !== p.seq || !isObj(env.data)
      || typeof env.data.trackingId !== "string" || !this.#isMillis(env.timestamp)
      || ("prevSeq" in env && !(Number.isSafeInteger(env.prevSeq) && env.prevSeq >= 0))) {
      return { problem: `keys exactly ${keys.join(",")} (+ prevSeq, a non-negative integer, on a filtered subscription's payments); id ${stream ? "s<epoch>-<seq>" : "<epoch>-<seq>"}; seq = the id's seq; timestamp ms` };
    }
    if (!stream) return { stream, p };
    const S = env.source;
    const srcP = isObj(S) ? parseId(S.id) : null;
    if (typeof env.stream !== "string" || !isStreamName(env.stream)) return { problem: "stream must be a stream's name (ending in *)" };
    if (!isObj(S) || !sameKeys(S, ["id", "seq"]) || !srcP || S.seq !== srcP.seq) return { problem: "source must be {id: \"<epoch>-<seq>\", seq} with seq = the id's seq" };
    return { stream, p, srcP };
  }

  /** Every reception of one id (by any client, or a backfill) is alike, prevSeq aside. */
  #sameAsFirst(name, env, who, conn) {
    const key = `${name}\u0000${env.id}`;
    const cs = canon(shared(env));
    const first = this.firstRecv.get(key);
    if (!first) {
      this.firstRecv.set(key, { env: shared(env), canon: cs, client: who });
    } else if (first.canon !== cs && !this.mismatchReported.has(`${key}\u0000${who}`)) {
      this.mismatchReported.add(`${key}\u0000${who}`);
      this.violate("reception-mismatch", { client: conn ? who : undefined, tid: name, conn: conn?.id, msg: `id ${env.id} of ${name} received by ${who} as ${short(cs)} but ${first.client} received ${short(first.canon)}` });
    }
  }

  /** Rule 5: what a stream event says of the stream's history (one payment per stream id). */
  #observeStream(stream, p, env, who) {
    const k = `${stream}\u0000${p.epoch}`;
    let h = this.streamHist.get(k);
    if (!h) {
      this.streamHist.set(k, (h = new Map()));
      this.stats.streamEpochs++;
    }
    const tid = env.data.trackingId;
    const src = `${tid}\u0000${env.source.id}`;
    const e = h.get(p.seq);
    if (!e) {
      h.set(p.seq, { tid, sourceId: env.source.id, src, srcP: parseId(env.source.id), status: env.data.status, amount: env.data.amount, who, id: env.id });
      this.stats.streamEventsKnown++;
    } else if (e.src !== src && !this.reissueReported.has(`${k}\u0000${p.seq}`)) {
      this.reissueReported.add(`${k}\u0000${p.seq}`);
      this.violate("stream-id-reissued", { tid: stream, msg: `stream id ${env.id} of ${stream}: ${e.who} saw it as ${e.tid} ${e.sourceId} (amount ${e.amount}), ${who} as ${tid} ${env.source.id} (amount ${env.data.amount})` });
    }
  }

  #onPayment(conn, env) {
    const { client } = conn;
    conn.lastWasAckOf = null;
    const shape = this.#paymentShape(env);
    if (shape.problem) {
      this.violate("envelope", { client, conn: conn.id, msg: `malformed payment envelope (${shape.problem}): ${short(JSON.stringify(env) ?? "")}` });
      return;
    }
    const { p } = shape;
    const tid = env.data.trackingId;
    const name = shape.stream ? env.stream : tid;
    this.stats.receptions++;
    if (shape.stream) {
      this.stats.streamReceptions++;
      if (streamOf(tid, this.separator) !== env.stream) {
        this.violate("wrong-stream", { client, tid: env.stream, conn: conn.id, msg: `a payment of ${tid} (stream ${streamOf(tid, this.separator) ?? "none"}) came as an event of ${env.stream}: ${short(JSON.stringify(env))}` });
      }
    }
    this.#sameAsFirst(name, env, client, conn);
    if (shape.stream) this.#observeStream(env.stream, p, env, client);
    const state = conn.subs.get(name);
    const c = this.chains.get(`${client}\u0000${name}`);
    if (state !== "sub") {
      if (c) this.#trace(c, conn, `payment ${env.id} while ${state === "unsub" ? "unsubscribed (acked)" : "not (yet) subscribed"}`);
      this.violate(state === "unsub" ? "after-unsubscribe" : "unsolicited", {
        client, tid: name, conn: conn.id,
        msg: `payment ${env.id} for ${name} ${state === "unsub" ? "after the unsubscribe ack" : "before any subscribe ack on this connection"}`,
      });
      return;
    }
    const filter = conn.filters.get(name) ?? null;
    const chain = c ?? this.chain(client, name);
    if (filter) {
      this.stats.filteredReceptions++;
      if (!("prevSeq" in env)) {
        this.violate("envelope", { client, tid: name, conn: conn.id, msg: `a filtered subscription's payment without prevSeq: ${short(JSON.stringify(env))}` });
        return;
      }
      if (!filter.includes(env.data.status)) {
        this.#trace(chain, conn, `payment ${env.id} status ${env.data.status} ✗ filter ${filterKey(filter)}`);
        this.violate("filter-mismatch", { client, tid: name, conn: conn.id, msg: `${name} subscribed with filter ${JSON.stringify(filter)} received ${env.id} with status ${env.data.status}` });
        return;
      }
    } else if ("prevSeq" in env) {
      this.violate("envelope", { client, tid: name, conn: conn.id, msg: `prevSeq on a payment of an unfiltered subscription: ${short(JSON.stringify(env))}` });
    }
    const srcKey = shape.stream ? `${tid}\u0000${env.source.id}` : null;
    if (filter) this.#filteredStep(conn, chain, env.id, p, env.prevSeq, srcKey, filter);
    else this.#chainStep(conn, chain, env.id, p, srcKey);
  }

  /** Records a filtered reception's claim: nothing in (prevSeq, seq) of that history matches the filter. */
  #link(c, id, p, prevSeq, filter) {
    if (!(prevSeq < p.seq - 1)) return;
    const key = `${c.tid}\u0000${p.epoch}\u0000${prevSeq}\u0000${p.seq}\u0000${filterKey(filter)}`;
    if (!this.links.has(key)) this.links.set(key, { client: c.client, name: c.tid, epoch: p.epoch, from: prevSeq, to: p.seq, id, statuses: new Set(filter) });
  }

  /** Rule 3: the next payment of an unfiltered subscription's chain. */
  #chainStep(conn, c, id, p, srcKey) {
    const { client, tid } = c;
    if (c.seen.has(id)) {
      this.stats.dupReceptions++;
      // Already had, but the chain's next (a fresh subscribe, or a changed
      // filter, restarted the chain below what the client had): the chain
      // moves on.
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
    const accept = (how) => this.#accept(conn, c, id, p, srcKey, how);
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
    const why = kind === "epoch-change" ? "another epoch, no HISTORY_TRUNCATED"
      : kind === "gap" ? `seq ${p.seq}, expected ${L.seq + 1}` : `seq ${p.seq} ≤ last ${L.seq}, unseen, above the ack position ${c.ackPos ? c.ackPos.seq : "none"}`;
    this.#broken(conn, c, id, p, srcKey, kind, why);
  }

  /** A payment the chain takes (`how`: "next", "inflight", a base ...). */
  #accept(conn, c, id, p, srcKey, how, prevSeq) {
    c.seen.add(id);
    if (srcKey) c.seenSrc.add(srcKey);
    if (!c.maxSeen || c.maxSeen.epoch !== p.epoch || c.maxSeen.seq < p.seq) c.maxSeen = { epoch: p.epoch, seq: p.seq };
    if (how !== "inflight") c.last = { epoch: p.epoch, seq: p.seq, id };
    c.gapAt = null;
    const text = prevSeq !== undefined ? `payment ${id} prevSeq=${prevSeq}` : `payment ${id}`;
    this.#trace(c, conn, `${text}${how === "next" ? "" : ` (${how})`}`, how === "next" && prevSeq === undefined ? id : null);
    this.onSeen?.(c.client, c.tid, srcKey ?? id);
  }

  /**
   * A break in a chain: reported once however many resyncs it takes; the
   * client resubscribes with since = its last id, and after two resyncs
   * that do not fill it carries on from this payment.
   */
  #broken(conn, c, id, p, srcKey, kind, why, prevSeq) {
    const { client, tid } = c;
    const L = c.last;
    this.#trace(c, conn, `payment ${id}${prevSeq !== undefined ? ` prevSeq=${prevSeq}` : ""} ✗ ${kind} (last ${L?.id ?? "none"}/${L?.seq ?? 0})`);
    const key = `${L?.id}`;
    if (c.gapAt !== key) {
      c.gapAt = key;
      c.gapTries = 0;
      this.violate(kind, { client, tid, conn: conn.id, msg: `${tid}: after ${L?.id ?? "position {id:null,seq:0}"} came ${id} (${why})` });
    }
    c.gapTries++;
    if (c.gapTries > 2 || !L || L.id === null) {
      // Resubscribing with since did not fill the hole (or there is no id
      // to resubscribe from): the client carries on from this payment.
      this.note("chain-rebased-after-violation");
      this.stats.chained++;
      c.gapAt = null;
      c.got = { epoch: p.epoch, seq: p.seq };
      this.#accept(conn, c, id, p, srcKey, "taken as the new base after a violation", prevSeq);
      return;
    }
    // A careful client resubscribes with since = its last id; meanwhile
    // payments are not chained (they will come again in the replay).
    c.resync = { since: L.id, at: this.clock() };
    c.resyncs++;
    this.stats.resyncs++;
    this.onResync?.(client, tid);
  }

  /**
   * Rule 6: a payment of a filtered subscription. Its `prevSeq` is "the seq
   * of the previous payment this subscription was sent", duplicates
   * included (a subscriber may be sent a payment again, as any subscriber
   * may): `c.got`, placed by the subscribe's ack (the position; since; a
   * held subscription with the same filter goes on, or, when the node
   * reads the replay again, restarts at since: `c.gotAlt`) and moved by
   * every payment this subscription receives. A new payment must also be
   * past the chain's last (`c.last`, the since a careful client resumes
   * from).
   */
  #filteredStep(conn, c, id, p, prevSeq, srcKey, filter) {
    const dup = c.seen.has(id);
    if (dup) this.stats.dupReceptions++;
    if (c.resync) {
      this.stats.unchained++;
      this.#trace(c, conn, `payment ${id} prevSeq=${prevSeq} (waiting for the resync replay)`);
      return;
    }
    // Its claim: nothing between prevSeq and its seq matched the filter.
    this.#link(c, id, p, prevSeq, filter);
    const moved = () => { c.got = { epoch: p.epoch, seq: p.seq }; c.gotAlt = null; };
    const inflight = c.ackPos && p.epoch === c.ackPos.epoch && p.seq <= c.ackPos.seq;
    if (c.truncated || c.unset || !c.got) {
      // After HISTORY_TRUNCATED: "the seq just before the next payment in
      // the history", below its own (unless it is one sent again).
      if (!dup && !inflight && prevSeq >= p.seq) {
        this.violate("prev-seq", { client: c.client, tid: c.tid, conn: conn.id, msg: `${c.tid}: ${id}, the first payment after HISTORY_TRUNCATED, has prevSeq ${prevSeq}, not below its seq` });
      }
      if (c.truncated) this.stats.rebases++;
      this.stats.filteredBases++;
      const how = c.truncated ? "new base after HISTORY_TRUNCATED" : "base: first payment (ack had no position)";
      c.truncated = false; c.unset = false;
      moved();
      if (dup) {
        // The chain restarts there (a careful client's since).
        c.last = { epoch: p.epoch, seq: p.seq, id };
        c.gapAt = null;
        this.#trace(c, conn, `payment ${id} prevSeq=${prevSeq} (had it already; ${how})`);
        return;
      }
      this.stats.chained++;
      this.#accept(conn, c, id, p, srcKey, how, prevSeq);
      return;
    }
    const follows = (X) => X && prevSeq === X.seq && (X.epoch === null || X.epoch === p.epoch);
    const L = c.last;
    // Past the chain's last (a later epoch: prevSeq already moved there).
    const ahead = !L || L.epoch === null || L.epoch < p.epoch || (L.epoch === p.epoch && p.seq > L.seq);
    const chained = follows(c.got) || follows(c.gotAlt);
    if (chained && dup) {
      moved();
      if (ahead) {
        c.last = { epoch: p.epoch, seq: p.seq, id };
        c.gapAt = null;
        this.#trace(c, conn, `payment ${id} prevSeq=${prevSeq} (had it already; the chain's next)`);
      } else {
        // Sent again, behind the chain (a room behind the subscriber's
        // replay): prevSeq goes through it.
        this.note("prevSeq-through-a-payment-sent-again");
        this.#trace(c, conn, `payment ${id} prevSeq=${prevSeq} (had it already)`);
      }
      return;
    }
    if (chained && ahead) {
      moved();
      this.stats.chained++;
      this.stats.prevSeqChained++;
      this.#accept(conn, c, id, p, srcKey, "next", prevSeq);
      return;
    }
    if (!dup && inflight) {
      this.stats.inflight++;
      moved();
      this.#accept(conn, c, id, p, srcKey, "inflight", prevSeq);
      return;
    }
    const G = c.got;
    let kind;
    let why;
    if (chained) {
      kind = "order";
      why = `seq ${p.seq} ≤ the chain's last ${L.seq}, unseen, above the ack position ${c.ackPos ? c.ackPos.seq : "none"}`;
    } else {
      kind = G.epoch !== null && p.epoch !== G.epoch ? "epoch-change" : prevSeq > G.seq ? "gap" : "prev-seq";
      why = `prevSeq ${prevSeq}, expected ${G.seq}${c.gotAlt ? ` or ${c.gotAlt.seq}` : ""}, the last seq this subscription received (filter ${filterKey(filter)})${dup ? "; a payment it had already" : ""}`;
    }
    this.#broken(conn, c, id, p, srcKey, kind, why, prevSeq);
  }

  // ---------------------------------------------------------------------
  // Backfill (rule 5)
  // ---------------------------------------------------------------------

  /**
   * A stream's backfill after settling (nothing is ingested meanwhile):
   * `full`, the pages of an unfiltered read from the oldest retained event
   * (`[{since, limit, res: {status, body}}]`, each page from the last id of
   * the one before), then `filtered` reads of it
   * (`[{statuses, since, pages: [{since, limit, res}]}]`). The unfiltered
   * read is the stream's final history (rule 5's completeness); its
   * envelopes are the subscribers' byte for byte; a filtered read is the
   * unfiltered one's matching payments after since, with prevSeq from
   * since's seq (else the seq before the oldest retained), `limit` and
   * `hasMore` counting matching payments.
   */
  streamBackfill(stream, full, filtered = []) {
    const bad = (msg) => this.violate("backfill", { tid: stream, msg: `${stream}: ${msg}` });
    const pageOk = (pg, what) => {
      this.stats.backfillPages++;
      const r = pg.res;
      const b = r?.body;
      if (r?.status !== 200 || !isObj(b) || !sameKeys(b, ["data", "hasMore", "truncated"]) || !Array.isArray(b.data)
        || typeof b.hasMore !== "boolean" || typeof b.truncated !== "boolean") {
        bad(`${what} since=${pg.since ?? "-"}: expected 200 {data, hasMore, truncated}, got ${r?.status} ${short(JSON.stringify(b) ?? "")}`);
        return false;
      }
      if (b.data.length > pg.limit) bad(`${what} since=${pg.since ?? "-"}: ${b.data.length} items above limit=${pg.limit}`);
      if (pg.since !== undefined && b.truncated) bad(`${what} since=${pg.since}: truncated, but nothing is trimmed (retention not reached, no loss while settling)`);
      return true;
    };
    const events = [];
    let ok = true;
    full.forEach((pg, i) => {
      if (!ok || !pageOk(pg, `page ${i}`)) { ok = false; return; }
      for (const env of pg.res.body.data) {
        const sh = this.#paymentShape(env);
        if (sh.problem || !sh.stream || env.stream !== stream || "prevSeq" in env) {
          bad(`malformed envelope in an unfiltered stream backfill (${sh.problem ?? `stream ${env.stream}, prevSeq ${env.prevSeq}`}): ${short(JSON.stringify(env))}`);
          ok = false;
          continue;
        }
        this.stats.backfillEvents++;
        this.#sameAsFirst(stream, env, "backfill", null);
        this.#observeStream(stream, sh.p, env, "backfill");
        if (streamOf(env.data.trackingId, this.separator) !== stream) {
          this.violate("wrong-stream", { tid: stream, msg: `the backfill of ${stream} holds ${env.id}, a payment of ${env.data.trackingId}` });
        }
        events.push({ env, p: sh.p });
      }
    });
    for (let i = 1; ok && i < events.length; i++) {
      const [a, b] = [events[i - 1].p, events[i].p];
      if (b.epoch !== a.epoch || b.seq !== a.seq + 1) {
        bad(`the unfiltered backfill is not one contiguous history: ${events[i - 1].env.id} then ${events[i].env.id}`);
        ok = false;
      }
    }
    const lastHasMore = full.at(-1)?.res?.body?.hasMore === true;
    if (ok && lastHasMore) bad(`the unfiltered read still had more after ${full.length} pages`);
    if (ok && events.length) {
      const firstSeq = events[0].p.seq;
      if (firstSeq !== 1) this.note("stream-backfill-starts-after-seq-1");
      this.finalStreams.set(stream, {
        epoch: events[0].p.epoch, firstSeq, lastSeq: events.at(-1).p.seq, complete: firstSeq === 1 && !lastHasMore,
        sources: new Set(events.map((e) => `${e.env.data.trackingId}\u0000${e.env.source.id}`)),
      });
    }
    if (!ok) return;
    for (const fr of filtered) {
      const statuses = new Set(fr.statuses);
      const what = `status=${fr.statuses.join(",")} since=${fr.since ?? "-"}`;
      const sinceP = fr.since !== undefined ? parseStreamId(fr.since) : null;
      const after = sinceP ? events.filter((e) => e.p.epoch === sinceP.epoch && e.p.seq > sinceP.seq) : events;
      const expected = after.filter((e) => statuses.has(e.env.data.status));
      let prev = sinceP ? sinceP.seq : events.length ? events[0].p.seq - 1 : null;
      let k = 0;
      let stop = false;
      fr.pages.forEach((pg, i) => {
        if (stop || !pageOk(pg, `filtered read ${what} page ${i}`)) { stop = true; return; }
        for (const env of pg.res.body.data) {
          const exp = expected[k];
          const sh = this.#paymentShape(env);
          if (sh.problem || !sh.stream || env.stream !== stream || !("prevSeq" in env)) {
            bad(`filtered read ${what}: malformed envelope (${sh.problem ?? "a stream envelope with prevSeq"}): ${short(JSON.stringify(env))}`);
            stop = true;
            return;
          }
          if (!exp || env.id !== exp.env.id) {
            bad(`filtered read ${what} page ${i}: got ${env.id} (${env.data.status}), expected ${exp ? `${exp.env.id} (${exp.env.data.status})` : "nothing more"}: the unfiltered history's matching payments after since, in order`);
            stop = true;
            return;
          }
          this.stats.backfillFilteredEvents++;
          if (canon(shared(env)) !== canon(exp.env)) bad(`filtered read ${what}: ${env.id} is ${short(canon(shared(env)))}, unfiltered ${short(canon(exp.env))}`);
          if (prev !== null && env.prevSeq !== prev) bad(`filtered read ${what} page ${i}: ${env.id} has prevSeq ${env.prevSeq}, expected ${prev} (${k === 0 ? (sinceP ? "since's seq" : "the seq before the oldest retained") : "the previous matching payment's seq"})`);
          prev = env.seq;
          k++;
        }
        const more = k < expected.length;
        if (pg.res.body.hasMore !== more) bad(`filtered read ${what} page ${i}: hasMore ${pg.res.body.hasMore} with ${expected.length - k} matching payment(s) left`);
      });
    }
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

  /** True the first time `key` is asked (deferred checks report once, however often finish runs). */
  #once(key) {
    this.deferredDone ??= new Set();
    if (this.deferredDone.has(key)) return false;
    this.deferredDone.add(key);
    return true;
  }

  /**
   * Rule 5 over every stream event seen (subscribers and backfills): one
   * payment at most once per stream epoch, a trackingId's payments in
   * their order, and every payment accepted with no storage loss since in
   * its stream's final history.
   */
  #finishStreams() {
    for (const [k, h] of this.streamHist) {
      const [stream, epoch] = k.split("\u0000");
      const bySource = new Map();
      const byPayment = new Map();
      const lastOf = new Map();
      for (const q of [...h.keys()].sort((a, b) => a - b)) {
        const e = h.get(q);
        const sameSource = bySource.get(e.src);
        if (sameSource !== undefined) {
          if (this.#once(`dup\u0000${k}\u0000${q}`)) {
            this.violate("stream-duplicate", { tid: stream, msg: `${e.tid} ${e.sourceId} is both s${epoch}-${sameSource} and ${e.id} of ${stream}` });
          }
          continue;
        }
        bySource.set(e.src, q);
        const pk = `${e.tid}\u0000${e.amount}`;
        const samePayment = byPayment.get(pk);
        if (samePayment !== undefined) {
          // Stored again under a new trackingId id: only after a storage
          // loss since its first acceptance (its dedupe key lost too).
          const ident = this.byAmount.get(pk);
          const relaxed = !ident || ident.firstLoss === null || this.loss > ident.firstLoss || ident.windowed;
          if (relaxed) {
            if (this.#once(`again\u0000${k}\u0000${q}`)) this.note("stream-payment-again-after-a-loss");
          }
          else if (this.#once(`dupp\u0000${k}\u0000${q}`)) {
            this.violate("stream-duplicate", { tid: stream, msg: `the payment amount=${e.amount} of ${e.tid} is both s${epoch}-${samePayment} and ${e.id} of ${stream} (as ${h.get(samePayment).sourceId} and ${e.sourceId}), no storage loss since it was accepted` });
          }
        } else {
          byPayment.set(pk, q);
        }
        const lo = lastOf.get(e.tid);
        if (lo && e.srcP) {
          this.stats.streamOrderPairs++;
          if ((e.srcP.epoch < lo.srcP.epoch || (e.srcP.epoch === lo.srcP.epoch && e.srcP.seq < lo.srcP.seq)) && this.#once(`ord\u0000${k}\u0000${q}`)) {
            this.violate("stream-order", { tid: stream, msg: `${stream} epoch ${epoch}: ${lo.id} is ${e.tid} ${lo.sourceId}, the later ${e.id} is ${e.tid} ${e.sourceId}` });
          }
        }
        if (e.srcP) lastOf.set(e.tid, e);
      }
    }
    for (const [stream, fs] of this.finalStreams) {
      if (!fs.complete) continue;
      for (const ident of this.idents.values()) {
        if (ident.ids.size === 0 || streamOf(ident.item.trackingId, this.separator) !== stream) continue;
        // A storage loss or restart since it was stored (by its accepting
        // attempt, or an ambiguous one before: a retry then answers
        // duplicate): it may be gone (with a warning).
        if (Math.min(ident.firstReset, ident.ambiguousReset) !== this.resets || ident.windowed) continue;
        // The stream's final history began after the payment was answered:
        // the stream was started afresh since (a storage restart the
        // checker did not cause, e.g. Sentinel failing over on its own
        // from a busy master), which its subscribers were told of.
        if (ident.answeredWall !== undefined && fs.epoch > ident.answeredWall) {
          this.note("stream-restarted-after-acceptance");
          continue;
        }
        this.stats.streamCompleteChecked++;
        const tid = ident.item.trackingId;
        if ([...ident.ids.keys()].some((id) => fs.sources.has(`${tid}\u0000${id}`))) continue;
        if (this.#once(`miss\u0000${stream}\u0000${ident.key}`)) {
          this.violate("stream-missing", { tid: stream, msg: `${tid} ${[...ident.ids.keys()].join(",")} (amount ${ident.item.amount}, accepted with no storage loss or restart since) is not in ${stream}'s final history (epoch ${fs.epoch}, seq ${fs.firstSeq}..${fs.lastSeq})` });
        }
      }
    }
  }

  /** The status of the payment at `seq` of `name`'s history `epoch`, when known. */
  #statusAt(name, epoch, seq) {
    if (isStreamName(name)) return this.streamHist.get(`${name}\u0000${epoch}`)?.get(seq)?.status;
    return this.idOwner.get(`${name}\u0000${epoch}-${seq}`)?.item.status;
  }

  /** Rule 6: what a filtered reception's prevSeq skipped matched nothing of its filter. */
  #finishHoles() {
    for (const [key, l] of this.links) {
      if (!this.#once(`hole\u0000${key}`)) continue;
      this.stats.holeLinksChecked++;
      for (let q = l.from + 1; q < l.to; q++) {
        const st = this.#statusAt(l.name, l.epoch, q);
        if (st === undefined) continue;
        this.stats.holeSeqsChecked++;
        if (l.statuses.has(st)) {
          const id = isStreamName(l.name) ? `s${l.epoch}-${q}` : `${l.epoch}-${q}`;
          this.violate("filter-hole", { client: l.client, tid: l.name, msg: `${l.client} got ${l.id} with prevSeq ${l.from} on ${l.name} (filter ${[...l.statuses].join(",")}), but ${id} in between is ${st}` });
          break;
        }
      }
    }
  }

  /** Deferred rule 2 checks; returns the result object. */
  finish() {
    for (const [key, f] of this.firstRecv) {
      const [name, id] = key.split("\u0000");
      const env = f.env;
      // A stream event: its payment is the trackingId's event source.id.
      const stream = isStreamName(name);
      const tid = env.data.trackingId;
      const tidId = stream ? env.source.id : id;
      const tidSeq = stream ? env.source.seq : env.seq;
      const what = stream ? `stream event ${id} of ${name} (source ${tid} ${tidId})` : id;
      const owner = this.idOwner.get(`${tid}\u0000${tidId}`);
      if (owner) {
        const exp = expectedData(owner.item);
        if (!isDeepStrictEqual(env.data, exp) || owner.ids.get(tidId) !== tidSeq) {
          this.violate("content-mismatch", { tid: name, msg: `${f.client} received ${what} as ${short(canon(env))}; ingest accepted ${tidId} for ${canon(exp)}` });
        } else if (stream) {
          // The same acceptance time as the trackingId's envelope.
          const t = this.firstRecv.get(`${tid}\u0000${tidId}`);
          if (t && t.env.timestamp !== env.timestamp && this.#once(`ts\u0000${key}`)) {
            this.violate("content-mismatch", { tid: name, msg: `${what} has timestamp ${env.timestamp}, the trackingId's envelope ${tidId} ${t.env.timestamp}` });
          }
        }
        continue;
      }
      const ident = this.byAmount.get(`${tid}\u0000${env.data.amount}`);
      if (!ident || !isDeepStrictEqual(env.data, expectedData(ident.item))) {
        this.violate("invented", { tid: name, msg: `${f.client} received ${what}: ${short(canon(env))}, which matches no posted item` });
      } else if (ident.ambiguousLoss < this.loss) {
        this.stats.unknownAmbiguous++;
      } else {
        this.violate("unknown-id", { tid: name, msg: `${f.client} received ${what} for the item amount=${env.data.amount}, which ingest accepted as ${[...ident.ids.keys()].join(",") || "nothing"} (no ambiguous attempt followed by a storage loss explains it)` });
      }
    }
    this.#finishStreams();
    this.#finishHoles();
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
