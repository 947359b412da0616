// Redis over TLS with ACL users (issue 17, item 2): a node on `rediss://`
// with the test CA (--redis-ca-cert), mutual TLS (--redis-client-cert /
// --redis-client-key), the refusals an operator must be able to diagnose
// (a wrong CA, no client certificate, a wrong ACL password: not ready, the
// cause in the log, the password never in it), and a TLS Redis Cluster.
// The redis-servers run with TLS only (plain port 0) on a CA this file makes.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  ingestOk, ingest, connect, waitFor, subscribe, payments, payment, rand, uid,
  assertPayment, assertHttpError, backfill, closeAll, httpGet,
} from "./lib/harness.mjs";
import { startNodes, stopNodes, logLines, keySlot, waitUntil } from "./lib/cluster.mjs";
import {
  makeTestPki, startTlsRedis, startPlainRedis, startCluster, clusterNodes, waitReadyz, holdsReadyz, waitLog, ACL_USER, ACL_PASS,
} from "./lib/tls.mjs";

const WS = { transports: ["websocket"] };

/** Starts one node on `url` with `args`; the node is pushed to `list` for cleanup. */
async function node(list, url, args) {
  const [n] = await startNodes(1, url, args);
  list.push(n);
  return n;
}

/** Ingest → a subscriber on `sub` receives it exactly, and backfill on `sub` returns it. */
async function roundTrip(sockets, ingestNode, subNode, id = uid("tls")) {
  const s = await connect(subNode.url, WS);
  sockets.push(s);
  await subscribe(s, id);
  const item = payment(id);
  const [r] = await ingestOk(ingestNode.url, item);
  assert.equal(r.seq, 1, `first payment of ${id}`);
  assertPayment(await waitFor(s, "payment", (p) => p.data.trackingId === id, 5000), item, r);
  const bf = await backfill(subNode.url, { trackingId: id });
  assert.equal(bf.status, 200, `backfill: ${bf.status} ${bf.text}`);
  assert.deepEqual(bf.body.data, payments(s, id), "backfill returns what the subscriber received");
  return r;
}

/** Fails with the node's log lines if `fn` throws. */
const withNodeLogs = (nodes, fn) => async () => {
  try {
    await fn();
  } catch (err) {
    err.message += `\n--- node logs ---\n${nodes.map((n, i) => `[node ${i}]\n${logLines(n, /./, 15)}`).join("\n")}`;
    throw err;
  }
};

