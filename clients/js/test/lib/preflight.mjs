// `npm test` runs this first: it checks that what the tests need is there
// (the server binary, this package's devDependencies, redis-server, nginx,
// Chromium) and, when something is not, says what to do, once, instead of
// every test failing on its own. Exit status 1 then.
//
//   node test/lib/preflight.mjs

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { serverBinProblem } from "./harness.mjs";
import { REDIS_SERVER, REDIS_CLI, NGINX, NGINX_CONF } from "./cluster.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(import.meta.url);
const CHROMIUM = process.env.TIDINGS_CHROMIUM ?? "/usr/bin/chromium";

const problems = [];
const server = serverBinProblem();
if (server) problems.push(server);

const notInstalled = ["esbuild", "typescript", "playwright-core", "socket.io-client"].filter((name) => {
  try { require.resolve(`${name}/package.json`); return false; } catch { return true; }
});
if (notInstalled.length > 0) {
  problems.push(`${notInstalled.join(", ")} not installed in ${root}: run \`npm ci\` there first.`);
}

for (const [file, fix] of [
  [REDIS_SERVER, "install the Debian package redis-server, or set TIDINGS_REDIS_SERVER"],
  [REDIS_CLI, "install the Debian package redis-tools, or set TIDINGS_REDIS_CLI"],
  [NGINX, "install the Debian package nginx, or set TIDINGS_NGINX"],
  [CHROMIUM, "install the Debian package chromium, or set TIDINGS_CHROMIUM"],
  [NGINX_CONF, "the tests use the repository's deploy/nginx/tidings.conf (TIDINGS_NGINX_CONF overrides it)"],
]) {
  if (!existsSync(file)) problems.push(`${file} not found: ${fix}.`);
}

if (problems.length > 0) {
  console.error(`tidings-client tests: cannot run yet:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
  process.exit(1);
}
