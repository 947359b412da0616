// Operations: health, readiness, metrics, CORS, configuration, SIGTERM.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import {
  SERVER_BIN, startServer, ingest, ingestOk, connect, makeSocket, waitFor, subscribe, payment, uid,
  httpGet, closeAll, waitDisconnect, withTimeout, assertHttpError, recorded,
} from "./lib/harness.mjs";
import { metricValue } from "./lib/cluster.mjs";

describe("health, readiness, metrics", () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { await server?.stop(); });

  test("GET /healthz answers 200", async () => {
    const r = await httpGet(`${server.url}/healthz`);
    assert.equal(r.status, 200, r.text);
  });

  test("GET /readyz answers 200", async () => {
    const r = await httpGet(`${server.url}/readyz`);
    assert.equal(r.status, 200, r.text);
  });

  test("GET /metrics answers Prometheus text whose values follow what happens", async () => {
    const read = async () => {
      const r = await httpGet(`${server.url}/metrics`);
      assert.equal(r.status, 200, r.text);
      assert.match(r.headers.get("content-type") ?? "", /^text\/plain/, "Prometheus text content type");
      return (name, labels) => metricValue(r.text, name, labels) ?? 0;
    };
    const before = await read();
    const s = await connect(server.url, { transports: ["websocket"] });
    try {
      const id = uid("m");
      await subscribe(s, id);
      const item = payment(id);
      await ingestOk(server.url, [item, item]);
      await waitFor(s, "payment");
      const after = await read();
      const moved = (name, labels) => after(name, labels) - before(name, labels);
      assert.equal(moved("tidings_payments_stored_total"), 1);
      assert.equal(moved("tidings_payments_duplicate_total"), 1);
      assert.equal(moved("tidings_ingest_requests_total", { status: "202" }), 1);
      assert.equal(moved("tidings_broadcasts_total"), 1);
      assert.equal(moved("tidings_sockets"), 1);
      assert.equal(moved("tidings_subscriptions"), 1);
    } finally {
      closeAll(s);
    }
  });

  test("with --log-format json every log line is a JSON object", async () => {
    const lines = server.logs().split("\n").filter((l) => l.trim().length > 0);
    assert.ok(lines.length > 0, "the server logged something");
    for (const l of lines) {
      let v;
      assert.doesNotThrow(() => { v = JSON.parse(l); }, `not JSON: ${l}`);
      assert.equal(typeof v, "object");
    }
  });
});

describe("CORS, default (any origin)", () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { await server?.stop(); });
  const origin = "http://example.test";
  const allowed = (h) => {
    const v = h.get("access-control-allow-origin");
    assert.ok(v === "*" || v === origin, `access-control-allow-origin must be * or ${origin}, got ${v}`);
  };

  test("GET /v1/events from another origin is allowed", async () => {
    const r = await httpGet(`${server.url}/v1/events?trackingId=${uid("c")}`, { headers: { origin } });
    assert.equal(r.status, 200, r.text);
    allowed(r.headers);
  });

  test("the polling handshake from another origin is allowed", async () => {
    const r = await httpGet(`${server.url}/ws/v1/?EIO=4&transport=polling`, { headers: { origin } });
    assert.equal(r.status, 200, r.text);
    assert.match(r.text, /^0\{.*"sid"/, "an Engine.IO open packet");
    allowed(r.headers);
  });

  test("a preflight OPTIONS to /v1/events answers 2xx with allow-origin", async () => {
    const r = await httpGet(`${server.url}/v1/events?trackingId=x`, {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "GET", "access-control-request-headers": "content-type" },
    });
    assert.ok(r.status >= 200 && r.status < 300, `preflight status ${r.status}`);
    allowed(r.headers);
  });

  test("a preflight OPTIONS to the polling endpoint answers 2xx with allow-origin", async () => {
    const r = await httpGet(`${server.url}/ws/v1/?EIO=4&transport=polling`, {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type" },
    });
    assert.ok(r.status >= 200 && r.status < 300, `preflight status ${r.status}`);
    allowed(r.headers);
  });
});

