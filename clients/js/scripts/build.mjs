// Builds dist/: ESM and CommonJS for bundlers and Node (socket.io-client
// stays a dependency), a self-contained browser bundle (IIFE, global
// `Tidings`, and an ES module) with socket.io-client inside, and the type
// declarations (tsc).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
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
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-p", root], { stdio: "inherit" });
}
