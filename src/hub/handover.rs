//! Hand-over of a subscribe with `since`: the subscriber's replay, then
//! what the room got while the replay was read, then the room, with
//! nothing lost, nothing twice and nothing early; and the way back into the
//! room after a resubscribe whose read failed.

use std::sync::Arc;

use super::catch_up::Backoff;
use super::order::{Step, jump, resume, step};
use super::topic::{Coverage, Filtered, Missed, Topic, send_payment, warn};
use super::{Hub, Replay, Subscriber};
use crate::model::{Position, StatusFilter, StoredEvent};
use crate::store::{HistoryPage, StoreError};
use crate::telemetry;

/// What [`send_following`] does at a gap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gaps {
    /// Stop there: the caller reads what is missing.
    Stop,
    /// Warn the subscriber (`HISTORY_TRUNCATED`) and go on.
    Warn,
}

impl<S: Subscriber> Hub<S> {
    /// A pending subscriber's read is back: ack, warning, replay, then what
    /// was buffered meanwhile from where the replay ended, then the room.
    ///
    /// Returns how many events were replayed. The subscriber joins the
    /// room covering what it was handed ([`Coverage`]).
    pub(super) async fn hand_over(
        &self,
        topic: &Arc<Topic<S>>,
        sub: &S,
        replay: Option<Replay>,
        filter: Option<StatusFilter>,
        page: HistoryPage,
        ack: impl FnOnce(Position),
    ) -> usize {
        let tid = topic.tracking_id.as_str();
        ack(page.position);
        // Where a filtered subscription's prevSeq chain starts (contract
        // section 8): since's seq when the replay follows it; after a
        // truncation, just before the oldest retained payment; else the
        // ack's position.
        let start = match replay {
            Some(_) if page.truncated => page.events.first().map_or(page.position, |e| Position {
                epoch: e.id.epoch,
                seq: e.id.seq - 1,
            }),
            Some(replay) => replay.since.into(),
            None => page.position,
        };
        let mut filtered = Filtered::new(filter, start);
        // The last payment it could not take, if any: it joins covering
        // only what follows it.
        let mut lost: Option<Position> = None;
        let mut at = page.position;
        let mut replayed = 0;
        let covers = match replay {
            None => Coverage::After(page.position),
            Some(_) if page.truncated => Coverage::All,
            Some(replay) => Coverage::After(replay.since.into()),
        };
        if let Some(replay) = replay {
            if page.truncated {
                warn(
                    sub,
                    tid,
                    format!(
                        "Some payments of trackingId {tid} after the given since are no longer retained; replay starts at the oldest retained one"
                    ),
                );
            }
            // A member's fill: only what it lacks (a truncated read starts
            // later and may run past it).
            let lacks = |e: &&StoredEvent| {
                replay
                    .fill
                    .is_none_or(|to| e.id.epoch == to.epoch && e.id.seq <= to.seq)
            };
            for event in page.events.iter().filter(lacks) {
                // A socket whose buffer is full takes nothing more: the
                // rest is not even encoded, and it lacks all of it.
                if !send_payment(sub, filtered.as_deref_mut(), event) {
                    lost = page.events.iter().rev().find(lacks).map(|e| e.id.into());
                    break;
                }
                replayed += 1;
            }
            metrics::counter!(telemetry::REPLAYED).increment(replayed as u64);
            metrics::histogram!(telemetry::REPLAY_EVENTS).record(replayed as f64);
            if replay.fill.is_some() {
                // It has what the room had when it left: on from there.
                if let Some(left) = topic.live().pending.get(&sub.id()).and_then(|p| p.left_at) {
                    at = left;
                }
            } else if page.has_more
                && let Some(last) = page.events.last()
            {
                at = last.id.into();
            }
        }
        let mut retry = Backoff::default();
        loop {
            {
                let mut live = topic.live();
                let Some(pending) = live.pending.get_mut(&sub.id()) else {
                    return replayed; // unsubscribed (disconnected) meanwhile
                };
                let overflow = std::mem::take(&mut pending.overflow);
                let buffered = std::mem::take(&mut pending.buffered);
                let missing = match send_following(
                    sub,
                    filtered.as_deref_mut(),
                    &mut lost,
                    tid,
                    at,
                    buffered,
                    Gaps::Stop,
                ) {
                    Ok(after) => {
                        at = after;
                        overflow
                    }
                    Err(before) => {
                        at = before;
                        true
                    }
                };
                if !missing {
                    tracing::debug!(tracking_id = tid, ?at, "joins the room after its replay");
                    live.pending.remove(&sub.id());
                    live.join(sub, lost.map_or(covers, Coverage::After), filtered);
                    return replayed;
                }
            }
            // Live payments outran the buffer: read what is missing.
            match self.store.read(tid, at.id(), self.replay_limit).await {
                Ok(more) => {
                    let (gap, base) = resume(at, more.position, more.events.first().map(|e| e.id));
                    if gap {
                        warn(
                            sub,
                            tid,
                            format!("Some payments of trackingId {tid} are no longer retained"),
                        );
                        if let Some(f) = filtered.as_deref_mut() {
                            f.last = base;
                        }
                    }
                    at = base;
                    for event in more.events {
                        if step(at, event.id) == Step::Next {
                            if !send_payment(sub, filtered.as_deref_mut(), &event) {
                                lost = Some(event.id.into());
                            }
                            at = event.id.into();
                        }
                    }
                }
                Err(StoreError::InvalidSince) => at = Position::NONE,
                Err(StoreError::Malformed(_)) => {
                    // Reading again reads the same: what is missing cannot be
                    // had. The subscriber is told, and joins from what was
                    // buffered on.
                    warn(
                        sub,
                        tid,
                        format!(
                            "Payments of trackingId {tid} may be missing and cannot be recovered"
                        ),
                    );
                    self.rejoin_from(topic, sub, Some((at, filtered)));
                    return replayed;
                }
                Err(StoreError::Unavailable(_)) => {
                    if !sub.is_connected() {
                        topic.live().pending.remove(&sub.id());
                        return replayed;
                    }
                    retry.wait().await;
                }
            }
        }
    }

