// The SDK in Node against real Tidings processes (memory, Redis, a cluster
// behind nginx, token mode), with real faults: SIGKILL and restart, a cut
// connection, deliveries dropped or repeated on the way, a one-slot delivery
// buffer. Each test states what the application must see, exactly.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { connect, fileStorage, memoryStorage, TidingsError } from "tidings-client";
import {
  startNode, record, clientEvent, assertExactlyOnce, assertTidingsError,
  ingestOk, payment, uid, pace, freePort,
  startRedis, startNodes, stopNodes, startNginx, readMetric,
} from "./lib/env.mjs";
import { startWireProxy } from "./lib/wire.mjs";

/** Fast reconnects for tests (the defaults are 1 s to 30 s). */
const FAST = { initialDelayMs: 50, maxDelayMs: 500 };

const clients = [];
function client(url, options = {}) {
  const c = connect(url, { reconnect: FAST, ...options });
  clients.push(c);
  return c;
}
after(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
});

/** Subscribes and waits for the first ack; returns { sub, rec }. */
async function subscribed(c, trackingId, options) {
  const sub = c.subscribe(trackingId, options);
  const rec = record(sub);
  await rec.until((r) => r.acks().length >= 1, 10000, `the ack of ${trackingId}`);
  return { sub, rec };
}

/**
 * Ingests one more payment and waits for it: whatever the SDK would still
 * deliver before it (a duplicate, a payment out of order) has been delivered.
 */
async function settle(rec, url, id) {
  const tail = await ingestOk(url, payment(id));
  await rec.untilIds(tail);
  return tail;
}

/** Ingests `n` payments one request each; returns the 202 results in order. */
async function ingestEach(url, id, n) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(...await ingestOk(url, payment(id)));
  return out;
}

