/**
 * @file Where a subscription stands in a history (a trackingId's or a
 * stream's), and how a payment compares to it. Tidings ids are
 * `<epoch>-<seq>` for a trackingId and `s<epoch>-<seq>` for a stream
 * (docs/reference.md, "Choices where the contract is silent"): the epoch
 * tells one history from the next (a larger one begins when the server lost
 * the old), the seq orders payments within a history.
 */

export interface Cursor {
  /** The id of the last payment accounted for; null: the history was empty. */
  id: string | null;
  /** The history's epoch; null when unknown (empty history, or an id not of Tidings' form). */
  epoch: number | null;
  seq: number;
  /**
   * A filtered subscription's payment: the seq of the previous payment the
   * server sent this subscription (contract section 8). Absent otherwise.
   */
  prevSeq?: number;
}

/** The cursor of an empty history: the next payment is seq 1, of whatever epoch. */
export const EMPTY: Cursor = { id: null, epoch: null, seq: 0 };

const ID = /^(s?)(\d{1,16})-(\d{1,16})$/;

/** The epoch of an id of Tidings' form, else null (the id is then opaque). */
export function epochOf(id: string): number | null {
  const m = ID.exec(id);
  return m ? Number(m[2]) : null;
}

/**
 * An id of Tidings' form, parsed: `stream` tells a stream's (`s<epoch>-<seq>`)
 * from a trackingId's (`<epoch>-<seq>`). Null for anything else.
 */
export function parseEventId(id: string): { stream: boolean; epoch: number; seq: number } | null {
  const m = ID.exec(id);
  return m ? { stream: m[1] === "s", epoch: Number(m[2]), seq: Number(m[3]) } : null;
}

/** The cursor at an event `{ id, seq }` (and its `prevSeq`, for a filtered subscription's payment). */
export function cursorAt(id: string, seq: number, prevSeq?: number): Cursor {
  const c: Cursor = { id, epoch: epochOf(id), seq };
  if (prevSeq !== undefined) c.prevSeq = prevSeq;
  return c;
}

export type Relation =
  /** Already accounted for: a duplicate, or from an older history. */
  | "old"
  /** The very next payment. */
  | "next"
  /** Something is missing between the cursor and this payment. */
  | "ahead";

/**
 * How the payment at `c` relates to what `last` accounts for. Without
 * `prevSeq` the next payment is `last.seq + 1`. With it (a filtered
 * subscription: the filter skips seqs), the server says no payment this
 * subscription matches lies between `prevSeq` and `c.seq`: it is the next
 * one when `prevSeq` is not beyond `last.seq` (equal on one unbroken chain;
 * below it only when `last` came from elsewhere, a REST page or the chain
 * before a filter change, which already covered what lies between).
 */
export function relate(last: Cursor, c: Cursor): Relation {
  if (last.epoch !== null && c.epoch !== null && c.epoch !== last.epoch) {
    // A newer epoch is a new history: whatever it holds, the old one's end is unknown.
    return c.epoch < last.epoch ? "old" : "ahead";
  }
  if (c.seq <= last.seq) return "old";
  if (c.prevSeq !== undefined) return c.prevSeq <= last.seq ? "next" : "ahead";
  return c.seq === last.seq + 1 ? "next" : "ahead";
}

/** Orders two cursors by (epoch, seq); unknown epochs compare by seq. */
export function compare(a: Cursor, b: Cursor): number {
  if (a.epoch !== null && b.epoch !== null && a.epoch !== b.epoch) return a.epoch - b.epoch;
  return a.seq - b.seq;
}
