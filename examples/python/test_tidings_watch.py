"""Tests of tidings_watch against a real Tidings server (the binary at
TIDINGS_BIN, default target/debug/tidings), started on a free port.

Run: ``python -m unittest -v test_tidings_watch`` in examples/python, with
python-socketio installed (requirements.txt).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
import uuid

from tidings_watch import EventId, Gap, Tracker, Watcher

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("TIDINGS_BIN", os.path.join(HERE, "..", "..", "target", "debug", "tidings"))
TOKEN = "test-token"
WAIT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A tidings process on a fixed port (so that a restart is reachable at
    the same address), in memory mode."""

    def __init__(self, port: int, *extra: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [BIN, "--listen", f"127.0.0.1:{port}", "--ingest-token", TOKEN, *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError("tidings did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=WAIT)

    def post(self, tracking_id: str, n: int) -> list[str]:
        """Ingests n payments in one batch; returns their ids."""
        body = [
            {
                "trackingId": tracking_id,
                "amount": 1000 + i,
                "timestamp": 1699876543,
                "status": "executed",
                "signature": uuid.uuid4().hex,
            }
            for i in range(n)
        ]
        req = urllib.request.Request(
            f"{self.url}/v1/payments",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=WAIT) as res:
            assert res.status == 202, res.status
            return [item["id"] for item in json.load(res)["data"]]


class Seen:
    """What the application got, with a bounded wait."""

    def __init__(self) -> None:
        self.payments: list[str] = []
        self.gaps: list[Gap] = []
        self.cond = threading.Condition()

    def payment(self, envelope: dict) -> None:
        with self.cond:
            self.payments.append(envelope["id"])
            self.cond.notify_all()

    def gap(self, gap: Gap) -> None:
        with self.cond:
            self.gaps.append(gap)
            self.cond.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.payments) >= count, timeout=WAIT)
            assert ok, f"got {len(self.payments)} payments of {count}: {self.payments}"
            return list(self.payments)


def in_order(ids: list[str]) -> bool:
    parsed = [EventId.parse(i) for i in ids]
    return all((a.epoch, a.seq) < (b.epoch, b.seq) for a, b in zip(parsed, parsed[1:]))


def envelope(tid: str, eid: str) -> dict:
    return {"id": eid, "seq": int(eid.split("-")[1]), "data": {"trackingId": tid}}


class TrackerTest(unittest.TestCase):
    """The ordering rules alone."""

    def test_duplicates_holes_truncation_and_epochs(self) -> None:
        t = Tracker("100-2")
        self.assertEqual(t.offer(envelope("a", "100-2")), ([], None, False))  # duplicate
        self.assertEqual(t.offer(envelope("a", "99-7")), ([], None, False))  # older history
        self.assertEqual(t.offer(envelope("a", "100-5")), ([], None, True))  # hole to fill
        got, gap, hole = t.offer(envelope("a", "100-3"))
        self.assertEqual((len(got), gap, hole), (1, None, False))
        t.truncated = True  # HISTORY_TRUNCATED: the hole is lost
        got, gap, hole = t.offer(envelope("a", "100-6"))
        self.assertEqual((len(got), gap, hole), (1, Gap("a", "100-3", "100-6"), False))
        got, gap, _ = t.offer(envelope("a", "200-1"))  # a new history
        self.assertEqual((len(got), gap), (1, Gap("a", "100-6", "200-1")))


class WatcherTest(unittest.TestCase):
    def setUp(self) -> None:
        self.port = free_port()
        self.server = Server(self.port)
        self.tid = f"py-{uuid.uuid4().hex[:8]}"
        self.dir = tempfile.TemporaryDirectory()
        self.state = os.path.join(self.dir.name, "state.json")
        self.watchers: list[Watcher] = []

    def tearDown(self) -> None:
        for w in self.watchers:
            w.close()
        if self.server.proc.poll() is None:
            self.server.kill()
        self.dir.cleanup()

    def watch(self, seen: Seen, cls: type = Watcher) -> Watcher:
        w = cls(self.server.url, [self.tid], seen.payment, seen.gap, self.state)
        w.start()
        self.watchers.append(w)
        return w

    def test_resumes_from_its_state_file_after_a_restart(self) -> None:
        first = Seen()
        w = self.watch(first)
        # Subscribed once the first payment posted after connecting arrives.
        ids = self.server.post(self.tid, 3)
        self.assertEqual(first.wait_for(3), ids)
        w.close()
        missed = self.server.post(self.tid, 2)
        second = Seen()
        self.watch(second)
        # Exactly the two it missed, not the three it had, and then live.
        self.assertEqual(second.wait_for(2), missed)
        live = self.server.post(self.tid, 1)
        self.assertEqual(second.wait_for(3), missed + live)
        self.assertEqual(second.gaps, [])

    def test_server_killed_and_restarted_reports_a_gap_then_the_new_history(self) -> None:
        seen = Seen()
        self.watch(seen)
        before = self.server.post(self.tid, 2)
        seen.wait_for(2)
        self.server.kill()
        self.server = Server(self.port)  # memory mode: the history is gone
        after = self.server.post(self.tid, 2)
        got = seen.wait_for(4)
        self.assertEqual(got, before + after)
        self.assertTrue(in_order(got))
        with seen.cond:
            ok = seen.cond.wait_for(lambda: seen.gaps, timeout=WAIT)
        self.assertTrue(ok, "no gap reported")
        self.assertEqual(seen.gaps[0].tracking_id, self.tid)
        self.assertEqual(seen.gaps[0].after, before[-1])

    def test_a_frame_lost_on_the_way_is_filled_from_the_backfill(self) -> None:
        class LosesTheSecond(Watcher):
            """Drops the second payment frame it reads, as a lost frame."""

            frames = 0

            def _payment(self, envelope: dict) -> None:
                LosesTheSecond.frames += 1
                if LosesTheSecond.frames != 2:
                    super()._payment(envelope)

        seen = Seen()
        self.watch(seen, LosesTheSecond)
        ids = self.server.post(self.tid, 1)
        seen.wait_for(1)
        ids += self.server.post(self.tid, 1)  # lost
        ids += self.server.post(self.tid, 1)  # the jump: fills the one lost
        self.assertEqual(seen.wait_for(3), ids)
        self.assertEqual(seen.gaps, [])

    def test_deliveries_dropped_by_a_tiny_delivery_buffer_are_recovered(self) -> None:
        self.server.kill()
        self.server = Server(self.port, "--delivery-buffer", "1")
        seen = Seen()
        self.watch(seen)
        ids = self.server.post(self.tid, 1)
        seen.wait_for(1)
        for _ in range(20):
            ids += self.server.post(self.tid, 10)
        got = seen.wait_for(len(ids))
        self.assertEqual(got, ids)
        self.assertEqual(seen.gaps, [])


if __name__ == "__main__":
    unittest.main()
