/**
 * @file One subscription (a trackingId, or a stream `merchant-42:*`): the
 * part of the contract a client must do itself. It keeps the last id (in the
 * storage), subscribes with `since` (and its filter) on every connect,
 * delivers each payment once and in seq order (duplicates dropped, payments
 * after a hole held back until the hole is filled from the REST backfill),
 * and turns HISTORY_TRUNCATED into a `gap`. A filtered subscription's holes
 * are seen by `prevSeq` (the filter skips seqs).
 */
import type { Backoff } from "./backoff.js";
import { delayOf } from "./backoff.js";
import { compare, cursorAt, EMPTY, parseEventId, relate, type Cursor } from "./cursor.js";
import { Emitter, type Off } from "./emitter.js";
import { asTidingsError, TidingsError } from "./errors.js";
import type { HistoryQuery } from "./rest.js";
import type { Storage } from "./storage.js";
import type {
  AckEnvelope, ErrorEnvelope, Filter, Gap, HistoryPage, PaymentEnvelope, PaymentStatus, Position,
} from "./types.js";

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  /**
   * Emits on the socket if it is connected (false if not); `onReply` gets the
   * server's answer to this very event (an ack or a refusal).
   */
  send(
    event: "subscribe" | "unsubscribe",
    payload: { trackingId: string; since?: string; filter?: Filter },
    onReply?: (reply: AckEnvelope | ErrorEnvelope) => void,
  ): boolean;
  isConnected(): boolean;
  fetchPage(trackingId: string, query: HistoryQuery): Promise<HistoryPage>;
  readonly storage: Storage;
  storageKey(trackingId: string): string;
  readonly backoff: Backoff;
  /** The subscription ended (unsubscribe). */
  detach(sub: Subscription): void;
  /** Every error of a subscription also reaches the client's listeners. */
  report(err: TidingsError): void;
}

export interface SubscribeOptions {
  /**
   * Where to start when the storage holds nothing for this name (default:
   * from now): an id of its history (`s<epoch>-<seq>` for a stream).
   */
  since?: string;
  /** Only payments of these statuses (`{ status: ["failed"] }`); sent with every (re)subscribe. */
  filter?: Filter | null;
}

export type SubscriptionEvents = {
  /** A payment, each exactly once, in seq order (a stream's: with `stream` and `source`). */
  payment: (payment: PaymentEnvelope) => void;
  /** Payments the server no longer has; emitted just before the next one. */
  gap: (gap: Gap) => void;
  /** FORBIDDEN, INVALID_TRACKING_ID, TOO_MANY_SUBSCRIPTIONS, RATE_LIMITED, CONNECTION_ERROR, INVALID_SINCE, STORAGE_ERROR, ... */
  error: (error: TidingsError) => void;
  /** The server acknowledged a subscribe (at every connect, and after each recovery). */
  subscribed: (ack: { position: Position }) => void;
};

type State = "loading" | "idle" | "subscribing" | "active" | "refused" | "closed";

const isPayment = (p: unknown): p is PaymentEnvelope =>
  !!p &&
  typeof (p as PaymentEnvelope).id === "string" &&
  Number.isSafeInteger((p as PaymentEnvelope).seq) &&
  typeof (p as PaymentEnvelope).data === "object";

/** The payment's place; a filtered subscription's payment also says which seq it follows. */
const cursorOf = (p: PaymentEnvelope): Cursor =>
  cursorAt(p.id, p.seq, Number.isSafeInteger(p.prevSeq) ? p.prevSeq : undefined);

/** The stored value: `{"id","seq"}`; a bare id of Tidings' form is read too. */
function parseStored(value: string): Cursor | null {
  try {
    const v = JSON.parse(value) as { id?: unknown; seq?: unknown };
    if (typeof v?.id === "string" && Number.isSafeInteger(v.seq)) return cursorAt(v.id, v.seq as number);
  } catch {
    /* not JSON: maybe a bare id */
  }
  return parseId(value);
}

function parseId(id: string): Cursor | null {
  const e = parseEventId(id);
  return e ? cursorAt(id, e.seq) : null;
}

const STATUSES: readonly PaymentStatus[] = ["executed", "failed", "pending"];

