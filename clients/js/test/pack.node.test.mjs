// The package as a user installs it from a clone (README.md, "Installing
// from a clone"): `npm pack` here (its prepack builds dist/), `npm install`
// of the tarball in an empty project elsewhere (socket.io-client comes from
// the registry, as it would for the user), then that project imports it as
// an ES module and requires it as CommonJS, type-checks against its
// declarations, and receives a payment from a real server through it. And
// `npm pack` before `npm ci` says what to run instead of a stack trace.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startNode, ingestOk, payment, uid } from "./lib/env.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"));
const npm = (args, cwd, timeout = 180000) =>
  execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, encoding: "utf8", timeout });

describe("npm pack: the package a user installs", () => {
  let dir;
  let tarball;
  let node;
  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "tidings-client-pack-"));
    // As the README says (its prepack rebuilds dist/; with --json, npm prints the scripts' output on stderr).
    const out = JSON.parse(npm(["pack", "--json", "--pack-destination", dir], root));
    tarball = out[0];
    const app = path.join(dir, "app");
    execFileSync("mkdir", ["-p", app]);
    writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", private: true }));
    npm(["install", path.join(dir, tarball.filename)], app);
    node = await startNode();
  });
  after(async () => {
    await node?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("holds the builds, the declarations and the README, and nothing of the sources or tests", () => {
    const files = tarball.files.map((f) => f.path).sort();
    for (const f of ["package.json", "README.md", "dist/index.js", "dist/index.cjs", "dist/index.d.ts",
      "dist/tidings-client.browser.js", "dist/tidings-client.browser.mjs"]) {
      assert.ok(files.includes(f), `${f} in the tarball (${files.join(", ")})`);
    }
    assert.deepEqual(files.filter((f) => /^(src|test|scripts|node_modules)\//.test(f)), [], "no sources, tests or scripts");
    assert.deepEqual(files.filter((f) => f !== "package.json" && f !== "README.md" && !f.startsWith("dist/")), [],
      "only package.json, README.md and dist/");
    assert.equal(tarball.name, "tidings-client");
    assert.equal(tarball.version, pkg.version);
  });

  test("installed elsewhere, with socket.io-client as its one dependency", () => {
    const app = path.join(dir, "app");
    const installed = JSON.parse(readFileSync(path.join(app, "node_modules/tidings-client/package.json"), "utf8"));
    assert.deepEqual(Object.keys(installed.dependencies), ["socket.io-client"]);
    const req = createRequire(path.join(app, "index.js"));
    assert.ok(req.resolve("socket.io-client"), "socket.io-client installed with it");
    const out = execFileSync(process.execPath, ["-e",
      "const t = require('tidings-client'); console.log(typeof t.connect, typeof t.TidingsError)"],
    { cwd: app, encoding: "utf8", timeout: 20000 });
    assert.equal(out.trim(), "function function", "require() of the CommonJS build");
  });

  test("type-checks a user's TypeScript against the declarations, and rejects a misuse", () => {
    const app = path.join(dir, "app");
    const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
    writeFileSync(path.join(app, "tsconfig.json"), JSON.stringify({
      compilerOptions: { module: "node16", moduleResolution: "node16", strict: true, noEmit: true, skipLibCheck: false, types: [], lib: ["ES2021", "DOM"] },
      files: ["use.mts"],
    }));
    writeFileSync(path.join(app, "use.mts"), [
      'import { connect, TidingsError, type PaymentEnvelope, type Gap, type ErrorCode } from "tidings-client";',
      'const client = connect("http://localhost:3000", { reconnect: { maxAttempts: 5 } });',
      'const sub = client.subscribe("sub-1");',
      'const off: () => void = sub.on("payment", (p: PaymentEnvelope) => { const s: number = p.seq; void s; });',
      'sub.on("gap", (g: Gap) => { const from: number = g.fromSeq; void from; });',
      'sub.on("error", (e: TidingsError) => { const c: ErrorCode = e.code; void c; });',
      'off();',
      // An account stream, filtered: the stream's envelope fields and the filter are typed.
      'const failed: Filter = { status: ["failed"] };',
      'const merchant = client.subscribe("merchant-42:*", { filter: failed });',
      'merchant.on("payment", (p: PaymentEnvelope) => { const s: string | undefined = p.stream; const src: PaymentSource | undefined = p.source; const prev: number | undefined = p.prevSeq; void s; void src; void prev; });',
      'merchant.setFilter(null);',
      'const isStream: boolean = merchant.stream; void isStream;',
      'void merchant.history({ status: ["executed", "pending"], limit: 10 }).then((page) => { const e: StreamPaymentEnvelope = page.data[0] as StreamPaymentEnvelope; void e.source.seq; });',
      '',
    ].join("\n").replace("type ErrorCode }", "type ErrorCode, type Filter, type PaymentSource, type StreamPaymentEnvelope }"));
    execFileSync(process.execPath, [tsc, "-p", app], { cwd: app, encoding: "utf8", timeout: 120000 });
    // A status the contract does not have is a type error.
    writeFileSync(path.join(app, "use.mts"), 'import { connect } from "tidings-client";\nconnect("http://x").subscribe("m:*", { filter: { status: ["done"] } });\n');
    assert.throws(() => execFileSync(process.execPath, [tsc, "-p", app], { cwd: app, encoding: "utf8", timeout: 120000, stdio: "pipe" }),
      (err) => /"done"|not assignable/.test(String(err.stdout)), "a bad filter status is a type error");
    // The same project with a wrong option type must not compile: the declarations are checked, not `any`.
    writeFileSync(path.join(app, "use.mts"), 'import { connect } from "tidings-client";\nconnect("http://x", { reconnect: { maxAttempts: "five" } });\n');
    assert.throws(() => execFileSync(process.execPath, [tsc, "-p", app], { cwd: app, encoding: "utf8", timeout: 120000, stdio: "pipe" }),
      (err) => /maxAttempts|not assignable/.test(String(err.stdout)), "a misuse is a type error");
  });

  test("an installed project receives a payment from a real server", async () => {
    const app = path.join(dir, "app");
    const id = uid("pack");
    writeFileSync(path.join(app, "watch.mjs"), [
      'import { connect } from "tidings-client";',
      `const client = connect(${JSON.stringify(node.url)}, { reconnect: { initialDelayMs: 50, maxDelayMs: 500 } });`,
      `const sub = client.subscribe(${JSON.stringify(id)});`,
      'sub.on("subscribed", () => console.log("SUBSCRIBED"));',
      'sub.on("payment", async (p) => { console.log("PAYMENT " + p.id + " " + p.seq); await client.close(); });',
      'setTimeout(() => { console.log("TIMEOUT"); process.exit(2); }, 20000).unref();',
      '',
    ].join("\n"));
    const { spawn } = await import("node:child_process");
    const child = spawn(process.execPath, ["watch.mjs"], { cwd: app, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    const exited = new Promise((resolve) => child.on("exit", resolve));
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no ack within 20 s: ${out}`)), 20000);
      child.stdout.on("data", (d) => { out += d; if (out.includes("SUBSCRIBED")) { clearTimeout(t); resolve(); } });
    });
    const [accepted] = await ingestOk(node.url, payment(id));
    const code = await exited;
    assert.match(out, new RegExp(`PAYMENT ${accepted.id} ${accepted.seq}`), out);
    assert.equal(code, 0, "closed and exited by itself");
  });
});

describe("npm pack before npm ci (a fresh clone)", () => {
  let dir;
  before(() => {
    // The package as a clone has it: everything git tracks here, no node_modules, no dist/.
    dir = mkdtempSync(path.join(os.tmpdir(), "tidings-client-clone-"));
    for (const f of ["package.json", "package-lock.json", "tsconfig.json", "README.md", "scripts", "src"]) {
      cpSync(path.join(root, f), path.join(dir, f), { recursive: true });
    }
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("fails, saying to run npm ci first, and writes no tarball", () => {
    const r = spawnSync("npm", ["pack", "--no-audit", "--no-fund"], { cwd: dir, encoding: "utf8", timeout: 120000 });
    const output = `${r.stdout}\n${r.stderr}`;
    assert.notEqual(r.status, 0, `npm pack without the devDependencies must fail:\n${output}`);
    assert.match(output, /cannot build dist\/: esbuild and typescript \(devDependencies\) not installed/, output);
    assert.match(output, /npm ci && npm pack/, output);
    assert.doesNotMatch(output, /ERR_MODULE_NOT_FOUND|\n\s+at /, `a message, not a stack trace:\n${output}`);
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith(".tgz")), [], "no tarball");
    assert.ok(!existsSync(path.join(dir, "dist")), "no dist/");
  });
});
