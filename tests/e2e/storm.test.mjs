// 2,000 websocket clients connecting and subscribing at once.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, ingestOk, makeSocket, payment, rand, withTimeout, closeAll, waitFor } from "./lib/harness.mjs";

const N = Number(process.env.TIDINGS_STORM_SOCKETS ?? 2000);
const DEADLINE_MS = 30000;

describe(`storm: ${N} sockets`, () => {
  let server;
  const sockets = [];
  const ids = [];
  const run = rand(4);

  before(async () => { server = await startServer(); });
  after(async () => {
    closeAll(sockets);
    await server?.stop();
  });

  test(`${N} sockets connect and subscribe to distinct ids at once; every one is acked within ${DEADLINE_MS / 1000} s`, async () => {
    const started = Date.now();
    const acked = new Array(N).fill(false);
    const failures = [];
    const all = [];
    for (let i = 0; i < N; i++) {
      const id = `storm-${run}-${i}`;
      ids.push(id);
      const s = makeSocket(server.url, { transports: ["websocket"], timeout: DEADLINE_MS });
      sockets.push(s);
      all.push(new Promise((resolve) => {
        s.once("connect_error", (e) => { failures.push(`${i}: connect_error ${e.message}`); resolve(); });
        s.once("connect", () => {
          s.emit("subscribe", { trackingId: id });
        });
        s.on("ack", (a) => {
          if (a?.data === `Subscribed to trackingId: ${id}`) { acked[i] = true; resolve(); }
        });
        s.on("error", (e) => { failures.push(`${i}: error ${JSON.stringify(e)}`); resolve(); });
      }));
    }
    await withTimeout(Promise.all(all), DEADLINE_MS, "all sockets acked").catch((err) => {
      const missing = acked.filter((x) => !x).length;
      err.message += `; ${missing} of ${N} not acked; connected: ${sockets.filter((s) => s.connected).length}; ` +
        `failures (first 5): ${failures.slice(0, 5).join(" | ")}; server warnings/errors (first 5): ` +
        server.logs().split("\n").filter((l) => /"level":"(WARN|ERROR)"|panicked/.test(l)).slice(0, 5).join(" | ");
      throw err;
    });
    assert.deepEqual(failures, [], "no connect_error or error");
    assert.equal(acked.filter(Boolean).length, N, "every socket acked");
    const elapsed = Date.now() - started;
    assert.ok(elapsed < DEADLINE_MS, `took ${elapsed} ms`);
  });

  test(`every one of the ${N} sockets gets its own payment`, async () => {
    assert.equal(ids.length, N, "the storm test ran first");
    const waits = sockets.map((s, i) => waitFor(s, "payment", (p) => p.data.trackingId === ids[i], DEADLINE_MS));
    for (let i = 0; i < N; i += 1000) {
      await ingestOk(server.url, ids.slice(i, i + 1000).map((id) => payment(id)));
    }
    const results = await Promise.allSettled(waits);
    const missing = results.filter((r) => r.status === "rejected");
    assert.equal(missing.length, 0, `${missing.length} sockets missed their payment: ${missing[0]?.reason?.message?.slice(0, 300)}`);
    for (const [i, r] of results.entries()) {
      assert.equal(r.value.seq, 1);
      assert.equal(r.value.data.trackingId, ids[i]);
    }
  });
});
