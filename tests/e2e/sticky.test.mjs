// Three nodes sharing one Redis behind nginx, configured from the project's
// shipped deploy/nginx/tidings.conf: long-polling needs sticky sessions, the
// upgrade to websocket must pass through, and REST works through the proxy.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingest, ingestOk, connect, makeSocket, waitFor, subscribe, payments, recorded, payment, uid,
  assertPayment, backfill, closeAll, withTimeout, httpGet,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, startNginx, logLines, readMetric } from "./lib/cluster.mjs";

describe("behind nginx (deploy/nginx/tidings.conf), three nodes", () => {
  let redis;
  let nodes = [];
  let nginx;
  const sockets = [];
  const T = (name, fn) => test(name, async () => {
    try {
      await fn();
    } catch (err) {
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes.map((n, i) => `[node ${i}]\n${logLines(n)}`).join("\n")}` +
        `\n--- nginx error log (tail) ---\n${nginx?.errorLog().split("\n").filter((l) => /\[(warn|error|crit|alert|emerg)\]/.test(l)).slice(-20).join("\n")}`;
      throw err;
    }
  });

  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(3, redis.url);
    nginx = await startNginx(nodes.map((n) => n.port));
  });
  after(async () => {
    closeAll(sockets);
    await nginx?.stop();
    await stopNodes(nodes);
    await redis?.stop();
  });

  T("REST through nginx: readyz and ingest answer", async () => {
    const r = await httpGet(`${nginx.url}/readyz`);
    assert.equal(r.status, 200, r.text);
    const id = uid("rest");
    const [res] = await ingestOk(nginx.url, payment(id));
    assert.equal(res.seq, 1);
  });

  T("default transports: connects on polling, upgrades to websocket, subscribes; ingest through nginx is received; backfill agrees", async () => {
    const s = makeSocket(nginx.url, {});
    sockets.push(s);
    assert.equal(s.initialTransport, "polling", "the default transports start on long-polling");
    const disconnects = [];
    s.on("disconnect", (r) => disconnects.push(r));
    await withTimeout(new Promise((resolve, reject) => {
      s.once("connect", resolve);
      s.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
    }), 10000, "connect through nginx");
    const sid = s.io.engine.id;
    const id = uid("sticky");
    await subscribe(s, id); // most likely still on polling
    const name = await withTimeout(s.upgraded, 10000, "the upgrade to websocket through nginx");
    assert.equal(name, "websocket");
    assert.equal(s.io.engine.transport.name, "websocket");
    assert.equal(s.io.engine.id, sid, "the same Engine.IO session after the upgrade");

    const items = [payment(id, { amount: 1 }), payment(id, { amount: 2 })];
    const res = [];
    for (const it of items) res.push(...await ingestOk(nginx.url, it));
    await waitFor(s, "payment", (p) => p.data.trackingId === id && p.seq === 2, 5000);
    const got = payments(s, id);
    assert.equal(got.length, 2);
    got.forEach((env, i) => assertPayment(env, items[i], res[i]));

    const bf = await backfill(nginx.url, { trackingId: id });
    assert.equal(bf.status, 200, bf.text);
    assert.deepEqual(bf.body.data, got, "backfill through nginx returns the received envelopes");
    const bf1 = await backfill(nginx.url, { trackingId: id, since: got[0].id });
    assert.deepEqual(bf1.body.data, got.slice(1));
    assert.deepEqual(disconnects, [], "no disconnect");
    assert.equal(s.connected, true);
  });

  T("polling only through nginx: several polls on one session (subscribe, then 3 payments one at a time)", async () => {
    // Several polling clients at once: with a non-sticky balancer their polls would hit other nodes.
    const clients = [];
    for (let i = 0; i < 4; i++) {
      const s = await connect(nginx.url, { transports: ["polling"] });
      sockets.push(s);
      assert.equal(s.io.engine.transport.name, "polling");
      const disconnects = [];
      s.on("disconnect", (r) => disconnects.push(r));
      clients.push({ s, sid: s.io.engine.id, id: uid(`poll${i}`), disconnects, items: [], res: [] });
    }
    for (const c of clients) await subscribe(c.s, c.id);
    for (let k = 0; k < 3; k++) {
      for (const c of clients) {
        const it = payment(c.id, { amount: k });
        c.items.push(it);
        c.res.push(...await ingestOk(nginx.url, it));
      }
      // Each payment is its own poll response: wait for it before sending the next.
      for (const c of clients) await waitFor(c.s, "payment", (p) => p.data.trackingId === c.id && p.seq === k + 1, 5000);
    }
    for (const c of clients) {
      const got = payments(c.s, c.id);
      assert.deepEqual(got.map((p) => p.seq), [1, 2, 3]);
      got.forEach((env, i) => assertPayment(env, c.items[i], c.res[i]));
      assert.equal(c.s.io.engine.transport.name, "polling", "still polling");
      assert.equal(c.s.io.engine.id, c.sid, "one Engine.IO session throughout");
      assert.deepEqual(c.disconnects, [], "no disconnect (a poll on another node would end the session)");
      assert.deepEqual(recorded(c.s, "error"), []);
      assert.equal(c.s.connected, true);
    }
  });
});

describe("behind nginx (deploy/nginx/tidings.conf): ingest refused 503 by one of two nodes", () => {
  let redis;
  let replica;
  let nodes = [];
  let nginx;
  before(async () => {
    // The second node runs on a read-only replica of the cluster's Redis (as after a
    // failover with a stale address): its /readyz passes (PING answers),
    // every write fails, so its ingest answers 503 UNAVAILABLE.
    redis = await startRedis();
    replica = await startRedis({ replicaOf: redis.port });
    // Two upstreams, so that least_conn's rotation reaches the refusing one
    // every other request.
    nodes = [...await startNodes(1, redis.url), ...await startNodes(1, replica.url)];
    nginx = await startNginx(nodes.map((n) => n.port), { accessLog: true });
  });
  after(async () => {
    await nginx?.stop();
    await stopNodes(nodes);
    await replica?.stop();
    await redis?.stop();
  });

  test("is retried by nginx on another node: the client gets 202, each payment stored once", async (t) => {
    const bad = nodes[1];
    const direct = await ingest(bad.url, payment(uid("direct")));
    assert.equal(direct.status, 503, `the replica's node alone refuses ingest: ${direct.text}`);
    assert.equal((await httpGet(`${bad.url}/readyz`)).status, 200, "and passes its health check");
    const refused = async () => (await readMetric(bad.url, "tidings_ingest_requests_total", { status: "503" })).value ?? 0;
    const sent = [];
    let retried = 0;
    // Go on until the replica's node refused a request (and nginx retried
    // it on the other); after a refusal nginx avoids that node for a while
    // (max_fails=1, fail_timeout=1s, and its round robin's weight), so one
    // is what a short test can count on.
    for (let i = 0; retried < 1; i++) {
      assert.ok(i < 30, `the replica's node refused only ${retried} of 30 requests`);
      const tid = uid(`nginx-retry${i}`);
      const body = [payment(tid), payment(tid)];
      const before = await refused();
      const r = await ingest(nginx.url, body);
      assert.equal(r.status, 202, `request ${i} through nginx: ${r.status} ${r.text.slice(0, 300)}`);
      assert.ok(r.body.data.every((d) => d.duplicate === false));
      retried += (await refused()) - before;
      sent.push({ tid, res: r.body.data });
    }
    t.diagnostic(`the replica's node refused ${retried} of ${sent.length} requests; nginx retried each on the other`);
    assert.match(nginx.accessLog(), /POST \/v1\/payments 202 upstream=503, 202/, "nginx's log shows a 503 then a 202 upstream");
    for (const { tid, res } of sent) {
      const bf = await backfill(nginx.url, { trackingId: tid });
      assert.equal(bf.status, 200, bf.text);
      assert.deepEqual(bf.body.data.map((e) => e.id), res.map((d) => d.id), `${tid}: exactly the accepted events, once`);
    }
  });
});
