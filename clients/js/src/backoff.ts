/**
 * @file Reconnection with exponential backoff and jitter. socket.io-client's
 * Manager does it for lost transports; the SDK reuses the same formula for the
 * cases the Manager leaves to the application (a refused handshake, a server
 * disconnect), so both follow one configuration.
 */

export interface ReconnectOptions {
  /** Delay before the first retry, ms (default 1000). */
  initialDelayMs?: number;
  /** Upper bound of a delay, ms (default 30000). */
  maxDelayMs?: number;
  /** Jitter: each delay is randomised by ± this fraction, 0 to 1 (default 0.5). */
  jitter?: number;
  /** Attempts before giving up with `RECONNECT_FAILED` (default: never give up). */
  maxAttempts?: number;
}

export interface Backoff {
  initialDelayMs: number;
  maxDelayMs: number;
  jitter: number;
  maxAttempts: number;
}

/** Validated options, with defaults; a bad value throws at `connect()`. */
export function backoffOf(o: ReconnectOptions = {}): Backoff {
  const b = {
    initialDelayMs: o.initialDelayMs ?? 1000,
    maxDelayMs: o.maxDelayMs ?? 30000,
    jitter: o.jitter ?? 0.5,
    maxAttempts: o.maxAttempts ?? Infinity,
  };
  if (!(b.initialDelayMs >= 0) || !(b.maxDelayMs >= b.initialDelayMs)) {
    throw new RangeError("reconnect: need 0 <= initialDelayMs <= maxDelayMs");
  }
  if (!(b.jitter >= 0 && b.jitter <= 1)) throw new RangeError("reconnect.jitter must be within 0..1");
  if (!(b.maxAttempts >= 0)) throw new RangeError("reconnect.maxAttempts must be >= 0");
  return b;
}

/** The delay before retry number `attempt` (0-based): initial × 2^attempt, jittered, capped. */
export function delayOf(b: Backoff, attempt: number): number {
  const base = Math.min(b.maxDelayMs, b.initialDelayMs * 2 ** Math.min(attempt, 30));
  const spread = base * b.jitter;
  return Math.min(b.maxDelayMs, Math.max(0, Math.round(base - spread + Math.random() * 2 * spread)));
}
