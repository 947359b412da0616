// The Grafana dashboard and the Prometheus alert rules under deploy/: the
// rules pass `promtool check rules` and their unit tests (`promtool test
// rules`), every dashboard query is valid PromQL, and every metric (and
// every label value matched exactly) that the dashboard and the rules
// query exists in the /metrics of real nodes (one in memory, one on Redis).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  REPO_ROOT, startServer, ingest, ingestOk, connect, subscribe, waitFor, payment, uid, httpGet, closeAll,
} from "./lib/harness.mjs";
import { startRedis, metricValue } from "./lib/cluster.mjs";

const PROMTOOL = process.env.TIDINGS_PROMTOOL ?? "/usr/bin/promtool";
const RULES = path.join(REPO_ROOT, "deploy/prometheus/alerts.yml");
const RULE_TESTS = path.join(REPO_ROOT, "deploy/prometheus/alerts.test.yml");
const DASHBOARD = path.join(REPO_ROOT, "deploy/grafana/tidings.json");
/** Series Prometheus itself makes, not a node. */
const PROMETHEUS_OWN = new Set(["up"]);

const promtool = (...args) => execFileSync(PROMTOOL, args, { encoding: "utf8", timeout: 60000, stdio: "pipe" });

/** Scrapes `url` until `name` satisfies `ok`, bounded. */
async function waitMetric(url, name, ok, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await httpGet(`${url}/metrics`);
    if (ok(metricValue(r.text, name))) return;
    if (Date.now() > deadline) throw new Error(`${name} did not change within ${ms} ms`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** Every PromQL expression of the dashboard (panel targets and template queries). */
function dashboardExprs() {
  const d = JSON.parse(readFileSync(DASHBOARD, "utf8"));
  const exprs = [];
  for (const p of d.panels) for (const t of p.targets ?? []) exprs.push(t.expr);
  for (const v of d.templating.list) if (v.type === "query") exprs.push(v.definition);
  return exprs;
}

/** The `expr:` of every rule in alerts.yml (each written on one line). */
function ruleExprs() {
  return [...readFileSync(RULES, "utf8").matchAll(/^\s+expr:\s*(.+)$/gm)].map((m) => m[1].trim());
}

/** Grafana's variables, as Prometheus would see them once Grafana filled them in. */
const concrete = (expr) => expr.replaceAll("$__rate_interval", "5m").replaceAll("$instance", ".*");

/** Metric names in an expression, and the exact label matchers `name{label="value"}` on them. */
function references(expr) {
  const out = [];
  const re = /\b((?:tidings|process)_[a-z_]+|up)\b(\{([^}]*)\})?/g;
  for (const m of expr.matchAll(re)) {
    const labels = {};
    for (const lm of (m[3] ?? "").matchAll(/([a-z_]+)="([^"$]*)"/g)) labels[lm[1]] = lm[2];
    out.push({ name: m[1], labels });
  }
  return out;
}

describe("deploy/prometheus alert rules and deploy/grafana dashboard", () => {
  let memoryNode;
  let redisNode;
  let redis;
  let metricsText;
  let dir;
  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "tidings-dash-"));
    // What running nodes do, so that every series the dashboard shows has
    // samples: a subscriber on each transport, payments delivered live, a
    // replay, deliveries dropped from a one-slot queue and caught up (memory
    // node); a store that goes away (Redis node).
    memoryNode = await startServer(["--delivery-buffer", "1"]);
    redis = await startRedis();
    redisNode = await startServer(["--redis-url", redis.url], {}, { timeoutMs: 20000 });
    const id = uid("dash");
    const w = await connect(memoryNode.url, { transports: ["websocket"] });
    const p = await connect(memoryNode.url, { transports: ["polling"] });
    const sockets = [w, p];
    try {
      await subscribe(w, id);
      await subscribe(p, id);
      const stored = await ingestOk(memoryNode.url, Array.from({ length: 50 }, () => payment(id)));
      await waitFor(w, "payment", (e) => e.id === stored.at(-1).id, 15000);
      const r = await connect(memoryNode.url, { transports: ["websocket"] });
      sockets.push(r);
      await subscribe(r, id, { since: stored[0].id });
      await waitFor(r, "payment", (e) => e.id === stored.at(-1).id, 15000);
      const memoryMetrics = await httpGet(`${memoryNode.url}/metrics`);
      assert.equal(memoryMetrics.status, 200);
      assert.ok(metricValue(memoryMetrics.text, "tidings_delivery_lag_seconds_count", { path: "catch_up" }) > 0,
        "the one-slot queue dropped publications and the node caught up");

      const x = uid("dash");
      const s = await connect(redisNode.url, { transports: ["websocket"] });
      sockets.push(s);
      await subscribe(s, x);
      const [one] = await ingestOk(redisNode.url, payment(x));
      await waitFor(s, "payment", (e) => e.id === one.id);
      await redis.kill();
      const refused = await ingest(redisNode.url, payment(x));
      assert.equal(refused.status, 503, "the store is gone");
      await waitMetric(redisNode.url, "tidings_store_up", (v) => v === 0, 10000);
      const redisMetrics = await httpGet(`${redisNode.url}/metrics`);
      metricsText = `${memoryMetrics.text}\n${redisMetrics.text}`;
    } finally {
      closeAll(...sockets);
    }
  });
  after(async () => {
    await memoryNode?.stop();
    await redisNode?.stop();
    await redis?.stop().catch(() => {});
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("promtool check rules: the alert rules are valid", () => {
    const out = promtool("check", "rules", RULES);
    assert.match(out, /SUCCESS: 6 rules found/, out);
  });

  test("promtool test rules: each alert fires on the series that should raise it, and not on healthy ones", () => {
    const out = promtool("test", "rules", RULE_TESTS);
    assert.match(out, /SUCCESS/, out);
  });

  test("every dashboard query is valid PromQL", () => {
    const exprs = dashboardExprs().filter((e) => !e.startsWith("label_values("));
    assert.ok(exprs.length >= 20, `the dashboard's queries (${exprs.length})`);
    // Each as a recording rule: promtool parses them (JSON is YAML).
    const rules = { groups: [{ name: "dashboard", rules: exprs.map((e, i) => ({ record: `dashboard:q${i}`, expr: concrete(e) })) }] };
    const file = path.join(dir, "dashboard-queries.yml");
    writeFileSync(file, JSON.stringify(rules));
    const out = promtool("check", "rules", file);
    assert.match(out, new RegExp(`SUCCESS: ${exprs.length} rules found`), out);
  });

  test("every metric and exact label value they query exists in the nodes' /metrics", () => {
    const exprs = [...dashboardExprs(), ...ruleExprs()];
    const refs = exprs.flatMap(references);
    const names = new Set(refs.map((r) => r.name));
    assert.ok(names.size >= 20, `metrics queried: ${[...names].join(", ")}`);
    const missing = [];
    for (const { name, labels } of refs) {
      if (PROMETHEUS_OWN.has(name)) continue;
      const series = [...metricsText.matchAll(new RegExp(`^${name}(\\{[^}]*\\})?\\s`, "gm"))].map((m) => m[1] ?? "");
      if (series.length === 0) { missing.push(name); continue; }
      const want = Object.entries(labels);
      if (!series.some((s) => want.every(([k, v]) => s.includes(`${k}="${v}"`)))) {
        missing.push(`${name}{${want.map(([k, v]) => `${k}="${v}"`).join(",")}}`);
      }
    }
    assert.deepEqual([...new Set(missing)], [], "queried but not exported");
  });
});
