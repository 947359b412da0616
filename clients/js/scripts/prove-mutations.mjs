// Shows that the tests bite: each mutation below puts a defect into the SDK's
// source (no dedupe, no since on reconnect, HISTORY_TRUNCATED ignored, ...),
// rebuilds dist/, and runs the tests that guard it, which must fail. The
// source is restored (and dist/ rebuilt) afterwards, whatever happens.
//
//   TIDINGS_BIN=... node scripts/prove-mutations.mjs [name ...]

import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const NODE_TESTS = ["test/sdk.node.test.mjs"];
const STREAM_TESTS = ["test/streams.node.test.mjs"];
const BROWSER_TESTS = ["test/sdk.browser.test.mjs"];

const STORED = "this.last = (stored && stored.id !== null && parseEventId(stored.id)?.stream !== this.stream ? null : stored) ?? initial;";

const MUTATIONS = [
  {
    name: "no-dedupe", file: "src/subscription.ts",
    from: `      case "old":\n        return;`, to: `      case "old":\n        this.deliver(env);\n        return;`,
    tests: NODE_TESTS, pattern: "repeated|lost on the way",
  },
  {
    name: "no-since-on-reconnect", file: "src/subscription.ts",
    from: "const since = this.last?.id ?? undefined;", to: "const since = undefined as string | undefined;",
    tests: NODE_TESTS, pattern: "cut connection|process restart|SIGKILLed mid-stream|expired between",
  },
  {
    name: "no-since-on-reconnect (streams)", file: "src/subscription.ts",
    from: "const since = this.last?.id ?? undefined;", to: "const since = undefined as string | undefined;",
    tests: STREAM_TESTS, pattern: "cut connection|SIGKILLed",
  },
  {
    name: "no-since-on-reconnect (browser)", file: "src/subscription.ts",
    from: "const since = this.last?.id ?? undefined;", to: "const since = undefined as string | undefined;",
    tests: BROWSER_TESTS, pattern: "",
  },
  {
    // Without the warning the SDK still finds the gap, one backfill read later (the page says
    // `truncated`): the retention test checks that the warning alone did it, without a read.
    name: "history-truncated-ignored", file: "src/subscription.ts",
    from: "if (this.last !== null && this.gapFrom === null) this.gapFrom = this.last;", to: "",
    tests: NODE_TESTS, pattern: "sees a gap|no longer retains",
  },
  {
    name: "no-hole-recovery", file: "src/subscription.ts",
    from: "  private startRecovery(): void {\n", to: "  private startRecovery(): void {\n    return;\n",
    tests: NODE_TESTS, pattern: "lost on the way",
  },
  {
    name: "ahead-delivered-at-once (no holding back)", file: "src/subscription.ts",
    from: "      case \"ahead\":\n        this.hold(env);", to: "      case \"ahead\":\n        this.deliver(env);",
    tests: NODE_TESTS, pattern: "lost on the way",
  },
  {
    name: "storage-not-read", file: "src/subscription.ts",
    from: STORED, to: "this.last = initial;",
    tests: NODE_TESTS, pattern: "process restart|could not have issued",
  },
  {
    name: "storage-not-read (browser)", file: "src/subscription.ts",
    from: STORED, to: "this.last = initial;",
    tests: BROWSER_TESTS, pattern: "",
  },
  {
    // The SDK before streams: a hole filled by a resubscribe with since. A node answers that with the
    // ack alone when the socket holds the subscription and was handed the payment (a history that
    // existed before the subscribe): the hole is never filled.
    name: "hole-recovery-by-resubscribe", file: "src/subscription.ts",
    from: "    void this.readHistory();\n",
    to: "    if (this.last.id !== null) { this.recovering = false; this.state = \"subscribing\"; this.host.send(\"subscribe\", { trackingId: this.trackingId, since: this.last.id, ...(this.filter_ ? { filter: this.filter_ } : {}) }, this.onReply); } else void this.readHistory();\n",
    tests: [...NODE_TESTS, ...STREAM_TESTS], pattern: "lost on the way",
  },
  {
    // Gap detection ignoring prevSeq: a filtered subscription's payments taken as seq + 1 (the filter skips seqs).
    name: "prevSeq-ignored (seq + 1 expected)", file: "src/cursor.ts",
    from: "  if (c.prevSeq !== undefined) return c.prevSeq <= last.seq ? \"next\" : \"ahead\";\n", to: "",
    tests: STREAM_TESTS, pattern: "filtered|filter goes|setFilter|SIGKILLed",
  },
  {
    // Any later payment of a filtered subscription taken as the next: a lost one goes unnoticed.
    name: "prevSeq-not-checked (no gap for a filtered subscription)", file: "src/cursor.ts",
    from: "return c.prevSeq <= last.seq ? \"next\" : \"ahead\";", to: "return \"next\";",
    tests: STREAM_TESTS, pattern: "filtered stream",
  },
  {
    name: "stream-routed-by-trackingId", file: "src/client.ts",
    from: "typeof env?.stream === \"string\" ? env.stream : env?.data?.trackingId", to: "env?.data?.trackingId",
    tests: STREAM_TESTS, pattern: "",
  },
  {
    // The stream's cursor taken from source (the trackingId's id and seq): dedupe and gaps by the wrong history.
    name: "stream-cursor-by-source", file: "src/subscription.ts",
    from: "    this.last = cursorAt(env.id, env.seq);\n", to: "    this.last = cursorAt(env.source?.id ?? env.id, env.source?.seq ?? env.seq);\n",
    tests: STREAM_TESTS, pattern: "",
  },
  {
    name: "filter-not-sent-on-resubscribe", file: "src/subscription.ts",
    from: "if (this.filter_ !== null) payload.filter", to: "if (this.filter_ !== null && !since) payload.filter",
    tests: STREAM_TESTS, pattern: "filter goes|SIGKILLed",
  },
  {
    name: "setFilter-not-sent", file: "src/subscription.ts",
    from: "if (this.state === \"active\" || this.state === \"subscribing\") this.sendSubscribe();", to: "",
    tests: STREAM_TESTS, pattern: "setFilter",
  },
  {
    name: "refused-handshake-not-retried", file: "src/client.ts",
    from: "if (!this.socket.active && typeof this.auth === \"function\") this.retryLater();", to: "",
    tests: NODE_TESTS, pattern: "expired between",
  },
  {
    name: "unauthorized-untyped", file: "src/client.ts",
    from: "new TidingsError(\"UNAUTHORIZED\", err.message)", to: "new TidingsError(\"CONNECTION_ERROR\" as never, err.message)",
    tests: NODE_TESTS, pattern: "UNAUTHORIZED",
  },
  {
    name: "refusals-not-routed", file: "src/subscription.ts",
    from: "if (reply?.type === \"error\" && reply.data", to: "if (false && reply?.type === \"error\" && reply.data",
    tests: NODE_TESTS, pattern: "bad input|FORBIDDEN|could not have issued",
  },
  {
    name: "max-attempts-ignored", file: "src/client.ts",
    from: "      reconnectionAttempts: backoff.maxAttempts,\n", to: "",
    tests: NODE_TESTS, pattern: "bounded and configurable",
  },
  {
    name: "backoff-not-exponential", file: "src/client.ts",
    from: "      reconnectionDelayMax: backoff.maxDelayMs,", to: "      reconnectionDelayMax: backoff.initialDelayMs,",
    tests: NODE_TESTS, pattern: "bounded and configurable",
  },
];

