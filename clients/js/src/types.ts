/**
 * @file The wire contract's envelopes and codes (docs/protocol.md), and
 * the SDK's own event shapes. Names and fields are exactly the server's.
 */

/** `status` of a payment. */
export type PaymentStatus = "executed" | "failed" | "pending";

/** `data` of a `payment` envelope: what the payment backend ingested. */
export interface PaymentData {
  trackingId: string;
  /** Integer in the token's base units (never above 2^53 - 1: the server refuses larger). */
  amount: number;
  /** On-chain execution time, in **seconds**. */
  timestamp: number;
  status: PaymentStatus;
  /** On-chain transaction signature; absent for a payment that never reached the chain. */
  signature?: string;
}

/**
 * A subscription's filter (`subscribe`'s `filter`): only payments whose
 * `data.status` is listed are replayed and delivered. A non-empty list.
 */
export interface Filter {
  status: PaymentStatus[];
}

/** Where a stream's payment stands in its own trackingId's history. */
export interface PaymentSource {
  /** The payment's id in its trackingId's history (`<epoch>-<seq>`). */
  id: string;
  /** Its seq there. */
  seq: number;
}

/**
 * A `payment` event (envelope `type` `payment_notification`), of a
 * trackingId or of a stream (then `stream` and `source` are there).
 */
export interface PaymentEnvelope {
  type: "payment_notification";
  /**
   * Event id, unique within its history: `<epoch>-<seq>` for a trackingId,
   * `s<epoch>-<seq>` for a stream.
   */
  id: string;
  /** Position in the history (the trackingId's, or the stream's): 1, 2, 3, ... without holes. */
  seq: number;
  /** A stream's payment: the stream's name (`merchant-42:*`). */
  stream?: string;
  /** A stream's payment: its place in its own trackingId's history (`data.trackingId`). */
  source?: PaymentSource;
  /**
   * Only on the payments of a filtered subscription: the `seq` of the
   * previous payment this subscription was sent (or where it started), so
   * that a hole is seen although the filter skips seqs.
   */
  prevSeq?: number;
  data: PaymentData;
  /** When the server accepted the payment, in **milliseconds**. */
  timestamp: number;
}

/** A stream's `payment` event: what a subscription to `merchant-42:*` receives. */
export interface StreamPaymentEnvelope extends PaymentEnvelope {
  stream: string;
  source: PaymentSource;
}

/** Where a history (a trackingId's or a stream's) stood when a subscribe took effect. */
export interface Position {
  id: string | null;
  seq: number;
}

/** An `ack` envelope (subscribe acks carry `position`). */
export interface AckEnvelope {
  type: "ack";
  data: string;
  timestamp: number;
  position?: Position;
}

/** Codes the server sends (`error` events and HTTP error bodies). */
export type ServerErrorCode =
  | "INVALID_TRACKING_ID"
  | "INVALID_PAYLOAD"
  | "INVALID_SINCE"
  | "TOO_MANY_SUBSCRIPTIONS"
  | "RATE_LIMITED"
  | "UNAUTHORIZED"
  | "FORBIDDEN"
  | "HISTORY_TRUNCATED"
  | "CONNECTION_ERROR"
  | "PAYLOAD_TOO_LARGE"
  | "UNAVAILABLE"
  | "NOT_FOUND";

/**
 * Codes the SDK adds: `RECONNECT_FAILED` (the configured attempts are spent),
 * `STORAGE_ERROR` (the storage threw; delivery goes on), `HTTP_ERROR` (a REST
 * call failed without a contract error body), `CLOSED` (the client was closed).
 */
export type ClientErrorCode = "RECONNECT_FAILED" | "STORAGE_ERROR" | "HTTP_ERROR" | "CLOSED";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

/** An `error` envelope. */
export interface ErrorEnvelope {
  type: "error";
  data: { code: ServerErrorCode; message: string; trackingId?: string; details?: unknown };
  timestamp: number;
}

/** One page of `GET /v1/events` (a stream's envelopes for a stream; with `status`, each has `prevSeq`). */
export interface HistoryPage {
  data: PaymentEnvelope[];
  hasMore: boolean;
  /** Something after `since` is no longer retained: the page starts at the oldest retained event. */
  truncated: boolean;
}

/**
 * Payments that cannot be recovered: the server no longer retains them (its
 * retention dropped them, or its history was lost and begun again). Emitted
 * once, just before `nextId` is delivered.
 */
export interface Gap {
  /** The subscription's name: a trackingId, or a stream (`merchant-42:*`). */
  trackingId: string;
  /** The last payment delivered (or stored) before the gap; null if none was. */
  lastId: string | null;
  /** First lost seq, in `lastId`'s history (`lastId`'s seq + 1). */
  fromSeq: number;
  /**
   * Last lost seq in that same history (`nextSeq - 1`; for a filtered
   * subscription, the seq the server says the next payment follows, its
   * `prevSeq`: some of the lost seqs may not have matched the filter); null
   * when the history restarted, since how far the old one went is unknown.
   */
  toSeq: number | null;
  /**
   * The server lost the history and began a new one (its seq numbering starts
   * at 1 again): everything after `lastId` in the old history, and seqs
   * `1 .. nextSeq - 1` of the new one, are lost.
   */
  restarted: boolean;
  /** The first payment delivered after the gap. */
  nextId: string;
  nextSeq: number;
}