describe("CORS, restricted (--cors-origin http://good.test)", () => {
  // Started by the first test that needs it, so a server that fails to start
  // shows up as failing tests rather than a cancelled suite.
  let starting = null;
  let server = null;
  const ensureServer = async () => {
    starting ??= startServer(["--cors-origin", "http://good.test"]).then((s) => { server = s; return s; });
    return starting;
  };
  after(async () => { await server?.stop(); });
  const good = "http://good.test";
  const evil = "http://evil.test";
  const targets = async () => (await ensureServer(), [
    ["GET /v1/events", `${server.url}/v1/events?trackingId=x`, "GET", {}],
    ["GET polling handshake", `${server.url}/ws/v1/?EIO=4&transport=polling`, "GET", {}],
    ["preflight /v1/events", `${server.url}/v1/events?trackingId=x`, "OPTIONS", { "access-control-request-method": "GET" }],
    ["preflight polling", `${server.url}/ws/v1/?EIO=4&transport=polling`, "OPTIONS", { "access-control-request-method": "POST" }],
  ]);

  test("the allowed origin gets access-control-allow-origin echoing it", async () => {
    for (const [name, url, method, headers] of await targets()) {
      const r = await httpGet(url, { method, headers: { origin: good, ...headers } });
      assert.equal(r.headers.get("access-control-allow-origin"), good, `${name}: allow-origin for ${good}`);
    }
  });

  test("another origin gets no access-control-allow-origin", async () => {
    for (const [name, url, method, headers] of await targets()) {
      const r = await httpGet(url, { method, headers: { origin: evil, ...headers } });
      assert.equal(r.headers.get("access-control-allow-origin"), null, `${name}: no allow-origin for ${evil}`);
    }
  });
});

describe("configuration", () => {
  const started = [];
  after(async () => { for (const s of started) await s.stop(); });
  const start = async (...a) => { const s = await startServer(...a); started.push(s); return s; };

  test("--ingest-token is repeatable: each accepted, others refused", async () => {
    const server = await start(["--ingest-token", "second-token"]);
    for (const token of ["test-token", "second-token"]) {
      const r = await ingest(server.url, payment(uid("tok")), { token });
      assert.equal(r.status, 202, `${token}: ${r.text}`);
    }
    assertHttpError(await ingest(server.url, payment(uid("tok")), { token: "third-token" }), 401, "UNAUTHORIZED");
  });

  test("a flag's value is taken whole: --ingest-token with a comma is one token", async () => {
    const server = await start(["--ingest-token", "with,comma"]);
    const r = await ingest(server.url, payment(uid("tok")), { token: "with,comma" });
    assert.equal(r.status, 202, `the whole value: ${r.text}`);
    for (const part of ["with", "comma"]) {
      assertHttpError(await ingest(server.url, payment(uid("tok")), { token: part }), 401, "UNAUTHORIZED");
    }
  });

  test("TIDINGS_INGEST_TOKEN takes comma-separated tokens", async () => {
    const server = await start([], { TIDINGS_INGEST_TOKEN: "env-one,env-two" },
      { baseArgs: ["--listen", "127.0.0.1:0", "--log-format", "json"] });
    for (const token of ["env-one", "env-two"]) {
      const r = await ingest(server.url, payment(uid("tok")), { token });
      assert.equal(r.status, 202, `${token}: ${r.text}`);
    }
    assertHttpError(await ingest(server.url, payment(uid("tok")), { token: "env-one,env-two" }), 401, "UNAUTHORIZED");
  });

  test("options are read from TIDINGS_* variables, and the flag wins", async () => {
    const envOnly = await start([], { TIDINGS_MAX_BATCH: "2" });
    const three = () => [payment(uid("e")), payment(uid("e")), payment(uid("e"))];
    assertHttpError(await ingest(envOnly.url, three()), 413, "PAYLOAD_TOO_LARGE");
    const flagWins = await start(["--max-batch", "5"], { TIDINGS_MAX_BATCH: "2" });
    const r = await ingest(flagWins.url, three());
    assert.equal(r.status, 202, `the flag wins over the variable: ${r.text}`);
  });

  test("ingest is never open without a token: the server starts, warns, and refuses every ingest", async () => {
    // The documented choice: a server without --ingest-token starts (so
    // that sockets and backfill work) and answers every ingest 401.
    const server = await startServer([], {}, { baseArgs: ["--listen", "127.0.0.1:0", "--log-format", "json"] });
    started.push(server);
    for (const token of [null, "", "anything", "test-token"]) {
      const res = await ingest(server.url, payment(uid("open")), { token });
      assertHttpError(res, 401, "UNAUTHORIZED");
      assert.match(res.body.error.message, /ingest is disabled/i, `token ${JSON.stringify(token)}: ${res.text}`);
    }
    assert.ok(server.logs().split("\n").some((l) => /"level":"WARN"/.test(l) && /no --ingest-token/.test(l)),
      "a warning at start says ingest refuses every request");
  });

  const help = () => new Promise((resolve, reject) => {
    execFile(SERVER_BIN, ["--help"], { timeout: 10000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`tidings --help failed: ${err.message}\n${stderr}`));
      else resolve(stdout + stderr);
    });
  });

  test("tidings --help lists the options this server documents", async () => {
    const out = await help();
    for (const flag of ["--listen", "--ingest-token", "--history-limit", "--history-ttl", "--dedupe-ttl",
      "--max-subscriptions", "--max-batch", "--max-body", "--cors-origin", "--log-format",
      "--rate-limit", "--rate-burst"]) {
      assert.ok(out.includes(flag), `--help mentions ${flag}`);
    }
  });

  test("tidings --help lists the remaining contract options (--redis-url, --auth, --api-key)", async () => {
    const out = await help();
    for (const flag of ["--redis-url", "--auth", "--api-key"]) {
      assert.ok(out.includes(flag), `--help mentions ${flag}`);
    }
  });
});