/** A copy of a valid filter (null: none); a TypeError says what is wrong with a bad one. */
function checkFilter(filter: Filter | null | undefined): Filter | null {
  if (filter === undefined || filter === null) return null;
  const status = (filter as { status?: unknown })?.status;
  if (typeof filter !== "object" || Object.keys(filter).some((k) => k !== "status")) {
    throw new TypeError(`filter: an object with exactly the key "status", got ${JSON.stringify(filter)}`);
  }
  if (!Array.isArray(status) || status.length === 0 || status.some((x) => !STATUSES.includes(x as PaymentStatus))) {
    throw new TypeError(`filter.status: a non-empty list of ${STATUSES.join(", ")}, got ${JSON.stringify(status)}`);
  }
  return { status: [...status] as PaymentStatus[] };
}

const sameFilter = (a: Filter | null, b: Filter | null): boolean =>
  a === b || (a !== null && b !== null && [...new Set(a.status)].sort().join() === [...new Set(b.status)].sort().join());

export class Subscription extends Emitter<SubscriptionEvents> {
  /** The name subscribed to: a trackingId, or a stream (`merchant-42:*`). */
  readonly trackingId: string;
  /** Whether this is an account stream (a name ending in `*`, contract section 8). */
  readonly stream: boolean;
  private readonly host: SubscriptionHost;
  private state: State = "loading";
  /** The server holds the subscription on the current connection (acked, not lost since). */
  private held_ = false;
  private filter_: Filter | null;
  /** Bumped by setFilter: what was read or sent for an older filter is not trusted to match. */
  private filterGen = 0;
  /** A filter change the server has not acked yet: payments of the old filter may still arrive. */
  private filterPending = false;
  /** The last payment delivered (or, on a fresh subscribe, the ack's position). */
  private last: Cursor | null = null;
  /** Set by HISTORY_TRUNCATED: the next new payment continues, and the gap is counted from here. */
  private gapFrom: Cursor | null = null;
  /** Payments after a hole, in (epoch, seq) order, waiting for it to be filled. */
  private held: PaymentEnvelope[] = [];
  /** A read over REST is filling a hole (or the history begun unseen). */
  private recovering = false;
  private recoveryTimer: ReturnType<typeof setTimeout> | null = null;
  /** Where the replay announced by the last ack ends: past it, a hole still open needs another recovery. */
  private replayEnd: Cursor | null = null;
  private retries = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private dirty = false;
  private writing: Promise<void> | null = null;

  /** @internal Created by `TidingsClient.subscribe`. */
  constructor(host: SubscriptionHost, trackingId: string, opts: SubscribeOptions = {}) {
    super();
    this.host = host;
    this.trackingId = trackingId;
    this.stream = trackingId.endsWith("*");
    this.filter_ = checkFilter(opts.filter);
    let initial: Cursor | null = null;
    if (opts.since !== undefined) {
      initial = parseId(opts.since);
      if (!initial) throw new TypeError(`subscribe: since ${JSON.stringify(opts.since)} is not a Tidings event id`);
      if (parseEventId(opts.since)?.stream !== this.stream) {
        throw new TypeError(this.stream
          ? `subscribe: since ${JSON.stringify(opts.since)} is a trackingId's id; a stream's ids are s<epoch>-<seq>`
          : `subscribe: since ${JSON.stringify(opts.since)} is a stream's id; a trackingId's ids are <epoch>-<seq>`);
      }
    }
    Promise.resolve()
      .then(() => host.storage.get(host.storageKey(trackingId)))
      .then(
        (value) => (typeof value === "string" ? parseStored(value) : null),
        (err: unknown) => {
          this.fail(asTidingsError("STORAGE_ERROR", err, trackingId));
          return null;
        },
      )
      .then((stored) => {
        if (this.state !== "loading") return;
        // A stored id of the other kind (a trackingId's for a stream) cannot be this history's.
        this.last = (stored && stored.id !== null && parseEventId(stored.id)?.stream !== this.stream ? null : stored) ?? initial;
        this.state = "idle";
        if (host.isConnected()) this.sendSubscribe();
      });
  }

  /** The id of the last payment delivered (what a reconnect passes as `since`); null before any. */
  get lastId(): string | null {
    return this.last?.id ?? null;
  }

  /** Whether the server holds the subscription on the current connection. */
  get subscribed(): boolean {
    return this.held_;
  }

  /** The filter sent with every (re)subscribe; null: every payment. */
  get filter(): Filter | null {
    return this.filter_ === null ? null : { status: [...this.filter_.status] };
  }