const build = (...flags) => execFileSync(process.execPath, ["scripts/build.mjs", ...flags], { cwd: root, stdio: "inherit" });
const only = process.argv.slice(2);
const results = [];
for (const m of MUTATIONS.filter((x) => only.length === 0 || only.includes(x.name))) {
  const file = path.join(root, m.file);
  const original = readFileSync(file, "utf8");
  const edits = [{ from: m.from, to: m.to }, ...(m.also ?? [])];
  let mutated = original;
  for (const e of edits) {
    if (!mutated.includes(e.from)) throw new Error(`${m.name}: the text to mutate is not in ${m.file} any more`);
    mutated = mutated.replace(e.from, e.to);
  }
  try {
    writeFileSync(file, mutated);
    build("--no-types");
    const args = ["--test", "--test-concurrency=1", "--test-timeout=600000"];
    if (m.pattern) args.push(`--test-name-pattern=${m.pattern}`);
    const r = spawnSync(process.execPath, [...args, ...m.tests], { cwd: root, encoding: "utf8", timeout: 600000 });
    writeFileSync(path.join(os.tmpdir(), `tidings-sdk-mutation-${m.name.replace(/\W+/g, "-")}.log`), r.stdout + r.stderr);
    const failed = (r.stdout.match(/^# fail (\d+)/m) ?? [])[1];
    const passed = (r.stdout.match(/^# pass (\d+)/m) ?? [])[1];
    const names = [...r.stdout.matchAll(/^\s*not ok \d+ - (.*)$/gm)].map((x) => x[1]).filter((n) => !/^(one node|a 2-node|a one-slot|token mode|reconnection|browser bundle)/.test(n));
    results.push({ name: m.name, bitten: r.status !== 0 && Number(failed) > 0, failed, passed, names });
    console.log(`${r.status !== 0 ? "BITTEN " : "SURVIVED"} ${m.name}: ${failed} failed, ${passed} passed\n  ${names.join("\n  ")}`);
  } finally {
    writeFileSync(file, original);
  }
}
build();
const survived = results.filter((r) => !r.bitten);
if (survived.length) {
  console.error(`survived: ${survived.map((r) => r.name).join(", ")}`);
  process.exit(1);
}
console.log(`all ${results.length} mutations bitten`);
