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

Run it: ``python tidings_watch.py --url http://localhost:3000 sub-1 sub-2``
(in token mode add ``--token-command`` to get a fresh token at every
connect, or ``--token`` for a quick try with one token).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.error
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
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.ids, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            # Never leave a half-written temporary file behind.
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def command_token(command: str, timeout: float = 10.0) -> str:
    """Runs ``command`` in a shell and returns the token it prints: either
    the bare token, or JSON with a ``token`` field (what
    ``POST /v1/ws/tokens`` answers, so the command can be a curl call)."""
    done = subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"token command exited {done.returncode}: {done.stderr.strip()[:300]}"
        )
    out = done.stdout.strip()
    if out.startswith("{"):
        out = json.loads(out).get("token") or ""
    if not out:
        raise RuntimeError("token command printed no token")
    return out


class Watcher:
    """Subscribes to ``tracking_ids`` and calls ``on_payment(envelope)`` once
    per payment, in seq order, and ``on_gap(Gap)`` for what is lost.

    Token mode: ``token`` is one fixed token (it stops working for new
    connections once it expires); ``token_provider`` is called for a fresh
    token at every connect (the first and each reconnect), and again when
    the backfill answers 401 with the current one."""

    def __init__(
        self,
        url: str,
        tracking_ids: list[str],
        on_payment: Callable[[dict], None],
        on_gap: Callable[[Gap], None] = lambda gap: None,
        state_path: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 10.0,
        token_provider: Optional[Callable[[], str]] = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.on_payment = on_payment
        self.on_gap = on_gap
        self.token = token
        self.token_provider = token_provider
        self.timeout = timeout
        self.state = StateFile(state_path)
        self.trackers = {t: Tracker(self.state.ids.get(t)) for t in tracking_ids}
        # One payment at a time: python-socketio runs each event handler in
        # a thread of its own. Also guards ``closed``.
        self.lock = threading.Lock()
        # Set by close(): no payment is delivered or saved after it.
        self.closed = False
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
        self.sio.connect(
            self.url,
            socketio_path=PATH,
            transports=["websocket"],
            # A callable: python-socketio calls it at every (re)connect.
            auth=self._auth,
            wait_timeout=self.timeout,
        )
        if not self.subscribed.wait(self.timeout):
            raise TimeoutError("the subscriptions were not acked")

    def close(self) -> None:
        """Disconnects (or stops reconnecting) and returns once no handler
        is delivering or saving a payment any more; nothing is delivered or
        written to the state file after it returns."""
        self.sio.shutdown()
        # A handler thread may be inside _take (delivering, then saving):
        # taking the lock waits for it; later ones see ``closed``.
        with self.lock:
            self.closed = True

    def _auth(self) -> Optional[dict]:
        if self.token_provider is not None:
            try:
                self.token = self.token_provider()
            except Exception as exc:  # noqa: BLE001 - reported, then retried
                # Connect without a token: the server refuses it and
                # python-socketio tries again later, with a new call.
                print(f"tidings_watch: no token: {exc}", file=sys.stderr, flush=True)
                self.token = None
        return {"token": self.token} if self.token else None

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
        elif data.get("code"):
            print(f"tidings_watch: error {json.dumps(data)}", file=sys.stderr, flush=True)

    def _payment(self, envelope: dict) -> None:
        tid = envelope["data"]["trackingId"]
        tracker = self.trackers.get(tid)
        if tracker is None:
            return
        with self.lock:
            if self.closed:
                return
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
        try:
            return self._get(f"{self.url}/v1/events?{query}")
        except urllib.error.HTTPError as err:
            if err.code != 401 or self.token_provider is None:
                raise
            # The token of this connection expired: the backfill takes a fresh one.
            self.token = self.token_provider()
            return self._get(f"{self.url}/v1/events?{query}")

    def _get(self, url: str) -> dict:
        req = urllib.request.Request(url)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=self.timeout) as res:
            return json.load(res)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:3000", help="the server (default %(default)s)")
    parser.add_argument("--state", default="tidings-state.json", help="where the last ids are kept")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        help="one socket token (token mode), for a quick try: once it expires, reconnects are refused",
    )
    tokens.add_argument(
        "--token-command",
        metavar="COMMAND",
        help="a shell command run at every (re)connect that prints a fresh socket token, "
        'bare or as JSON {"token": ...} (token mode)',
    )
    parser.add_argument("tracking_ids", nargs="+")
    args = parser.parse_args()

    def show(envelope: dict) -> None:
        print(json.dumps(envelope), flush=True)

    def gap(g: Gap) -> None:
        print(json.dumps({"gap": g.__dict__}), flush=True)

    provider = None
    if args.token_command:
        command = args.token_command
        provider = lambda: command_token(command)  # noqa: E731
    watcher = Watcher(
        args.url, args.tracking_ids, show, gap, args.state, args.token, token_provider=provider
    )
    watcher.start()
    try:
        watcher.sio.wait()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()


if __name__ == "__main__":
    main()