  /**
   * Changes the filter (null: none). Held on the server already, it
   * resubscribes at once with `since` = the last id: from there on, the
   * payments of the new filter, each once. Payments before the last id that
   * the old filter left out are not delivered (read them with `history()`).
   * Until the server acks the change, a payment of the old filter that does
   * not match the new one is accounted for and not delivered.
   */
  setFilter(filter: Filter | null): void {
    const next = checkFilter(filter);
    if (this.state === "closed" || sameFilter(next, this.filter_)) return;
    this.filter_ = next;
    this.filterGen++;
    this.filterPending = true;
    // Held payments, and a read in flight, are of the old filter: the new subscribe's replay brings them again.
    this.held = [];
    this.replayEnd = null;
    if (this.state === "active" || this.state === "subscribing") this.sendSubscribe();
  }

  override on<K extends keyof SubscriptionEvents>(event: K, fn: SubscriptionEvents[K]): Off {
    return super.on(event, fn);
  }

  /**
   * One page of the retained history over REST (`GET /v1/events`), with the
   * socket's token in token mode; `status` defaults to the filter's (null: every payment).
   */
  history(query: HistoryQuery = {}): Promise<HistoryPage> {
    const status = query.status !== undefined ? query.status : (this.filter_?.status ?? null);
    return this.host.fetchPage(this.trackingId, { ...query, status });
  }

  /** Leaves the trackingId; the stored last id is kept (a later subscribe resumes from it). */
  unsubscribe(): Promise<void> {
    if (this.state !== "closed") {
      this.state = "closed";
      this.held_ = false;
      this.clearRetry();
      this.host.detach(this);
      this.host.send("unsubscribe", { trackingId: this.trackingId });
      this.held = [];
      this.removeAll();
    }
    return this.flush();
  }

  /** Resolves when the last id has been written to the storage. */
  flush(): Promise<void> {
    return this.writing ?? Promise.resolve();
  }

  // -------------------------------------------------------------------------
  // From the client
  // -------------------------------------------------------------------------

  /** @internal A (re)connect: the server holds nothing for this socket yet. */
  onConnect(): void {
    this.replayEnd = null;
    if (this.state === "loading" || this.state === "closed") return;
    this.clearRetry();
    this.sendSubscribe();
  }

  /** @internal */
  onDisconnect(): void {
    this.clearRetry();
    this.held_ = false;
    if (this.state !== "loading" && this.state !== "closed") this.state = "idle";
  }

  /** @internal A subscribe's `ack` for this trackingId. */
  onAck(env: AckEnvelope): void {
    if (this.state === "closed" || this.state === "loading") return;
    this.state = "active";
    this.held_ = true;
    this.retries = 0;
    const position: Position = env.position ?? { id: null, seq: 0 };
    if (this.last === null) {
      // A fresh subscribe starts from now: the ack's position is where the application stands.
      this.last = position.id !== null ? cursorAt(position.id, position.seq) : EMPTY;
      this.persist();
    } else if (position.id !== null) {
      // A replay (if any) runs up to the position; a trailing position (a node's cursor) announces none.
      const end = cursorAt(position.id, position.seq);
      this.replayEnd = compare(end, this.last) > 0 ? end : null;
    }
    this.emit("subscribed", { position });
    this.drain();
    if (this.last.id === null && position.seq > 0) {
      // A history began while this subscription held none of it: no id to pass as since, so read it from the start.
      this.startRecovery();
    }
  }

  /**
   * @internal An `error` about this trackingId: HISTORY_TRUNCATED from the
   * event stream (where its place among the payments matters), refusals from
   * the subscribe's own reply (an invalid trackingId's error names none).
   */
  onError(env: ErrorEnvelope): void {
    if (this.state === "closed") return;
    const { code, message } = env.data;
    if (code === "HISTORY_TRUNCATED") {
      // A warning: the subscription holds, and the next payment is where we continue.
      if (this.last !== null && this.gapFrom === null) this.gapFrom = this.last;
      return;
    }
    const err = new TidingsError(code, message, { trackingId: this.trackingId, details: env.data.details });
    switch (code) {
      case "INVALID_SINCE":
        // The stored id is not one this server could have issued (another server's, or forged): start
        // over without it; the ack's position then makes the SDK read the retained history from its start.
        this.fail(err);
        this.gapFrom = null;
        this.last = EMPTY;
        this.sendSubscribe();
        return;
      case "RATE_LIMITED":
      case "CONNECTION_ERROR":
        this.fail(err);
        this.retryLater();
        return;
      case "FORBIDDEN":
      case "INVALID_TRACKING_ID":
      case "TOO_MANY_SUBSCRIPTIONS":
        // Refused for this connection; tried again at the next connect (a new token may cover it).
        if (this.state === "subscribing") this.state = this.held_ ? "active" : "refused";
        this.fail(err);
        return;
      default:
        // A refused repeat leaves what the server held as it was.
        if (this.state === "subscribing" && this.held_) this.state = "active";
        this.fail(err);
    }
  }

