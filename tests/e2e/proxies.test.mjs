// What the shipped proxy configurations do for a node's safety
// (deploy/nginx/tidings.conf, deploy/haproxy/tidings.cfg; the contract's
// sections 5 and 6), each proxy run as shipped in front of real nodes:
//
// - the access log has every request's method, path and protocol, never
//   its query string (a socket token may travel as `?token=`);
// - /metrics and /admin answer 403 to an address outside the allow-list
//   and pass through from one inside it;
// - one client address holds at most so many connections on the Socket.IO
//   path; another address is still served;
// - X-Forwarded-For names the client, so nodes started with
//   `--trusted-proxy <the proxy's address>` apply their per-address rules
//   (--max-connections-per-ip, the failed-credential slowdown) to the
//   client, and a client's own forged X-Forwarded-For changes nothing.
//
// Clients connect from source addresses of their own (127.0.0.x). The
// shipped allow-list holds all of 127.0.0.0/8 (loopback) and the shipped
// per-client limit is 200, so the first describe of each proxy renders the
// file with two values narrowed by substitution, as the other tests
// substitute ports: the allow-list's `127.0.0.0/8` becomes `127.0.0.9` (an
// address nothing else uses: HAProxy's limit counts every connection of an
// address, and the test's own REST calls come from 127.0.0.1), the limit's
// `200` becomes 3. Every other directive runs as shipped, and the
// test checks that each substituted value is the one shipped (exactly one
// hit). The X-Forwarded-For describe runs the files with nothing but the
// ports substituted, all servers pointing at one node.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  connect, subscribe, uid, closeAll, httpGet, payment, ingestOk, withTimeout, INGEST_TOKEN,
} from "./lib/harness.mjs";
import { startRedis, startNodes, stopNodes, startNginx, logLines, readMetric, NGINX_CONF } from "./lib/cluster.mjs";
import { HAPROXY_CONF, startHaproxy, fromAddress, requestFrom } from "./lib/deploy.mjs";

const SECRET = `SECRET${uid("tok").replace(/-/g, "")}`;
const API_KEY = "proxies-test-api-key";
const LIMIT = 3;
/** The one address of the narrowed allow-list. */
const INSIDE = "127.0.0.9";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A substitution of one shipped value: `text.replace(re, to)`, counting the
 * hits in `counts[name]` (checked by a test: exactly one).
 */
function substitute(counts, name, re, to) {
  return (text) => text.replace(re, (...m) => {
    counts[name] = (counts[name] ?? 0) + 1;
    return typeof to === "function" ? to(...m) : to;
  });
}

const PROXIES = [
  {
    name: "nginx (deploy/nginx/tidings.conf)",
    conf: () => NGINX_CONF,
    // The allow-list's loopback range, and the number of `limit_conn <zone> N;`.
    allowLoopback: /^([ \t]*allow[ \t]+)127\.0\.0\.0\/8;/gm,
    allowNarrow: (_all, head) => `${head}${INSIDE};`,
    limit: /^([ \t]*limit_conn[ \t]+\w+[ \t]+)200;/gm,
    limitTo: (n) => (_all, head) => `${head}${n};`,
    async start(ports, edit) {
      const p = await startNginx(ports, { edit });
      return { ...p, log: () => p.shippedAccessLog(), output: () => p.errorLog() };
    },
    /** The log line of a websocket handshake refused by the proxy itself. */
    refusedWs: /"GET \/ws\/v1\/ HTTP\/1\.1" 429 /,
  },
  {
    name: "HAProxy (deploy/haproxy/tidings.cfg)",
    conf: () => HAPROXY_CONF,
    allowLoopback: /^([ \t]*acl[ \t]+\w+[ \t]+src[ \t]+)127\.0\.0\.0\/8\b/gm,
    allowNarrow: (_all, head) => `${head}${INSIDE}`,
    limit: /\b(sc0_conn_cur[ \t]+gt[ \t]+)200\b/g,
    limitTo: (n) => (_all, head) => `${head}${n}`,
    async start(ports, edit) {
      // Three servers in the file: with one node, all three point at it.
      const three = ports.length === 1 ? [ports[0], ports[0], ports[0]] : ports;
      const p = await startHaproxy(three, { edit });
      const servers = [1, 2, 3].flatMap((n) => [`tidings_api/node${n}`, `tidings_socketio/node${n}`]);
      await p.waitState(servers, "UP");
      return { ...p, log: () => p.output() };
    },
    refusedWs: / 429 \d+ .*"GET \/ws\/v1\/ HTTP\/1\.1"/,
  },
];

