// The memory store's global bound (--memory-limit): a node ingesting far more
// than its bound keeps its resident memory flat, evicts the oldest payments,
// and tells a client whose `since` points into what it evicted
// (HISTORY_TRUNCATED, then what is retained, then live payments).
//
// The bound is passed as TIDINGS_MEMORY_LIMIT rather than as a flag so that a
// binary without the bound (TIDINGS_BIN=<older build>) runs this test and
// fails on what matters: its memory grows with the data.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import {
  startServer, ingestOk, connect, waitFor, subscribe, payment, uid, assertError,
  backfill, closeAll, recorded, SERVER_BIN,
} from "./lib/harness.mjs";
import { readMetric } from "./lib/cluster.mjs";

const LIMIT = 8 * 1024 * 1024;
const BATCHES = 100;
const BATCH = 1000;
// Generous: the bound, plus what the allocator keeps around it, plus the
// request and socket buffers. Without the bound, 100,000 payments for new
// trackingIds retain well over 100 MiB.
const SLACK = 48 * 1024 * 1024;

/** Resident memory of a process, in bytes (VmRSS of /proc/<pid>/status). */
function rss(pid) {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  assert.ok(m, `no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

const mib = (b) => `${(b / 1048576).toFixed(1)} MiB`;

describe(`memory bound (TIDINGS_MEMORY_LIMIT=${LIMIT})`, () => {
  let server;
  const sockets = [];
  const early = uid("early");
  const steady = uid("steady");
  let earlyIds;
  const steadyIds = [];
  let baseline;
  const samples = [];

  before(async () => {
    server = await startServer([], { TIDINGS_MEMORY_LIMIT: String(LIMIT) });
    // Warm the request paths up before the baseline.
    await ingestOk(server.url, Array.from({ length: BATCH }, () => payment(uid("warm"))));
    baseline = rss(server.proc.pid);
    earlyIds = (await ingestOk(server.url, [payment(early), payment(early), payment(early)])).map((r) => r.id);
    for (let b = 0; b < BATCHES; b++) {
      // Mostly one-shot trackingIds (the costliest payments), and one for a
      // trackingId that keeps receiving: its oldest events are evicted while
      // its newest are retained.
      const items = Array.from({ length: BATCH - 1 }, () => payment(uid("once")));
      items.push(payment(steady));
      const res = await ingestOk(server.url, items);
      steadyIds.push(res[BATCH - 1]);
      if (b % 10 === 9) samples.push(rss(server.proc.pid));
    }
  });
  after(async () => { closeAll(sockets); await server?.stop(); });

  test("resident memory stays under the bound plus a baseline while ingesting 100x more than fits", (t) => {
    const ceiling = baseline + LIMIT + SLACK;
    const peak = Math.max(...samples);
    t.diagnostic(`RSS baseline ${mib(baseline)}, samples ${samples.map(mib).join(", ")}`);
    assert.ok(peak < ceiling,
      `RSS peaked at ${mib(peak)} (baseline ${mib(baseline)}, ceiling ${mib(ceiling)}; samples ${samples.map(mib).join(", ")})`);
  });

  test("the bound in use is logged at start", () => {
    assert.match(server.logs(), new RegExp(`memory store bounded to ${LIMIT} bytes`));
  });

  test("the accounted bytes stay within the bound and evictions are counted", async () => {
    const { value: bytes, text } = await readMetric(server.url, "tidings_store_memory_bytes");
    assert.ok(bytes !== null && bytes > 0 && bytes <= LIMIT, `tidings_store_memory_bytes = ${bytes}`);
    const evicted = (await readMetric(server.url, "tidings_store_evictions_total")).value;
    assert.ok(evicted > BATCHES * BATCH / 2, `tidings_store_evictions_total = ${evicted}\n${text.slice(0, 300)}`);
  });

  test("a since into evicted events: HISTORY_TRUNCATED, the retained tail, then live", async () => {
    const last = steadyIds[steadyIds.length - 1];
    const s = await connect(server.url, { transports: ["websocket"] });
    sockets.push(s);
    await subscribe(s, steady, { since: steadyIds[0].id });
    const warn = await waitFor(s, "error");
    assertError(warn, "HISTORY_TRUNCATED");
    assert.equal(warn.data.trackingId, steady);
    await waitFor(s, "payment", (p) => p.seq === last.seq, 10000);
    const live = await ingestOk(server.url, payment(steady));
    await waitFor(s, "payment", (p) => p.id === live[0].id);
    const got = recorded(s, "payment");
    const seqs = got.map((p) => p.seq);
    assert.ok(seqs[0] > 2, `the oldest were evicted, replay starts at ${seqs[0]}`);
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => seqs[0] + i), "contiguous");
    assert.equal(seqs[seqs.length - 1], last.seq + 1, "then live");
    assert.ok(got.every((p) => p.id.split("-")[0] === last.id.split("-")[0]), "one epoch");

    const page = await backfill(server.url, { trackingId: steady, since: steadyIds[0].id, limit: 1000 });
    assert.equal(page.status, 200);
    assert.equal(page.body.truncated, true);
    assert.equal(page.body.data[0].seq, seqs[0]);
  });

  test("a history evicted entirely: HISTORY_TRUNCATED, nothing retained, the next payment in a new, larger epoch", async () => {
    const page = await backfill(server.url, { trackingId: early, since: earlyIds[2] });
    assert.equal(page.status, 200);
    assert.deepEqual([page.body.truncated, page.body.data], [true, []]);
    const s = await connect(server.url, { transports: ["websocket"] });
    sockets.push(s);
    const ack = await subscribe(s, early, { since: earlyIds[2] });
    assert.deepEqual(ack.position, { id: null, seq: 0 }, "no history left");
    const warn = await waitFor(s, "error");
    assertError(warn, "HISTORY_TRUNCATED");
    assert.equal(warn.data.trackingId, early);
    const [fresh] = await ingestOk(server.url, payment(early));
    const got = await waitFor(s, "payment", (p) => p.id === fresh.id);
    assert.equal(got.seq, 1);
    assert.ok(BigInt(fresh.id.split("-")[0]) > BigInt(earlyIds[0].split("-")[0]), `${fresh.id} after ${earlyIds[0]}`);
  });
});

/** Runs the binary to completion (bounded); resolves with its exit code and output. */
function runBinary(args, env = {}) {
  return new Promise((resolve) => {
    execFile(SERVER_BIN, args, { timeout: 10000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? err.code : 0, output: stdout + stderr });
    });
  });
}

describe("bad --memory-limit values are refused at start, naming the flag", () => {
  const base = ["--listen", "127.0.0.1:0", "--ingest-token", "t"];
  for (const [value, reason] of [["lots", /expected bytes/], ["1000", /at least 1MiB/], ["512KiB", /at least 1MiB/], ["-1", /expected bytes/]]) {
    test(`--memory-limit ${value}`, async () => {
      const r = await runBinary([...base, `--memory-limit=${value}`]);
      assert.equal(r.code, 2, `exit code 2 (usage), got ${r.code}: ${r.output}`);
      assert.match(r.output, /--memory-limit/);
      assert.match(r.output, reason);
      assert.doesNotMatch(r.output, /listening on/);
    });
  }

  test("with --redis-url (flag or TIDINGS_MEMORY_LIMIT): refused, Redis's maxmemory bounds Redis", async () => {
    for (const [args, env] of [
      [[...base, "--redis-url", "redis://127.0.0.1:1", "--memory-limit", "8MiB"], {}],
      [[...base, "--redis-url", "redis://127.0.0.1:1"], { TIDINGS_MEMORY_LIMIT: "8MiB" }],
    ]) {
      const r = await runBinary(args, env);
      assert.equal(r.code, 2, `exit code 2, got ${r.code}: ${r.output}`);
      assert.match(r.output, /--memory-limit/);
      assert.match(r.output, /cannot be used with/);
    }
  });
});
