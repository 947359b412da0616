/**
 * @file tidings-client: the client side of the Tidings contract, on
 * socket.io-client. `connect(url, options)` gives a client;
 * `client.subscribe(trackingId)` (or an account stream, `"merchant-42:*"`) a
 * subscription whose `payment` listeners see every payment once, in seq
 * order, across reconnects and restarts.
 */
export { connect, TidingsClient } from "./client.js";
export type { AuthOption, ClientEvents, ClientOptions } from "./client.js";
export { Subscription } from "./subscription.js";
export type { SubscribeOptions, SubscriptionEvents } from "./subscription.js";
export { TidingsError } from "./errors.js";
export { fileStorage, localStorageStorage, memoryStorage } from "./storage.js";
export type { Storage } from "./storage.js";
export type { ReconnectOptions } from "./backoff.js";
export type { FetchLike, HistoryQuery } from "./rest.js";
export type { Off } from "./emitter.js";
export type {
  AckEnvelope,
  ClientErrorCode,
  ErrorCode,
  ErrorEnvelope,
  Filter,
  Gap,
  HistoryPage,
  PaymentData,
  PaymentEnvelope,
  PaymentSource,
  PaymentStatus,
  Position,
  ServerErrorCode,
  StreamPaymentEnvelope,
} from "./types.js";
