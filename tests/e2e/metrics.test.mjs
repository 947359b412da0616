// Metrics that answer an incident's first questions (how long ingest and
// the store take, how late deliveries are, how big replays are, which
// transports, what the process uses): each value is read before and after
// the thing it counts happens, and must move by exactly that.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer, ingest, ingestOk, connect, subscribe, waitFor, payment, uid, httpGet, closeAll,
  withTimeout, payments,
} from "./lib/harness.mjs";
import { metricValue } from "./lib/cluster.mjs";

/** A snapshot of /metrics: `get(name, labels)` sums the matching samples (0 when absent). */
async function scrape(url) {
  const r = await httpGet(`${url}/metrics`);
  assert.equal(r.status, 200, r.text);
  return { text: r.text, get: (name, labels = {}) => metricValue(r.text, name, labels) ?? 0 };
}

/** Scrapes until `cond(snapshot)` holds, bounded. */
async function scrapeUntil(url, cond, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await scrape(url);
    if (cond(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The `le` buckets of one histogram series, as [[le, count]]. */
function buckets(text, name, labels = {}) {
  const out = [];
  const re = new RegExp(`^${name}_bucket\\{([^}]*)\\}\\s+(\\S+)$`, "gm");
  for (const m of text.matchAll(re)) {
    if (!Object.entries(labels).every(([k, v]) => m[1].includes(`${k}="${v}"`))) continue;
    const le = /le="([^"]+)"/.exec(m[1])[1];
    out.push([le === "+Inf" ? Infinity : Number(le), Number(m[2])]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

describe("metrics that answer questions (one node in memory)", () => {
  let server;
  const sockets = [];
  before(async () => { server = await startServer(["--max-connections", "1234"]); });
  after(async () => {
    closeAll(...sockets);
    await server?.stop();
  });
  const open = async (opts) => {
    const s = await connect(server.url, opts);
    sockets.push(s);
    return s;
  };

  test("ingest request duration and store append duration: one observation per request and per trackingId", async () => {
    const a = uid("dur");
    const b = uid("dur");
    const before = await scrape(server.url);
    await ingestOk(server.url, [payment(a), payment(b), payment(a)]);
    await ingestOk(server.url, payment(a));
    const refused = await ingest(server.url, payment(a), { token: "wrong" });
    assert.equal(refused.status, 401);
    const after = await scrape(server.url);
    const moved = (name, labels) => after.get(name, labels) - before.get(name, labels);
    assert.equal(moved("tidings_ingest_request_duration_seconds_count", { status: "202" }), 2, "two 202 requests");
    assert.equal(moved("tidings_ingest_request_duration_seconds_count", { status: "401" }), 1, "one 401 request");
    assert.equal(moved("tidings_store_append_duration_seconds_count", { outcome: "ok" }), 3,
      "three appends: the batch's two trackingIds, then one; none for the refused request");
    const sum = moved("tidings_ingest_request_duration_seconds_sum", { status: "202" });
    assert.ok(sum > 0 && sum < 5, `seconds, not milliseconds: ${sum}`);
    // Cumulative buckets ending at +Inf = count.
    const b202 = buckets(after.text, "tidings_ingest_request_duration_seconds", { status: "202" });
    assert.ok(b202.length >= 10, "a histogram with buckets, not a summary");
    for (let i = 1; i < b202.length; i++) assert.ok(b202[i][1] >= b202[i - 1][1], "cumulative");
    assert.equal(b202.at(-1)[1], after.get("tidings_ingest_request_duration_seconds_count", { status: "202" }));
  });

  test("delivery lag: one observation per payment delivered on this node (none without subscribers), in seconds", async () => {
    const id = uid("lag");
    const s1 = await open({ transports: ["websocket"] });
    const s2 = await open({ transports: ["websocket"] });
    await subscribe(s1, id);
    await subscribe(s2, id);
    const before = await scrape(server.url);
    const accepted = await ingestOk(server.url, [payment(id), payment(id), payment(id)]);
    await waitFor(s2, "payment", (p) => p.id === accepted[2].id);
    await ingestOk(server.url, payment(uid("nobody")));
    const after = await scrape(server.url);
    const moved = (name, labels) => after.get(name, labels) - before.get(name, labels);
    assert.equal(moved("tidings_delivery_lag_seconds_count", { path: "live" }), 3,
      "three payments, two subscribers: one observation per payment; none for a trackingId nobody watches");
    const lag = moved("tidings_delivery_lag_seconds_sum", { path: "live" });
    assert.ok(lag >= 0 && lag < 3, `a local delivery is not seconds late: ${lag}`);
    assert.equal(moved("tidings_delivery_lag_seconds_count", { path: "catch_up" }), 0);
  });

  test("replay sizes: one observation per subscribe with since, of the events it replayed", async () => {
    const id = uid("replay");
    const stored = await ingestOk(server.url, Array.from({ length: 7 }, () => payment(id)));
    const before = await scrape(server.url);
    const s = await open({ transports: ["websocket"] });
    await subscribe(s, id, { since: stored[1].id });
    await waitFor(s, "payment", (p) => p.id === stored[6].id);
    assert.equal(payments(s, id).length, 5);
    const s2 = await open({ transports: ["websocket"] });
    await subscribe(s2, id, { since: stored[6].id });
    const s3 = await open({ transports: ["websocket"] });
    await subscribe(s3, id); // no since: no replay
    const after = await scrape(server.url);
    const moved = (name, labels) => after.get(name, labels) - before.get(name, labels);
    assert.equal(moved("tidings_replay_events_count"), 2, "two subscribes with since");
    assert.equal(moved("tidings_replay_events_sum"), 5, "5 events, then 0");
    const le0 = (snap) => (buckets(snap.text, "tidings_replay_events").find(([le]) => le === 0) ?? [0, 0])[1];
    assert.equal(le0(after) - le0(before), 1, "the up-to-date one in the 0 bucket");
  });

  test("sockets by transport follow connects, upgrades and disconnects", async () => {
    const base = await scrape(server.url);
    const ws = (snap) => snap.get("tidings_sockets_by_transport", { transport: "websocket" });
    const polling = (snap) => snap.get("tidings_sockets_by_transport", { transport: "polling" });
    const p = await open({ transports: ["polling"] });
    const w = await open({ transports: ["websocket"] });
    const mid = await scrape(server.url);
    assert.equal(polling(mid) - polling(base), 1, "one polling socket");
    assert.equal(ws(mid) - ws(base), 1, "one websocket");
    const u = await open({ transports: ["polling", "websocket"] });
    await withTimeout(u.upgraded, 10000, "upgrade");
    await scrapeUntil(server.url, (snap) => ws(snap) - ws(base) === 2 && polling(snap) - polling(base) === 1, 10000,
      "the upgraded socket counted as websocket");
    closeAll(p, w, u);
    await scrapeUntil(server.url, (snap) => ws(snap) === ws(base) && polling(snap) === polling(base), 10000,
      "the closed sockets no longer counted");
  });

  test("the connection limit is exported for 'near the limit' alerts", async () => {
    const snap = await scrape(server.url);
    assert.equal(snap.get("tidings_connections_limit"), 1234, "--max-connections 1234");
  });

  test("process figures: open files follow sockets, RSS in bytes, CPU seconds grow with work", async () => {
    const before = await scrape(server.url);
    assert.ok(before.get("process_resident_memory_bytes") > 1e6, "RSS in bytes");
    assert.ok(before.get("process_max_fds") >= 1024, "the open-files limit");
    assert.ok(before.get("process_threads") >= 1);
    const opened = [];
    for (let i = 0; i < 20; i++) opened.push(await open({ transports: ["websocket"] }));
    const after = await scrape(server.url);
    const held = after.get("process_open_fds");
    assert.ok(held >= 20, `20 sockets hold at least 20 files: ${held}`);
    // Measured as they close: connections of earlier tests (idle
    // keep-alives, sessions being reaped) may close meanwhile, which only
    // makes the count fall further, never less.
    closeAll(...opened);
    await scrapeUntil(server.url, (m) => m.get("process_open_fds") <= held - 20, 10000,
      `20 sockets closed, 20 files fewer than ${held}`);
    // Work until a CPU second is counted (the counter is in whole seconds), bounded.
    const cpu0 = after.get("process_cpu_seconds_total");
    const batch = () => Array.from({ length: 500 }, () => payment(uid("cpu")));
    const deadline = Date.now() + 60000;
    let cpu = cpu0;
    while (cpu < cpu0 + 1) {
      assert.ok(Date.now() < deadline, "a CPU second counted within 60 s of ingesting");
      await ingestOk(server.url, batch());
      cpu = (await scrape(server.url)).get("process_cpu_seconds_total");
    }
    assert.ok(cpu >= cpu0 + 1);
  });
});
