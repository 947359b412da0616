// Redis Sentinel (issue 17, item 3): nodes started with
// `--redis-sentinel mymaster --redis-url redis://S1,redis://S2,redis://S3`
// ask the sentinels for the master and follow it through failovers: a
// SENTINEL FAILOVER (the old master becomes a replica) and a master killed
// with SIGKILL (a replica is promoted). Under steady ingest: ingest answers
// 202 again within a bounded time, the subscriber keeps receiving, no id is
// ever answered for two payments, and any payment the failover lost is
// signalled (HISTORY_TRUNCATED before the next payment of that trackingId),
// never silence. Then the same over TLS with an ACL user.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingestOk, connect, waitFor, subscribe, payment, rand, assertPayment, closeAll,
} from "./lib/harness.mjs";
import { startNodes, stopNodes, logLines } from "./lib/cluster.mjs";
import { makeTestPki, startSentinel, waitReadyz, roleOf, until, ACL_PASS } from "./lib/tls.mjs";
import { failoverUnderLoad } from "./lib/failover.mjs";

const WS = { transports: ["websocket"] };
const NAME = "mymaster";

const T = (nodes, name, fn, opts = {}) => test(name, opts, async (t) => {
  try {
    await fn(t);
  } catch (err) {
    err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes().map((n, i) => `[node ${"AB"[i]}]\n${logLines(n)}`).join("\n")}`;
    throw err;
  }
});

describe("Redis Sentinel: two nodes follow the master", () => {
  let sen;
  let nodes = [];
  const sockets = [];
  before(async () => {
    sen = await startSentinel({ name: NAME, replicas: 2 });
    nodes = await startNodes(2, sen.url, ["--redis-sentinel", NAME]);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await sen?.stop();
  });

  T(() => nodes, "ready; ingest on B reaches a subscriber on A; the data is on the master the sentinels name", async () => {
    const [A, B] = nodes;
    for (const n of nodes) await waitReadyz(n.url, 200, 15000);
    const id = `sen-${rand(4)}`;
    const s = await connect(A.url, WS);
    sockets.push(s);
    await subscribe(s, id);
    const item = payment(id);
    const [r] = await ingestOk(B.url, item);
    assertPayment(await waitFor(s, "payment", (p) => p.data.trackingId === id, 5000), item, r);
    const m = await sen.currentMaster();
    assert.equal(await roleOf(m), "master");
    assert.ok(Number(await m.cli("dbsize")) > 0, "the master holds the history");
    // Nothing was written anywhere but through the master (the replicas hold copies).
    for (const d of sen.data.filter((x) => x !== m)) assert.equal(await roleOf(d), "slave");
  });

  T(() => nodes, "SENTINEL FAILOVER under steady ingest: ingest 202 again within 20 s, subscriber keeps receiving, no id reissued", async (t) => {
    const oldPort = await sen.masterPort();
    await failoverUnderLoad(t, {
      nodes, sockets, withinMs: 20000,
      doFailover: async () => {
        const p = await sen.failover();
        // The old master is reconfigured as a replica: a node left on it would get READONLY.
        await until(async () => (await roleOf(sen.data.find((d) => d.port === oldPort))) === "slave", 30000, "old master demoted (the sentinels reconfigure it about 10 s after the promotion)");
        return `SENTINEL FAILOVER ${oldPort} -> ${p}`;
      },
    });
    assert.notEqual(await sen.masterPort(), oldPort);
  }, { timeout: 90000 });

  T(() => nodes, "the master killed (SIGKILL) under steady ingest: a replica is promoted, ingest 202 again within 30 s, no id reissued", async (t) => {
    const old = await sen.currentMaster();
    await failoverUnderLoad(t, {
      nodes, sockets, withinMs: 30000,
      doFailover: async () => {
        await old.kill();
        const p = await until(async () => { const q = await sen.masterPort(); return q !== old.port && q; }, 30000, "a replica promoted");
        return `SIGKILL master ${old.port}, promoted ${p}`;
      },
    });
    // The killed master comes back as a replica; the sentinels settle.
    await sen.restartAsReplica(old);
    await sen.waitSettled(30000);
  }, { timeout: 120000 });
});

describe("Redis Sentinel over TLS with an ACL user", () => {
  let pki;
  let sen;
  let nodes = [];
  const sockets = [];
  before(async () => {
    pki = await makeTestPki();
    sen = await startSentinel({ pki, name: NAME, replicas: 1 });
    nodes = await startNodes(2, sen.url, ["--redis-sentinel", NAME, "--redis-ca-cert", pki.ca.cert]);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await sen?.stop();
    pki?.remove();
  });

  T(() => nodes, "rediss:// sentinels: ready, delivering; after SENTINEL FAILOVER delivering again; the password never logged", async (t) => {
    for (const n of nodes) await waitReadyz(n.url, 200, 15000);
    const oldPort = await sen.masterPort();
    await failoverUnderLoad(t, {
      nodes, sockets, withinMs: 20000,
      doFailover: async () => `SENTINEL FAILOVER (TLS) ${oldPort} -> ${await sen.failover()}`,
    });
    for (const n of nodes) assert.ok(!n.logs().includes(ACL_PASS), "the Redis password is not in the log");
  }, { timeout: 90000 });
});