describe("one node in memory", () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await node?.stop(); });

  test("a fresh subscribe starts from now: each later payment once, in order; lastId; history() over REST; off()", async () => {
    const id = uid("fresh");
    const before = await ingestEach(node.url, id, 2);
    const c = client(node.url, { transports: ["websocket"] });
    const { sub, rec } = await subscribed(c, id);
    assert.deepEqual(rec.acks()[0].position, { id: before[1].id, seq: 2 }, "the ack's position");
    assert.equal(sub.lastId, before[1].id, "a fresh subscribe stands at the ack's position");
    let seenByOff = 0;
    const off = sub.on("payment", () => { seenByOff++; });
    const later = await ingestOk(node.url, [payment(id), payment(id), payment(id)]);
    await rec.untilIds(later);
    assertExactlyOnce(rec, later);
    assert.equal(sub.lastId, later[2].id);
    assert.equal(seenByOff, 3);
    off();
    off(); // idempotent
    const last = await ingestOk(node.url, payment(id));
    await rec.untilIds(last);
    assert.equal(seenByOff, 3, "a removed listener gets nothing more");
    const page = await sub.history({ limit: 10 });
    assert.deepEqual(page.data.map((p) => p.id), [...before, ...later, ...last].map((r) => r.id));
    assert.equal(page.hasMore, false);
    assert.deepEqual(page.data.slice(2), rec.payments(), "REST returns the envelopes the socket delivered");
    assert.equal(c.subscribe(id), sub, "subscribing again to a held id is the same subscription");
    assert.deepEqual(rec.gaps(), []);
  });

  test("bad input: a clear error, and nothing else changes", async () => {
    assert.throws(() => connect(node.url, { reconnect: { jitter: 2 } }), RangeError);
    assert.throws(() => connect(node.url, { reconnect: { initialDelayMs: 10, maxDelayMs: 5 } }), RangeError);
    const c = client(node.url, { transports: ["websocket"] });
    assert.throws(() => c.subscribe("x", { since: "not-an-id" }), TypeError);
    const id = uid("good");
    const { rec } = await subscribed(c, id);
    const bad = c.subscribe("bad\u0007id");
    const badRec = record(bad);
    const clientErr = clientEvent(c, "error", (e) => e.code === "INVALID_TRACKING_ID");
    await badRec.until((r) => r.errors().length === 1, 10000, "INVALID_TRACKING_ID");
    assertTidingsError(badRec.errors()[0], "INVALID_TRACKING_ID");
    assert.equal(badRec.errors()[0].trackingId, "bad\u0007id");
    assertTidingsError(await clientErr, "INVALID_TRACKING_ID");
    assert.equal(bad.subscribed, false);
    const r = await ingestOk(node.url, payment(id));
    await rec.untilIds(r);
    assertExactlyOnce(rec, r, "the other subscription goes on");
    await assert.rejects(c.history("", {}), (e) => e instanceof TidingsError && e.code === "INVALID_TRACKING_ID" && e.status === 400);
    await assert.rejects(c.history(id, { since: "nope" }), (e) => e instanceof TidingsError && e.code === "INVALID_SINCE");
    await c.close();
    assert.throws(() => c.subscribe(uid("late")), (e) => e instanceof TidingsError && e.code === "CLOSED");
  });

  test("a process restart resumes from the file storage: only what came meanwhile, once", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "tidings-sdk-"));
    const file = path.join(dir, "last-ids.json");
    try {
      const id = uid("resume");
      const a = client(node.url, { storage: fileStorage(file), transports: ["websocket"] });
      const { sub, rec } = await subscribed(a, id);
      const first = await ingestEach(node.url, id, 3);
      await rec.untilIds(first);
      await a.close();
      const stored = JSON.parse(readFileSync(file, "utf8"));
      assert.deepEqual(Object.values(stored).map((v) => JSON.parse(v).id), [first[2].id], "the file holds the last id");
      assert.equal(sub.lastId, first[2].id);
      const meanwhile = await ingestEach(node.url, id, 2);
      // A new process: a new client and a new storage object on the same file.
      const b = client(node.url, { storage: fileStorage(file), transports: ["websocket"] });
      const { rec: rec2 } = await subscribed(b, id);
      await rec2.untilIds(meanwhile);
      const live = await ingestOk(node.url, payment(id));
      await rec2.untilIds(live);
      assertExactlyOnce(rec2, [...meanwhile, ...live], "after the restart");
      assert.deepEqual(rec2.gaps(), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a cut connection: the SDK reconnects, resubscribes with since, and delivers what it missed, once, in order", async () => {
    const proxy = await startWireProxy(node.url);
    try {
      const id = uid("cut");
      const c = client(proxy.url, { transports: ["polling"] });
      const { rec } = await subscribed(c, id);
      const first = await ingestEach(node.url, id, 3);
      await rec.untilIds(first);
      const lost = clientEvent(c, "disconnect");
      proxy.cut();
      await lost;
      const missed = await ingestEach(node.url, id, 4);
      const back = clientEvent(c, "connect");
      proxy.heal();
      await back;
      await rec.untilIds(missed);
      const live = await ingestOk(node.url, payment(id));
      await rec.untilIds(live);
      assertExactlyOnce(rec, [...first, ...missed, ...live]);
      assert.ok(rec.acks().length >= 2, "resubscribed after the reconnect");
      assert.deepEqual(rec.gaps(), []);
      assert.deepEqual(rec.errors(), []);
    } finally {
      await proxy.close();
    }
  });

  for (const before of [0, 2]) {
    test(`a delivery lost on the way (${before} payments before the subscribe): the seq jump is noticed and the hole filled from the backfill before going on`, async () => {
      const proxy = await startWireProxy(node.url);
      try {
        const id = uid("hole");
        const earlier = await ingestEach(node.url, id, before);
        const c = client(proxy.url, { transports: ["polling"] });
        let disconnects = 0;
        c.on("disconnect", () => { disconnects++; });
        const { rec } = await subscribed(c, id);
        const first = await ingestEach(node.url, id, 2);
        await rec.untilIds(first);
        // The next payment never reaches the client. With a history before the subscribe, the node
        // answers a resubscribe with that since with the ack alone (it handed that payment over):
        // only the backfill has it.
        const lostSeq = before + 3;
        proxy.rule("drop", (event, p) => event === "payment" && p?.data?.trackingId === id && p.seq === lostSeq);
        const rest = await ingestEach(node.url, id, 4);
        await rec.untilIds(rest);
        const tail = await settle(rec, node.url, id);
        assert.equal(proxy.stats.dropped.length, 1, `the proxy dropped seq ${lostSeq}`);
        assertExactlyOnce(rec, [...first, ...rest, ...tail], "no hole: the one lost recovered, in order");
        assert.deepEqual(proxy.stats.rest.map((q) => [q.get("trackingId"), q.get("since")]), [[id, first[1].id]],
          "one backfill read, after the last delivered id");
        assert.equal(c.connected, true);
        assert.equal(disconnects, 0, "without reconnecting: the SDK noticed the jump itself");
        assert.deepEqual(rec.gaps(), [], "a recovered hole is no gap");
      } finally {
        await proxy.close();
      }
    });
  }

  test("a delivery repeated on the way is delivered once", async () => {
    const proxy = await startWireProxy(node.url);
    try {
      const id = uid("twice");
      const c = client(proxy.url, { transports: ["polling"] });
      const { rec } = await subscribed(c, id);
      proxy.rule("duplicate", (event, p) => event === "payment" && p?.data?.trackingId === id, 3);
      const all = await ingestEach(node.url, id, 4);
      await rec.untilIds(all);
      const tail = await ingestOk(node.url, payment(id));
      await rec.untilIds(tail);
      assert.equal(proxy.stats.duplicated.length, 3, "the proxy repeated three payments");
      assertExactlyOnce(rec, [...all, ...tail]);
    } finally {
      await proxy.close();
    }
  });
});

