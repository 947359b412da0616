//! Ordering rules shared by every reader of one trackingId's events on this
//! node (the topic's room, a socket whose replay is in flight, a catch-up
//! read): given where a reader stands, what an incoming event is to it.
//! Pure functions, tested on their own.

use crate::model::{EventId, Position};

/// What an event is to a reader at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already had (or from an older history): skip it.
    Old,
    /// The very next one: deliver it.
    Next,
    /// The first event of a newer history, after a reader that had events
    /// of an older one: deliver it after a `HISTORY_TRUNCATED` warning (the
    /// reader's seq numbering restarts).
    Restart,
    /// Something is missing between the reader and this event.
    Gap,
}

/// What `id` is to a reader at `at`.
pub fn step(at: Position, id: EventId) -> Step {
    if id.epoch == at.epoch {
        if id.seq <= at.seq {
            Step::Old
        } else if id.seq == at.seq + 1 {
            Step::Next
        } else {
            Step::Gap
        }
    } else if id.epoch > at.epoch {
        match (id.seq, at.seq) {
            // A reader with nothing of the older history loses nothing.
            (1, 0) => Step::Next,
            (1, _) => Step::Restart,
            _ => Step::Gap,
        }
    } else {
        Step::Old
    }
}

/// A reader at `from` read the history after it and got a page whose
/// history stands at `at` and whose first event is `first`: whether the
/// reader has a gap the read cannot fill (events no longer retained, or a
/// history lost), and the position from which the page's events follow.
pub fn resume(from: Position, at: Position, first: Option<EventId>) -> (bool, Position) {
    let base = match first {
        Some(id) => Position {
            epoch: id.epoch,
            seq: id.seq - 1,
        },
        None => at,
    };
    let gap = if base.epoch == from.epoch {
        base.seq != from.seq
    } else {
        // Another history: nothing is lost only if the reader had nothing
        // of its old one and misses nothing of the new one.
        from.seq != 0 || base.seq != 0
    };
    (gap, base)
}

/// A reader at `at` learns that its source moved to `to` without an event
/// (events found gone, a history lost, or one started afresh with none
/// yet): where the reader stands now, and whether it has a gap. A move to
/// where the reader already is, or behind it within one history or to an
/// older one, changes nothing.
pub fn jump(at: Position, to: Position) -> (Position, bool) {
    let other_history = to.epoch > at.epoch || (to == Position::NONE && at != Position::NONE);
    if other_history {
        (to, at.seq != 0 || to.seq != 0)
    } else if to.epoch == at.epoch && to.seq > at.seq {
        (to, true)
    } else {
        (at, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, seq: u64) -> EventId {
        EventId { epoch, seq }
    }
    fn at(epoch: u64, seq: u64) -> Position {
        Position { epoch, seq }
    }

    #[test]
    fn steps() {
        assert_eq!(step(at(5, 3), id(5, 4)), Step::Next);
        assert_eq!(step(at(5, 3), id(5, 3)), Step::Old);
        assert_eq!(step(at(5, 3), id(5, 1)), Step::Old);
        assert_eq!(step(at(5, 3), id(5, 6)), Step::Gap);
        assert_eq!(step(at(5, 3), id(4, 9)), Step::Old);
        assert_eq!(step(at(5, 3), id(6, 1)), Step::Restart);
        assert_eq!(step(at(5, 3), id(6, 2)), Step::Gap);
        assert_eq!(step(Position::NONE, id(6, 1)), Step::Next);
        assert_eq!(step(Position::NONE, id(6, 2)), Step::Gap);
        assert_eq!(step(at(5, 0), id(5, 1)), Step::Next);
        assert_eq!(step(at(5, 0), id(7, 1)), Step::Next);
    }

    #[test]
    fn jumps() {
        // A history lost and started afresh, empty: a gap.
        assert_eq!(jump(at(5, 8), at(9, 0)), (at(9, 0), true));
        // Events found gone within one history: a gap.
        assert_eq!(jump(at(5, 8), at(5, 12)), (at(5, 12), true));
        // Nothing of the old history held, nothing of the new one missed.
        assert_eq!(jump(at(5, 0), at(9, 0)), (at(9, 0), false));
        assert_eq!(jump(Position::NONE, at(9, 0)), (at(9, 0), false));
        // The history is gone altogether.
        assert_eq!(jump(at(5, 8), Position::NONE), (Position::NONE, true));
        assert_eq!(jump(at(5, 0), Position::NONE), (Position::NONE, false));
        assert_eq!(
            jump(Position::NONE, Position::NONE),
            (Position::NONE, false)
        );
        // The source is where the reader is, or behind it.
        assert_eq!(jump(at(5, 8), at(5, 8)), (at(5, 8), false));
        assert_eq!(jump(at(5, 8), at(5, 3)), (at(5, 8), false));
        assert_eq!(jump(at(5, 8), at(4, 3)), (at(5, 8), false));
    }

    #[test]
    fn resumes() {
        // Nothing missed: the page continues where the reader stands.
        assert_eq!(
            resume(at(5, 3), at(5, 9), Some(id(5, 4))),
            (false, at(5, 3))
        );
        assert_eq!(resume(at(5, 9), at(5, 9), None), (false, at(5, 9)));
        assert_eq!(
            resume(Position::NONE, at(5, 2), Some(id(5, 1))),
            (false, at(5, 0))
        );
        assert_eq!(resume(Position::NONE, at(5, 0), None), (false, at(5, 0)));
        // Events after the reader are no longer retained.
        assert_eq!(resume(at(5, 3), at(5, 9), Some(id(5, 7))), (true, at(5, 6)));
        assert_eq!(resume(at(5, 3), at(5, 9), None), (true, at(5, 9)));
        // The history was lost and started afresh.
        assert_eq!(resume(at(5, 3), at(8, 0), None), (true, at(8, 0)));
        assert_eq!(resume(at(5, 3), at(8, 2), Some(id(8, 1))), (true, at(8, 0)));
        // Fewer events than the reader had: a loss the store did not see.
        assert_eq!(resume(at(5, 9), at(5, 4), None), (true, at(5, 4)));
    }
}
