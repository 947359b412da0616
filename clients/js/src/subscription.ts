/**
 * @file One trackingId's subscription: the part of the contract a client must
 * do itself. It keeps the last id (in the storage), subscribes with `since`
 * on every connect, delivers each payment once and in seq order (duplicates
 * dropped, payments after a hole held back until the hole is filled by a
 * resubscribe with `since`), and turns HISTORY_TRUNCATED into a `gap`.
 */
import type { Backoff } from "./backoff.js";
import { delayOf } from "./backoff.js";
import { compare, cursorAt, EMPTY, relate, type Cursor } from "./cursor.js";
import { Emitter, type Off } from "./emitter.js";
import { asTidingsError, TidingsError } from "./errors.js";
import type { HistoryQuery } from "./rest.js";
import type { Storage } from "./storage.js";
import type { AckEnvelope, ErrorEnvelope, Gap, HistoryPage, PaymentEnvelope, Position } from "./types.js";

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  /**
   * Emits on the socket if it is connected (false if not); `onReply` gets the
   * server's answer to this very event (an ack or a refusal).
   */
  send(
    event: "subscribe" | "unsubscribe",
    payload: { trackingId: string; since?: string },
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
  /** Where to start when the storage holds nothing for this trackingId (default: from now). */
  since?: string;
}

export type SubscriptionEvents = {
  /** A payment, each exactly once, in seq order. */
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

const cursorOf = (p: PaymentEnvelope): Cursor => cursorAt(p.id, p.seq);

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
  const m = /^\d{1,16}-(\d{1,16})$/.exec(id);
  return m ? cursorAt(id, Number(m[1])) : null;
}

export class Subscription extends Emitter<SubscriptionEvents> {
  readonly trackingId: string;
  private readonly host: SubscriptionHost;
  private state: State = "loading";
  /** The last payment delivered (or, on a fresh subscribe, the ack's position). */
  private last: Cursor | null = null;
  /** Set by HISTORY_TRUNCATED: the next new payment continues, and the gap is counted from here. */
  private gapFrom: Cursor | null = null;
  /** Payments after a hole, in (epoch, seq) order, waiting for it to be filled. */
  private held: PaymentEnvelope[] = [];
  /** A resubscribe with `since` (or a read from the start) is filling a hole. */
  private recovering = false;
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
    let initial: Cursor | null = null;
    if (opts.since !== undefined) {
      initial = parseId(opts.since);
      if (!initial) throw new TypeError(`subscribe: since ${JSON.stringify(opts.since)} is not a Tidings event id`);
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
        this.last = stored ?? initial;
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
    return this.state === "active" || this.recovering;
  }

  override on<K extends keyof SubscriptionEvents>(event: K, fn: SubscriptionEvents[K]): Off {
    return super.on(event, fn);
  }

  /** One page of the retained history over REST (`GET /v1/events`), with the socket's token in token mode. */
  history(query: HistoryQuery = {}): Promise<HistoryPage> {
    return this.host.fetchPage(this.trackingId, query);
  }

  /** Leaves the trackingId; the stored last id is kept (a later subscribe resumes from it). */
  unsubscribe(): Promise<void> {
    if (this.state !== "closed") {
      this.state = "closed";
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
    this.recovering = false;
    this.replayEnd = null;
    if (this.state === "loading" || this.state === "closed") return;
    this.clearRetry();
    this.sendSubscribe();
  }

  /** @internal */
  onDisconnect(): void {
    this.clearRetry();
    this.recovering = false;
    if (this.state !== "loading" && this.state !== "closed") this.state = "idle";
  }

  /** @internal A subscribe's `ack` for this trackingId. */
  onAck(env: AckEnvelope): void {
    if (this.state === "closed" || this.state === "loading") return;
    this.state = "active";
    this.retries = 0;
    this.recovering = false;
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
        this.recovering = false;
        this.retryLater();
        return;
      case "FORBIDDEN":
      case "INVALID_TRACKING_ID":
      case "TOO_MANY_SUBSCRIPTIONS":
        // Refused for this connection; tried again at the next connect (a new token may cover it).
        if (this.state === "subscribing") this.state = "refused";
        this.fail(err);
        return;
      default:
        this.fail(err);
    }
  }

  /** @internal A `payment` for this trackingId (live, replayed, or read over REST). */
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
    const gap: Gap = {
      trackingId: this.trackingId,
      lastId: from.id,
      fromSeq: from.seq + 1,
      toSeq: restarted ? null : to.seq - 1,
      restarted,
      nextId: to.id as string,
      nextSeq: to.seq,
    };
    this.emit("gap", gap);
  }

  private deliver(env: PaymentEnvelope): void {
    this.last = cursorOf(env);
    this.emit("payment", env);
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

  /** Fills a hole: resubscribe with since = the last delivered id (the server replays in order), or read from the start. */
  private startRecovery(): void {
    if (this.recovering || this.state !== "active" || !this.host.isConnected() || this.last === null) return;
    this.recovering = true;
    if (this.last.id !== null) {
      this.state = "subscribing";
      this.host.send("subscribe", { trackingId: this.trackingId, since: this.last.id }, this.onReply);
    } else {
      void this.readFromStart();
    }
  }

  /** No id to pass as since (the history began unseen): read it over REST from the oldest retained event. */
  private async readFromStart(): Promise<void> {
    let since: string | undefined;
    try {
      for (let page = 0; page < 1000; page++) {
        const p = await this.host.fetchPage(this.trackingId, { since, limit: 1000 });
        if (this.state === "closed") return;
        if (p.data.length === 0) break;
        if (since === undefined && this.last !== null && this.last.id === null && this.gapFrom === null) {
          // The first page starts at the oldest retained event: what came before it is gone.
          this.gapFrom = this.last;
        }
        for (const env of p.data) this.onPayment(env);
        if (!p.hasMore) break;
        since = p.data[p.data.length - 1].id;
      }
    } catch (err) {
      this.fail(asTidingsError("HTTP_ERROR", err, this.trackingId));
    } finally {
      this.recovering = false;
    }
  }

  private sendSubscribe(): void {
    if (this.state === "closed" || this.state === "loading") return;
    const since = this.last?.id ?? undefined;
    const payload = since ? { trackingId: this.trackingId, since } : { trackingId: this.trackingId };
    if (this.host.send("subscribe", payload, this.onReply)) this.state = "subscribing";
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
