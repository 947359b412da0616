// Hostile HTTP clients (issue 8): every bound the server puts on what a
// client may send, seen from the client's side with raw TCP sockets and
// Node's http.request; bad configuration refused at start; and all the
// attacks at once while honest socket.io-client sockets keep receiving
// every payment.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { setMaxListeners } from "node:events";
import {
  startServer, ingestOk, backfill, httpGet, payment, uid, connect, subscribe, waitFor, payments,
  closeAll, assertHttpError,
} from "./lib/harness.mjs";
import { startRedis, readMetric } from "./lib/cluster.mjs";
import {
  ATTACKS, rawConnection, nextResponse, within, ingestHead, writeAll, postWhole, bigBatch, detailBomb,
  rssBytes, mib, FLOOD_CAP,
} from "./lib/hostile.mjs";

const MiB = 1024 * 1024;

/** Asserts nothing is stored for `trackingId`. */
async function assertNothingStored(url, trackingId) {
  const r = await backfill(url, { trackingId });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.body.data, [], `nothing stored for ${trackingId}: ${r.text.slice(0, 300)}`);
}

describe("oversized ingest bodies get a readable 413", () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { await server?.stop(); });

  test("Node http.request writing a 33 MiB batch before reading gets 413 PAYLOAD_TOO_LARGE, not EPIPE; nothing stored", async (t) => {
    const trackingId = uid("big");
    const body = bigBatch(trackingId, 33 * MiB);
    const started = Date.now();
    const r = await postWhole(server.url, "/v1/payments", body);
    t.diagnostic(`33 MiB http.request: status ${r.status}, error ${r.error}, ${Date.now() - started} ms`);
    assert.equal(r.error, null, `the request must see no error (the server read the body), got ${r.error}`);
    assertHttpError({ status: r.status, body: r.json }, 413, "PAYLOAD_TOO_LARGE");
    assert.equal(r.headers.connection, "close", "the connection is closed after the 413");
    await assertNothingStored(server.url, trackingId);
  });

  test("the token-mint endpoint too, and early refusals: a 33 MiB body written whole before reading gets a readable 413 / 401", async (t) => {
    const minting = await startServer(["--auth", "token", "--api-key", "mint-key-0123456789", "--token-secret", "mint-secret-0123456789abcdef0123456789"]);
    t.after(() => minting.stop());
    const body = Buffer.from(JSON.stringify({ trackingIds: Array.from({ length: 200000 }, (_, i) => "t".repeat(160) + i) }));
    assert.ok(body.length > 32 * MiB);
    const r = await postWhole(minting.url, "/v1/ws/tokens", body, { headers: { authorization: "Bearer mint-key-0123456789" } });
    assert.equal(r.error, null, `the request must see no error (the server read the body), got ${r.error}`);
    assertHttpError({ status: r.status, body: r.json }, 413, "PAYLOAD_TOO_LARGE");
    // A wrong key is refused before the body is read, and that 401 is as
    // readable (the body is drained the same way); so is ingest's.
    for (const path of ["/v1/ws/tokens", "/v1/payments"]) {
      const wrong = await postWhole(minting.url, path, body, { headers: { authorization: "Bearer nope" } });
      assert.equal(wrong.error, null, `${path}: the request must see no error, got ${wrong.error}`);
      assertHttpError({ status: wrong.status, body: wrong.json }, 401, "UNAUTHORIZED");
    }
  });

  test("a declared 33 MiB Content-Length is answered 413 at once; the body sent after it is read and the connection closes cleanly", async () => {
    const trackingId = uid("declared");
    const body = bigBatch(trackingId, 33 * MiB);
    const conn = rawConnection(server.port);
    await conn.connected;
    conn.socket.write(ingestHead(body.length));
    const r = await nextResponse(conn, 10000);
    assertHttpError({ status: r.status, body: r.json }, 413, "PAYLOAD_TOO_LARGE");
    assert.equal(r.headers.connection, "close");
    // The server keeps reading what the client was going to send anyway...
    await writeAll(conn, body);
    conn.socket.end();
    // ...and then closes, without a reset.
    const end = await within(conn.closed, 30000, null);
    assert.ok(end, "the server closes the connection within 30 s");
    assert.equal(end.error, null, `no reset while the body was being sent, got ${end.error}`);
    await assertNothingStored(server.url, trackingId);
  });

  test("a client that asked Expect: 100-continue is answered 413 and closed without being asked for the body", async (t) => {
    // A long body bound: the connection must close because the server
    // gave up on the body, not because its deadline passed.
    const patient = await startServer([], { TIDINGS_BODY_READ_TIMEOUT: "300" });
    t.after(() => patient.stop());
    const conn = rawConnection(patient.port);
    await conn.connected;
    t.after(() => conn.socket.destroy());
    conn.socket.write(ingestHead(33 * MiB, { extra: "Expect: 100-continue\r\n" }));
    const r = await nextResponse(conn, 10000);
    assert.equal(r.status, 413, "the first answer is the 413, not 100 Continue");
    assert.equal(r.json?.error?.code, "PAYLOAD_TOO_LARGE");
    const end = await within(conn.closed, 30000, null);
    assert.ok(end, "the connection is closed at once, not held for a body the client was told not to send");
    assert.ok(!/100 Continue/i.test(end.data.toString("latin1")), `no 100 Continue at all: ${end.data.toString("latin1").slice(0, 300)}`);
  });

  test("what is drained is bounded: a client streaming a declared 10 GiB body is cut off", async () => {
    const conn = rawConnection(server.port);
    await conn.connected;
    conn.socket.write(ingestHead(10 * 1024 * MiB));
    const r = await nextResponse(conn, 10000);
    assert.equal(r.status, 413);
    const chunk = Buffer.alloc(MiB, "a");
    let written = 0;
    let closed = false;
    conn.closed.then(() => { closed = true; });
    const deadline = Date.now() + 60000;
    while (!closed && Date.now() < deadline && written < 1024 * MiB) {
      written += await writeAll(conn, chunk);
    }
    conn.socket.destroy();
    // 64 MiB drained, plus what the kernel's socket buffers held.
    assert.ok(written < 200 * MiB, `the server stops reading after its drain bound; ${mib(written)} were written`);
  });
});

