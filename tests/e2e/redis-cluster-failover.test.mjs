// A Redis Cluster with replicas, over TLS with an ACL user (issue 17, items
// 2 and 3): three masters with a replica each, `--cluster-node-timeout
// 2000`. Two nodes (`--redis-cluster`, `rediss://` seeds, --redis-ca-cert)
// under steady ingest for trackingIds that all live on one master, while
// that master is killed (SIGKILL: its replica is promoted) or hands over
// with CLUSTER FAILOVER (coordinated). Ingest answers 202 again within a
// bounded time, the subscriber keeps receiving, no id is answered for two
// payments, and a payment the failover lost is signalled
// (HISTORY_TRUNCATED), never silence. (The randomized checker's
// `cluster-replicas` variant does the same without TLS, with random faults.)

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { closeAll, rand } from "./lib/harness.mjs";
import { startNodes, stopNodes, logLines, keySlot } from "./lib/cluster.mjs";
import { makeTestPki, startCluster, clusterNodes, waitReadyz, until, roleOf, ACL_PASS } from "./lib/tls.mjs";
import { failoverUnderLoad } from "./lib/failover.mjs";

/** Three trackingIds whose slots `master` owns (per CLUSTER NODES of a live node). */
async function idsOn(cluster, master) {
  const ranges = [];
  for (const v of await clusterNodes(cluster.nodes.find((n) => n.up))) {
    if (v.port !== master.port) continue;
    for (const r of v.slots) {
      const m = /^(\d+)(?:-(\d+))?$/.exec(r);
      if (m) ranges.push([Number(m[1]), Number(m[2] ?? m[1])]);
    }
  }
  assert.ok(ranges.length, `${master.port} owns slots`);
  const run = rand(3);
  const ids = [];
  for (let i = 0; ids.length < 3 && i < 100000; i++) {
    const id = `cfo-${run}-${i}`;
    if (ranges.some(([a, b]) => keySlot(id) >= a && keySlot(id) <= b)) ids.push(id);
  }
  return ids;
}

describe("TLS Redis Cluster with replicas: the nodes follow a failover", () => {
  let pki;
  let cluster;
  let nodes = [];
  const sockets = [];
  before(async () => {
    pki = await makeTestPki();
    cluster = await startCluster({ pki, masters: 3, replicas: 1, nodeTimeout: 2000 });
    nodes = await startNodes(2, cluster.url, ["--redis-cluster", "--redis-ca-cert", pki.ca.cert]);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await cluster?.stop();
    pki?.remove();
  });
  const T = (name, fn, opts) => test(name, opts, async (t) => {
    try {
      await fn(t);
    } catch (err) {
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes.map((n, i) => `[node ${"AB"[i]}]\n${logLines(n)}`).join("\n")}`;
      throw err;
    }
  });

  T("a master killed (SIGKILL) under steady ingest: its replica promoted, ingest 202 again within 30 s, no id reissued, nothing lost silently", async (t) => {
    for (const n of nodes) await waitReadyz(n.url, 200, 15000);
    const [victim] = await cluster.masters();
    const ids = await idsOn(cluster, victim);
    await failoverUnderLoad(t, {
      nodes, sockets, ids, withinMs: 30000,
      doFailover: async () => {
        await victim.kill();
        await until(async () => {
          const ms = await cluster.masters();
          return ms.length === 3 && !ms.includes(victim);
        }, 30000, `a replica of ${victim.port} promoted`);
        await cluster.waitOk(30000);
        return `SIGKILL master ${victim.port}, promoted ${(await cluster.masters()).map((m) => m.port).join(",")}`;
      },
    });
    // The killed master comes back as a replica of the promoted one.
    await victim.start();
    await until(async () => (await roleOf(victim)) === "slave", 20000, `${victim.port} rejoins as a replica`);
    await cluster.waitOk(30000);
    for (const n of nodes) assert.ok(!n.logs().includes(ACL_PASS), "the Redis password is not in the log");
  }, { timeout: 120000 });

  T("CLUSTER FAILOVER (coordinated) under steady ingest: ingest 202 again within 15 s, no id reissued, nothing lost silently", async (t) => {
    for (const n of nodes) await waitReadyz(n.url, 200, 15000);
    const [master] = await cluster.masters();
    const ids = await idsOn(cluster, master);
    const view = await clusterNodes(master);
    const me = view.find((v) => v.port === master.port);
    const replica = cluster.byPort(view.find((v) => v.master === me.id && v.flags.includes("slave"))?.port);
    assert.ok(replica?.up, `a live replica of ${master.port}`);
    await failoverUnderLoad(t, {
      nodes, sockets, ids, withinMs: 15000,
      doFailover: async () => {
        await replica.cli("cluster", "failover");
        await until(async () => (await roleOf(replica)) === "master" && (await roleOf(master)) === "slave", 15000,
          `${replica.port} master, ${master.port} its replica`);
        await cluster.waitOk(30000);
        return `CLUSTER FAILOVER ${master.port} -> ${replica.port}`;
      },
    });
  }, { timeout: 90000 });
});
