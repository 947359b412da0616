"""Tests of tidings_watch against a real Tidings server (the binary at
TIDINGS_BIN, default target/debug/tidings), started on a free port.

Run: ``python -m unittest -v test_tidings_watch`` in examples/python, with
python-socketio installed (requirements.txt).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid

from tidings_watch import EventId, Gap, Tracker, Watcher, command_token

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("TIDINGS_BIN", os.path.join(HERE, "..", "..", "target", "debug", "tidings"))
TOKEN = "test-token"
WAIT = 15.0

# Token mode: a 32+ byte secret, and the API key that mints socket tokens.
API_KEY = "test-api-key"
TOKEN_MODE = (
    "--auth", "token",
    "--token-secret", "tidings-example-test-secret-0123456789abcdef",
    "--api-key", API_KEY,
)
# A token command: mints a token for one trackingId with POST /v1/ws/tokens,
# prints the answer ({"token", "expiresAt"}) and appends the token to a log.
MINT = """
import json, sys, urllib.request
url, key, tid, ttl, log = sys.argv[1:]
req = urllib.request.Request(
    url + "/v1/ws/tokens",
    data=json.dumps({"trackingIds": [tid], "ttlSeconds": int(ttl)}).encode(),
    headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
)
with urllib.request.urlopen(req, timeout=10) as res:
    body = res.read().decode()
with open(log, "a") as f:
    f.write(json.loads(body)["token"] + "\\n")
print(body)
"""


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


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


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
        # Once closed, a watcher writes nothing more, and its atomic writes
        # (temporary file, then rename) leave no stray file behind.
        left = sorted(set(os.listdir(self.dir.name)) - {"state.json", "tokens.log"})
        self.dir.cleanup()
        self.assertEqual(left, [], "files left in the state directory")

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

    def test_close_waits_for_a_payment_being_delivered_and_saves_nothing_after(self) -> None:
        entered = threading.Event()
        release = threading.Event()
        seen = Seen()

        def slow_payment(envelope: dict) -> None:
            entered.set()
            release.wait(WAIT)
            seen.payment(envelope)

        w = Watcher(self.server.url, [self.tid], slow_payment, seen.gap, self.state)
        w.start()
        self.watchers.append(w)
        ids = self.server.post(self.tid, 1)
        self.assertTrue(entered.wait(WAIT), "the payment never reached the application")
        closer = threading.Thread(target=w.close)
        closer.start()
        # close() must wait for the delivery in progress (and its save).
        closer.join(0.5)
        self.assertTrue(closer.is_alive(), "close() returned while a payment was being delivered")
        release.set()
        closer.join(WAIT)
        self.assertFalse(closer.is_alive(), "close() did not return after the delivery finished")
        self.assertEqual(seen.payments, ids)
        with open(self.state, encoding="utf-8") as f:
            self.assertEqual(json.load(f), {self.tid: ids[0]}, "the delivered payment was saved before close() returned")
        # Delivered after close(): nothing reaches the application or the file.
        w._payment({"id": "1-99", "seq": 99, "data": {"trackingId": self.tid}})
        self.assertEqual(seen.payments, ids)
        self.assertEqual(sorted(os.listdir(self.dir.name)), ["state.json"])

    def test_token_mode_a_fresh_token_at_every_reconnect(self) -> None:
        self.server.kill()
        self.server = Server(self.port, *TOKEN_MODE)
        log = os.path.join(self.dir.name, "tokens.log")
        # Tokens that live 1 s: the one of the first connect has expired
        # long before the reconnect below.
        command = shlex.join([sys.executable, "-c", MINT, self.server.url, API_KEY, self.tid, "1", log])
        seen = Seen()
        w = Watcher(
            self.server.url, [self.tid], seen.payment, seen.gap, self.state,
            token_provider=lambda: command_token(command, WAIT),
        )
        w.start()
        self.watchers.append(w)
        ids = self.server.post(self.tid, 1)
        seen.wait_for(1)
        first = read_lines(log)
        self.assertEqual(len(first), 1, "one token minted for the first connect")

        # Until the server refuses the first token (1 s, plus the clock
        # leeway it grants: up to 60 s).
        self.wait_refused(self.server.url, first[0], timeout=120)
        # Expiry only limits connecting: the watcher still receives.
        ids += self.server.post(self.tid, 1)
        self.assertEqual(seen.wait_for(2), ids)

        # The server restarts (memory mode: a new history); the watcher
        # reconnects with a new token, resubscribes and receives again.
        self.server.kill()
        self.server = Server(self.port, *TOKEN_MODE)
        after = self.server.post(self.tid, 2)
        self.assertEqual(seen.wait_for(4), ids + after)
        used = read_lines(log)
        self.assertGreaterEqual(len(used), 2, "a token minted at the reconnect")
        self.assertEqual(len(set(used)), len(used), "every connect got a token of its own")
        self.assertEqual(self.backfill_status(self.server.url, used[-1]), 200, "the latest token is valid")

    def wait_refused(self, url: str, token: str, timeout: float) -> None:
        """Polls the backfill with ``token`` until it answers 401 (nothing
        announces a token's expiry)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.backfill_status(url, token)
            if status == 401:
                return
            self.assertEqual(status, 200)
            self.assertLess(time.monotonic(), deadline, f"token still accepted after {timeout} s")
            time.sleep(0.5)

    def backfill_status(self, url: str, token: str) -> int:
        req = urllib.request.Request(
            f"{url}/v1/events?trackingId={self.tid}", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as res:
                return res.status
        except urllib.error.HTTPError as err:
            return err.code

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
