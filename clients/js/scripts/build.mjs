// Builds dist/: ESM and CommonJS for bundlers and Node (socket.io-client
// stays a dependency), a self-contained browser bundle (IIFE, global
// `Tidings`, and an ES module) with socket.io-client inside, and the type
// declarations (tsc).
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);

// The build tools are devDependencies: on a fresh clone (or `npm pack`, whose
// prepack runs this, before `npm ci`) they are not there yet. Say what to run.
const missing = ["esbuild", "typescript"].filter((name) => {
  try { require.resolve(`${name}/package.json`); return false; } catch { return true; }
});
if (missing.length > 0) {
  console.error([
    `tidings-client: cannot build dist/: ${missing.join(" and ")} (devDependencies) not installed in ${root}.`,
    "Install them first, then build or pack again:",
    `  cd ${root} && npm ci && npm pack`,
    "(README.md, \"Installing from a clone\", says how to install the tarball in your project.)",
  ].join("\n"));
  process.exit(1);
}
const { build } = await import("esbuild");
const dist = path.join(root, "dist");
const entry = path.join(root, "src/index.ts");
rmSync(dist, { recursive: true, force: true });

const common = { entryPoints: [entry], bundle: true, target: "es2020", sourcemap: true, logLevel: "warning" };
// fileStorage imports node:fs/promises lazily; browsers never load it.
const node = { ...common, platform: "neutral", external: ["socket.io-client", "node:*"] };
await Promise.all([
  build({ ...node, format: "esm", outfile: path.join(dist, "index.js") }),
  build({ ...node, format: "cjs", outfile: path.join(dist, "index.cjs") }),
  build({ ...common, platform: "browser", format: "iife", globalName: "Tidings", minify: true,
    external: ["node:*"], outfile: path.join(dist, "tidings-client.browser.js") }),
  build({ ...common, platform: "browser", format: "esm", minify: true,
    external: ["node:*"], outfile: path.join(dist, "tidings-client.browser.mjs") }),
]);
// `--no-types`: JavaScript only (scripts/prove-mutations.mjs builds defects that need not type-check).
if (!process.argv.includes("--no-types")) {
  const tsc = require.resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-p", root], { stdio: "inherit" });
}