describe("slow clients are cut off", () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { await server?.stop(); });

  test("default bounds (10 s): a head dribbled a byte a second, a silent connection, an idle keep-alive connection are closed within 30 s", async (t) => {
    const dribbler = rawConnection(server.port);
    const silent = rawConnection(server.port);
    const idle = rawConnection(server.port);
    await Promise.all([dribbler.connected, silent.connected, idle.connected]);
    const head = "GET /healthz HTTP/1.1\r\nHost: tidings\r\nX-Slow: " + "a".repeat(1000);
    let i = 0;
    const timer = setInterval(() => { if (!dribbler.socket.destroyed) dribbler.socket.write(head[i++]); }, 1000);
    t.after(() => { clearInterval(timer); for (const c of [dribbler, silent, idle]) c.socket.destroy(); });
    // The keep-alive connection is served, then left idle.
    idle.socket.write("GET /healthz HTTP/1.1\r\nHost: tidings\r\n\r\n");
    const answered = await nextResponse(idle, 10000);
    assert.equal(answered.status, 200, "a head sent at once is served");

    const ends = await Promise.all([dribbler, silent, idle].map((c) => within(c.closed, 30000, null)));
    clearInterval(timer);
    const [d, s, k] = ends;
    t.diagnostic(`closed after: dribbling head ${d?.at} ms (${i} bytes sent), silent ${s?.at} ms, idle keep-alive ${k?.at} ms`);
    assert.ok(d, "the dribbling client is closed within 30 s");
    assert.ok(s, "the silent client is closed within 30 s");
    assert.ok(k, "the idle keep-alive connection is closed within 30 s");
    assert.equal(d.data.length, 0, "the dribbling client got no answer");
  });

  test("a body shorter than its Content-Length gets 408 with the error body, then the connection closes; nothing stored", async (t) => {
    const trackingId = uid("short");
    const whole = JSON.stringify(payment(trackingId));
    const conn = rawConnection(server.port);
    await conn.connected;
    t.after(() => conn.socket.destroy());
    conn.socket.write(ingestHead(whole.length + 100) + whole);
    const r = await nextResponse(conn, 30000);
    assertHttpError({ status: r.status, body: r.json }, 408, "INVALID_PAYLOAD");
    assert.equal(r.headers.connection, "close");
    const end = await within(conn.closed, 10000, null);
    assert.ok(end, "the server closes the connection after the 408");
    t.diagnostic(`short body: 408 and closed after ${end.at} ms`);
    await assertNothingStored(server.url, trackingId);
  });

  test("a valid body sent a byte a second is cut at the deadline (408), and nothing is stored", async (t) => {
    const trackingId = uid("slowbody");
    const whole = JSON.stringify(payment(trackingId));
    const conn = rawConnection(server.port);
    await conn.connected;
    conn.socket.write(ingestHead(whole.length));
    let i = 0;
    const timer = setInterval(() => { if (!conn.socket.destroyed && i < whole.length) conn.socket.write(whole[i++]); }, 1000);
    t.after(() => { clearInterval(timer); conn.socket.destroy(); });
    const r = await nextResponse(conn, 30000);
    clearInterval(timer);
    assertHttpError({ status: r.status, body: r.json }, 408, "INVALID_PAYLOAD");
    assert.ok(i < whole.length, "the answer came before the body was complete");
    await assertNothingStored(server.url, trackingId);
  });

  test("the hidden bounds are configurable (TIDINGS_HEADER_READ_TIMEOUT, TIDINGS_BODY_READ_TIMEOUT)", async (t) => {
    const quick = await startServer([], { TIDINGS_HEADER_READ_TIMEOUT: "2", TIDINGS_BODY_READ_TIMEOUT: "2" });
    t.after(() => quick.stop());
    const silent = rawConnection(quick.port);
    const short = rawConnection(quick.port);
    await Promise.all([silent.connected, short.connected]);
    short.socket.write(ingestHead(1000) + "{");
    const [s, r] = await Promise.all([within(silent.closed, 30000, null), nextResponse(short, 30000)]);
    assert.ok(s, "closed");
    assert.equal(r.status, 408);
    // Bounds are not timed precisely; only that 2 s is not 10 s.
    assert.ok(s.at < 9000, `the silent connection was closed after ${s.at} ms, with a 2 s bound`);
  });
});