describe("one node in memory keeping 3 payments per trackingId (--history-limit 3)", () => {
  let node;
  before(async () => { node = await startNode(["--history-limit", "3"]); });
  after(async () => { await node?.stop(); });

  test("payments the server no longer retains: one gap saying which seqs, then the retained ones, once", async () => {
    const proxy = await startWireProxy(node.url);
    try {
      const id = uid("retention");
      const c = client(proxy.url, { transports: ["polling"] });
      const { rec } = await subscribed(c, id);
      const first = await ingestOk(node.url, payment(id));
      await rec.untilIds(first);
      const lost = clientEvent(c, "disconnect");
      proxy.cut();
      await lost;
      const meanwhile = await ingestEach(node.url, id, 6); // seqs 2..7; 5, 6, 7 retained
      proxy.heal();
      await rec.untilIds(meanwhile.slice(3));
      const live = await ingestOk(node.url, payment(id));
      await rec.untilIds(live);
      assert.deepEqual(rec.gaps(), [{
        trackingId: id, lastId: first[0].id, fromSeq: 2, toSeq: 4, restarted: false, nextId: meanwhile[3].id, nextSeq: 5,
      }]);
      assert.deepEqual(rec.events.filter((e) => e.kind === "payment" || e.kind === "gap").map((e) => e.kind === "gap" ? "gap" : e.seq),
        [1, "gap", 5, 6, 7, 8], rec.trace());
      assertExactlyOnce(rec, [...first, ...meanwhile.slice(3), ...live]);
      assert.deepEqual(proxy.stats.rest, [], "the HISTORY_TRUNCATED warning said it: no backfill read was needed");
    } finally {
      await proxy.close();
    }
  });

  test("a stored id this server could not have issued: INVALID_SINCE, typed; then the retained history from its start, once", async () => {
    const id = uid("forged");
    const before = await ingestEach(node.url, id, 2);
    const epoch = before[0].id.split("-")[0];
    const storage = memoryStorage();
    const c = client(node.url, { storage, transports: ["websocket"] });
    await storage.set(`tidings:${node.url} ${id}`, JSON.stringify({ id: `${epoch}-999`, seq: 999 }));
    const sub = c.subscribe(id);
    const rec = record(sub);
    await rec.untilIds(before);
    assertTidingsError(rec.errors()[0], "INVALID_SINCE");
    assert.equal(rec.errors().length, 1);
    const live = await ingestOk(node.url, payment(id));
    await rec.untilIds(live);
    assertExactlyOnce(rec, [...before, ...live]);
    assert.deepEqual(rec.gaps(), []);
    assert.equal(JSON.parse(await storage.get(`tidings:${node.url} ${id}`)).id, live[0].id, "the storage holds the new last id");
  });
});

describe("one node in memory, SIGKILLed and restarted", () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await node?.stop(); });

  test("the application sees a gap, then the new history, nothing twice", async () => {
    const id = uid("restart");
    const c = client(node.url, { transports: ["websocket"] });
    const { rec } = await subscribed(c, id);
    const old = await ingestEach(node.url, id, 3);
    await rec.untilIds(old);
    const lost = clientEvent(c, "disconnect");
    await node.restart();
    await lost;
    const fresh = await ingestEach(node.url, id, 2);
    await rec.untilIds(fresh);
    const more = await ingestOk(node.url, payment(id));
    await rec.untilIds(more);
    assert.equal(fresh[0].seq, 1, "the restarted node began a new history");
    assert.deepEqual(rec.events.filter((e) => e.kind !== "subscribed").map((e) => e.kind),
      ["payment", "payment", "payment", "gap", "payment", "payment", "payment"], rec.trace());
    assert.deepEqual(rec.gaps(), [{
      trackingId: id, lastId: old[2].id, fromSeq: 4, toSeq: null, restarted: true, nextId: fresh[0].id, nextSeq: 1,
    }]);
    const ids = rec.ids();
    assert.deepEqual(ids, [...old, ...fresh, ...more].map((r) => r.id), "old history, then the new one, each once");
    assert.deepEqual(rec.errors(), [], "HISTORY_TRUNCATED is a gap, not an error");
  });
});

