/**
 * @file The one error type the SDK surfaces: the contract's codes (FORBIDDEN,
 * UNAUTHORIZED, ...) and the SDK's own, so `err.code` can be switched on.
 */
import type { ErrorCode } from "./types.js";

/** An error with a contract (or SDK) code; `trackingId` when it concerns one. */
export class TidingsError extends Error {
  readonly code: ErrorCode;
  readonly trackingId?: string;
  /** HTTP status, for errors of REST calls. */
  readonly status?: number;
  /** `details` of an HTTP error body, when it had any. */
  readonly details?: unknown;

  constructor(
    code: ErrorCode,
    message: string,
    extra: { trackingId?: string; status?: number; details?: unknown; cause?: unknown } = {},
  ) {
    super(message);
    this.name = "TidingsError";
    this.code = code;
    if (extra.trackingId !== undefined) this.trackingId = extra.trackingId;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.details !== undefined) this.details = extra.details;
    if (extra.cause !== undefined) (this as { cause?: unknown }).cause = extra.cause;
  }
}

/** Wraps anything thrown (by a storage, a fetch) as a TidingsError of `code`. */
export function asTidingsError(code: ErrorCode, err: unknown, trackingId?: string): TidingsError {
  if (err instanceof TidingsError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new TidingsError(code, message, { trackingId, cause: err });
}