describe("bad input is refused and changes nothing", () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { await server?.stop(); });

  test("request headers are bounded: a 1 MiB header is answered 431 (or cut), never served; the server goes on", async () => {
    const conn = rawConnection(server.port);
    await conn.connected;
    conn.socket.write("GET /healthz HTTP/1.1\r\nHost: tidings\r\nX-Big: " + "a".repeat(1024 * 1024) + "\r\n\r\n");
    const end = await within(conn.closed, 15000, null);
    assert.ok(end, "the connection is closed within 15 s");
    const status = end.data.toString("latin1").split("\r\n")[0];
    assert.ok(status === "" || /^HTTP\/1\.1 431 /.test(status), `431 or no answer, got ${JSON.stringify(status)}`);
    const ok = await httpGet(`${server.url}/healthz`);
    assert.equal(ok.status, 200, "the server still serves others");
  });

  test("a 960 KB body of unknown fields gets a small 400 listing the first 100 details and saying how many there were; nothing stored", async (t) => {
    const trackingId = uid("bomb");
    const { body, unknown } = detailBomb(trackingId);
    const r = await postWhole(server.url, "/v1/payments", body);
    t.diagnostic(`${body.length} bytes with ${unknown} unknown fields: ${r.status}, ${r.text?.length} bytes answered`);
    assertHttpError({ status: r.status, body: r.json }, 400, "INVALID_PAYLOAD");
    assert.ok(r.text.length < 64 * 1024, `the answer is small, got ${r.text.length} bytes`);
    assert.equal(r.json.error.details.length, 100, "the first 100 details are listed");
    assert.deepEqual(r.json.error.details[0], { index: 0, field: "f0", message: r.json.error.details[0].message });
    assert.match(r.json.error.message, new RegExp(`^${unknown} invalid fields, the first 100 listed; nothing was stored$`));
    await assertNothingStored(server.url, trackingId);
  });

  test("a few bad fields are all listed, as before", async () => {
    const r = await postWhole(server.url, "/v1/payments", Buffer.from(JSON.stringify([{}, payment(uid("ok"), { amount: -1 })])));
    assertHttpError({ status: r.status, body: r.json }, 400, "INVALID_PAYLOAD");
    assert.equal(r.json.error.details.length, 6, r.text);
    assert.equal(r.json.error.message, "6 invalid field(s); nothing was stored");
  });

  test("backfill refuses a query that is not UTF-8 once decoded, with the parameter's code", async () => {
    // U+FFFD is a valid trackingId: %FF must not be read as it.
    await ingestOk(server.url, payment("\uFFFD"));
    const cases = [
      ["trackingId=%FF", "INVALID_TRACKING_ID"],
      ["trackingId=a%C3", "INVALID_TRACKING_ID"],
      [`trackingId=${uid("q")}&since=%FF`, "INVALID_SINCE"],
      [`trackingId=${uid("q")}&limit=%FF`, "INVALID_PAYLOAD"],
      [`trackingId=${uid("q")}&other=%FE%FF`, "INVALID_PAYLOAD"],
      [`trackingId=${uid("q")}&%FF=1`, "INVALID_PAYLOAD"],
    ];
    for (const [query, code] of cases) {
      const r = await httpGet(`${server.url}/v1/events?${query}`);
      assertHttpError(r, 400, code);
      assert.match(r.body.error.message, /UTF-8/, `${query}: ${r.text}`);
    }
    // Well-encoded UTF-8 is still read.
    const cafe = `caf\u00e9-${uid("q")}`;
    const [stored] = await ingestOk(server.url, payment(cafe));
    const r = await httpGet(`${server.url}/v1/events?trackingId=${encodeURIComponent(cafe)}`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body.data.map((e) => e.id), [stored.id]);
  });
});

