// /readyz and storage that refuses writes (issue 17, finding 9; contract
// section 6): a node whose Redis answers READONLY (pointed at a replica, or
// left on a master that was demoted) is not ready while it lasts and ready
// again once Redis accepts writes; /healthz stays 200 throughout. A
// Redis-wide condition that every node shares (out of memory) is not a
// readiness failure: it would take every node out of the load balancer at
// once.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingest, ingestOk, connect, waitFor, subscribe, payment, uid, assertPayment, assertHttpError, closeAll, httpGet,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, withLogs } from "./lib/cluster.mjs";
import { waitReadyz, holdsReadyz, waitLog } from "./lib/tls.mjs";

const WS = { transports: ["websocket"] };

async function assertHealthy(n, what) {
  const h = await httpGet(`${n.url}/healthz`);
  assert.equal(h.status, 200, `${what}: /healthz ${h.status} ${h.text}`);
}

/** Ingest is refused as the contract says while Redis refuses writes. */
async function assertIngestRefused(n, what) {
  const res = await ingest(n.url, payment(uid("ro")), { timeoutMs: 15000 });
  assertHttpError(res, 503, "UNAVAILABLE");
  assert.ok(res.headers.get("retry-after") !== null, `${what}: 503 carries Retry-After`);
}

describe("a node whose Redis is a read-only replica", () => {
  let master;
  let replica;
  let nodes = [];
  const sockets = [];
  before(async () => {
    master = await startRedis();
    replica = await startRedis({ replicaOf: master.port });
    nodes = await startNodes(1, replica.url);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await replica?.stop();
    await master?.stop();
  });

  test("/readyz 503 (healthz 200, ingest 503) while it is a replica; REPLICAOF NO ONE: ready again, ingest delivered", (t) => withLogs(() => nodes, async () => {
    const [N] = nodes;
    assert.match(await replica.cli("info", "replication"), /role:slave/);
    const tookMs = await waitReadyz(N.url, 503, 10000, "node on a replica");
    // ... and it stays so (not a flicker of a first check).
    await holdsReadyz(N.url, 503, 3000, "node on a replica");
    await assertHealthy(N, "node on a replica");
    await assertIngestRefused(N, "node on a replica");

    await replica.cli("replicaof", "no", "one");
    const backMs = await waitReadyz(N.url, 200, 15000, "node after REPLICAOF NO ONE");
    await assertHealthy(N, "after promotion");
    const id = uid("promoted");
    const s = await connect(N.url, WS);
    sockets.push(s);
    await subscribe(s, id);
    const item = payment(id);
    const [r] = await ingestOk(N.url, item);
    assertPayment(await waitFor(s, "payment", (p) => p.data.trackingId === id, 5000), item, r);
    t.diagnostic(`unready ${tookMs} ms after start, ready again ${backMs} ms after REPLICAOF NO ONE`);
  })());
});

describe("a node left on a master that is demoted", () => {
  let a;
  let b;
  let nodes = [];
  before(async () => {
    a = await startRedis();
    b = await startRedis();
    nodes = await startNodes(1, a.url);
  });
  after(async () => {
    await stopNodes(nodes);
    await a?.stop();
    await b?.stop();
  });

  test("ready on the master; REPLICAOF another: 503 within 10 s (healthz 200); REPLICAOF NO ONE: ready again", (t) => withLogs(() => nodes, async () => {
    const [N] = nodes;
    await waitReadyz(N.url, 200, 10000, "node on a master");
    await ingestOk(N.url, payment(uid("m")));

    await a.cli("replicaof", "127.0.0.1", String(b.port));
    const downMs = await waitReadyz(N.url, 503, 10000, "node on a demoted master");
    await holdsReadyz(N.url, 503, 2000, "node on a demoted master");
    await assertHealthy(N, "node on a demoted master");
    await assertIngestRefused(N, "node on a demoted master");

    await a.cli("replicaof", "no", "one");
    const upMs = await waitReadyz(N.url, 200, 15000, "node after its Redis is a master again");
    await ingestOk(N.url, payment(uid("m2")));
    t.diagnostic(`unready ${downMs} ms after REPLICAOF, ready again ${upMs} ms after REPLICAOF NO ONE`);
  })());
});

describe("Redis out of memory is not a readiness failure", () => {
  let redis;
  let nodes = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(2, redis.url);
  });
  after(async () => {
    await redis?.cli("config", "set", "maxmemory", "0").catch(() => {});
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("maxmemory exceeded (noeviction): writes refused with OOM, ingest refused, every node stays ready", withLogs(() => nodes, async () => {
    for (const n of nodes) await waitReadyz(n.url, 200, 10000);
    // trackingIds with a history already: their next event's first write
    // (XADD) is refused. (A fresh trackingId's script starts with a DEL,
    // which Redis allows when out of memory, and a script that has written
    // may go on writing.)
    const ids = nodes.map(() => uid("oom"));
    for (const id of ids) await ingestOk(nodes[0].url, payment(id));
    await redis.cli("config", "set", "maxmemory-policy", "noeviction");
    await redis.cli("config", "set", "maxmemory", "1");
    // Redis itself refuses writes now.
    const probe = await redis.cli("set", "tidings-test-oom-probe", "x");
    assert.match(probe, /^OOM\b/, `a write on Redis answers OOM: ${probe}`);
    for (const [i, n] of nodes.entries()) {
      const res = await ingest(n.url, payment(ids[i]), { timeoutMs: 15000 });
      assert.notEqual(res.status, 202, `ingest while Redis is out of memory must not be accepted: ${res.status} ${res.text}`);
    }
    // Several readiness periods: no node goes unready.
    for (const n of nodes) await holdsReadyz(n.url, 200, 3000, "node on an out-of-memory Redis");
    await redis.cli("config", "set", "maxmemory", "0");
    for (const [i, n] of nodes.entries()) await ingestOk(n.url, payment(ids[i]));
  }));
});

describe("Redis's eviction policy, checked when a node connects", () => {
  let redis;
  let nodes = [];
  after(async () => {
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("allkeys-lru is warned about (it can evict dedupe keys); noeviction is not, and is read", async () => {
    redis = await startRedis();
    await redis.cli("config", "set", "maxmemory-policy", "allkeys-lru");
    nodes = await startNodes(1, redis.url);
    await waitLog(nodes[0], /maxmemory-policy is not noeviction.*allkeys-lru/, 10000, "the eviction warning");
    await stopNodes(nodes);
    await redis.cli("config", "set", "maxmemory-policy", "noeviction");
    nodes = await startNodes(1, redis.url);
    await waitReadyz(nodes[0].url, 200, 10000, "node on a noeviction Redis");
    // The check runs once the store answers: by now it has, and said nothing.
    assert.doesNotMatch(nodes[0].logs(), /maxmemory-policy/, "no warning, and the policy was read (RESP3 answers a map)");
  });
});