describe("a 2-node cluster on Redis behind nginx", () => {
  let redis;
  let nodes = [];
  let nginx;
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(2, redis.url);
    nginx = await startNginx(nodes.map((n) => n.port));
  });
  after(async () => {
    await nginx?.stop();
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("the client's node SIGKILLed mid-stream while ingest goes on: every 202-accepted payment once, in order, no gap", async () => {
    const id = uid("cluster");
    const c = client(nginx.url, { transports: ["websocket"] });
    const { rec } = await subscribed(c, id);
    const subs = await Promise.all(nodes.map(async (n) => (await readMetric(n.url, "tidings_subscriptions")).value));
    const victim = subs.indexOf(1);
    assert.ok(victim >= 0, `one node holds the subscription (tidings_subscriptions: ${subs})`);
    const survivor = nodes[1 - victim];
    const accepted = [];
    let killed = null;
    for (let i = 0; i < 120; i++) {
      accepted.push(...await ingestOk(survivor.url, payment(id)));
      if (i === 40) {
        await rec.until((r) => r.payments().length >= 20, 10000, "payments before the kill");
        killed = nodes[victim].stop("SIGKILL");
      }
      await pace(5);
    }
    await killed;
    await rec.untilIds(accepted, 30000);
    accepted.push(...await settle(rec, survivor.url, id));
    assertExactlyOnce(rec, accepted);
    assert.deepEqual(rec.gaps(), [], "no gap: Redis kept the history");
    assert.ok(rec.acks().length >= 2, "resubscribed on the surviving node");
  });
});

describe("a one-slot delivery buffer (--delivery-buffer 1)", () => {
  let redis;
  let nodes = [];
  before(async () => {
    redis = await startRedis();
    nodes = [
      ...await startNodes(1, redis.url, ["--delivery-buffer", "1", "--history-limit", "20000"]),
      ...await startNodes(1, redis.url, ["--history-limit", "20000"]),
    ];
  });
  after(async () => {
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("deliveries dropped by the node are recovered without the application seeing a hole", async () => {
    const [D, E] = nodes;
    const id = uid("dropbuf");
    const c = client(D.url, { transports: ["websocket"] });
    const { rec } = await subscribed(c, id);
    const accepted = [];
    let dropped = 0;
    for (let attempt = 0; attempt < 8 && dropped === 0; attempt++) {
      const pair = await Promise.all([0, 1].map(() => ingestOk(E.url, Array.from({ length: 500 }, () => payment(id)))));
      for (const r of pair) accepted.push(...r);
      dropped = (await readMetric(D.url, "tidings_deliveries_dropped_total", { reason: "queue_full" })).value ?? 0;
    }
    assert.ok(dropped > 0, "the node dropped deliveries from its one-slot buffer");
    accepted.sort((a, b) => a.seq - b.seq);
    await rec.untilIds(accepted, 60000);
    accepted.push(...await settle(rec, E.url, id));
    assertExactlyOnce(rec, accepted);
    assert.deepEqual(rec.gaps(), []);
  });
});

// ---------------------------------------------------------------------------
// Token mode
// ---------------------------------------------------------------------------

const SECRET = "sdk-test-secret-" + "0123456789abcdefghij";
const b64url = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
/** An HS256 token signed as a backend would (contract section 5). */
function token(tids, expInS) {
  const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ tids, exp: Math.floor(Date.now() / 1000) + expInS })}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

