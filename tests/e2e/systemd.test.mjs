// The shipped systemd unit (deploy/systemd/tidings.service) and its
// environment file (deploy/systemd/tidings.env):
//
// - `systemd-analyze verify` finds nothing to say about it (a copy whose
//   ExecStart= and EnvironmentFile= point at the built binary and the
//   shipped env file), and `systemd-analyze security --offline=yes` rates
//   its exposure at most 2.0 ("OK");
// - the settings that matter for Tidings hold: stop timeout above the
//   server's shutdown timeout, open files above its connection limit,
//   every TIDINGS_* name a real option (from `tidings --help`);
// - ExecStart= with exactly the unit's Environment= and EnvironmentFile=
//   starts the server (listen address and Redis URL rewritten to the
//   test's), under the unit's own restrictions applied without systemd
//   (lib/hardened_exec.py: unprivileged uid, empty capability bounding
//   set, no_new_privs, MemoryDenyWriteExecute, the SystemCallFilter=
//   allow list, RestrictAddressFamilies=, LimitNOFILE=): /healthz,
//   /readyz, an ingest 202 with the file's token, SIGTERM exits 0;
// - and those restrictions bite: a JIT (node) dies under the same
//   MemoryDenyWriteExecute, a @resources syscall fails under the same filter.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync, chmodSync, copyFileSync, existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { REPO_ROOT, SERVER_BIN, E2E_DIR, httpGet, ingest, payment, uid, withTimeout } from "./lib/harness.mjs";
import { startRedis, freePort, makeTmp, removeTmp, run } from "./lib/cluster.mjs";
import { tidingsOptions } from "./lib/deploy.mjs";

const UNIT = path.join(REPO_ROOT, "deploy/systemd/tidings.service");
const ENV_FILE = path.join(REPO_ROOT, "deploy/systemd/tidings.env");
const SYSTEMD_ANALYZE = process.env.TIDINGS_SYSTEMD_ANALYZE ?? "/usr/bin/systemd-analyze";
const PYTHON = existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
const LAUNCHER = path.join(E2E_DIR, "lib/hardened_exec.py");
const NOBODY = 65534;

/** A unit file as [{ section, key, value }] in file order (comments and blank lines dropped). */
function parseUnit(text) {
  const out = [];
  let section = null;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith(";")) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) { section = sec[1]; continue; }
    const i = line.indexOf("=");
    assert.ok(i > 0, `not a unit line: ${raw}`);
    out.push({ section, key: line.slice(0, i).trim(), value: line.slice(i + 1).trim() });
  }
  return out;
}

/** Splits a command line the way systemd does for ExecStart= (whitespace, "..." and '...'). */
function splitCommand(s) {
  const words = [];
  const re = /"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+)/g;
  for (const m of s.matchAll(re)) words.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, "$1") : m[2] ?? m[3]);
  return words;
}

/** An EnvironmentFile=: KEY=VALUE lines, # and ; comments, optional quotes. */
function parseEnvFile(text) {
  const env = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith(";")) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    assert.ok(m, `not an environment assignment: ${raw}`);
    env[m[1]] = m[2].replace(/^"(.*)"$/, "$1").replace(/^'(.*)'$/, "$1");
  }
  return env;
}

/** Every syscall of a systemd syscall group (nested groups expanded), via systemd-analyze. */
async function syscallGroup(name, seen = new Set()) {
  if (seen.has(name)) return [];
  seen.add(name);
  const r = await run(SYSTEMD_ANALYZE, ["syscall-filter", name], 10000);
  assert.equal(r.code, 0, `systemd-analyze syscall-filter ${name}: ${r.stderr}`);
  const out = [];
  for (const l of r.stdout.split("\n").slice(1)) {
    const w = l.trim();
    if (!w || w.startsWith("#")) continue;
    if (w.startsWith("@")) out.push(...await syscallGroup(w, seen));
    else out.push(w);
  }
  return out;
}

/** The allow list that the unit's SystemCallFilter= lines make (systemd's rules: the first without ~ allows, ~ removes). */
async function allowedSyscalls(filters) {
  let allowed = null;
  for (const f of filters) {
    const deny = f.startsWith("~");
    const names = f.replace(/^~/, "").split(/\s+/).filter(Boolean);
    const set = new Set();
    for (const n of names) for (const s of n.startsWith("@") ? await syscallGroup(n) : [n]) set.add(s);
    if (allowed === null) {
      assert.ok(!deny, "the first SystemCallFilter= is an allow list");
      allowed = set;
    } else if (deny) {
      for (const s of set) allowed.delete(s);
    } else {
      for (const s of set) allowed.add(s);
    }
  }
  return [...allowed].sort();
}

