"""Watch Tidings payments from Python without ever missing one silently.

The resume logic every Tidings client needs, over python-socketio:

- the last event id per trackingId is kept in a JSON file (written
  atomically), so a restarted process resumes where it stopped;
- on every connect (the first and each reconnect) every trackingId is
  subscribed again with ``since`` = that id;
- each payment reaches the application once and in ``seq`` order: a
  duplicate (an id at or below the last one) is dropped, and a ``seq`` jump
  is filled from the REST backfill before going on;
- what cannot be recovered (``HISTORY_TRUNCATED``, or a new epoch: the
  server's history was lost) is reported as a gap, then the new history is
  delivered.

Run it: ``python tidings_watch.py --url http://127.0.0.1:8080 sub-1 sub-2``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

import socketio

PATH = "/ws/v1"


@dataclass(frozen=True)
class EventId:
    """An event id, ``<epoch>-<seq>``: order is by epoch, then seq."""

    epoch: int
    seq: int

    @staticmethod
    def parse(text: str) -> "EventId":
        epoch, seq = text.split("-")
        return EventId(int(epoch), int(seq))

    def __str__(self) -> str:
        return f"{self.epoch}-{self.seq}"


@dataclass(frozen=True)
class Gap:
    """Payments of ``tracking_id`` that cannot be recovered: those after
    ``after`` (None: from the start) and before ``resumes_at`` (None: not
    known yet). A new epoch means the server lost the whole history."""

    tracking_id: str
    after: Optional[str]
    resumes_at: Optional[str]


class Tracker:
    """Per-trackingId ordering, without I/O: decides what to deliver.

    ``offer`` takes an envelope and returns the envelopes to deliver now (in
    order) and whether a hole must be filled first; ``fill`` takes what the
    backfill returned. Kept apart from the socket so it can be tested on its
    own."""

    def __init__(self, last: Optional[str] = None) -> None:
        self.last = EventId.parse(last) if last else None
        self.truncated = False

    def offer(self, envelope: dict) -> tuple[list[dict], Optional[Gap], bool]:
        """(to deliver, a gap to report first, a hole before it to fill)."""
        tid = envelope["data"]["trackingId"]
        eid = EventId.parse(envelope["id"])
        last = self.last
        if last is not None and eid.epoch < last.epoch:
            return [], None, False  # from a history already replaced
        if last is not None and eid.epoch == last.epoch:
            if eid.seq <= last.seq:
                return [], None, False  # a duplicate (in flight, or replayed)
            if eid.seq > last.seq + 1 and not self.truncated:
                return [], None, True  # a hole the backfill may still hold
        gap = None
        if last is not None and (eid.epoch != last.epoch or eid.seq > last.seq + 1):
            # Announced as truncated, or a new history: nothing to fill.
            gap = Gap(tid, str(last), envelope["id"])
        elif last is None and self.truncated:
            gap = Gap(tid, None, envelope["id"])
        self.truncated = False
        self.last = eid
        return [envelope], gap, False


class StateFile:
    """The last id per trackingId, in a JSON file replaced atomically."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.ids: dict[str, str] = {}
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.ids = json.load(f)

    def save(self, tracking_id: str, event_id: str) -> None:
        self.ids[tracking_id] = event_id
        if not self.path:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tidings-state-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.ids, f)
        os.replace(tmp, self.path)