describe("configuration refused at start", () => {
  /** Starts the binary with `args`; asserts it exits non-zero before listening, with `message` in its output. */
  async function refused(args, message) {
    const outcome = await startServer(args).then(
      async (s) => { await s.stop("SIGKILL"); return null; },
      (err) => err,
    );
    assert.ok(outcome, `tidings ${args.join(" ")} must refuse to start, but it listened`);
    assert.match(outcome.message, /"code":[1-9]/, `exits non-zero: ${outcome.message}`);
    assert.match(outcome.message, message, `a clear message: ${outcome.message}`);
  }

  test("a seconds-valued flag too large to hold in milliseconds", async () => {
    await refused(["--dedupe-ttl", "18446744073709552"], /--dedupe-ttl.*18446744073709552 is not in 1\.\.=315360000/);
    await refused(["--history-ttl", "18446744073709552", "--dedupe-ttl", "18446744073709552"], /--history-ttl.*not in 1\.\.=315360000/);
    await refused(["--shutdown-timeout", "18446744073709552"], /--shutdown-timeout.*not in 0\.\.=315360000/);
  });

  test("ten years is accepted, and works", async (t) => {
    const s = await startServer(["--history-ttl", "315360000", "--dedupe-ttl", "315360000"]);
    t.after(() => s.stop());
    const id = uid("decade");
    const [first] = await ingestOk(s.url, payment(id, { idempotencyKey: "k" }));
    const [again] = await ingestOk(s.url, payment(id, { idempotencyKey: "k" }));
    assert.equal(again.duplicate, true, "the key is remembered");
    assert.equal(again.id, first.id);
  });

  for (const origin of ["https://a.example/path", "not an origin", "https://exa mple.com", "https://a.example/",
    "https://a.example\r\nX-Evil: 1", "ftp://a.example", "https://A.example"]) {
    test(`--cors-origin ${JSON.stringify(origin)}`, async () => {
      await refused(["--cors-origin", origin], /invalid --cors-origin/);
    });
  }
});

describe("/readyz with Redis stopped", () => {
  test("answers 503 UNAVAILABLE without Redis' error text", async (t) => {
    const redis = await startRedis();
    t.after(() => redis.stop());
    const node = await startServer(["--redis-url", redis.url]);
    t.after(() => node.stop());
    assert.equal((await httpGet(`${node.url}/readyz`)).status, 200);
    await redis.kill();
    let r;
    const deadline = Date.now() + 15000;
    do {
      r = await httpGet(`${node.url}/readyz`);
    } while (r.status !== 503 && Date.now() < deadline);
    assertHttpError(r, 503, "UNAVAILABLE");
    assert.doesNotMatch(r.text, /refused|os error|connection|broken pipe|127\.0\.0\.1|redis|io error/i,
      `no storage detail in the body: ${r.text}`);
    assert.ok(node.logs().split("\n").some((l) => /"level":"WARN"/.test(l) && /not ready/.test(l)),
      "the detail is logged at warn");
  });
});