describe("TLS Redis with an ACL user", () => {
  let pki;
  let plain; // --tls-auth-clients no
  let mutual; // --tls-auth-clients yes
  const nodes = [];
  const sockets = [];
  before(async () => {
    pki = await makeTestPki();
    plain = await startTlsRedis(pki, { authClients: "no" });
    mutual = await startTlsRedis(pki, { authClients: "yes" });
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await plain?.stop();
    await mutual?.stop();
    pki?.remove();
  });

  test("rediss://user:pass@ with --redis-ca-cert: ready, ingest reaches a subscriber, backfill; the password is never logged", withNodeLogs(nodes, async () => {
    const A = await node(nodes, plain.url, ["--redis-ca-cert", pki.ca.cert]);
    const B = await node(nodes, plain.url, ["--redis-ca-cert", pki.ca.cert]);
    await waitReadyz(A.url, 200, 10000, "node A");
    await waitReadyz(B.url, 200, 10000, "node B");
    await roundTrip(sockets, B, A);
    // The data went through Redis, as the ACL user.
    assert.ok(Number(await plain.cli("dbsize")) > 0, "the TLS Redis holds the history");
    const clients = await plain.cli("client", "list");
    assert.match(clients, new RegExp(`user=${ACL_USER}\\b`), `the nodes are connected as ${ACL_USER}: ${clients}`);
    assert.doesNotMatch(clients, /user=default\b/, "nobody is connected as the (disabled) default user");
    // Finding 4: the start-up line names the Redis without its password.
    for (const [name, n] of [["A", A], ["B", B]]) {
      const logs = n.logs();
      assert.ok(!logs.includes(ACL_PASS), `node ${name}: the Redis password appears in the log:\n${logLines(n, new RegExp(ACL_PASS))}`);
      // The start-up line shows the URL with the password replaced: rediss://tidings:***@127.0.0.1:PORT.
      assert.ok(logs.includes(`rediss://${ACL_USER}:***@127.0.0.1:${plain.port}`),
        `node ${name}: the start-up log names the Redis as rediss://${ACL_USER}:***@127.0.0.1:${plain.port}:\n${logLines(n, /./, 5)}`);
      const admin = await httpGet(`${n.url}/admin`).catch(() => null);
      if (admin) assert.ok(!admin.text.includes(ACL_PASS), `node ${name}: /admin shows the Redis password`);
    }
  }));

  test("mutual TLS: with --redis-client-cert/--redis-client-key ready and delivering; without them not ready, the cause logged", withNodeLogs(nodes, async () => {
    const withCert = ["--redis-ca-cert", pki.ca.cert, "--redis-client-cert", pki.client.cert, "--redis-client-key", pki.client.key];
    const A = await node(nodes, mutual.url, withCert);
    await waitReadyz(A.url, 200, 10000, "node with a client certificate");
    await roundTrip(sockets, A, A);

    // A client certificate from another CA is refused by Redis like none at all.
    const noCert = await node(nodes, mutual.url, ["--redis-ca-cert", pki.ca.cert]);
    const otherCert = await node(nodes, mutual.url, [
      "--redis-ca-cert", pki.ca.cert, "--redis-client-cert", pki.otherClient.cert, "--redis-client-key", pki.otherClient.key,
    ]);
    // Redis refuses the handshake with a TLS alert the node names: certificate_required / unknown_ca.
    for (const [name, n, cause] of [["no client certificate", noCert, /CertificateRequired/], ["a client certificate of another CA", otherCert, /UnknownCA/]]) {
      const polls = await holdsReadyz(n.url, 503, 4000, name);
      assert.ok(polls >= 5, `${name}: polled /readyz ${polls} times`);
      assert.equal(n.exitInfo, null, `${name}: the node keeps running (and retrying)`);
      const res = await ingest(n.url, payment(uid("mtls")), { timeoutMs: 15000 });
      assertHttpError(res, 503, "UNAVAILABLE");
      await waitLog(n, new RegExp(`"level":"(ERROR|WARN)".*${cause.source}`), 10000, `${name}: an ERROR/WARN naming ${cause}`);
    }
  }));

  test("a server certificate from another CA: not ready, the log names the certificate problem", withNodeLogs(nodes, async () => {
    const n = await node(nodes, plain.url, ["--redis-ca-cert", pki.otherCa.cert]);
    await holdsReadyz(n.url, 503, 4000, "node trusting the wrong CA");
    const res = await ingest(n.url, payment(uid("wrongca")), { timeoutMs: 15000 });
    assertHttpError(res, 503, "UNAVAILABLE");
    // rustls: "invalid peer certificate: UnknownIssuer".
    const line = await waitLog(n, /"level":"(ERROR|WARN)".*invalid peer certificate.*UnknownIssuer/, 10000,
      "an ERROR/WARN naming the certificate's unknown issuer");
    assert.ok(!line.includes(ACL_PASS), "the error line does not carry the password");
    // Without --redis-ca-cert the system roots do not know the test CA either.
    const sys = await node(nodes, plain.url, []);
    await holdsReadyz(sys.url, 503, 2000, "node on the system roots");
    await waitLog(sys, /"level":"(ERROR|WARN)".*invalid peer certificate.*UnknownIssuer/, 10000,
      "an ERROR/WARN naming the certificate's unknown issuer (system roots)");
  }));

  test("a wrong ACL password: not ready, neither password in the log", withNodeLogs(nodes, async () => {
    const wrong = `wrong-${rand(6)}`;
    const url = `rediss://${ACL_USER}:${wrong}@127.0.0.1:${plain.port}`;
    const n = await node(nodes, url, ["--redis-ca-cert", pki.ca.cert]);
    await holdsReadyz(n.url, 503, 4000, "node with a wrong password");
    const res = await ingest(n.url, payment(uid("wrongpw")), { timeoutMs: 15000 });
    assertHttpError(res, 503, "UNAVAILABLE");
    await waitLog(n, /"level":"(ERROR|WARN)".*WRONGPASS/, 10000, "an ERROR/WARN with Redis' WRONGPASS");
    const logs = n.logs();
    assert.ok(!logs.includes(wrong), `the wrong password appears in the log:\n${logLines(n, new RegExp(wrong))}`);
    assert.ok(!logs.includes(ACL_PASS), "the right password appears in the log");
  }));
});

