/**
 * @file Where a subscription stands in a trackingId's history, and how a
 * payment compares to it. Tidings ids are `<epoch>-<seq>` (docs/reference.md, "Choices where the contract is silent"):
 * the epoch tells one history from the next (a larger one begins when the
 * server lost the old), the seq orders payments within a history.
 */

export interface Cursor {
  /** The id of the last payment accounted for; null: the history was empty. */
  id: string | null;
  /** The history's epoch; null when unknown (empty history, or an id not of Tidings' form). */
  epoch: number | null;
  seq: number;
}

/** The cursor of an empty history: the next payment is seq 1, of whatever epoch. */
export const EMPTY: Cursor = { id: null, epoch: null, seq: 0 };

const ID = /^(\d{1,16})-(\d{1,16})$/;

/** The epoch of an id of Tidings' form, else null (the id is then opaque). */
export function epochOf(id: string): number | null {
  const m = ID.exec(id);
  return m ? Number(m[1]) : null;
}

/** The cursor at an event `{ id, seq }`. */
export function cursorAt(id: string, seq: number): Cursor {
  return { id, epoch: epochOf(id), seq };
}

export type Relation =
  /** Already accounted for: a duplicate, or from an older history. */
  | "old"
  /** The very next payment. */
  | "next"
  /** Something is missing between the cursor and this payment. */
  | "ahead";

/** How the payment at `c` relates to what `last` accounts for. */
export function relate(last: Cursor, c: Cursor): Relation {
  if (last.epoch !== null && c.epoch !== null && c.epoch !== last.epoch) {
    // A newer epoch is a new history: whatever it holds, the old one's end is unknown.
    return c.epoch < last.epoch ? "old" : "ahead";
  }
  if (c.seq <= last.seq) return "old";
  return c.seq === last.seq + 1 ? "next" : "ahead";
}

/** Orders two cursors by (epoch, seq); unknown epochs compare by seq. */
export function compare(a: Cursor, b: Cursor): number {
  if (a.epoch !== null && b.epoch !== null && a.epoch !== b.epoch) return a.epoch - b.epoch;
  return a.seq - b.seq;
}
