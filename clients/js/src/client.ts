/**
 * @file The connection: one socket.io-client socket to a Tidings server, its
 * reconnection (backoff with jitter, a fresh token at every attempt), and the
 * routing of `ack`, `error` and `payment` envelopes to the subscriptions.
 */
import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";
import { backoffOf, delayOf, type Backoff, type ReconnectOptions } from "./backoff.js";
import { Emitter, type Off } from "./emitter.js";
import { asTidingsError, TidingsError } from "./errors.js";
import { fetchHistory, type FetchLike, type HistoryQuery } from "./rest.js";
import { memoryStorage, type Storage } from "./storage.js";
import { Subscription, type SubscribeOptions, type SubscriptionHost } from "./subscription.js";
import type { AckEnvelope, ErrorEnvelope, HistoryPage } from "./types.js";

/** A token, or a function returning a fresh one (called at every connection attempt and when a REST call needs one). */
export type AuthOption = string | (() => string | Promise<string>);

export interface ClientOptions {
  /** Token mode: the socket token (`auth: { token }` in the handshake, bearer token for REST). */
  auth?: AuthOption;
  /** Where the last id per trackingId is kept (default: memory; see localStorageStorage, fileStorage). */
  storage?: Storage;
  /** Prefix of storage keys (default `"tidings:"`); a key is prefix + server URL + ` ` + trackingId. */
  storagePrefix?: string;
  /** Reconnection backoff (exponential, with jitter). */
  reconnect?: ReconnectOptions;
  /** Socket.IO path (default `/ws/v1`). */
  path?: string;
  /** Transports, as socket.io-client's option (default: polling, upgraded to websocket). */
  transports?: ("polling" | "websocket" | "webtransport")[];
  /** The fetch used for REST calls (default: the global one). */
  fetch?: FetchLike;
  /** Further socket.io-client options (the SDK's own take precedence). */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

export type ClientEvents = {
  /** Connected (first time and after every reconnect); every subscription is being resubscribed. */
  connect: () => void;
  /** The connection was lost (`reason` as socket.io-client gives it); it is being re-established. */
  disconnect: (reason: string) => void;
  /** Every error: the connection's (UNAUTHORIZED, RECONNECT_FAILED) and every subscription's. */
  error: (error: TidingsError) => void;
};

const SUBSCRIBED = /^Subscribed to trackingId: ([\s\S]*)$/;

export class TidingsClient extends Emitter<ClientEvents> {
  private readonly url: string;
  private readonly socket: Socket;
  private readonly subs = new Map<string, Subscription>();
  private readonly host: SubscriptionHost;
  private readonly auth: AuthOption | undefined;
  private readonly fetchFn: FetchLike;
  private readonly storageBase: string;
  /** The token of the last connection attempt: REST calls use it too. */
  private token: string | undefined;
  /** Retries the SDK makes itself, where socket.io-client does not retry (a refused handshake, a server disconnect). */
  private attempts = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;

  constructor(url: string, options: ClientOptions = {}) {
    super();
    this.url = url.replace(/\/+$/, "");
    this.auth = options.auth;
    if (typeof options.auth === "string") this.token = options.auth;
    const backoff: Backoff = backoffOf(options.reconnect);
    const storage = options.storage ?? memoryStorage();
    const fetchFn = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    if (!fetchFn) throw new TypeError("connect: no fetch in this environment; pass options.fetch");
    this.fetchFn = fetchFn;
    this.storageBase = `${options.storagePrefix ?? "tidings:"}${this.url} `;
    const storageKey = (trackingId: string) => this.storageBase + trackingId;
    this.host = {
      send: (event, payload, onReply) => {
        if (!this.socket.connected) return false;
        if (onReply) this.socket.emit(event, payload, onReply);
        else this.socket.emit(event, payload);
        return true;
      },
      isConnected: () => this.socket.connected,
      fetchPage: (trackingId, query) => this.fetchPage(trackingId, query),
      storage,
      storageKey,
      backoff,
      detach: (sub) => {
        if (this.subs.get(sub.trackingId) === sub) this.subs.delete(sub.trackingId);
      },
      report: (err) => this.emit("error", err),
    };

    this.socket = io(this.url, {
      ...options.socketOptions,
      path: options.path ?? "/ws/v1",
      ...(options.transports ? { transports: options.transports } : {}),
      forceNew: true,
      reconnection: true,
      reconnectionDelay: backoff.initialDelayMs,
      reconnectionDelayMax: backoff.maxDelayMs,
      randomizationFactor: backoff.jitter,
      reconnectionAttempts: backoff.maxAttempts,
      ...(options.auth !== undefined ? { auth: (cb: (data: object) => void) => this.handshakeAuth(cb) } : {}),
    });
    this.socket.on("connect", () => {
      this.attempts = 0;
      for (const sub of this.subs.values()) sub.onConnect();
      this.emit("connect", undefined as never);
    });
    this.socket.on("disconnect", (reason) => {
      for (const sub of this.subs.values()) sub.onDisconnect();
      this.emit("disconnect", reason);
      // socket.io-client reconnects by itself except after a server-side disconnect.
      if (reason === "io server disconnect") this.retryLater();
    });
    this.socket.on("connect_error", (err: Error) => {
      if (/^UNAUTHORIZED/.test(err.message)) {
        this.emit("error", new TidingsError("UNAUTHORIZED", err.message));
      }
      // A handshake the server refused is not retried by socket.io-client: with an auth function a
      // new attempt brings a new token; with a fixed token (or none) it would be refused again.
      if (!this.socket.active && typeof this.auth === "function") this.retryLater();
    });
    this.socket.io.on("reconnect_failed", () => {
      this.emit("error", new TidingsError("RECONNECT_FAILED", "gave up reconnecting (reconnect.maxAttempts)"));
    });
    this.socket.on("ack", (env: AckEnvelope) => {
      const m = typeof env?.data === "string" ? SUBSCRIBED.exec(env.data) : null;
      if (m) this.subs.get(m[1])?.onAck(env);
    });
    this.socket.on("error", (env: ErrorEnvelope) => {
      // Refusals also answer the subscribe's own callback, which routes them even when they name no
      // trackingId; the stream's place matters only for HISTORY_TRUNCATED (between the ack and the replay).
      if (env?.data?.code !== "HISTORY_TRUNCATED") return;
      const tid = env.data.trackingId;
      if (typeof tid === "string") this.subs.get(tid)?.onError(env);
    });
    this.socket.on("payment", (env: { stream?: unknown; data?: { trackingId?: unknown } }) => {
      // A stream's payment goes to the stream's subscription (its trackingId's copy, if also held, comes on its own).
      const name = typeof env?.stream === "string" ? env.stream : env?.data?.trackingId;
      if (typeof name === "string") this.subs.get(name)?.onPayment(env);
    });
  }