describe("a password-only Redis URL (requirepass, no TLS)", () => {
  let redis;
  const nodes = [];
  const pass = `rp-${rand(8)}`;
  before(async () => {
    redis = await startPlainRedis({ extra: ["--requirepass", pass], conn: { auth: { user: "default", pass } } });
  });
  after(async () => {
    await stopNodes(nodes);
    await redis?.stop();
  });

  test("redis://:pass@: ready and accepting; the start-up line shows redis://:***@, the password is in no log line", withNodeLogs(nodes, async () => {
    const url = `redis://:${pass}@127.0.0.1:${redis.port}`;
    const n = await node(nodes, url, []);
    await waitReadyz(n.url, 200, 10000);
    await ingestOk(n.url, payment(uid("rp")));
    const logs = n.logs();
    assert.ok(logs.includes(`redis://:***@127.0.0.1:${redis.port}`), `the start-up line shows redis://:***@127.0.0.1:${redis.port}:\n${logLines(n, /./, 5)}`);
    assert.ok(!logs.includes(pass), `the password appears in the log:\n${logLines(n, new RegExp(pass))}`);
  }));
});

describe("TLS Redis Cluster with an ACL user", () => {
  let pki;
  let cluster;
  let nodes = [];
  const sockets = [];
  before(async () => {
    pki = await makeTestPki();
    cluster = await startCluster({ pki, masters: 3, replicas: 0 });
    nodes = await startNodes(2, cluster.url, ["--redis-cluster", "--redis-ca-cert", pki.ca.cert]);
  });
  after(async () => {
    closeAll(sockets);
    await stopNodes(nodes);
    await cluster?.stop();
    pki?.remove();
  });

  test("two nodes on rediss:// seeds: ready; ingest on B for trackingIds on every master reaches a subscriber on A", withNodeLogs(nodes, async () => {
    const [A, B] = nodes;
    for (const n of nodes) await waitReadyz(n.url, 200, 15000);
    // Slot ranges per master, to pick trackingIds on every master.
    const ranges = [];
    for (const v of await clusterNodes(cluster.nodes[0])) {
      if (!v.flags.includes("master")) continue;
      for (const r of v.slots) {
        const m = /^(\d+)(?:-(\d+))?$/.exec(r);
        if (m) ranges.push({ start: Number(m[1]), end: Number(m[2] ?? m[1]), port: v.port });
      }
    }
    const owner = (id) => ranges.find((r) => keySlot(id) >= r.start && keySlot(id) <= r.end)?.port;
    const byPort = new Map();
    const run = rand(3);
    for (let i = 0; byPort.size < 3 || [...byPort.values()].some((l) => l.length < 2); i++) {
      const id = `tlsrc-${run}-${i}`;
      const l = byPort.get(owner(id)) ?? [];
      if (l.length < 2) l.push(id);
      byPort.set(owner(id), l);
      assert.ok(i < 10000, "ids on every master");
    }
    assert.equal(byPort.size, 3, "three masters own slots");
    const ids = [...byPort.values()].flat();
    const s = await connect(A.url, WS);
    sockets.push(s);
    for (const id of ids) await subscribe(s, id);
    const items = ids.map((id) => payment(id));
    const res = await ingestOk(B.url, items); // one cross-slot batch
    assert.deepEqual(res.map((r) => [r.trackingId, r.seq]), ids.map((id) => [id, 1]));
    await waitUntil(s, () => ids.every((id) => payments(s, id).length >= 1), 10000,
      () => ids.map((id) => `${id}:${payments(s, id).length}`).join(" "));
    for (const [i, id] of ids.entries()) {
      assert.equal(payments(s, id).length, 1, `one payment for ${id}`);
      assertPayment(payments(s, id)[0], items[i], res[i]);
      const bf = await backfill(A.url, { trackingId: id });
      assert.deepEqual(bf.body.data, payments(s, id), `backfill of ${id} on A`);
    }
    for (const [i, n] of cluster.nodes.entries()) {
      assert.ok(Number(await n.cli("dbsize")) > 0, `master ${i} (${n.port}) holds keys`);
    }
    for (const n of nodes) assert.ok(!n.logs().includes(ACL_PASS), "the Redis password is not in the log");
  }));
});