  /** @internal A `payment` of this subscription (live, replayed, or read over REST). */
  onPayment(env: unknown): void {
    if (this.state === "closed" || !isPayment(env)) return;
    if (this.last === null) {
      this.hold(env); // before the first ack: placed once the ack says where we stand
      return;
    }
    const c = cursorOf(env);
    if (this.gapFrom !== null) {
      if (relate(this.last, c) === "old") return;
      this.continueAfterTruncation(env, c);
      return;
    }
    switch (relate(this.last, c)) {
      case "old":
        return;
      case "next":
        this.deliver(env);
        this.drain();
        return;
      case "ahead":
        this.hold(env);
        this.startRecovery();
        return;
    }
  }

  // -------------------------------------------------------------------------
  // Delivery
  // -------------------------------------------------------------------------

  /**
   * After HISTORY_TRUNCATED, `env` is where the server continues: deliver
   * what we hold up to it (received before, so not lost), announcing the gap
   * before the first payment that does not follow on.
   */
  private continueAfterTruncation(env: PaymentEnvelope, c: Cursor): void {
    let from: Cursor | null = this.gapFrom;
    this.gapFrom = null;
    this.hold(env);
    while (this.held.length > 0 && this.last !== null) {
      const head = this.held[0];
      const hc = cursorOf(head);
      if (compare(hc, c) > 0) break;
      this.held.shift();
      if (relate(this.last, hc) === "old") continue;
      const base = from ?? this.last;
      from = null;
      if (relate(base, hc) === "ahead") this.emitGap(base, hc);
      this.deliver(head);
    }
    this.drain();
  }

  private emitGap(from: Cursor, to: Cursor): void {
    const restarted = from.epoch !== null && to.epoch !== null && from.epoch !== to.epoch;
    // A filtered subscription's next payment says which seq it follows: the lost ones end there.
    const toSeq = to.prevSeq !== undefined && to.prevSeq > from.seq ? to.prevSeq : to.seq - 1;
    const gap: Gap = {
      trackingId: this.trackingId,
      lastId: from.id,
      fromSeq: from.seq + 1,
      toSeq: restarted ? null : toSeq,
      restarted,
      nextId: to.id as string,
      nextSeq: to.seq,
    };
    this.emit("gap", gap);
  }

  private deliver(env: PaymentEnvelope): void {
    this.last = cursorAt(env.id, env.seq);
    // While a filter change is not acked, a payment of the old filter may come: accounted for, not delivered.
    if (!this.filterPending || this.filter_ === null || this.filter_.status.includes(env.data?.status)) {
      this.emit("payment", env);
    }
    // Stored after the listeners ran: across a crash a payment may come again, never be skipped.
    this.persist();
    if (this.replayEnd !== null && compare(this.last, this.replayEnd) >= 0) this.replayEnd = null;
  }

  /** Delivers held payments that now follow on; drops those already delivered. */
  private drain(): void {
    while (this.held.length > 0 && this.last !== null) {
      const head = this.held[0];
      const rel = relate(this.last, cursorOf(head));
      if (rel === "ahead") break;
      this.held.shift();
      if (rel === "next") this.deliver(head);
    }
    // The announced replay is over and a hole is still open: fill it again.
    if (this.held.length > 0 && this.replayEnd === null && this.state === "active") this.startRecovery();
  }

  private hold(env: PaymentEnvelope): void {
    const c = cursorOf(env);
    let i = this.held.length;
    while (i > 0 && compare(cursorOf(this.held[i - 1]), c) > 0) i--;
    if (i > 0 && this.held[i - 1].id === env.id) return;
    // Bounded: past the bound a payment is not held; the recovery's replay (up to the present) brings it again.
    if (this.held.length >= 10000) return;
    this.held.splice(i, 0, env);
  }

