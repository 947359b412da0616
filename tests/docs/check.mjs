#!/usr/bin/env node
// The documentation's own checks, with plain Node.js (no dependencies, no
// network), run early by tests/run.sh:
//
// 1. Links. In every tracked Markdown file (git ls-files '*.md', outside
//    node_modules), every relative link and image target (inline, reference
//    definitions, and <a href> / <img src> in HTML) resolves to a file or
//    directory inside the repository that a clone has (tracked, or new and
//    not ignored), and every #anchor into a Markdown file names one of its
//    headings (GitHub's slugs) or an explicit <a name>/id. Absolute URLs
//    (http:, https:, mailto:, ...) are not fetched.
// 2. The alert runbook. Every alert in deploy/prometheus/alerts.yml has a
//    runbook_url "docs/runbook.md#<anchor>" whose anchor exists.
// 3. The contract. docs/protocol.md is byte for byte the contract kept
//    beside the repository (../shared/spec/protocol.md), when that exists;
//    a clone has no ../shared, so the check is then skipped with a notice.
//
// Usage: node tests/docs/check.mjs   (exit 1 listing every problem)

import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const problems = [];

const git = (...args) =>
  execFileSync("git", ["-C", ROOT, ...args], { encoding: "utf8", maxBuffer: 64 << 20 })
    .split("\0")
    .filter(Boolean);

/** Files a clone has (tracked), plus new ones not ignored (about to be committed). */
const files = new Set([...git("ls-files", "-z"), ...git("ls-files", "-z", "--others", "--exclude-standard")]);
const dirs = new Set();
for (const f of files) for (let d = path.posix.dirname(f); d !== "."; d = path.posix.dirname(d)) dirs.add(d);
const markdown = [...files].filter((f) => f.endsWith(".md") && !f.split("/").includes("node_modules")).sort();

