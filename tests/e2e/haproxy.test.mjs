// Three nodes sharing one Redis behind HAProxy, configured from the
// project's shipped deploy/haproxy/tidings.cfg (ports substituted, nothing
// else): polling-only clients on every node stay on their node (sticky by
// source address), websocket and upgrading clients work, a payment ingested
// through the proxy reaches subscribers on all three nodes, and an ingest
// that a node refuses with 503 is retried by HAProxy on another node, so
// the backend gets 202 and the payment is stored once.
//
// Clients connect from source addresses of their own (127.0.0.x), so that
// the proxy's source hash spreads them over the nodes as it would real
// clients; each node's `tidings_connections` gauge tells which node holds a
// new connection.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import net from "node:net";
import {
  ingest, ingestOk, connect, waitFor, subscribe, payments, recorded, payment, uid, assertPayment,
  backfill, closeAll, httpGet, startServer, INGEST_TOKEN,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, logLines, readMetric } from "./lib/cluster.mjs";
import {
  HAPROXY_CONF, startHaproxy, fromAddress, connectionCounts, nodeOfNewConnection,
  tidingsOptions, durationSeconds,
} from "./lib/deploy.mjs";

/** The shipped file as sections: [{ kind: "backend", name, lines: [[keyword, ...args]] }]. */
function sections(text) {
  const out = [];
  let cur = null;
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "").trimEnd();
    if (!line.trim()) continue;
    const words = line.trim().split(/\s+/);
    if (/^\S/.test(line)) {
      cur = { kind: words[0], name: words[1] ?? null, lines: [] };
      out.push(cur);
    } else if (cur) {
      cur.lines.push(words);
    }
  }
  return out;
}

/** The value of `timeout <what>` for a backend or frontend, else from defaults. */
function timeout(secs, proxy, what) {
  for (const s of [secs.find((x) => x.name === proxy), secs.find((x) => x.kind === "defaults")]) {
    const l = s?.lines.find((w) => w[0] === "timeout" && w[1] === what);
    if (l) return durationSeconds(l[2]);
  }
  return null;
}

