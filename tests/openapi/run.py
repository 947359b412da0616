"""schemathesis against a live tidings: the OpenAPI document the server
serves, checked against what the same server answers.

For each mode (--auth token, then --auth open) this starts the binary
($TIDINGS_BIN) on a free port with an ingest token, an API key and (token
mode) a token secret, mints a socket token through the API, saves the
document the node serves, and runs schemathesis on it with every check and
the credentials of each operation (schemathesis.toml). It fails when
schemathesis finds anything, when the server does not start in time, or
when it does not exit 0 on SIGTERM afterwards.

Bounded: each step has a timeout; examples per operation and the seed come
from TIDINGS_SCHEMATHESIS_EXAMPLES and TIDINGS_SCHEMATHESIS_SEED.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = os.environ["TIDINGS_BIN"]
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
EXAMPLES = os.environ.get("TIDINGS_SCHEMATHESIS_EXAMPLES", "100")
SEED = os.environ.get("TIDINGS_SCHEMATHESIS_SEED", "20261202")
INGEST_TOKEN = "st-ingest-token"
API_KEY = "st-api-key"
TOKEN_SECRET = "st-token-secret-0123456789abcdef0123"
START_TIMEOUT = 30
RUN_TIMEOUT = 240
STOP_TIMEOUT = 20


class Server:
    """The binary on a free port; its output goes to a log file."""

    def __init__(self, name, args, logs):
        self.log_path = logs / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [BIN, "--listen", "127.0.0.1:0", "--log-format", "json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")},
        )
        self.addr = None
        listening = threading.Event()

        def drain():
            # Reads every line (a full pipe would block the server's logging)
            # and signals the one that names the address.
            for line in self.proc.stdout:
                self.log.write(line)
                self.log.flush()
                if self.addr is None and "listening on" in line:
                    try:
                        self.addr = json.loads(line)["addr"]
                    except (ValueError, KeyError):
                        self.addr = line.rsplit("listening on ", 1)[1].split('"')[0].strip()
                    listening.set()

        threading.Thread(target=drain, daemon=True).start()
        if not listening.wait(START_TIMEOUT):
            self.stop()
            raise SystemExit(f"{name}: no 'listening on' within {START_TIMEOUT} s; see {self.log_path}")
        self.url = f"http://{self.addr}"

    def stop(self):
        """SIGTERM; the exit code (must be 0)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def http(method, url, body=None, bearer=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if bearer:
        req.add_header("Authorization", f"Bearer {bearer}")
    with urllib.request.urlopen(req, timeout=10) as res:
        return res.status, res.read()


def run_mode(name, args, work):
    server = Server(name, args, work)
    try:
        socket_token = "not-used-in-open-mode"
        if "token" in args:
            status, body = http(
                "POST",
                f"{server.url}/v1/ws/tokens",
                {"trackingIds": ["sub-1", "sub-2", "merchant-42:*"], "ttlSeconds": 3600},
                bearer=API_KEY,
            )
            assert status == 201, (status, body)
            socket_token = json.loads(body)["token"]
        # The document as a file, so that /openapi.json is an operation under
        # test too (schemathesis skips the URL it loads the schema from).
        status, doc = http("GET", f"{server.url}/openapi.json")
        assert status == 200, status
        spec = work / f"{name}-openapi.json"
        spec.write_bytes(doc)
        env = dict(
            os.environ,
            TIDINGS_ST_INGEST_TOKEN=INGEST_TOKEN,
            TIDINGS_ST_API_KEY=API_KEY,
            TIDINGS_ST_SOCKET_TOKEN=socket_token,
            SCHEMATHESIS_HOOKS=str(HERE / "hooks.py"),
        )
        cmd = [
            SCHEMATHESIS,
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            str(spec),
            "--url",
            server.url,
            "--checks",
            "all",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            "--report",
            "junit",
            "--report-junit-path",
            str(work / f"{name}-junit.xml"),
            "--no-color",
        ]
        print(f"== schemathesis, {name} mode ({server.url}, seed {SEED}, {EXAMPLES} examples per operation)", flush=True)
        started = time.monotonic()
        try:
            found = subprocess.run(cmd, env=env, cwd=work, timeout=RUN_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            print(f"{name}: schemathesis did not finish within {RUN_TIMEOUT} s", flush=True)
            found = 1
        print(f"== {name} mode: schemathesis exit {found} in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        code = server.stop()
    if code != 0:
        print(f"{name}: the server exited {code} on SIGTERM; see {server.log_path}", flush=True)
        sys.stdout.write(server.log_path.read_text()[-4000:])
        return 1
    return found


def main():
    with tempfile.TemporaryDirectory(prefix="tidings-schemathesis-") as tmp:
        work = Path(tmp)
        common = ["--ingest-token", INGEST_TOKEN, "--api-key", API_KEY]
        failed = [
            name
            for name, args in [
                ("token", [*common, "--auth", "token", "--token-secret", TOKEN_SECRET]),
                ("open", common),
            ]
            if run_mode(name, args, work) != 0
        ]
    if failed:
        raise SystemExit(f"schemathesis: failures in {', '.join(failed)} mode")
    print("schemathesis: nothing found in token and open mode")


if __name__ == "__main__":
    main()
