#!/usr/bin/env node
// Long or reproducing runs of the checker:
//
//   node checker/cli.mjs --variant redis|cluster|memory|cluster-replicas|sentinel|all --seed N --duration SECONDS --sockets N [--bin PATH] [--runs K]
//
// Prints a summary per run (and the violations with traces); exits 1 on any
// violation or infrastructure error. --runs K runs K consecutive seeds
// starting at --seed (default: a random seed).

import path from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    variant: { type: "string", default: "redis" },
    seed: { type: "string" },
    duration: { type: "string" },
    sockets: { type: "string" },
    bin: { type: "string" },
    runs: { type: "string", default: "1" },
    examples: { type: "string", default: "3" },
    help: { type: "boolean", short: "h" },
    // Calibration (a run that should be clean even against a flawed server):
    "no-faults": { type: "boolean" }, // no fault lane
    "no-tiny-buffer": { type: "boolean" }, // no node with --delivery-buffer 2
    "no-unsub-disconnect": { type: "boolean" }, // clients never unsubscribe-then-disconnect
    "no-streams": { type: "boolean" }, // no --stream-separator, no stream subscribers, no filters (a server from before issue 18)
    // Must fail: the sentinel variant's nodes get the first master's URL instead of the sentinels'.
    "sentinel-direct": { type: "boolean" },
  },
});
if (values.help) {
  console.log("usage: node checker/cli.mjs --variant redis|cluster|memory|cluster-replicas|sentinel|all [--seed N] [--duration S] [--sockets N] [--bin PATH] [--runs K] [--no-faults] [--no-tiny-buffer] [--no-unsub-disconnect] [--no-streams] [--sentinel-direct]");
  process.exit(0);
}
// harness.mjs reads TIDINGS_BIN when it is imported.
if (values.bin) process.env.TIDINGS_BIN = path.resolve(values.bin);
const { runVariant, randomSeed, formatFigures, DEFAULT_CFG, VARIANTS } = await import("./run.mjs");
const cfg = {};
if (values["no-faults"]) cfg.faults = false;
if (values["no-tiny-buffer"]) cfg.tinyBuffer = 0;
if (values["sentinel-direct"]) cfg.sentinelDirect = true;
if (values["no-streams"]) cfg.streams = false;
if (values["no-unsub-disconnect"]) { cfg.opWeights = { ...DEFAULT_CFG.opWeights, unsubDisconnect: 0 }; cfg.waves = false; }
const { formatReport } = await import("./oracle.mjs");

const variants = values.variant === "all" ? VARIANTS : values.variant.split(",");
const first = values.seed !== undefined ? Number(values.seed) : await randomSeed();
let failed = false;
for (let k = 0; k < Number(values.runs); k++) {
  const seed = first + k;
  for (const variant of variants) {
    const result = await runVariant({
      variant, seed,
      duration: values.duration !== undefined ? Number(values.duration) : undefined,
      sockets: values.sockets !== undefined ? Number(values.sockets) : undefined,
      cfg,
      log: (m) => console.error(m),
    });
    console.log(formatFigures(result));
    if (result.violationCount > 0) {
      failed = true;
      console.log(formatReport(result, { examplesPerKind: Number(values.examples) }));
    }
    if (result.infraErrors.length) {
      failed = true;
      console.log(`infrastructure errors (the checker could not do what it meant to):\n  ${result.infraErrors.join("\n  ")}`);
      if (result.logDir) console.log(`logs: ${result.logDir}`);
    }
  }
}
process.exit(failed ? 1 : 0);
