// The Tidings server process, ingest and a free port, for the dashboard's
// test: taken from the SDK's clients/js/test/lib/harness.mjs (itself from the
// end-to-end suite's tests/e2e/lib/harness.mjs; freePort from
// clients/js/test/lib/cluster.mjs), trimmed to what the dashboard's test uses,
// so that it runs from this package with its own node_modules.
//
// Everything here is bounded in time: a helper that waits for something either
// gets it or rejects after a timeout, so a hung server fails the test quickly
// instead of stalling the run.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { accessSync, constants, statSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";
import assert from "node:assert/strict";

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repository this package lives in (examples/dashboard/test/lib → the root). */
export const REPO_ROOT = path.resolve(here, "../../../..");
/** Where `cargo build` at the repository root puts the server. */
export const DEFAULT_SERVER_BIN = path.join(REPO_ROOT, "target/debug/tidings");
/** The server binary: TIDINGS_BIN (relative to the current directory), else the repository's debug build. */
export const SERVER_BIN = process.env.TIDINGS_BIN
  ? path.resolve(process.env.TIDINGS_BIN)
  : DEFAULT_SERVER_BIN;

export const INGEST_TOKEN = "test-token";

/**
 * Null when SERVER_BIN is an executable file; else what is wrong and what to
 * do about it, in words for whoever runs the tests.
 */
export function serverBinProblem() {
  const build = `Build the server with \`cargo build\` at the repository root, ${REPO_ROOT}, ` +
    `then run the tests with TIDINGS_BIN=${DEFAULT_SERVER_BIN}`;
  let what;
  if (process.env.TIDINGS_BIN) {
    what = `TIDINGS_BIN=${process.env.TIDINGS_BIN}`;
    if (SERVER_BIN !== process.env.TIDINGS_BIN) what += ` (${SERVER_BIN})`;
  } else {
    what = `TIDINGS_BIN is not set, and the default ${DEFAULT_SERVER_BIN}`;
  }
  let st;
  try {
    st = statSync(SERVER_BIN);
  } catch {
    return `The dashboard's test runs a real Tidings server, and none was found: ${what} does not exist. ` +
      `${build} (or point TIDINGS_BIN at a tidings binary you have).`;
  }
  if (!st.isFile()) return `${what} is not a file: point TIDINGS_BIN at the tidings binary. ${build}.`;
  try {
    accessSync(SERVER_BIN, constants.X_OK);
  } catch {
    return `${what} is not executable: point TIDINGS_BIN at the tidings binary. ${build}.`;
  }
  return null;
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/** Rejects with `message` if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${message}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A fresh trackingId with a readable prefix (random, so tests sharing a server never share one). */
export function uid(prefix = "t") {
  return `${prefix}-${randomBytes(6).toString("hex")}`;
}

const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/** A unique, signature-looking base58 string. */
function signature() {
  let s = "";
  for (const b of randomBytes(64)) s += B58[b % B58.length];
  return s;
}

/** Builds a valid payment item for ingest. */
export function payment(trackingId, overrides = {}) {
  return {
    trackingId,
    amount: 1000000,
    timestamp: Math.floor(Date.now() / 1000),
    status: "executed",
    signature: signature(),
    ...overrides,
  };
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

const live = new Set();
process.on("exit", () => {
  for (const p of live) {
    try { p.kill("SIGKILL"); } catch { /* already gone */ }
  }
});

/**
 * Spawns the Tidings binary on an ephemeral port; resolves once it logs
 * "listening on", to {url, port, proc, logs(), exited, exitInfo, stop(signal)}.
 *
 * @param {string[]} args extra CLI flags
 * @param {Record<string,string>} env extra environment variables
 * @param {{ baseArgs?: string[], timeoutMs?: number }} options
 *   `baseArgs` replaces the default `--listen 127.0.0.1:0 --ingest-token test-token --log-format json`.
 */
export function startServer(args = [], env = {}, options = {}) {
  const baseArgs = options.baseArgs ?? [
    "--listen", "127.0.0.1:0",
    "--ingest-token", INGEST_TOKEN,
    "--log-format", "json",
  ];
  const timeoutMs = options.timeoutMs ?? 10000;
  const problem = serverBinProblem();
  if (problem) return Promise.reject(new Error(problem));
  const childEnv = { ...process.env, ...env };
  // Make sure the "listening" line (info) is printed.
  if (!("RUST_LOG" in env)) childEnv.RUST_LOG = process.env.TIDINGS_TEST_RUST_LOG ?? "info";
  const proc = spawn(SERVER_BIN, [...baseArgs, ...args], {
    env: childEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  live.add(proc);
  const lines = [];
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on("exit", (code, signal) => {
      exitInfo = { code, signal };
      live.delete(proc);
      resolve(exitInfo);
    });
  });
  const logs = () => lines.join("\n");

  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (err, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        try { proc.kill("SIGKILL"); } catch { /* gone */ }
        reject(err);
      } else {
        resolve(value);
      }
    };
    const timer = setTimeout(() => finish(new Error(
      `server did not report "listening on" within ${timeoutMs} ms; output:\n${logs()}`)), timeoutMs);

    const onLine = (line) => {
      lines.push(line);
      if (done) return;
      const m = /listening on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(line);
      if (m) {
        const port = Number(m[1].split(":")[1]);
        finish(null, {
          url: `http://127.0.0.1:${port}`,
          port,
          proc,
          logs,
          exited,
          get exitInfo() { return exitInfo; },
          /** Sends `signal`, awaits exit (bounded), SIGKILLs if needed. */
          async stop(signal = "SIGTERM", graceMs = 10000) {
            if (exitInfo) return exitInfo;
            try { proc.kill(signal); } catch { /* gone */ }
            let t;
            const timedOut = await Promise.race([
              exited.then(() => false),
              new Promise((r) => { t = setTimeout(() => r(true), graceMs); }),
            ]);
            clearTimeout(t);
            if (timedOut) {
              try { proc.kill("SIGKILL"); } catch { /* gone */ }
              await exited;
              return { ...exitInfo, timedOut: true };
            }
            return exitInfo;
          },
        });
      }
    };
    for (const stream of [proc.stdout, proc.stderr]) {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          onLine(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      });
      stream.on("end", () => { if (buf) onLine(buf); buf = ""; });
    }
    proc.on("error", (err) => finish(new Error(`could not spawn ${SERVER_BIN}: ${err.message}`)));
    exited.then((info) => finish(new Error(
      `server exited (${JSON.stringify(info)}) before listening; output:\n${logs()}`)));
  });
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

async function readBody(res) {
  const text = await res.text();
  let body = text;
  if (text.length > 0) {
    try { body = JSON.parse(text); } catch { body = text; }
  }
  return { status: res.status, body, text, headers: res.headers };
}

/** POSTs to /v1/payments (JSON-encoded `body`) with the ingest token. */
async function ingest(url, body, { timeoutMs = 10000 } = {}) {
  const res = await fetch(`${url}/v1/payments`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${INGEST_TOKEN}` },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return readBody(res);
}

/** Ingests and asserts 202; returns the result entries. */
export async function ingestOk(url, body) {
  const res = await ingest(url, body);
  assert.equal(res.status, 202, `ingest must answer 202, got ${res.status}: ${res.text}`);
  assert.ok(res.body && Array.isArray(res.body.data), `ingest body must be {data:[...]}, got ${res.text}`);
  return res.body.data;
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}