describe("SIGTERM", () => {
  test("a SIGTERM right as the server announces itself is a graceful shutdown: exit 0, ten times in a row", async () => {
    // The handlers are installed before the listener is announced; before
    // that fix, most of these runs died of the signal.
    const exits = [];
    for (let i = 0; i < 10; i++) {
      const server = await startServer();
      exits.push(await server.stop("SIGTERM", 10000));
    }
    assert.deepEqual(exits.map((e) => e.code), Array(10).fill(0), `exits: ${JSON.stringify(exits)}`);
  });

  test("connected sockets (websocket and polling) see disconnect; the process exits 0", async (t) => {
    const server = await startServer();
    t.after(() => server.stop("SIGKILL"));
    const ws = await connect(server.url, { transports: ["websocket"] });
    const poll = await connect(server.url, { transports: ["polling"] });
    t.after(() => closeAll(ws, poll));
    await subscribe(ws, uid("term"));
    await subscribe(poll, uid("term"));
    const disconnects = Promise.all([waitDisconnect(ws, 15000), waitDisconnect(poll, 15000)]);
    const exit = await server.stop("SIGTERM", 15000);
    assert.equal(exit.timedOut, undefined, `the server exited by itself within 15 s; output:\n${server.logs()}`);
    assert.equal(exit.code, 0, `exit code 0, got ${JSON.stringify(exit)}`);
    assert.equal(exit.signal, null);
    const reasons = await disconnects;
    for (const reason of reasons) {
      assert.match(reason, /^transport (close|error)$/, `each socket saw its transport close (reasons: ${JSON.stringify(reasons)})`);
    }
  });

  test("sockets are closed so that the client reconnects (not a server-side disconnect)", async (t) => {
    const server = await startServer();
    t.after(() => server.stop("SIGKILL"));
    const s = makeSocket(server.url, {
      transports: ["websocket"], reconnection: true, reconnectionDelay: 50, reconnectionDelayMax: 100,
    });
    t.after(() => closeAll(s));
    await withTimeout(new Promise((res, rej) => { s.once("connect", res); s.once("connect_error", rej); }), 10000, "connect");
    await subscribe(s, uid("recon"));
    const attempt = withTimeout(new Promise((res) => s.io.once("reconnect_attempt", res)), 15000,
      "the client manager starting to reconnect after SIGTERM");
    attempt.catch(() => {});
    const reason = waitDisconnect(s, 15000);
    const exit = await server.stop("SIGTERM", 15000);
    assert.equal(exit.code, 0, JSON.stringify(exit));
    const r = await reason;
    assert.notEqual(r, "io server disconnect",
      "a namespace DISCONNECT from the server stops socket.io-client from reconnecting");
    await attempt;
    assert.equal(recorded(s, "error").length, 0);
  });
});