/** Resolves once `cond(log())` holds (bounded: a proxy writes a line when its request ends). */
async function waitLog(log, cond, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!cond(log())) {
    if (Date.now() > deadline) throw new Error(`the proxy's log did not show ${what} within ${timeoutMs} ms:\n${log().slice(-3000)}`);
    await sleep(50);
  }
}

/** A `test` whose failure message carries the nodes' warnings and the proxy's output. */
function withLogs(parts) {
  return (name, fn) => test(name, async (t) => {
    try {
      await fn(t);
    } catch (err) {
      const { nodes, proxy } = parts();
      err.message += `\n--- node logs (WARN/ERROR) ---\n${nodes.map((n, i) => `[node ${i + 1}]\n${logLines(n)}`).join("\n")}` +
        `\n--- proxy output (tail) ---\n${proxy?.output().split("\n").slice(-20).join("\n")}`;
      throw err;
    }
  });
}

for (const P of PROXIES) {
  describe(`${P.name}: access log, /metrics and /admin allow-list, connections per client`, () => {
    let redis;
    let nodes = [];
    let proxy;
    const sockets = [];
    const counts = {};
    const T = withLogs(() => ({ nodes, proxy }));

    before(async () => {
      redis = await startRedis();
      nodes = await startNodes(3, redis.url, ["--api-key", API_KEY]);
      const narrow = substitute(counts, "allow-list", P.allowLoopback, P.allowNarrow);
      const limit = substitute(counts, "limit", P.limit, P.limitTo(LIMIT));
      proxy = await P.start(nodes.map((n) => n.port), (text) => limit(narrow(text)));
    });
    after(async () => {
      closeAll(sockets);
      await proxy?.stop();
      await stopNodes(nodes);
      await redis?.stop();
    });

    T("the access log has each request's method, path and protocol, and no query string: no token", async () => {
      // A socket with the token in its URL (polling, then the websocket
      // upgrade), from an address of its own (its connections stay below the
      // rendered limit of 3 per address).
      const s = await connect(proxy.url, { query: { token: SECRET }, ...fromAddress("127.0.0.4") });
      sockets.push(s);
      await subscribe(s, uid("log"));
      await withTimeout(s.upgraded, 10000, "the upgrade to websocket through the proxy");
      s.close(); // a websocket's line is written when it ends
      const tid = uid("logbf");
      await ingestOk(proxy.url, payment(tid));
      const bf = await httpGet(`${proxy.url}/v1/events?trackingId=${tid}&token=${SECRET}`);
      assert.equal(bf.status, 200, bf.text);
      await waitLog(proxy.log, (l) => l.includes("/v1/events") && /GET \/ws\/v1\/\S* HTTP\/1\.1" 101|101 .*"GET \/ws\/v1\//.test(l) &&
        l.includes("POST /v1/payments"), "the backfill, the ingest and the websocket");
      const log = proxy.log();
      assert.ok(!log.includes(SECRET), `the token is in the proxy's access log:\n${log.split("\n").filter((l) => l.includes(SECRET)).join("\n")}`);
      assert.doesNotMatch(log, /token=|trackingId=|EIO=|transport=|sid=/, "no query string at all");
      assert.match(log, /"GET \/v1\/events HTTP\/1\.1"/, "the backfill: method, path, protocol");
      assert.match(log, /"POST \/v1\/payments HTTP\/1\.1"/, "the ingest");
      assert.match(log, /"GET \/ws\/v1\/ HTTP\/1\.1"/, "the socket's GETs (polls, the upgrade)");
      assert.match(log, /"POST \/ws\/v1\/ HTTP\/1\.1"/, "the socket's polling POSTs");
    });

    T("/metrics and /admin: 403 from an address outside the allow-list, the node's answer from one inside", async () => {
      const outside = "127.0.0.3";
      const inside = INSIDE;
      for (const p of ["/metrics", "/admin", "/admin/api/nodes", "/admin/admin.js"]) {
        const r = await requestFrom(`${proxy.url}${p}`, outside, { headers: { authorization: `Bearer ${API_KEY}` } });
        assert.equal(r.status, 403, `GET ${p} from ${outside} (not allowed) through the proxy: ${r.status} ${r.text.slice(0, 200)}`);
      }
      // Spellings that reach the same resource (or near it) are never served either.
      for (const p of ["/metrics?x=1", "/metrics/", "//metrics", "/%6detrics", "/admin/"]) {
        const r = await requestFrom(`${proxy.url}${p}`, outside);
        assert.notEqual(r.status, 200, `GET ${p} from ${outside}: ${r.status}`);
        assert.doesNotMatch(r.text, /tidings_connections|admin\.js/, `GET ${p} from ${outside} got the resource`);
      }
      const m = await requestFrom(`${proxy.url}/metrics`, inside);
      assert.equal(m.status, 200, `GET /metrics from ${inside}: ${m.status} ${m.text.slice(0, 200)}`);
      assert.match(m.text, /^tidings_connections_limit /m, "the node's metrics");
      const page = await requestFrom(`${proxy.url}/admin`, inside);
      assert.equal(page.status, 200, `GET /admin from ${inside}: ${page.status}`);
      assert.match(page.text, /admin\.js/, "the node's admin page");
      const noKey = await requestFrom(`${proxy.url}/admin/api/nodes`, inside);
      assert.equal(noKey.status, 401, `the node's own 401 without the key: ${noKey.status} ${noKey.text.slice(0, 200)}`);
      const withKey = await requestFrom(`${proxy.url}/admin/api/nodes`, inside, { headers: { authorization: `Bearer ${API_KEY}` } });
      assert.equal(withKey.status, 200, `with the key: ${withKey.status} ${withKey.text.slice(0, 200)}`);
      // Everything else is public.
      for (const p of ["/readyz", "/healthz"]) {
        assert.equal((await requestFrom(`${proxy.url}${p}`, outside)).status, 200, `GET ${p} from ${outside}`);
      }
      // The list as shipped: loopback and the private ranges (the test narrowed the loopback range).
      const shipped = readFileSync(P.conf(), "utf8").replace(/#.*$/gm, "");
      assert.equal(counts["allow-list"], 1, "the shipped allow-list has the loopback range 127.0.0.0/8 once (the test narrows it)");
      for (const range of ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]) {
        assert.ok(shipped.includes(range), `the shipped allow-list has ${range}`);
      }
    });

    T(`connections per client address on the Socket.IO path: the ${LIMIT + 1}th websocket from one address is refused by the proxy, another address connects`, async () => {
      const a = "127.0.0.5";
      const b = "127.0.0.6";
      const opts = (address) => ({ transports: ["websocket"], ...fromAddress(address) });
      const mine = [];
      for (let i = 0; i < LIMIT; i++) {
        const s = await connect(proxy.url, opts(a));
        sockets.push(s);
        mine.push(s);
      }
      await assert.rejects(connect(proxy.url, opts(a)), /connect_error/,
        `websocket ${LIMIT + 1} from ${a} must be refused (limit ${LIMIT} rendered into the shipped directive)`);
      const other = await connect(proxy.url, opts(b));
      sockets.push(other);
      await subscribe(other, uid("other"));
      for (const s of mine) assert.equal(s.connected, true, "the first ones are still connected");
      // The proxy refused it (429), not a node: the nodes' own limit is far above.
      await waitLog(proxy.log, (l) => P.refusedWs.test(l), "the refused websocket handshake (429)");
      assert.equal(counts.limit, 1, "the shipped per-client limit is 200, in one directive (the test renders it as 3)");
    });
  });

  describe(`${P.name}: X-Forwarded-For, nodes with --trusted-proxy 127.0.0.1 --max-connections-per-ip 2`, () => {
    let redis;
    let nodes = [];
    let proxy;
    const sockets = [];
    const T = withLogs(() => ({ nodes, proxy }));

    before(async () => {
      redis = await startRedis();
      // One node behind every server line: all clients reach it, so without
      // the client's address it would count them all as the proxy (127.0.0.1).
      nodes = await startNodes(1, redis.url, ["--trusted-proxy", "127.0.0.1", "--max-connections-per-ip", "2"]);
      proxy = await P.start(nodes.map((n) => n.port), (t) => t);
    });
    after(async () => {
      closeAll(sockets);
      await proxy?.stop();
      await stopNodes(nodes);
      await redis?.stop();
    });

    T("the node limits each client address, not the proxy's; a forged X-Forwarded-For changes nothing", async () => {
      const node = nodes[0];
      const refused = async () => (await readMetric(node.url, "tidings_connections_refused_total", { reason: "ip_limit" })).value ?? 0;
      const base = await refused();
      const ws = (address, headers) => ({
        transports: ["websocket"], ...fromAddress(address), ...(headers ? { extraHeaders: headers } : {}),
      });
      for (let i = 0; i < 2; i++) sockets.push(await connect(proxy.url, ws("127.0.0.2")));
      await assert.rejects(connect(proxy.url, ws("127.0.0.2")), /connect_error/, "a third socket from 127.0.0.2 is refused");
      assert.equal(await refused(), base + 1, "refused by the node's per-address limit");
      const s3 = await connect(proxy.url, ws("127.0.0.3"));
      sockets.push(s3);
      await subscribe(s3, uid("xff"));
      // Polling too (its requests carry the header as well).
      sockets.push(await connect(proxy.url, { transports: ["polling"], ...fromAddress("127.0.0.3") }));
      await assert.rejects(connect(proxy.url, { transports: ["polling"], ...fromAddress("127.0.0.3") }), /connect_error/,
        "a third session (polling) from 127.0.0.3 is refused");
      // A client naming another address in its own X-Forwarded-For is still itself.
      for (let i = 0; i < 2; i++) sockets.push(await connect(proxy.url, ws("127.0.0.4", { "X-Forwarded-For": `203.0.113.${i + 1}` })));
      await assert.rejects(connect(proxy.url, ws("127.0.0.4", { "X-Forwarded-For": "203.0.113.9" })), /connect_error/,
        "a third socket from 127.0.0.4, whatever X-Forwarded-For it sends, is refused");
      assert.equal(await refused(), base + 3);
    });

    T("REST: the failed-credential slowdown counts the client address through the proxy", async () => {
      const post = (address, token) => requestFrom(`${proxy.url}/v1/payments`, address, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify([payment(uid("slow"))]),
      });
      let limited = null;
      for (let i = 0; i < 40 && !limited; i++) {
        const r = await post("127.0.0.7", "wrong-token");
        if (r.status === 429) limited = i;
        else assert.equal(r.status, 401, `wrong token ${i}: ${r.status} ${r.text.slice(0, 200)}`);
      }
      assert.ok(limited !== null, "40 wrong tokens from 127.0.0.7 were never slowed (429)");
      const other = await post("127.0.0.8", "wrong-token");
      assert.equal(other.status, 401, `another address is not slowed: ${other.status} ${other.text.slice(0, 200)}`);
      const good = await post("127.0.0.8", INGEST_TOKEN);
      assert.equal(good.status, 202, `and its right token is accepted: ${good.status} ${good.text.slice(0, 200)}`);
    });
  });
}