/** Polls /metrics until `name` equals `want` (nothing announces it). */
async function waitMetric(url, name, want, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { value } = await readMetric(url, name);
    if ((value ?? 0) === want) return;
    if (Date.now() > deadline) assert.fail(`${name} stayed ${value}, expected ${want} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("hostile clients at once", () => {
  test("all attacks for 15 s, twice, while honest sockets receive every payment in order; the second round adds little memory", async (t) => {
    // Short pings, so that a stalled connection is reset (and a slow consumer
    // dropped) within the run; a bounded memory store; a per-address cap.
    const server = await startServer(["--ping-interval", "5", "--ping-timeout", "5",
      "--max-connections-per-ip", String(FLOOD_CAP), "--memory-limit", "4MiB"]);
    t.after(() => server.stop());
    const pid = server.proc.pid;

    // Honest clients: two per trackingId, websocket and polling.
    const ids = Array.from({ length: 4 }, () => uid("honest"));
    const honest = [];
    for (const id of ids) {
      for (const transports of [["websocket"], ["polling"]]) {
        const s = await connect(server.url, { transports });
        await subscribe(s, id);
        honest.push({ socket: s, id });
      }
    }
    t.after(() => closeAll(honest.map((h) => h.socket)));

    let peak = rssBytes(pid);
    const sampler = setInterval(() => { try { peak = Math.max(peak, rssBytes(pid)); } catch { /* exiting */ } }, 100);
    t.after(() => clearInterval(sampler));
    const ingested = new Map(ids.map((id) => [id, []]));

    /**
     * Every attack at once for `ms`, with payments ingested meanwhile; then
     * every honest socket has every payment, every attack was refused as
     * designed, and every attack connection is gone (only the honest
     * sockets' remain). Returns the server's RSS then.
     */
    const round = async (name, ms) => {
      const stop = new AbortController();
      setMaxListeners(0, stop.signal); // every attack connection listens to it
      const stats = ATTACKS.map(() => ({}));
      const attacks = ATTACKS.map((a, i) => a.run({ url: server.url, port: server.port }, stop.signal, stats[i]));
      // Payments ingested meanwhile, round robin over the trackingIds.
      const until = Date.now() + ms;
      for (let n = 0; Date.now() < until; n++) {
        const id = ids[n % ids.length];
        const [r] = await ingestOk(server.url, payment(id));
        ingested.get(id).push(r.id);
        await new Promise((res) => setTimeout(res, 100));
      }
      stop.abort();
      await within(Promise.all(attacks), 60000, null);

      // A last payment per trackingId: once every socket has it, it has all before it.
      for (const id of ids) {
        const [r] = await ingestOk(server.url, payment(id));
        ingested.get(id).push(r.id);
      }
      for (const { socket, id } of honest) {
        const last = ingested.get(id).at(-1);
        await waitFor(socket, "payment", (p) => p.id === last, 20000);
      }
      for (const { socket, id } of honest) {
        assert.deepEqual(payments(socket, id).map((p) => p.id), ingested.get(id),
          `${name}: socket on ${socket.io.engine.transport.name} got every payment of ${id}, in order`);
      }
      ATTACKS.forEach((a, i) => t.diagnostic(`${name}: ${a.name}: ${JSON.stringify(stats[i])}`));
      // Each attack ran, and was refused as designed every time.
      ATTACKS.forEach((a, i) => assert.equal(a.check(stats[i]), null, `${name}: ${a.name}`));
      // The flood's abandoned sessions are reaped after the ping timeout;
      // nothing of the attacks is held: connections, sockets and
      // subscriptions are the honest sockets' again.
      await waitMetric(server.url, "tidings_connections", honest.length);
      await waitMetric(server.url, "tidings_sockets", honest.length);
      await waitMetric(server.url, "tidings_subscriptions", subscriptions);
      return rssBytes(pid);
    };

    // Memory. What the server takes over a first round (its pools, the
    // allocator's arenas, buffers sized for the attacks' peaks, the store
    // up to --memory-limit) depends on the machine and its load, so no
    // fixed level bounds it: the first round is the baseline. What the
    // server itself holds is checked exactly after each round (its
    // connections, sockets and subscriptions are the honest sockets'
    // again); RSS is the allocator's view and noisy: a second round of
    // the same attacks ended from -14 to +20 MiB off the first in our
    // runs (issue 17: the refused sessions' churn, every 5 s now), after
    // +8 to +38 MiB over the first. The bound: the second round may add
    // at most what the first one added, and never less than 24 MiB. It
    // catches a server that keeps what the attacks send (33 MiB bodies,
    // 200 oversized messages, the slow consumer's backlog of thousands of
    // payments, each round); not a few bytes per request.
    const subscriptions = (await readMetric(server.url, "tidings_subscriptions")).value ?? 0;
    const before = rssBytes(pid);
    const afterWarmUp = await round("warm-up round (15 s)", 15000);
    const after = await round("measured round (15 s)", 15000);
    clearInterval(sampler);
    const first = afterWarmUp - before;
    const second = after - afterWarmUp;
    const allowed = Math.max(first, 24 * MiB);
    const count = [...ingested.values()].reduce((n, l) => n + l.length, 0);
    t.diagnostic(`RSS before ${mib(before)}, after the warm-up round ${mib(afterWarmUp)} (+${mib(first)}), ` +
      `after the measured round ${mib(after)} (${second >= 0 ? "+" : ""}${mib(second)}, at most +${mib(allowed)}), peak ${mib(peak)}; ` +
      `${count} payments delivered to ${honest.length} sockets`);
    assert.ok(second <= allowed,
      `the measured round added ${mib(second)} of RSS, more than the warm-up round added (${mib(first)}) and more than 24 MiB`);
  });
});