  /** Whether the socket is connected now. */
  get connected(): boolean {
    return this.socket.connected;
  }

  override on<K extends keyof ClientEvents>(event: K, fn: ClientEvents[K]): Off {
    return super.on(event, fn);
  }

  /**
   * Subscribes to a trackingId, or to an account stream (`merchant-42:*`:
   * every payment of the account's trackingIds, with the stream's own ids and
   * seqs), resuming after its stored last id, if any. `filter` is sent with
   * every (re)subscribe. Subscribing again to a held name returns the same
   * subscription, unchanged (`setFilter` changes its filter).
   */
  subscribe(trackingId: string, options?: SubscribeOptions): Subscription {
    if (this.closed) throw new TidingsError("CLOSED", "the client is closed");
    let sub = this.subs.get(trackingId);
    if (!sub) {
      sub = new Subscription(this.host, trackingId, options);
      this.subs.set(trackingId, sub);
    }
    return sub;
  }

  /** A page of a trackingId's (or a stream's) retained history over REST, held or not. */
  history(trackingId: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    return this.fetchPage(trackingId, query);
  }

  /** Closes the connection and every subscription; resolves when the last ids are stored. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    const subs = [...this.subs.values()];
    await Promise.all(subs.map((s) => s.flush()));
    this.socket.close();
    await Promise.all(subs.map((s) => s.unsubscribe()));
    this.removeAll();
  }

  private handshakeAuth(cb: (data: object) => void): void {
    const auth = this.auth;
    if (typeof auth !== "function") {
      cb(auth !== undefined ? { token: auth } : {});
      return;
    }
    Promise.resolve()
      .then(auth)
      .then(
        (token) => {
          this.token = token;
          cb({ token });
        },
        (err: unknown) => {
          // The server refuses a handshake without a token (UNAUTHORIZED), and the retry asks again.
          this.emit("error", asTidingsError("UNAUTHORIZED", err));
          cb({});
        },
      );
  }

  private retryLater(): void {
    if (this.closed || this.retryTimer !== null) return;
    const b = this.host.backoff;
    if (this.attempts >= b.maxAttempts) {
      this.emit("error", new TidingsError("RECONNECT_FAILED", "gave up reconnecting (reconnect.maxAttempts)"));
      return;
    }
    const delay = delayOf(b, this.attempts++);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (!this.closed && !this.socket.connected) this.socket.connect();
    }, delay);
  }

  private async fetchPage(trackingId: string, query: HistoryQuery): Promise<HistoryPage> {
    const auth = this.auth;
    if (typeof auth !== "function") return fetchHistory(this.fetchFn, this.url, trackingId, query, auth);
    this.token ??= await auth();
    try {
      return await fetchHistory(this.fetchFn, this.url, trackingId, query, this.token);
    } catch (err) {
      // The token may have expired since it was fetched: ask once for a fresh one.
      if (!(err instanceof TidingsError) || err.code !== "UNAUTHORIZED") throw err;
      this.token = await auth();
      return fetchHistory(this.fetchFn, this.url, trackingId, query, this.token);
    }
  }
}

/** Connects to a Tidings server (`url` as for the REST API, e.g. `https://tidings.example.com`). */
export function connect(url: string, options?: ClientOptions): TidingsClient {
  return new TidingsClient(url, options);
}