describe("behind HAProxy (deploy/haproxy/tidings.cfg), three nodes", () => {
  let redis;
  let replica;
  let nodes = [];
  let haproxy;
  const sockets = [];
  let nextAddress = 2; // 127.0.0.1 is everybody else's
  const ALL_SERVERS = [1, 2, 3].flatMap((n) => [`tidings_api/node${n}`, `tidings_socketio/node${n}`]);

  const T = (name, fn) => test(name, async (t) => {
    try {
      await fn(t);
    } catch (err) {
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes.map((n, i) => `[node ${i + 1}]\n${logLines(n)}`).join("\n")}` +
        `\n--- haproxy output (tail) ---\n${haproxy?.output().split("\n").slice(-30).join("\n")}`;
      throw err;
    }
  });

  /**
   * Connects clients from fresh source addresses until every node holds at
   * least `perNode` of them; returns them grouped by node (index 0..2).
   */
  async function clientsOnEveryNode(opts, perNode) {
    const byNode = nodes.map(() => []);
    for (let tries = 0; byNode.some((l) => l.length < perNode); tries++) {
      assert.ok(tries < 40, `40 source addresses did not reach every node: ${byNode.map((l) => l.length)}`);
      const address = `127.0.0.${nextAddress++}`;
      const before = await connectionCounts(nodes);
      const s = await connect(haproxy.url, { ...opts, ...fromAddress(address) });
      sockets.push(s);
      const node = await nodeOfNewConnection(nodes, before);
      s.address = address;
      s.node = node;
      s.sid = s.io.engine.id;
      s.disconnects = [];
      s.on("disconnect", (r) => s.disconnects.push(r));
      byNode[node].push(s);
    }
    return byNode;
  }

  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(3, redis.url);
    haproxy = await startHaproxy(nodes.map((n) => n.port));
    await haproxy.waitState(ALL_SERVERS, "UP");
  });
  after(async () => {
    closeAll(sockets);
    await haproxy?.stop();
    await stopNodes(nodes);
    await replica?.stop();
    await redis?.stop();
  });

  T("the shipped file: its timeouts fit the server's ping defaults; /readyz health checks; ingest retried on 503 with its body buffered", async () => {
    const secs = sections(readFileSync(HAPROXY_CONF, "utf8"));
    const opts = await tidingsOptions();
    const ping = Number(opts.get("ping-interval").default);
    const pingTimeout = Number(opts.get("ping-timeout").default);
    assert.ok(ping > 0 && pingTimeout > 0);
    const tunnel = timeout(secs, "tidings_socketio", "tunnel");
    assert.ok(tunnel > ping + pingTimeout,
      `timeout tunnel (${tunnel} s) must exceed ping interval + timeout (${ping} + ${pingTimeout} s): an idle websocket would be cut`);
    for (const what of ["server", "client"]) {
      const t = timeout(secs, what === "server" ? "tidings_socketio" : "tidings", what);
      assert.ok(t > ping, `timeout ${what} (${t} s) must exceed the ping interval (${ping} s): a held poll would be cut`);
    }
    const api = secs.find((s) => s.kind === "backend" && s.name === "tidings_api");
    const has = (s, ...words) => s.lines.some((l) => words.every((w, i) => l[i] === w));
    assert.ok(has(api, "option", "httpchk"), "tidings_api health-checks its servers");
    assert.ok(api.lines.some((l) => l[0] === "http-check" && l[1] === "send" && l.includes("/readyz")), "the check is GET /readyz");
    const retryOn = api.lines.find((l) => l[0] === "retry-on");
    assert.ok(retryOn?.includes("503"), "ingest is retried on 503");
    assert.ok(has(api, "option", "http-buffer-request"), "the request body is buffered (a POST is replayed from the buffer)");
    assert.ok(api.lines.some((l) => l[0] === "option" && l[1] === "redispatch"), "a retry goes to another node");
    // Every server of both backends is either checked or tracks a checked one.
    for (const name of ["tidings_api", "tidings_socketio"]) {
      const servers = secs.find((s) => s.name === name).lines.filter((l) => l[0] === "server");
      assert.equal(servers.length, 3, `${name} has three servers`);
      for (const s of servers) assert.ok(s.includes("check") || s.includes("track"), `${name}: ${s.join(" ")} is health-checked`);
    }
    // What HAProxy itself found: every server up.
    const states = await haproxy.states();
    for (const s of ALL_SERVERS) assert.match(states[s], /^UP/, `${s}: ${states[s]}`);
  });

  T("REST through HAProxy: readyz, ingest and backfill answer", async () => {
    const r = await httpGet(`${haproxy.url}/readyz`);
    assert.equal(r.status, 200, r.text);
    const id = uid("rest");
    const item = payment(id);
    const [res] = await ingestOk(haproxy.url, item);
    assert.equal(res.seq, 1);
    const bf = await backfill(haproxy.url, { trackingId: id });
    assert.equal(bf.status, 200, bf.text);
    assert.deepEqual(bf.body.data.map((e) => e.id), [res.id]);
    const wrong = await ingest(haproxy.url, payment(id), { token: "not-the-token" });
    assert.equal(wrong.status, 401, "a 401 is passed through, not retried into something else");
  });

  T("polling only, on every node: several polls on one session stay on its node (sticky by source address)", async () => {
    const byNode = await clientsOnEveryNode({ transports: ["polling"] }, 2);
    const clients = byNode.flat();
    for (const c of clients) {
      assert.equal(c.io.engine.transport.name, "polling");
      c.tid = uid(`poll${c.node + 1}`);
      c.items = [];
      c.res = [];
      await subscribe(c, c.tid);
    }
    // Each session is known only to its node: the same poll sent to
    // another node is refused. This is what stickiness avoids.
    const c0 = byNode[0][0];
    const elsewhere = await httpGet(`${nodes[1].url}/ws/v1/?EIO=4&transport=polling&sid=${encodeURIComponent(c0.sid)}`);
    assert.equal(elsewhere.status, 400, `another node must not know the session: ${elsewhere.status} ${elsewhere.text}`);
    assert.match(elsewhere.text, /Session ID unknown/);

    for (let k = 0; k < 3; k++) {
      for (const c of clients) {
        const it = payment(c.tid, { amount: k });
        c.items.push(it);
        c.res.push(...await ingestOk(haproxy.url, it));
      }
      // Each payment is its own poll response: wait for it before sending the next.
      for (const c of clients) await waitFor(c, "payment", (p) => p.data.trackingId === c.tid && p.seq === k + 1, 5000);
    }
    const counts = await connectionCounts(nodes);
    for (const c of clients) {
      const got = payments(c, c.tid);
      assert.deepEqual(got.map((p) => p.seq), [1, 2, 3]);
      got.forEach((env, i) => assertPayment(env, c.items[i], c.res[i]));
      assert.equal(c.io.engine.transport.name, "polling", "still polling");
      assert.equal(c.io.engine.id, c.sid, "one Engine.IO session throughout");
      assert.deepEqual(c.disconnects, [], `client ${c.address} on node ${c.node + 1}: no disconnect (a poll on another node ends the session)`);
      assert.deepEqual(recorded(c, "error"), []);
      assert.equal(c.connected, true);
    }
    assert.ok(counts.every((n) => n >= 2), `every node still holds its polling clients: ${counts}`);
  });

  T("websocket only and polling with upgrade, on every node; one payment ingested through HAProxy reaches the subscribers of all three nodes", async () => {
    const ws = (await clientsOnEveryNode({ transports: ["websocket"] }, 1)).flat();
    const up = (await clientsOnEveryNode({}, 1)).flat();
    for (const s of up) {
      if (s.io.engine.transport.name !== "websocket") {
        assert.equal(await Promise.race([s.upgraded, new Promise((r) => setTimeout(() => r("timeout"), 10000))]), "websocket",
          "the upgrade to websocket through HAProxy");
      }
      assert.equal(s.io.engine.id, s.sid, "the same Engine.IO session after the upgrade");
    }
    const clients = [...ws, ...up];
    for (const s of clients) assert.equal(s.io.engine.transport.name, "websocket");
    assert.deepEqual([0, 1, 2].map((n) => clients.filter((s) => s.node === n).length > 0), [true, true, true],
      "subscribers on every node");

    const tid = uid("everywhere");
    for (const s of clients) await subscribe(s, tid);
    const items = [payment(tid, { amount: 7 }), payment(tid, { amount: 8 })];
    const res = [];
    for (const it of items) res.push(...await ingestOk(haproxy.url, it));
    for (const s of clients) {
      await waitFor(s, "payment", (p) => p.data.trackingId === tid && p.seq === 2, 5000);
      const got = payments(s, tid);
      assert.equal(got.length, 2, `client on node ${s.node + 1}`);
      got.forEach((env, i) => assertPayment(env, items[i], res[i]));
      assert.deepEqual(s.disconnects, []);
    }
  });

  T("ingest refused 503 by a node (its Redis is out of memory; /readyz passes) is retried on another node: 202, stored once, small, large and slowly sent bodies", async (t) => {
    // Node 3 is restarted on its port against a Redis that is out of
    // memory: an OOM is not a readiness failure (it would be every node's
    // at once), so /readyz passes and HAProxy keeps it in, but every write
    // fails, so its ingest answers 503 UNAVAILABLE. (A node on a read-only
    // replica is unready instead, and HAProxy takes it out.)
    replica = await startRedis();
    await replica.cli("config", "set", "maxmemory", "1");
    const port = nodes[2].port;
    assert.equal((await nodes[2].stop("SIGTERM")).code, 0);
    await haproxy.waitState(["tidings_api/node3"], "DOWN");
    nodes[2] = await startServer(["--redis-url", replica.url], {}, {
      baseArgs: ["--listen", `127.0.0.1:${port}`, "--ingest-token", INGEST_TOKEN, "--log-format", "json"],
      timeoutMs: 20000,
    });
    await haproxy.waitState(["tidings_api/node3"], "UP");
    const direct = await ingest(nodes[2].url, payment(uid("direct")));
    assert.equal(direct.status, 503, `node 3 alone refuses ingest: ${direct.text}`);
    assert.equal(direct.body.error.code, "UNAVAILABLE");
    assert.equal(direct.headers.get("retry-after"), "1");
    assert.equal((await httpGet(`${nodes[2].url}/readyz`)).status, 200, "node 3 passes its health check");

    // A request whose body arrives in pieces, as from a slow client or a
    // long upload: only a buffered body can be replayed.
    const slowIngest = (body) => new Promise((resolve, reject) => {
      const text = JSON.stringify(body);
      const sock = net.connect(haproxy.port, "127.0.0.1", () => {
        sock.write(`POST /v1/payments HTTP/1.1\r\nHost: tidings\r\nAuthorization: Bearer ${INGEST_TOKEN}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n`);
        setTimeout(() => sock.write(text.slice(0, 10)), 150);
        setTimeout(() => sock.write(text.slice(10)), 300);
      });
      let out = "";
      sock.setEncoding("utf8");
      sock.on("data", (d) => { out += d; });
      sock.on("error", reject);
      sock.on("end", () => {
        const [head, ...rest] = out.split("\r\n\r\n");
        const status = Number(/^HTTP\/1\.1 (\d+)/.exec(head)?.[1]);
        const text = rest.join("\r\n\r\n");
        let json = null;
        try { json = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status, text, body: json });
      });
      sock.setTimeout(10000, () => sock.destroy(new Error("slow ingest: no answer within 10 s")));
    });
    const refused = async () => (await readMetric(nodes[2].url, "tidings_ingest_requests_total", { status: "503" })).value ?? 0;
    const base = await refused();
    const sent = [];
    const retried = { small: 0, large: 0, slow: 0 };
    const kinds = ["small", "large", "slow"];
    // One payment; a 300-payment batch (about 50 KB, more than HAProxy's
    // default 16 KiB buffer); one payment whose body comes in pieces.
    // Three of each in turn, until node 3 has refused each kind at least
    // once (small and large twice): leastconn sends every second or third
    // request to node 3 first (a retry counts on the node it went to).
    for (let i = 0; retried.small < 2 || retried.large < 2 || retried.slow < 1; i++) {
      assert.ok(i < 45, `node 3 refused ${JSON.stringify(retried)} in 45 requests`);
      const tid = uid(`retry${i}`);
      const kind = kinds[Math.floor(i / 3) % 3];
      const body = kind === "large" ? Array.from({ length: 300 }, () => payment(tid)) : [payment(tid)];
      const before = await refused();
      const r = kind === "slow" ? await slowIngest(body) : await ingest(haproxy.url, body);
      const wasRefused = (await refused()) - before;
      assert.equal(r.status, 202, `request ${i} (${kind}: ${body.length} payment(s), ${JSON.stringify(body).length} bytes, ` +
        `refused by node 3 first: ${wasRefused === 1}) must get 202 through HAProxy: ${r.status} ${r.text.slice(0, 300)}`);
      assert.equal(r.body.data.length, body.length);
      assert.ok(r.body.data.every((d) => d.duplicate === false), "stored, not a duplicate");
      if (wasRefused) retried[kind]++;
      sent.push({ tid, body, res: r.body.data });
    }
    t.diagnostic(`node 3 refused (and HAProxy retried elsewhere) ${JSON.stringify(retried)} of ${sent.length} requests`);
    // Each payment is stored exactly once, with the ids the 202 gave.
    for (const { tid, body, res } of sent) {
      // From a node of the cluster (node 3 has a Redis of its own).
      const bf = await backfill(nodes[0].url, { trackingId: tid, limit: 1000 });
      assert.equal(bf.status, 200, bf.text);
      assert.deepEqual(bf.body.data.map((e) => e.id), res.map((d) => d.id), `${tid}: exactly the accepted events`);
      assert.deepEqual(bf.body.data.map((e) => e.seq), body.map((_, k) => k + 1));
    }
    // A repeat of a request is answered duplicate, with the original ids.
    const again = await ingestOk(nodes[0].url, sent[1].body);
    assert.ok(again.every((d, k) => d.duplicate === true && d.id === sent[1].res[k].id), "a repeat is a duplicate of the original");
    // HAProxy's log agrees: as many ingest requests were redispatched (`+1`
    // in the retries field) as node 3 refused through the proxy (the
    // repeat above included). A log line is written as its request ends:
    // wait (bounded) for the last one.
    const total = (await refused()) - base;
    const redispatched = () => haproxy.output().split("\n")
      .filter((l) => l.includes('"POST /v1/payments') && / \d+\/\d+\/\d+\/\d+\/\+\d+ /.test(l));
    for (const deadline = Date.now() + 3000; redispatched().length < total && Date.now() < deadline;) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(redispatched().length, total,
      `HAProxy logged ${redispatched().length} redispatched ingests, node 3 refused ${total} (${JSON.stringify(retried)} in the loop):\n${redispatched().join("\n")}`);
  });
});
