// Token mode (contract section 5), with real processes and the official
// socket.io-client: minting, connecting (websocket, polling, upgrade; handshake
// auth and query parameter), FORBIDDEN on subscribe, backfill with the same
// token, tokens a backend signs itself, secret rotation, expiry checked only at
// connect, an `auth` function called at every reconnect across a node restart,
// a cluster whose nodes accept each other's tokens, and no token, key or secret
// in any log line of the whole run.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import {
  startServer, ingestOk, payment, uid, connect, makeSocket, subscribe, waitFor, payments,
  assertError, assertHttpError, closeAll, withTimeout, TRANSPORT_SETUPS, connectWith, httpGet,
  WS_PATH, INGEST_TOKEN,
  connectRefused,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, freePort } from "./lib/cluster.mjs";
import { fromAddress } from "./lib/deploy.mjs";

// Secrets and keys of this file: every log line of every process started here
// is searched for them (and for every token seen) at the end.
const API_KEY = "ak-" + "k7Qm2vX9pL4sT8wZ";
const SECRET = "ts-first-" + "R3nD0mS3cr3tV4lu3xyz0123456789";
const SECRET_2 = "ts-second-" + "An0th3rS3cr3tV4lu3abcdefghijk";
const TOKEN_ARGS = ["--auth", "token", "--api-key", API_KEY, "--token-secret", SECRET, "--token-secret", SECRET_2];
const LOG_LEVEL = { RUST_LOG: "debug,tidings=trace" };

const allProcs = [];
const seenTokens = new Set();

