// Shows that the dashboard's test bites: each mutation below puts a defect
// into app.js (the filter toggle not resubscribing, the view not filtering,
// nothing read back, the gap handler gone, ...), and runs the test, which
// must fail. app.js is restored afterwards, whatever happens.
//
//   TIDINGS_BIN=... node scripts/prove-mutations.mjs [name ...]

import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MUTATIONS = [
  { name: "toggle-does-not-resubscribe", from: "  sub.setFilter(FILTERS[name]);\n", to: "" },
  { name: "view-not-filtered", from: "const shown = (p) => filter === null || filter.status.includes(p.data.status);", to: "const shown = () => true;" },
  { name: "nothing-read-back", from: "  if (widening) void readBack(from);\n", to: "" },
  { name: "no-new-groups", from: "  const list = groups.get(tid) ?? [];", to: "  if (!groups.has(tid) && groups.size >= 2) return;\n  const list = groups.get(tid) ?? [];" },
  { name: "ordered-by-seq-alone", from: "return eb - ea || b.seq - a.seq;", to: "return b.seq - a.seq;" },
  { name: "gap-not-shown", from: "sub.on(\"gap\", showGap);", to: "" },
  { name: "indicator-never-reconnecting", from: "setConnection(\"reconnecting\", \"reconnecting…\")", to: "setConnection(\"connected\", \"connected\")" },
];

const file = path.join(root, "app.js");
const only = process.argv.slice(2);
const original = readFileSync(file, "utf8");
const survived = [];
for (const m of MUTATIONS.filter((x) => only.length === 0 || only.includes(x.name))) {
  if (!original.includes(m.from)) throw new Error(`${m.name}: the text to mutate is not in app.js any more`);
  try {
    writeFileSync(file, original.replace(m.from, m.to));
    const r = spawnSync(process.execPath, ["--test", "--test-timeout=180000", "test/dashboard.test.mjs"], { cwd: root, encoding: "utf8", timeout: 600000 });
    writeFileSync(path.join(os.tmpdir(), `tidings-dashboard-mutation-${m.name}.log`), r.stdout + r.stderr);
    const failed = Number((r.stdout.match(/^# fail (\d+)/m) ?? [])[1] ?? 0);
    const names = [...r.stdout.matchAll(/^not ok \d+ - (.*)$/gm)].map((x) => x[1]);
    if (r.status === 0 || failed === 0) survived.push(m.name);
    console.log(`${r.status !== 0 && failed > 0 ? "BITTEN  " : "SURVIVED"} ${m.name}: ${failed} failed\n  ${names.join("\n  ")}`);
  } finally {
    writeFileSync(file, original);
  }
}
if (survived.length) {
  console.error(`survived: ${survived.join(", ")}`);
  process.exit(1);
}
console.log("every mutation bitten");