describe("systemd unit (deploy/systemd/tidings.service + tidings.env)", () => {
  let unit;
  let service;
  let envFromFile;
  let options;
  let dir;
  let redis;
  const children = [];
  const one = (key) => {
    const v = service.filter((e) => e.key === key);
    assert.ok(v.length <= 1, `${key}= is set once`);
    return v[0]?.value;
  };

  before(async () => {
    unit = parseUnit(readFileSync(UNIT, "utf8"));
    service = unit.filter((e) => e.section === "Service");
    envFromFile = parseEnvFile(readFileSync(ENV_FILE, "utf8"));
    options = await tidingsOptions();
    dir = makeTmp("systemd");
  });
  after(async () => {
    for (const c of children) {
      try { c.kill("SIGKILL"); } catch { /* gone */ }
    }
    await redis?.stop();
    if (dir) removeTmp(dir);
  });

  /** A copy of the unit whose ExecStart= runs the built binary and whose EnvironmentFile= is the shipped one. */
  function unitCopy() {
    const text = readFileSync(UNIT, "utf8")
      .replace(/^ExecStart=\S+/m, `ExecStart=${SERVER_BIN}`)
      .replace(/^EnvironmentFile=(-?)\S+/m, `EnvironmentFile=$1${ENV_FILE}`);
    assert.notEqual(text, readFileSync(UNIT, "utf8"));
    const file = path.join(dir, "tidings.service");
    writeFileSync(file, text);
    return file;
  }

  test("systemd-analyze verify prints nothing (no warning, no error)", async () => {
    const r = await run(SYSTEMD_ANALYZE, ["verify", unitCopy()], 30000);
    assert.equal(`${r.stdout}${r.stderr}`, "", `systemd-analyze verify said:\n${r.stdout}${r.stderr}`);
    assert.equal(r.code, 0);
  });

  test("systemd-analyze security --offline=yes: overall exposure at most 2.0, OK", async (t) => {
    const help = await run(SYSTEMD_ANALYZE, ["security", "--help"], 10000);
    if (!/--offline/.test(help.stdout)) {
      t.skip("this systemd-analyze has no `security --offline` (systemd < 250)");
      return;
    }
    const r = await run(SYSTEMD_ANALYZE, ["security", "--offline=yes", "--threshold=20", "--no-pager", unitCopy()], 30000);
    const m = /Overall exposure level for tidings\.service: (\d+\.\d+) (\S+)/.exec(r.stdout);
    assert.ok(m, `no overall exposure in:\n${r.stdout}${r.stderr}`);
    t.diagnostic(`exposure ${m[1]} ${m[2]}`);
    assert.ok(Number(m[1]) <= 2.0, `exposure ${m[1]} ${m[2]} is above 2.0:\n${r.stdout}`);
    assert.equal(m[2], "OK");
    assert.equal(r.code, 0, "within --threshold=20");
  });

  test("the settings Tidings needs: stop timeout above --shutdown-timeout, open files above --max-connections, real option names, hardening", async () => {
    // Every TIDINGS_* name in the env file, commented-out ones included, and
    // in Environment=, is an option of the binary.
    const known = new Set([...options.values()].map((o) => o.env).filter(Boolean));
    const named = [...readFileSync(ENV_FILE, "utf8").matchAll(/^#?\s*(TIDINGS_[A-Z0-9_]+)=/gm)].map((m) => m[1]);
    const fromUnit = service.filter((e) => e.key === "Environment")
      .flatMap((e) => splitCommand(e.value)).map((a) => a.split("=")[0]);
    assert.ok(named.length >= 4 && fromUnit.length >= 1);
    for (const n of [...named, ...fromUnit]) assert.ok(known.has(n), `${n} is not an option of tidings (tidings --help)`);

    const env = { ...envFromFile, ...Object.fromEntries(service.filter((e) => e.key === "Environment")
      .flatMap((e) => splitCommand(e.value)).map((a) => [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)])) };
    const argv = splitCommand(one("ExecStart"));
    const optionValue = (name) => {
      const i = argv.indexOf(`--${name}`);
      if (i >= 0) return argv[i + 1];
      const eq = argv.find((a) => a.startsWith(`--${name}=`));
      if (eq) return eq.split("=")[1];
      return env[options.get(name).env] ?? options.get(name).default;
    };
    const shutdown = Number(optionValue("shutdown-timeout"));
    const stop = Number(/^(\d+)s?$/.exec(one("TimeoutStopSec"))?.[1]);
    assert.ok(shutdown > 0 && stop > 0, `TimeoutStopSec=${one("TimeoutStopSec")}, shutdown timeout ${shutdown}`);
    assert.ok(stop >= shutdown + 5, `TimeoutStopSec (${stop} s) must exceed --shutdown-timeout (${shutdown} s) by a margin: else systemd SIGKILLs a draining node`);
    assert.equal(one("KillSignal"), "SIGTERM");
    assert.equal(one("Restart"), "on-failure");
    const nofile = Number(one("LimitNOFILE"));
    const maxConn = Number(optionValue("max-connections"));
    assert.ok(nofile >= maxConn + 1000, `LimitNOFILE=${nofile} must exceed --max-connections (${maxConn}) + 1000`);

    assert.ok(one("DynamicUser") === "yes" || (one("User") && one("User") !== "root"), "a dedicated user");
    for (const [k, v] of [["NoNewPrivileges", "yes"], ["ProtectSystem", "strict"], ["ProtectHome", "yes"],
      ["PrivateTmp", "yes"], ["PrivateDevices", "yes"], ["ProtectKernelTunables", "yes"],
      ["ProtectKernelModules", "yes"], ["ProtectKernelLogs", "yes"], ["ProtectControlGroups", "yes"],
      ["MemoryDenyWriteExecute", "yes"], ["CapabilityBoundingSet", ""]]) {
      assert.equal(one(k), v, `${k}=${v}`);
    }
    const families = one("RestrictAddressFamilies").split(/\s+/);
    for (const f of ["AF_INET", "AF_INET6"]) assert.ok(families.includes(f), `RestrictAddressFamilies= allows ${f}`);
    assert.equal(service.find((e) => e.key === "SystemCallFilter")?.value, "@system-service");
  });

  /** The launcher arguments that apply the unit's restrictions (see lib/hardened_exec.py). */
  async function hardening() {
    const syscalls = await allowedSyscalls(service.filter((e) => e.key === "SystemCallFilter").map((e) => e.value));
    assert.ok(syscalls.length > 200, `the allow list expands the unit's groups (${syscalls.length} syscalls)`);
    const file = path.join(dir, "syscalls.txt");
    writeFileSync(file, `${syscalls.join("\n")}\n`);
    chmodSync(dir, 0o755);
    const errno = os.constants.errno[one("SystemCallErrorNumber") ?? "EPERM"];
    assert.ok(errno > 0);
    // Each restriction only where the unit asks for it.
    const args = [LAUNCHER];
    if (one("LimitNOFILE")) args.push("--nofile", one("LimitNOFILE"));
    if (one("CapabilityBoundingSet") === "") args.push("--drop-caps");
    if (one("DynamicUser") === "yes" || one("User")) args.push("--uid", String(NOBODY), "--gid", String(NOBODY));
    if (one("MemoryDenyWriteExecute") === "yes") args.push("--mdwe");
    args.push("--syscalls", file, "--errno", String(errno));
    if (one("RestrictAddressFamilies")) args.push("--families", one("RestrictAddressFamilies").split(/\s+/).join(","));
    return [...args, "--"];
  }

  /** Spawns `argv` with exactly `env`, in the (world-readable) temp dir; resolves {proc, out(), exited}. */
  function spawnWith(argv, env) {
    const proc = spawn(argv[0], argv.slice(1), { env, cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    children.push(proc);
    let out = "";
    proc.stdout.setEncoding("utf8").on("data", (d) => { out += d; });
    proc.stderr.setEncoding("utf8").on("data", (d) => { out += d; });
    const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
    return { proc, out: () => out, exited };
  }

  test("ExecStart= with the unit's Environment= and EnvironmentFile=, under the unit's restrictions, serves; SIGTERM exits 0", async (t) => {
    if (os.arch() !== "x64") {
      t.skip("lib/hardened_exec.py builds an x86_64 seccomp filter");
      return;
    }
    redis = await startRedis();
    const port = await freePort();
    // Exactly the unit's variables (as systemd passes them, with a PATH),
    // the listen address and the Redis address rewritten to the test's.
    const env = { PATH: "/usr/bin:/bin", ...envFromFile };
    for (const e of service.filter((x) => x.key === "Environment")) {
      for (const a of splitCommand(e.value)) env[a.slice(0, a.indexOf("="))] = a.slice(a.indexOf("=") + 1);
    }
    assert.ok(env.TIDINGS_LISTEN && env.TIDINGS_REDIS_URL && env.TIDINGS_INGEST_TOKEN, "the env file sets listen, Redis and the ingest token");
    env.TIDINGS_LISTEN = `127.0.0.1:${port}`;
    env.TIDINGS_REDIS_URL = redis.url;
    const argv = splitCommand(one("ExecStart"));
    assert.equal(argv[0], "/usr/local/bin/tidings", "the unit runs the installed binary");
    // Installed as the unit expects (mode 0755 where any user may run it:
    // the checkout itself may sit in a directory the service user cannot enter).
    argv[0] = path.join(dir, "tidings");
    copyFileSync(SERVER_BIN, argv[0]);
    chmodSync(argv[0], 0o755);

    const server = spawnWith([PYTHON, ...await hardening(), ...argv], env);
    await withTimeout(new Promise((resolve, reject) => {
      const check = () => {
        if (/listening on/.test(server.out())) resolve();
      };
      server.proc.stdout.on("data", check);
      server.proc.stderr.on("data", check);
      server.exited.then((e) => reject(new Error(`the server exited (${JSON.stringify(e)}):\n${server.out()}`)));
      check();
    }), 20000, "the server's `listening on` line");
    // The process is the server itself (the launcher exec'd it), restricted.
    const status = readFileSync(`/proc/${server.proc.pid}/status`, "utf8");
    assert.match(readFileSync(`/proc/${server.proc.pid}/cmdline`, "utf8"), /tidings/);
    assert.match(status, new RegExp(`^Uid:\\s+${NOBODY}\\s+${NOBODY}\\s+${NOBODY}\\s+${NOBODY}$`, "m"));
    assert.match(status, /^CapBnd:\s+0+$/m);
    assert.match(status, /^CapEff:\s+0+$/m);
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    assert.match(status, /^Seccomp:\s+2$/m);
    t.diagnostic(/^hardened_exec: RLIMIT_NOFILE.*$/m.exec(server.out())?.[0] ?? "");
    assert.match(server.out(), /"level":"INFO"/, "the unit's TIDINGS_LOG_FORMAT=json took effect");

    const url = `http://127.0.0.1:${port}`;
    assert.equal((await httpGet(`${url}/healthz`)).status, 200);
    const ready = await httpGet(`${url}/readyz`);
    assert.equal(ready.status, 200, ready.text);
    const id = uid("systemd");
    const ok = await ingest(url, payment(id), { token: envFromFile.TIDINGS_INGEST_TOKEN });
    assert.equal(ok.status, 202, `ingest with the env file's token: ${ok.text}`);
    assert.equal((await ingest(url, payment(id), { token: "test-token" })).status, 401, "only the env file's token");
    assert.ok((await redis.cli("exists", `tidings:{${id}}:meta`)) === "1", "the payment is in the test's Redis (TIDINGS_REDIS_URL)");

    server.proc.kill(one("KillSignal"));
    const stop = Number(/^(\d+)/.exec(one("TimeoutStopSec"))[1]);
    const exit = await withTimeout(server.exited, stop * 1000, `exit within TimeoutStopSec (${stop} s)`);
    assert.deepEqual(exit, { code: 0, signal: null }, `exit 0 at SIGTERM:\n${server.out().slice(-2000)}`);
    assert.doesNotMatch(server.out(), /"level":"(ERROR|WARN)"/, "no warning or error under the restrictions");
  });

  test("the restrictions bite: a JIT (node) dies under MemoryDenyWriteExecute, setpriority fails under the syscall filter", async (t) => {
    if (os.arch() !== "x64") {
      t.skip("lib/hardened_exec.py builds an x86_64 seccomp filter");
      return;
    }
    const h = await hardening();
    assert.ok(h.includes("--mdwe"));
    const js = ["-e", "let s = 0; for (let i = 0; i < 1e6; i++) s += Math.sqrt(i); console.log(s > 0)"];
    // The same restrictions but MemoryDenyWriteExecute: node runs...
    const ok = spawnWith([PYTHON, ...h.filter((a) => a !== "--mdwe"), process.execPath, ...js], { PATH: "/usr/bin:/bin" });
    assert.deepEqual(await withTimeout(ok.exited, 20000, "node without MDWE"), { code: 0, signal: null }, ok.out());
    assert.match(ok.out(), /true/);
    // ...and with it, it dies: it is MDWE that stops it.
    const jit = spawnWith([PYTHON, ...h, process.execPath, ...js], { PATH: "/usr/bin:/bin" });
    const je = await withTimeout(jit.exited, 20000, "node under the restrictions");
    assert.notDeepEqual(je, { code: 0, signal: null }, `node (V8's JIT maps writable+executable memory) must fail:\n${jit.out()}`);
    const nice = spawnWith([PYTHON, ...h, "/usr/bin/nice", "-n", "1", "/bin/true"], { PATH: "/usr/bin:/bin" });
    await withTimeout(nice.exited, 10000, "nice under the restrictions");
    assert.match(nice.out(), /cannot set niceness: Operation not permitted/, `setpriority (in @resources) is refused with EPERM:\n${nice.out()}`);
    // Without the filter the same call works: it is the filter that refused it.
    const free = spawnWith([PYTHON, LAUNCHER, "--uid", String(NOBODY), "--gid", String(NOBODY), "--", "/usr/bin/nice", "-n", "1", "/bin/true"], { PATH: "/usr/bin:/bin" });
    assert.deepEqual(await withTimeout(free.exited, 10000, "nice"), { code: 0, signal: null });
    assert.doesNotMatch(free.out(), /cannot set niceness/);
  });
});