  /**
   * Fills a hole: reads the history over REST after the last delivered id
   * (with the filter's statuses), or from its start when there is no id yet
   * (the history began unseen). Not a resubscribe with `since`: a node
   * answers a repeated `since` on a subscription its socket holds with the
   * ack alone when it believes it handed those payments over already
   * (docs/reference.md, "Resubscribing with since"), so a payment lost after
   * the node sent it would never come.
   */
  private startRecovery(): void {
    if (this.recovering || this.state !== "active" || !this.host.isConnected() || this.last === null) return;
    this.recovering = true;
    void this.readHistory();
  }

  private async readHistory(): Promise<void> {
    const gen = this.filterGen;
    const from = this.last;
    let since = from?.id ?? undefined;
    let stale = false;
    try {
      for (let page = 0; page < 1000; page++) {
        const p = await this.host.fetchPage(this.trackingId, { since, limit: 1000, status: this.filter_?.status ?? null });
        // Closed, or read for a filter that is no longer this subscription's: the new subscribe's replay brings it.
        if (this.state === "closed") return;
        if (gen !== this.filterGen) {
          stale = true;
          return;
        }
        if (page === 0 && p.data.length > 0 && this.last !== null && this.gapFrom === null &&
            (p.truncated || (from !== null && from.id === null))) {
          // The page starts at the oldest retained event: what came before it is gone.
          this.gapFrom = this.last;
        }
        for (const env of p.data) this.onPayment(env);
        if (!p.hasMore || p.data.length === 0) break;
        // A hole is filled once nothing waits behind it; a history begun unseen is read to its end.
        if (from?.id && this.held.length === 0) break;
        since = p.data[p.data.length - 1].id;
      }
      this.retries = 0;
    } catch (err) {
      this.fail(asTidingsError("HTTP_ERROR", err, this.trackingId));
      if (this.state !== "closed") {
        this.recoveryTimer = setTimeout(() => {
          this.recoveryTimer = null;
          this.drain();
        }, delayOf(this.host.backoff, this.retries++));
      }
    } finally {
      this.recovering = false;
      // A hole noticed under the new filter while this read ran waits for a read of its own.
      if (stale) this.drain();
    }
  }

  private sendSubscribe(): void {
    if (this.state === "closed" || this.state === "loading") return;
    const since = this.last?.id ?? undefined;
    const payload: { trackingId: string; since?: string; filter?: Filter } = { trackingId: this.trackingId };
    if (since) payload.since = since;
    if (this.filter_ !== null) payload.filter = { status: [...this.filter_.status] };
    const gen = this.filterGen;
    const onReply = (reply: AckEnvelope | ErrorEnvelope): void => {
      // The ack answers after whatever the server sent under the old filter: from here on, the new one holds.
      if (reply?.type === "ack" && gen === this.filterGen) this.filterPending = false;
      this.onReply(reply);
    };
    if (this.host.send("subscribe", payload, onReply)) this.state = "subscribing";
  }

  /** The answer to one of our subscribes: its ack is handled from the event stream (it orders the replay), a refusal here. */
  private readonly onReply = (reply: AckEnvelope | ErrorEnvelope): void => {
    if (reply?.type === "error" && reply.data && reply.data.code !== "HISTORY_TRUNCATED") this.onError(reply);
  };

  private retryLater(): void {
    this.clearRetry();
    const delay = delayOf(this.host.backoff, this.retries++);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.sendSubscribe();
    }, delay);
  }

  private clearRetry(): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.recoveryTimer !== null) clearTimeout(this.recoveryTimer);
    this.recoveryTimer = null;
  }

  private fail(err: TidingsError): void {
    this.emit("error", err);
    this.host.report(err);
  }

  /** Writes the last id, coalescing: one write at a time, the newest value last. */
  private persist(): void {
    if (this.last === null || this.last.id === null) return;
    this.dirty = true;
    if (this.writing) return;
    const key = this.host.storageKey(this.trackingId);
    this.writing = (async () => {
      while (this.dirty && this.last !== null && this.last.id !== null) {
        this.dirty = false;
        const value = JSON.stringify({ id: this.last.id, seq: this.last.seq });
        try {
          await this.host.storage.set(key, value);
        } catch (err) {
          this.fail(asTidingsError("STORAGE_ERROR", err, this.trackingId));
        }
      }
    })().finally(() => {
      this.writing = null;
    });
  }
}