    /// A failed resubscribe: the subscriber gets what the room got
    /// meanwhile, warnings included, and is back in the room, as if nothing
    /// happened.
    pub(super) fn rejoin(&self, topic: &Topic<S>, sub: &S) {
        self.rejoin_from(topic, sub, None);
    }

    /// Sends `sub`, standing at `at` with its filter (by default where it
    /// left the room, with the filter it had), what it missed from the
    /// room, warning of every gap, and puts it back in the room.
    fn rejoin_from(
        &self,
        topic: &Topic<S>,
        sub: &S,
        from: Option<(Position, Option<Box<Filtered>>)>,
    ) {
        let mut live = topic.live();
        let Some(pending) = live.pending.remove(&sub.id()) else {
            return;
        };
        let (at, mut filtered) = match from {
            Some((at, filtered)) => (at, filtered),
            None => (pending.left_at.unwrap_or_default(), pending.left_filter),
        };
        let tid = topic.tracking_id.as_str();
        tracing::debug!(
            tracking_id = tid,
            ?at,
            missed = pending.buffered.len(),
            "rejoining the room"
        );
        // No gap can stop it: the room's own gaps were announced to the
        // room, so they are announced here too.
        let mut lost = None;
        let _ = send_following(
            sub,
            filtered.as_deref_mut(),
            &mut lost,
            tid,
            at,
            pending.buffered,
            Gaps::Warn,
        );
        // It was handed at least what follows where it stood (or the last
        // payment it could not take).
        live.join(sub, Coverage::After(lost.unwrap_or(at)), filtered);
    }
}

/// Sends `sub` what it missed from the room (`missed`) that follows `at`,
/// with a `HISTORY_TRUNCATED` warning before a history that started afresh
/// (and, with [`Gaps::Warn`], before any gap). Returns where the
/// subscriber now stands, or, with [`Gaps::Stop`], where it stood at the
/// first gap. A payment it cannot take (its buffer is full) is recorded in
/// `refused`.
fn send_following<S: Subscriber>(
    sub: &S,
    mut filtered: Option<&mut Filtered>,
    refused: &mut Option<Position>,
    tid: &str,
    mut at: Position,
    missed: Vec<Missed>,
    gaps: Gaps,
) -> Result<Position, Position> {
    let lost = || format!("Payments of trackingId {tid} may be missing and cannot be recovered");
    for item in missed {
        let event = match item {
            Missed::Event(event) => event,
            Missed::Jump(to) => {
                let (after, gap) = jump(at, to);
                if gap && gaps == Gaps::Stop {
                    return Err(at);
                }
                if gap {
                    warn(sub, tid, lost());
                    if let Some(f) = filtered.as_deref_mut() {
                        f.last = after;
                    }
                }
                at = after;
                continue;
            }
        };
        match step(at, event.id) {
            Step::Old => continue,
            Step::Next => {}
            Step::Restart => warn(
                sub,
                tid,
                format!("The history of trackingId {tid} started afresh"),
            ),
            Step::Gap if gaps == Gaps::Stop => return Err(at),
            Step::Gap => warn(sub, tid, lost()),
        }
        if let Some(f) = filtered.as_deref_mut()
            && step(at, event.id) != Step::Next
        {
            // Warned: the chain goes on from just before this payment.
            f.last = Position {
                epoch: event.id.epoch,
                seq: event.id.seq - 1,
            };
        }
        if !send_payment(sub, filtered.as_deref_mut(), &event) {
            *refused = Some(event.id.into());
        }
        at = event.id.into();
    }
    Ok(at)
}
