/**
 * @file Backfill over REST (`GET /v1/events`), with the socket's token in
 * token mode. Non-2xx answers become TidingsErrors with the body's code.
 */
import { TidingsError } from "./errors.js";
import type { ErrorCode, HistoryPage, PaymentStatus } from "./types.js";

export interface HistoryQuery {
  /** Events after this id (default: from the oldest retained). */
  since?: string;
  /** Page size, 1 to 1000 (the server's default is 100); with `status`, it counts matching payments. */
  limit?: number;
  /**
   * Only payments of these statuses (`&status=executed,failed`); each then
   * carries `prevSeq`. A subscription's `history()` defaults to its filter's;
   * `null` asks for every payment.
   */
  status?: PaymentStatus[] | null;
  signal?: AbortSignal;
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/** One page of a trackingId's (or a stream's) retained history; `token` is sent as a bearer token. */
export async function fetchHistory(
  fetchFn: FetchLike,
  baseUrl: string,
  trackingId: string,
  query: HistoryQuery,
  token: string | undefined,
): Promise<HistoryPage> {
  const q = new URLSearchParams({ trackingId });
  if (query.since !== undefined) q.set("since", query.since);
  if (query.limit !== undefined) q.set("limit", String(query.limit));
  if (query.status) q.set("status", query.status.join(","));
  const headers: Record<string, string> = { accept: "application/json" };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  let res: Response;
  try {
    res = await fetchFn(`${baseUrl}/v1/events?${q}`, { headers, signal: query.signal });
  } catch (err) {
    throw new TidingsError("HTTP_ERROR", `GET /v1/events failed: ${(err as Error)?.message ?? err}`, {
      trackingId,
      cause: err,
    });
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (!res.ok) {
    const e = (body as { error?: { code?: string; message?: string; details?: unknown } } | undefined)?.error;
    throw new TidingsError(
      (e?.code as ErrorCode | undefined) ?? "HTTP_ERROR",
      e?.message ?? `GET /v1/events answered ${res.status}`,
      { trackingId, status: res.status, details: e?.details },
    );
  }
  const page = body as HistoryPage | undefined;
  if (!page || !Array.isArray(page.data)) {
    throw new TidingsError("HTTP_ERROR", "GET /v1/events: the body is not a history page", {
      trackingId,
      status: res.status,
    });
  }
  return page;
}