async function start(args = TOKEN_ARGS, env = LOG_LEVEL, options) {
  const s = await startServer(args, env, options);
  allProcs.push(s);
  return s;
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async function mint(url, body, { key = API_KEY, timeoutMs = 5000 } = {}) {
  const headers = { "content-type": "application/json" };
  if (key !== null) headers.authorization = `Bearer ${key}`;
  const res = await fetch(`${url}/v1/ws/tokens`, {
    method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  if (parsed?.token) seenTokens.add(parsed.token);
  return { status: res.status, body: parsed, text };
}

async function mintOk(url, trackingIds, ttlSeconds) {
  const r = await mint(url, ttlSeconds === undefined ? { trackingIds } : { trackingIds, ttlSeconds });
  assert.equal(r.status, 201, `mint: ${r.text}`);
  return r.body.token;
}

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** A JWT signed as a backend would sign it itself (node:crypto, no library). */
function selfSigned(claims, { secret = SECRET, header = { alg: "HS256", typ: "JWT" } } = {}) {
  const head = `${b64url(header)}.${b64url(claims)}`;
  const sig = createHmac(header.alg === "HS512" ? "sha512" : "sha256", secret).update(head).digest("base64url");
  const token = `${head}.${sig}`;
  seenTokens.add(token);
  return token;
}

const nowS = () => Math.floor(Date.now() / 1000);

function decode(token) {
  const [h, c] = token.split(".");
  return { header: JSON.parse(Buffer.from(h, "base64url")), claims: JSON.parse(Buffer.from(c, "base64url")) };
}

function subscribeRefused(socket, trackingId, timeoutMs = 5000) {
  return withTimeout(new Promise((resolve) => {
    socket.emit("subscribe", { trackingId }, (env) => resolve(env));
  }), timeoutMs, "subscribe callback");
}

function backfillWith(url, trackingId, { bearer, query } = {}) {
  const q = new URLSearchParams({ trackingId });
  if (query !== undefined) q.set("token", query);
  const headers = bearer === undefined ? {} : { authorization: `Bearer ${bearer}` };
  return httpGet(`${url}/v1/events?${q}`, { headers });
}

// ---------------------------------------------------------------------------

describe("token mode: configuration", () => {
  for (const [name, args, message] of [
    ["--auth token without --token-secret", ["--auth", "token", "--api-key", "k"], /--token-secret/],
    ["an empty --token-secret", ["--auth", "token", "--token-secret", ""], /must not be empty/],
    ["an empty --api-key", ["--auth", "token", "--token-secret", SECRET, "--api-key", " "], /must not be empty/],
  ]) {
    test(`${name} refuses to start, with a clear message`, async () => {
      await assert.rejects(start(args, {}), (err) => {
        assert.match(err.message, /server exited \(\{"code":[1-9]/, "exits non-zero before listening");
        assert.match(err.message, message);
        return true;
      });
    });
  }
});

describe("token mode: one node", () => {
  let server;
  before(async () => { server = await start(); });
  after(async () => { await server?.stop(); });

  test("mint: 201 with a JWT (HS256, kid, exp/iat in seconds, tids) and expiresAt in ms", async () => {
    const before = Date.now();
    const r = await mint(server.url, { trackingIds: ["sub-1", "merchant-42:*"], ttlSeconds: 120 });
    assert.equal(r.status, 201, r.text);
    assert.deepEqual(Object.keys(r.body).sort(), ["expiresAt", "token"]);
    const { header, claims } = decode(r.body.token);
    assert.equal(header.alg, "HS256");
    assert.match(header.kid, /^[0-9a-f]{16}$/, "a kid that names the secret");
    assert.ok(!r.body.token.includes(SECRET) && !header.kid.includes(SECRET.slice(0, 8)));
    assert.deepEqual(claims.tids, ["sub-1", "merchant-42:*"]);
    assert.equal(claims.exp - claims.iat, 120);
    assert.ok(Math.abs(claims.iat - before / 1000) < 5, "iat is now, in seconds");
    assert.equal(r.body.expiresAt, claims.exp * 1000, "expiresAt is exp in milliseconds");
    const dflt = decode(await mintOk(server.url, ["x"])).claims;
    assert.equal(dflt.exp - dflt.iat, 60, "ttlSeconds defaults to 60");
  });

  test("mint: wrong or missing key is 401, checked before the body is read", async () => {
    for (const key of [null, "wrong", API_KEY + "x"]) {
      const r = await mint(server.url, "not json at all {", { key });
      assertHttpError(r, 401, "UNAUTHORIZED");
      assert.ok(!r.text.includes(API_KEY), "the key is not echoed");
    }
  });

  test("mint: bad input is 400 INVALID_PAYLOAD with details naming the field and position", async () => {
    const cases = [
      [{}, "trackingIds", /required/],
      [{ trackingIds: [] }, "trackingIds", /1 to 100/],
      [{ trackingIds: Array.from({ length: 101 }, (_, i) => `t${i}`) }, "trackingIds", /1 to 100/],
      [{ trackingIds: "sub-1" }, "trackingIds", /array/],
      [{ trackingIds: ["ok", "*"] }, "trackingIds", /trackingIds\[1\]/],
      [{ trackingIds: ["ok", ""] }, "trackingIds", /trackingIds\[1\]/],
      [{ trackingIds: ["ok", 7] }, "trackingIds", /trackingIds\[1\]/],
      [{ trackingIds: ["a\u0001b"] }, "trackingIds", /trackingIds\[0\]/],
      [{ trackingIds: ["x".repeat(257)] }, "trackingIds", /trackingIds\[0\]/],
      [{ trackingIds: ["ok"], ttlSeconds: 0 }, "ttlSeconds", /1 to 3600/],
      [{ trackingIds: ["ok"], ttlSeconds: 3601 }, "ttlSeconds", /1 to 3600/],
      [{ trackingIds: ["ok"], ttlSeconds: "60" }, "ttlSeconds", /1 to 3600/],
      [{ trackingIds: ["ok"], extra: 1 }, "extra", /Unknown/],
    ];
    for (const [body, field, message] of cases) {
      const r = await mint(server.url, body);
      assertHttpError(r, 400, "INVALID_PAYLOAD");
      const details = r.body.error.details;
      assert.equal(details.length, 1, JSON.stringify({ body, details }));
      assert.equal(details[0].index, 0);
      assert.equal(details[0].field, field, JSON.stringify(body));
      assert.match(details[0].message, message, JSON.stringify(body));
    }
    for (const raw of ["", "{", "[1]", "null"]) {
      assertHttpError(await mint(server.url, raw), 400, "INVALID_PAYLOAD");
    }
  });

  for (const setup of TRANSPORT_SETUPS) {
    test(`${setup.name}: a valid token connects; covered ids ack, others FORBIDDEN; payments flow`, async () => {
      const mine = uid("tok-mine");
      const prefix = uid("tok-m") + ":";
      const other = uid("tok-other");
      const token = await mintOk(server.url, [mine, prefix + "*"]);
      const socket = await connectWith(server.url, setup, { auth: { token } });
      try {
        await subscribe(socket, mine);
        await subscribe(socket, prefix + "inv-1");
        const refused = await subscribeRefused(socket, other);
        assertError(refused, "FORBIDDEN");
        assert.equal(refused.data.trackingId, other);
        const errorEvent = await waitFor(socket, "error", (e) => e?.data?.trackingId === other);
        assertError(errorEvent, "FORBIDDEN");
        // Nothing changed: the refused id is not delivered, the others are.
        await ingestOk(server.url, [payment(other), payment(mine), payment(prefix + "inv-1")]);
        await waitFor(socket, "payment", (p) => p.data.trackingId === mine);
        await waitFor(socket, "payment", (p) => p.data.trackingId === prefix + "inv-1");
        // A later payment to a covered id has arrived: the refused id's would have too.
        const [later] = await ingestOk(server.url, payment(mine));
        await waitFor(socket, "payment", (p) => p.id === later.id && p.data.trackingId === mine);
        assert.deepEqual(payments(socket, other), [], `no payment for ${other}`);
      } finally {
        closeAll(socket);
      }
    });
  }

  test("the token as a `token` query parameter connects too (websocket and polling)", async () => {
    const id = uid("tok-q");
    const token = await mintOk(server.url, [id]);
    for (const transports of [["websocket"], ["polling"]]) {
      const socket = await connect(server.url, { transports, query: { token } });
      try {
        await subscribe(socket, id);
        assertError(await subscribeRefused(socket, id + "-no"), "FORBIDDEN");
      } finally {
        closeAll(socket);
      }
    }
  });

  test("connection refused: connect_error message starts with UNAUTHORIZED", async () => {
    const claims = { exp: nowS() + 60, iat: nowS(), tids: ["a"] };
    const refusedTokens = {
      "no token": undefined,
      "empty token": "",
      "garbage": "not-a-jwt",
      "three garbage parts": "a.b.c",
      "wrong secret": selfSigned(claims, { secret: "some other secret" }),
      "expired beyond the 60 s leeway": selfSigned({ ...claims, exp: nowS() - 90 }),
      "no exp": selfSigned({ tids: ["a"] }),
      "no tids": selfSigned({ exp: nowS() + 60 }),
      "alg none": `${b64url({ alg: "none", typ: "JWT" })}.${b64url(claims)}.`,
      "HS512": selfSigned(claims, { header: { alg: "HS512", typ: "JWT" } }),
      "tampered claims": (() => {
        const t = selfSigned(claims).split(".");
        return `${t[0]}.${b64url({ ...claims, tids: ["b"] })}.${t[2]}`;
      })(),
    };
    // 22 refusals: more than the failed-credential burst of one address
    // (section 5), so each transport comes from an address of its own.
    for (const [transports, address] of [[["websocket"], "127.0.0.2"], [["polling"], "127.0.0.3"]]) {
      const from = fromAddress(address);
      try {
        for (const [name, token] of Object.entries(refusedTokens)) {
          const opts = { transports, ...from };
          if (token !== undefined) opts.auth = { token };
          const message = await connectRefused(server.url, opts);
          assert.match(message, /^UNAUTHORIZED/, `${name} over ${transports}: ${message}`);
          if (token) assert.ok(!message.includes(token), "the token is not echoed");
        }
      } finally {
        from.agent.destroy();
      }
    }
  });

  test("a backend's own tokens: no kid, an unknown kid, the second secret; a lone * covers nothing", async () => {
    const id = uid("tok-self");
    const claims = { exp: nowS() + 60, tids: [id, "*"] };
    for (const [name, token] of [
      ["no kid, first secret", selfSigned(claims)],
      ["unknown kid", selfSigned(claims, { header: { alg: "HS256", typ: "JWT", kid: "backend-7" } })],
      ["second secret", selfSigned(claims, { secret: SECRET_2 })],
    ]) {
      const socket = await connect(server.url, { transports: ["websocket"], auth: { token } });
      try {
        await subscribe(socket, id);
        assertError(await subscribeRefused(socket, uid("anything")), "FORBIDDEN");
      } catch (err) {
        err.message = `${name}: ${err.message}`;
        throw err;
      } finally {
        closeAll(socket);
      }
    }
  });

  test("expiry bounds only connecting: a connected socket keeps receiving after its token expired", async () => {
    const id = uid("tok-exp");
    // Valid for about 3 more seconds (exp 57 s ago, 60 s of leeway).
    const token = selfSigned({ exp: nowS() - 57, tids: [id] });
    const socket = await connect(server.url, { transports: ["websocket"], auth: { token } });
    try {
      await subscribe(socket, id);
      // Wait until the token is refused to anyone connecting with it...
      await withTimeout((async () => {
        for (;;) {
          const probe = makeSocket(server.url, { transports: ["websocket"], auth: { token } });
          const outcome = await new Promise((r) => {
            probe.once("connect", () => r("connected"));
            probe.once("connect_error", (e) => r(e.message));
          });
          probe.close();
          if (outcome !== "connected") { assert.match(outcome, /^UNAUTHORIZED/); return; }
          await new Promise((r) => setTimeout(r, 250));
        }
      })(), 15000, "the token to expire");
      // ...then the socket that connected with it still gets payments and may subscribe.
      const [r] = await ingestOk(server.url, payment(id));
      const p = await waitFor(socket, "payment", (e) => e.id === r.id);
      assert.equal(p.data.trackingId, id);
    } finally {
      closeAll(socket);
    }
  });

  test("backfill: the same token as bearer or query; 401 without a valid one, 403 outside it", async () => {
    const id = uid("tok-bf");
    const [r] = await ingestOk(server.url, payment(id));
    const token = await mintOk(server.url, [id]);
    for (const how of [{ bearer: token }, { query: token }]) {
      const ok = await backfillWith(server.url, id, how);
      assert.equal(ok.status, 200, ok.text);
      assert.deepEqual(ok.body.data.map((e) => e.id), [r.id]);
      const other = await backfillWith(server.url, uid("tok-bf-other"), how);
      assertHttpError(other, 403, "FORBIDDEN");
    }
    const expired = selfSigned({ exp: nowS() - 120, tids: [id] });
    for (const how of [{}, { bearer: "garbage" }, { query: "a.b.c" }, { bearer: expired },
      { bearer: selfSigned({ exp: nowS() + 60, tids: [id] }, { secret: "wrong" }) }]) {
      const res = await backfillWith(server.url, id, how);
      assertHttpError(res, 401, "UNAUTHORIZED");
      for (const t of [how.bearer, how.query]) if (t) assert.ok(!res.text.includes(t), "not echoed");
    }
    // 401 comes before the trackingId's own checks; 400 for a bad id with a valid token.
    assertHttpError(await backfillWith(server.url, "", {}), 401, "UNAUTHORIZED");
    assertHttpError(await backfillWith(server.url, "", { bearer: token }), 400, "INVALID_TRACKING_ID");
  });

  test("ingest still takes the ingest token; an API key is not an ingest token and vice versa", async () => {
    const r = await fetch(`${server.url}/v1/payments`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(payment(uid("x"))),
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(r.status, 401);
    assertHttpError(await mint(server.url, { trackingIds: ["a"] }, { key: INGEST_TOKEN }), 401, "UNAUTHORIZED");
  });
});

describe("token mode: open mode and unconfigured minting", () => {
  test("open mode: no token needed; minting answers 404 NOT_FOUND; without --api-key 401", async () => {
    const open = await start(["--api-key", API_KEY]);
    const noKey = await start(["--auth", "token", "--token-secret", SECRET]);
    try {
      const id = uid("open");
      const socket = await connect(open.url, { transports: ["websocket"] });
      await subscribe(socket, id);
      closeAll(socket);
      assertHttpError(await mint(open.url, { trackingIds: ["a"] }), 404, "NOT_FOUND");
      assertHttpError(await mint(noKey.url, { trackingIds: ["a"] }), 401, "UNAUTHORIZED");
      const message = await connectRefused(noKey.url, { transports: ["websocket"] });
      assert.match(message, /^UNAUTHORIZED/);
    } finally {
      await open.stop();
      await noKey.stop();
    }
  });
});

describe("token mode: reconnects and restarts", () => {
  test("an auth function fetches a fresh token at every reconnect, across a node restart", async () => {
    const port = await freePort();
    const args = ["--listen", `127.0.0.1:${port}`, "--ingest-token", INGEST_TOKEN, "--log-format", "json", ...TOKEN_ARGS];
    let server = await start([], LOG_LEVEL, { baseArgs: args });
    const id = uid("tok-re");
    const calls = [];
    const socket = makeSocket(server.url, {
      transports: ["websocket"],
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      auth: (cb) => {
        mintOk(`http://127.0.0.1:${port}`, [id], 1).then((token) => {
          calls.push(decode(token).claims.iat);
          cb({ token });
        }, (err) => { calls.push(`error: ${err.message}`); cb({}); });
      },
    });
    try {
      await withTimeout(new Promise((r) => socket.once("connect", r)), 10000, "first connect");
      await subscribe(socket, id);
      const [r1] = await ingestOk(server.url, payment(id));
      await waitFor(socket, "payment", (p) => p.id === r1.id);
      const callsBefore = calls.length;
      await server.stop("SIGKILL");
      server = await start([], LOG_LEVEL, { baseArgs: args });
      await withTimeout(new Promise((r) => socket.once("connect", r)), 20000, "reconnect after restart");
      assert.ok(calls.length > callsBefore, `auth was called again (${JSON.stringify(calls)})`);
      assert.ok(calls.every((c) => typeof c === "number"), JSON.stringify(calls));
      // The application resubscribes on reconnect, as the SDK does (the
      // recorder of the harness ends at the first disconnect: plain listeners).
      const seen = new Map();
      let wanted = null;
      let arrived;
      const after = new Promise((r) => { arrived = r; });
      socket.on("payment", (p) => { seen.set(p.id, p); if (p.id === wanted) arrived(p); });
      const ack = await withTimeout(new Promise((r) => socket.emit("subscribe", { trackingId: id }, r)),
        5000, "resubscribe ack");
      assert.equal(ack.type, "ack", JSON.stringify(ack));
      const [r2] = await ingestOk(server.url, payment(id));
      wanted = r2.id;
      if (seen.has(wanted)) arrived(seen.get(wanted));
      await withTimeout(after, 10000, "the payment after the restart");
    } finally {
      socket.close();
      await server.stop();
    }
  });
});

describe("token mode: a cluster", () => {
  let redis;
  let nodes;
  before(async () => {
    redis = await startRedis();
    // Node 0 signs with SECRET; node 1 with SECRET_2 and also verifies SECRET
    // (a rotation in progress).
    nodes = [
      ...(await startNodes(1, redis.url, ["--auth", "token", "--api-key", API_KEY, "--token-secret", SECRET, "--token-secret", SECRET_2], LOG_LEVEL)),
      ...(await startNodes(1, redis.url, ["--auth", "token", "--api-key", API_KEY, "--token-secret", SECRET_2, "--token-secret", SECRET], LOG_LEVEL)),
    ];
    allProcs.push(...nodes);
  });
  after(async () => {
    await stopNodes(nodes ?? []);
    await redis?.stop();
  });

  test("every node accepts tokens minted by any node; payments ingested on one reach sockets on the other", async () => {
    const id = uid("tok-cl");
    const fromA = await mintOk(nodes[0].url, [id]);
    const fromB = await mintOk(nodes[1].url, [id]);
    const onB = await connect(nodes[1].url, { transports: ["websocket"], auth: { token: fromA } });
    const onA = await connect(nodes[0].url, { transports: ["polling"], auth: { token: fromB } });
    try {
      await subscribe(onB, id);
      await subscribe(onA, id);
      const [r] = await ingestOk(nodes[0].url, payment(id));
      await waitFor(onB, "payment", (p) => p.id === r.id, 10000);
      await waitFor(onA, "payment", (p) => p.id === r.id, 10000);
      const bf = await backfillWith(nodes[1].url, id, { bearer: fromA });
      assert.equal(bf.status, 200, bf.text);
      assert.deepEqual(bf.body.data.map((e) => e.id), [r.id]);
      assertHttpError(await backfillWith(nodes[0].url, uid("no"), { query: fromB }), 403, "FORBIDDEN");
    } finally {
      closeAll(onA, onB);
    }
  });
});

describe("token mode: logs", () => {
  test("no token, API key or secret appears in any log line of this file's servers (debug level)", () => {
    assert.ok(allProcs.length >= 5, "the servers above ran");
    assert.ok(seenTokens.size > 10, "tokens were used above");
    const needles = [API_KEY, SECRET, SECRET_2, ...seenTokens].filter((n) => n && n.length >= 8);
    // The signature part alone must not leak either.
    for (const t of seenTokens) {
      const sig = t.split(".")[2];
      if (sig && sig.length >= 16) needles.push(sig);
    }
    let lines = 0;
    for (const proc of allProcs) {
      const text = proc.logs();
      lines += text.split("\n").length;
      for (const needle of needles) {
        const at = text.indexOf(needle);
        assert.equal(at, -1, `a secret or token appears in a log line: …${text.slice(Math.max(0, at - 200), at + 40)}…`);
      }
    }
    assert.ok(lines > 500, `debug logs were captured (${lines} lines)`);
  });
});
