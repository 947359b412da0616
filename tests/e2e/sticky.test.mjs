// Three nodes sharing one Redis behind nginx, configured from the project's
// shipped deploy/nginx/tidings.conf: long-polling needs sticky sessions, the
// upgrade to websocket must pass through, and REST works through the proxy.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingestOk, connect, makeSocket, waitFor, subscribe, payments, recorded, payment, uid,
  assertPayment, backfill, closeAll, withTimeout, httpGet,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, startNginx, logLines } from "./lib/cluster.mjs";

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