/** GitHub's heading slug: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading) {
  const text = heading
    .replace(/!\[([^\]]*)\]\([^)]*\)/g, "$1") // images: their alt text
    .replace(/\[([^\]]*)\]\([^)]*\)/g, "$1") // links: their text
    .replace(/<[^>]+>/g, ""); // HTML tags (emphasis and code marks go with the punctuation below)
  return text
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, "")
    .replace(/ /g, "-");
}

/** Lines of a Markdown file with fenced code blocks blanked, and inline code spans blanked. */
function proseLines(text) {
  const out = [];
  let fence = null;
  for (const line of text.split("\n")) {
    const m = line.match(/^\s{0,3}(`{3,}|~{3,})/);
    if (fence) {
      const close = line.match(/^\s{0,3}(`{3,}|~{3,})\s*$/);
      if (close && close[1][0] === fence[0] && close[1].length >= fence.length) fence = null;
      out.push("");
      continue;
    }
    if (m) {
      fence = m[1];
      out.push("");
      continue;
    }
    out.push(line.replace(/(`+)(.+?)\1/g, (s) => " ".repeat(s.length)));
  }
  return out;
}

const anchorCache = new Map();
/** The anchors a Markdown file offers: heading slugs (deduplicated as GitHub does) and explicit names/ids. */
function anchors(file) {
  if (anchorCache.has(file)) return anchorCache.get(file);
  const set = new Set();
  const seen = new Map();
  const text = readFileSync(path.join(ROOT, file), "utf8");
  const lines = proseLines(text);
  const raw = text.split("\n");
  lines.forEach((line, i) => {
    const h = line.match(/^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$/);
    if (h) {
      // Slug from the original line (inline code keeps its text in a slug).
      const original = raw[i].match(/^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$/)[1];
      const base = slug(original);
      const n = seen.get(base) ?? 0;
      seen.set(base, n + 1);
      set.add(n === 0 ? base : `${base}-${n}`);
    }
    for (const a of line.matchAll(/<a\s[^>]*(?:name|id)\s*=\s*"([^"]+)"/gi)) set.add(a[1]);
  });
  anchorCache.set(file, set);
  return set;
}

/** Link targets in one line: inline links and images `](target)`, HTML href/src. */
function targets(line) {
  const out = [];
  let i = 0;
  while ((i = line.indexOf("](", i)) !== -1) {
    let j = i + 2;
    let target;
    if (line[j] === "<") {
      const end = line.indexOf(">", j);
      if (end === -1) break;
      target = line.slice(j + 1, end);
    } else {
      let depth = 0;
      let k = j;
      for (; k < line.length; k++) {
        const c = line[k];
        if (c === "(") depth++;
        else if (c === ")") {
          if (depth === 0) break;
          depth--;
        } else if (/\s/.test(c)) break;
      }
      target = line.slice(j, k);
    }
    out.push(target);
    i = j;
  }
  const def = line.match(/^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?/);
  if (def) out.push(def[1]);
  for (const m of line.matchAll(/<(?:a|img)\s[^>]*(?:href|src)\s*=\s*"([^"]*)"/gi)) out.push(m[1]);
  return out;
}

function checkTarget(file, lineNo, target) {
  const where = `${file}:${lineNo}: ${target}`;
  if (target === "") return problems.push(`${where}: empty link target`);
  if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith("//")) return; // absolute URL: not fetched
  const hash = target.indexOf("#");
  const pathPart = decodeURIComponent(hash === -1 ? target : target.slice(0, hash)).replace(/\?.*$/, "");
  const anchor = hash === -1 ? null : decodeURIComponent(target.slice(hash + 1));
  let resolved;
  if (pathPart === "") resolved = file;
  else {
    const abs = pathPart.startsWith("/")
      ? path.join(ROOT, pathPart)
      : path.resolve(ROOT, path.dirname(file), pathPart);
    resolved = path.relative(ROOT, abs).split(path.sep).join("/");
    if (resolved.startsWith("..") || path.isAbsolute(resolved)) return problems.push(`${where}: points outside the repository`);
    resolved = resolved.replace(/\/$/, "");
    if (resolved === "") resolved = ".";
    const isFile = files.has(resolved);
    const isDir = resolved === "." || dirs.has(resolved);
    if (!isFile && !isDir) {
      const onDisk = existsSync(abs);
      return problems.push(`${where}: ${onDisk ? "not in the repository (ignored or untracked)" : "no such file"}`);
    }
    if (isDir || !existsSync(abs) || !statSync(abs).isFile()) {
      if (anchor) problems.push(`${where}: an anchor into a directory`);
      return;
    }
  }
  if (anchor !== null && resolved.endsWith(".md") && !anchors(resolved).has(anchor)) {
    problems.push(`${where}: no heading "#${anchor}" in ${resolved}`);
  }
}

let links = 0;
for (const file of markdown) {
  proseLines(readFileSync(path.join(ROOT, file), "utf8")).forEach((line, i) => {
    for (const t of targets(line)) {
      links++;
      checkTarget(file, i + 1, t);
    }
  });
}

// The alert runbook.
const RULES = "deploy/prometheus/alerts.yml";
const RUNBOOK = "docs/runbook.md";
let alerts = 0;
if (existsSync(path.join(ROOT, RULES))) {
  const blocks = readFileSync(path.join(ROOT, RULES), "utf8").split(/^\s+- alert:\s*/m).slice(1);
  for (const block of blocks) {
    alerts++;
    const name = block.match(/^(\S+)/)[1];
    const url = block.match(/^\s+runbook_url:\s*"?([^"\s]+)"?\s*$/m)?.[1];
    const expected = `${RUNBOOK}#${name.toLowerCase()}`;
    if (!url) problems.push(`${RULES}: alert ${name} has no runbook_url (expected "${expected}")`);
    else if (!url.startsWith(`${RUNBOOK}#`)) problems.push(`${RULES}: alert ${name}: runbook_url ${url} is not ${RUNBOOK}#<anchor>`);
    else if (!existsSync(path.join(ROOT, RUNBOOK)) || !anchors(RUNBOOK).has(url.slice(RUNBOOK.length + 1)))
      problems.push(`${RULES}: alert ${name}: runbook_url ${url}: no such section in ${RUNBOOK}`);
  }
}

// The contract beside the repository.
const CONTRACT = path.resolve(ROOT, "../shared/spec/protocol.md");
const COPY = path.join(ROOT, "docs/protocol.md");
let contract;
if (existsSync(CONTRACT)) {
  if (!existsSync(COPY)) problems.push(`docs/protocol.md is missing (the contract is at ${CONTRACT})`);
  else if (!readFileSync(CONTRACT).equals(readFileSync(COPY)))
    problems.push(`docs/protocol.md differs from ${CONTRACT}: copy the contract again (cp ${CONTRACT} docs/protocol.md)`);
  contract = "docs/protocol.md is byte for byte ../shared/spec/protocol.md";
} else {
  console.log("tests/docs/check.mjs: notice: ../shared/spec/protocol.md is not beside the repository: docs/protocol.md not compared with it");
  contract = "docs/protocol.md not compared (no ../shared/spec/protocol.md)";
}

if (problems.length > 0) {
  console.error(`tests/docs/check.mjs: ${problems.length} problem(s):`);
  for (const p of problems) console.error(`  ${p}`);
  process.exit(1);
}
console.log(
  `tests/docs/check.mjs: ${links} links in ${markdown.length} Markdown files resolve; ` +
    `${alerts} alerts link their runbook section; ${contract}`,
);