class Watcher:
    """Subscribes to ``tracking_ids`` and calls ``on_payment(envelope)`` once
    per payment, in seq order, and ``on_gap(Gap)`` for what is lost."""

    def __init__(
        self,
        url: str,
        tracking_ids: list[str],
        on_payment: Callable[[dict], None],
        on_gap: Callable[[Gap], None] = lambda gap: None,
        state_path: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.on_payment = on_payment
        self.on_gap = on_gap
        self.token = token
        self.timeout = timeout
        self.state = StateFile(state_path)
        self.trackers = {t: Tracker(self.state.ids.get(t)) for t in tracking_ids}
        # One payment at a time, across the socket's thread and a fill.
        self.lock = threading.Lock()
        # socket.io-client's defaults: 1 s doubling to 5 s, ±50% jitter.
        self.sio = socketio.Client(
            reconnection=True,
            reconnection_delay=1,
            reconnection_delay_max=5,
            randomization_factor=0.5,
        )
        # Set once every trackingId of the current connection is acked.
        self.subscribed = threading.Event()
        self._acks = 0
        self.sio.on("connect", self._subscribe_all)
        self.sio.on("ack", self._ack)
        self.sio.on("payment", self._payment)
        self.sio.on("error", self._error)

    def start(self) -> None:
        """Connects, and returns once every trackingId is subscribed."""
        auth = {"token": self.token} if self.token else None
        self.sio.connect(
            self.url,
            socketio_path=PATH,
            transports=["websocket"],
            auth=auth,
            wait_timeout=self.timeout,
        )
        if not self.subscribed.wait(self.timeout):
            raise TimeoutError("the subscriptions were not acked")

    def close(self) -> None:
        self.sio.disconnect()

    def _subscribe_all(self) -> None:
        self.subscribed.clear()
        self._acks = 0
        for tid, tracker in self.trackers.items():
            request: dict = {"trackingId": tid}
            if tracker.last is not None:
                request["since"] = str(tracker.last)
            self.sio.emit("subscribe", request)

    def _ack(self, envelope: dict) -> None:
        if str(envelope.get("data", "")).startswith("Subscribed to trackingId:"):
            self._acks += 1
            if self._acks >= len(self.trackers):
                self.subscribed.set()

    def _error(self, envelope: dict) -> None:
        data = envelope.get("data") or {}
        tid = data.get("trackingId")
        if data.get("code") == "HISTORY_TRUNCATED" and tid in self.trackers:
            with self.lock:
                self.trackers[tid].truncated = True

    def _payment(self, envelope: dict) -> None:
        tid = envelope["data"]["trackingId"]
        tracker = self.trackers.get(tid)
        if tracker is None:
            return
        with self.lock:
            self._take(tid, tracker, envelope)

    def _take(self, tid: str, tracker: Tracker, envelope: dict, may_fill: bool = True) -> None:
        deliver, gap, hole = tracker.offer(envelope)
        if hole:
            target = EventId.parse(envelope["id"])
            if may_fill:
                self._fill(tid, tracker, target)
            # Whatever is still missing before it is lost: a gap.
            if tracker.last is not None and tracker.last.seq + 1 < target.seq:
                tracker.truncated = True
            deliver, gap, _ = tracker.offer(envelope)
        if gap is not None:
            self.on_gap(gap)
        for env in deliver:
            self.on_payment(env)
            self.state.save(tid, env["id"])

    def _fill(self, tid: str, tracker: Tracker, target: EventId) -> None:
        """Delivers what the backfill holds between the last delivered
        payment and ``target``, oldest first, page by page."""
        while tracker.last is not None and tracker.last.seq + 1 < target.seq:
            page = self._backfill(tid, str(tracker.last))
            if page["truncated"]:
                tracker.truncated = True
            before = tracker.last
            for held in page["data"]:
                if EventId.parse(held["id"]).seq >= target.seq:
                    return
                self._take(tid, tracker, held, may_fill=False)
            if not page["hasMore"] or tracker.last == before:
                return

    def _backfill(self, tid: str, since: str) -> dict:
        query = urllib.parse.urlencode({"trackingId": tid, "since": since, "limit": 1000})
        req = urllib.request.Request(f"{self.url}/v1/events?{query}")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=self.timeout) as res:
            return json.load(res)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--state", default="tidings-state.json", help="where the last ids are kept")
    parser.add_argument("--token", help="a socket token (token mode)")
    parser.add_argument("tracking_ids", nargs="+")
    args = parser.parse_args()

    def show(envelope: dict) -> None:
        print(json.dumps(envelope), flush=True)

    def gap(g: Gap) -> None:
        print(json.dumps({"gap": g.__dict__}), flush=True)

    watcher = Watcher(args.url, args.tracking_ids, show, gap, args.state, args.token)
    watcher.start()
    watcher.sio.wait()


if __name__ == "__main__":
    main()