describe("token mode", () => {
  let node;
  before(async () => { node = await startNode(["--auth", "token", "--token-secret", SECRET]); });
  after(async () => { await node?.stop(); });

  test("a token that expired between reconnects: UNAUTHORIZED surfaces typed, a fresh token is fetched, nothing is lost", async () => {
    const proxy = await startWireProxy(node.url);
    try {
      const id = uid("tok");
      // The application's provider: the first token is good; the one it hands out at the
      // reconnect has expired (beyond the server's 60 s leeway); the next is fresh.
      const handed = [];
      const auth = async () => {
        const t = handed.length === 1 ? token([id], -3600) : token([id], 300);
        handed.push(t);
        return t;
      };
      const c = client(proxy.url, { auth, transports: ["polling"] });
      const errors = [];
      c.on("error", (e) => errors.push(e));
      const { sub, rec } = await subscribed(c, id);
      const first = await ingestEach(node.url, id, 2);
      await rec.untilIds(first);
      const lost = clientEvent(c, "disconnect");
      proxy.cut();
      await lost;
      const missed = await ingestEach(node.url, id, 3);
      const refused = clientEvent(c, "error", (e) => e.code === "UNAUTHORIZED");
      const back = clientEvent(c, "connect");
      proxy.heal();
      assertTidingsError(await refused, "UNAUTHORIZED");
      assert.match((await refused).message, /^UNAUTHORIZED/);
      await back;
      await rec.untilIds(missed);
      const tail = await settle(rec, node.url, id);
      assertExactlyOnce(rec, [...first, ...missed, ...tail]);
      assert.ok(handed.length >= 3, `the provider was asked at every attempt (${handed.length})`);
      assert.deepEqual(errors.map((e) => e.code), ["UNAUTHORIZED"]);
      // REST with the socket's token.
      const page = await sub.history();
      assert.deepEqual(page.data.map((p) => p.id), [...first, ...missed, ...tail].map((r) => r.id));
    } finally {
      await proxy.close();
    }
  });

  test("FORBIDDEN for a trackingId outside the token, typed, on the subscription and the client; the others go on", async () => {
    const id = uid("tok-mine");
    const other = uid("tok-theirs");
    const c = client(node.url, { auth: token([id], 300), transports: ["websocket"] });
    const { rec } = await subscribed(c, id);
    const theirs = c.subscribe(other);
    const theirsRec = record(theirs);
    const onClient = clientEvent(c, "error", (e) => e.code === "FORBIDDEN");
    await theirsRec.until((r) => r.errors().length === 1, 10000, "FORBIDDEN");
    assertTidingsError(theirsRec.errors()[0], "FORBIDDEN");
    assert.equal((await onClient).trackingId, other);
    await assert.rejects(theirs.history(), (e) => e instanceof TidingsError && e.code === "FORBIDDEN" && e.status === 403);
    const r = await ingestOk(node.url, [payment(id), payment(other)]);
    await rec.untilIds([r[0]]);
    assertExactlyOnce(rec, [r[0]]);
    assert.deepEqual(theirsRec.payments(), []);
  });

  test("a fixed token the server refuses: UNAUTHORIZED, typed", async () => {
    const c = client(node.url, { auth: token(["x"], -3600), transports: ["websocket"] });
    const err = await clientEvent(c, "error", () => true);
    assertTidingsError(err, "UNAUTHORIZED");
    assert.equal(c.connected, false);
  });
});

// ---------------------------------------------------------------------------
// Reconnection
// ---------------------------------------------------------------------------

describe("reconnection", () => {
  test("bounded and configurable: exponential delays, then RECONNECT_FAILED and no more attempts", async () => {
    // A listener that resets every connection: each attempt of a websocket-only client is one TCP connection.
    const attempts = [];
    const server = net.createServer((s) => { attempts.push(Date.now()); s.destroy(); });
    const port = await freePort();
    await new Promise((r) => server.listen(port, "127.0.0.1", r));
    try {
      const c = client(`http://127.0.0.1:${port}`, {
        transports: ["websocket"], storage: memoryStorage(),
        reconnect: { initialDelayMs: 100, maxDelayMs: 400, jitter: 0, maxAttempts: 3 },
      });
      const failed = await clientEvent(c, "error", (e) => e.code === "RECONNECT_FAILED");
      assertTidingsError(failed, "RECONNECT_FAILED");
      assert.equal(attempts.length, 4, "the first attempt and 3 retries");
      const gaps = attempts.slice(1).map((t, i) => t - attempts[i]);
      // Without jitter the delays are 100, 200, 400 ms (never shorter; timers may fire late).
      [100, 200, 400].forEach((min, i) => assert.ok(gaps[i] >= min - 15, `delay ${i + 1}: ${gaps[i]} ms >= ${min} ms (${gaps})`));
      await c.close();
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
