// The Dockerfile, .dockerignore and deploy/compose/ (compose.yaml and its
// nginx.conf). No Docker engine runs here, so nothing is built or started
// by Docker: the files are parsed and checked for what a build and a
// `docker compose up` depend on (stages, the Rust version, what is copied
// and not ignored, a non-root user, the port, the healthcheck, the stop
// signal; compose services, ports, variables, the nginx upstreams), and
// the binary is run with the image's environment to answer the
// healthcheck's own URL.

import { describe, test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { parse } from "yaml";
import { REPO_ROOT, startServer, httpGet } from "./lib/harness.mjs";
import { freePort, run } from "./lib/cluster.mjs";
import { tidingsOptions } from "./lib/deploy.mjs";

const DOCKERFILE = path.join(REPO_ROOT, "Dockerfile");
const COMPOSE_DIR = path.join(REPO_ROOT, "deploy/compose");

/** Dockerfile instructions: [{ op, args, stage }] (continuations joined, comments dropped). */
function parseDockerfile(text) {
  const out = [];
  let stage = -1;
  let buf = "";
  for (const raw of text.split("\n")) {
    if (/^\s*#/.test(raw) && !buf) continue;
    if (/^\s*#/.test(raw)) continue; // a comment inside a continuation
    buf += raw.replace(/\\\s*$/, " ");
    if (/\\\s*$/.test(raw)) continue;
    const line = buf.trim();
    buf = "";
    if (!line) continue;
    const m = /^(\w+)\s+(.*)$/.exec(line);
    assert.ok(m, `not a Dockerfile instruction: ${line}`);
    const op = m[1].toUpperCase();
    if (op === "FROM") stage++;
    out.push({ op, args: m[2].trim(), stage });
  }
  return out;
}

/** A .dockerignore pattern as a RegExp over repository-relative paths (directories match their contents). */
function ignoreRegex(pattern) {
  const p = pattern.replace(/^\/+/, "").replace(/\/+$/, "");
  let re = "";
  for (let i = 0; i < p.length; i++) {
    if (p.startsWith("**/", i)) { re += "(?:.*/)?"; i += 2; } else if (p.startsWith("**", i)) { re += ".*"; i += 1; } else if (p[i] === "*") re += "[^/]*";
    else if (p[i] === "?") re += "[^/]";
    else re += p[i].replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}(?:/.*)?$`);
}

function ignored(file, patterns) {
  let out = false;
  for (const pat of patterns) {
    const neg = pat.startsWith("!");
    if (ignoreRegex(neg ? pat.slice(1) : pat).test(file)) out = !neg;
  }
  return out;
}

describe("Dockerfile and .dockerignore", () => {
  const steps = parseDockerfile(readFileSync(DOCKERFILE, "utf8"));
  const final = Math.max(...steps.map((s) => s.stage));
  const inFinal = (op) => steps.filter((s) => s.stage === final && s.op === op);
  const last = (op) => inFinal(op).at(-1)?.args;
  let server;
  after(async () => { await server?.stop(); });

  test("multi-stage: a Rust builder builds the release binary with --locked, on a Rust the crate accepts", () => {
    const froms = steps.filter((s) => s.op === "FROM");
    assert.ok(froms.length >= 2, "at least two stages");
    const builder = /^(\S+)\s+AS\s+(\S+)$/i.exec(froms[0].args);
    assert.ok(builder, `the first stage is named: FROM ${froms[0].args}`);
    const [, image, name] = builder;
    const rust = /^rust:(\d+)\.(\d+)/.exec(image);
    assert.ok(rust, `the builder is an official rust image with a version: ${image}`);
    const want = /^rust-version\s*=\s*"(\d+)\.(\d+)"/m.exec(readFileSync(path.join(REPO_ROOT, "Cargo.toml"), "utf8"));
    if (want) {
      assert.ok(Number(rust[1]) * 1000 + Number(rust[2]) >= Number(want[1]) * 1000 + Number(want[2]),
        `${image} is older than the crate's rust-version ${want[1]}.${want[2]}`);
    }
    const build = steps.find((s) => s.stage === 0 && s.op === "RUN" && /cargo build/.test(s.args));
    assert.ok(build, "a RUN cargo build in the builder");
    assert.match(build.args, /--release/);
    assert.match(build.args, /--locked/);
    const copy = inFinal("COPY").find((s) => s.args.startsWith(`--from=${name} `));
    assert.ok(copy, `the final stage copies from ${name}`);
    const [src, dest] = copy.args.split(/\s+/).slice(1);
    assert.ok(build.args.includes(src) || /target\/release\/tidings/.test(src), `the copied ${src} is what the build installs`);
    assert.match(steps.find((s) => s.stage === final && s.op === "FROM").args, /^debian:[\w.-]*slim$/, "a slim Debian runtime");
    assert.deepEqual(JSON.parse(last("ENTRYPOINT")), [dest], "the entrypoint is the copied binary");
  });

  test("the build context holds what the builder copies (the whole workspace) and leaves out target/, .git/, node_modules/", () => {
    const patterns = readFileSync(path.join(REPO_ROOT, ".dockerignore"), "utf8").split("\n")
      .map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    for (const big of ["target/x", "load-tests/target/x", "tests/e2e/node_modules/x", ".git/HEAD"]) {
      assert.ok(ignored(big, patterns), `${big} is left out of the build context`);
    }
    const sources = steps.filter((s) => s.stage === 0 && s.op === "COPY").flatMap((s) => s.args.split(/\s+/).slice(0, -1));
    assert.ok(sources.length > 0);
    for (const src of sources) {
      const full = path.join(REPO_ROOT, src);
      assert.ok(existsSync(full), `COPY ${src}: exists in the repository`);
      const files = statSync(full).isDirectory()
        ? readdirSync(full, { recursive: true }).map((f) => path.posix.join(src.replace(/\/$/, ""), String(f)))
        : [src];
      for (const f of files) assert.ok(!ignored(f, patterns), `COPY ${src}: ${f} is excluded by .dockerignore`);
    }
    // Every workspace member's manifest and sources are copied (cargo reads them all).
    const members = /members\s*=\s*\[([^\]]*)\]/.exec(readFileSync(path.join(REPO_ROOT, "Cargo.toml"), "utf8"))[1]
      .split(",").map((m) => m.trim().replace(/"/g, "")).filter(Boolean);
    for (const m of members) {
      const base = m === "." ? "" : `${m}/`;
      assert.ok(sources.includes(`${base}Cargo.toml`) || (m === "." && sources.includes("Cargo.toml")), `${base}Cargo.toml is copied`);
      assert.ok(sources.some((s) => s.replace(/\/$/, "") === `${base}src`), `${base}src is copied`);
      assert.ok(!ignored(`${base}src/main.rs`, patterns), `${base}src is not ignored`);
    }
    assert.ok(sources.includes("Cargo.lock"), "Cargo.lock is copied (--locked)");
  });

  test("runtime: a non-root numeric USER (the uid Kubernetes runs), EXPOSE the listen port, STOPSIGNAL SIGTERM, env names are options", async () => {
    const user = last("USER");
    assert.ok(user, "a USER");
    const uidPart = user.split(":")[0];
    assert.match(uidPart, /^\d+$/, "numeric, so that runAsNonRoot can check it");
    assert.notEqual(Number(uidPart), 0, "not root");
    const created = inFinal("RUN").some((s) => new RegExp(`useradd[^&]*--uid ${uidPart}\\b`).test(s.args));
    assert.ok(created, `the image creates uid ${uidPart}`);
    const k8s = parse(readFileSync(path.join(REPO_ROOT, "deploy/k8s/deployment.yaml"), "utf8"));
    assert.equal(k8s.spec.template.spec.securityContext.runAsUser, Number(uidPart), "the Deployment runs as the image's user");
    assert.equal(last("STOPSIGNAL"), "SIGTERM");
    const env = Object.fromEntries(inFinal("ENV").flatMap((s) => [...s.args.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1], m[2]])));
    const options = await tidingsOptions();
    const known = new Set([...options.values()].map((o) => o.env));
    for (const k of Object.keys(env).filter((x) => x.startsWith("TIDINGS_"))) assert.ok(known.has(k), `ENV ${k} is an option`);
    const port = Number((env.TIDINGS_LISTEN ?? options.get("listen").default).split(":").at(-1));
    assert.deepEqual(inFinal("EXPOSE").map((s) => Number(s.args)), [port], "EXPOSE the listen port");
    assert.equal(k8s.spec.template.spec.containers[0].ports[0].containerPort, port, "the Deployment's container port");
  });

  test("HEALTHCHECK: its URL, with the image's environment, answers 200 from the server", async () => {
    const hc = last("HEALTHCHECK");
    assert.ok(hc, "a HEALTHCHECK");
    const url = /(http:\/\/127\.0\.0\.1:\S+?)["\s]/.exec(`${hc} `)?.[1];
    assert.ok(url, `a URL in the HEALTHCHECK: ${hc}`);
    assert.match(url, /\/healthz$/, "the liveness endpoint");
    const env = Object.fromEntries(inFinal("ENV").flatMap((s) => [...s.args.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1], m[2]])));
    const port = await freePort();
    env.TIDINGS_LISTEN = env.TIDINGS_LISTEN.replace(/^[^:]+:\d+$/, `127.0.0.1:${port}`);
    // The shell expansion the healthcheck relies on (`${TIDINGS_LISTEN##*:}`), by the shell.
    const sh = await run("/bin/sh", ["-c", `TIDINGS_LISTEN='${env.TIDINGS_LISTEN}'; echo "${url.replace(/"/g, "")}"`], 5000);
    assert.equal(sh.code, 0);
    const resolved = sh.stdout.trim();
    assert.equal(resolved, `http://127.0.0.1:${port}/healthz`);
    server = await startServer([], env, { baseArgs: ["--ingest-token", "x"] });
    const r = await httpGet(resolved);
    assert.equal(r.status, 200, r.text);
  });
});

describe("deploy/compose (compose.yaml + nginx.conf)", () => {
  const compose = parse(readFileSync(path.join(COMPOSE_DIR, "compose.yaml"), "utf8"), { merge: true });
  const nodes = Object.keys(compose.services).filter((n) => /^tidings\d+$/.test(n));

  test("redis, three Tidings nodes built from the Dockerfile, nginx; every node depends on a healthy redis", async () => {
    assert.ok(compose.services.redis, "a redis service");
    assert.ok(compose.services.nginx, "an nginx service");
    assert.equal(nodes.length, 3, `three nodes: ${nodes}`);
    const redis = compose.services.redis;
    assert.ok(redis.healthcheck?.test, "redis has a healthcheck (the nodes wait for it)");
    assert.ok(redis.command.join(" ").includes("--maxmemory-policy noeviction"), "Redis keeps every key (noeviction)");
    const options = await tidingsOptions();
    const known = new Set([...options.values()].map((o) => o.env));
    for (const n of nodes) {
      const s = compose.services[n];
      assert.ok(existsSync(path.join(COMPOSE_DIR, s.build.context, s.build.dockerfile)), `${n}: the build context holds the Dockerfile`);
      assert.equal(path.resolve(COMPOSE_DIR, s.build.context), REPO_ROOT, `${n}: built from the repository root`);
      assert.equal(s.depends_on?.redis?.condition, "service_healthy", `${n} waits for a healthy redis`);
      for (const k of Object.keys(s.environment)) assert.ok(known.has(k), `${n}: ${k} is an option of tidings`);
      const u = new URL(s.environment.TIDINGS_REDIS_URL);
      assert.ok(compose.services[u.hostname], `${n}: the Redis host ${u.hostname} is a compose service`);
      assert.equal(Number(u.port || 6379), 6379, "redis-server's default port");
      assert.match(s.environment.TIDINGS_INGEST_TOKEN, /^\$\{TIDINGS_INGEST_TOKEN:\?/, "the ingest token must be given (no default token)");
      const grace = Number(/^(\d+)s$/.exec(s.stop_grace_period)?.[1]);
      const shutdown = Number(s.environment.TIDINGS_SHUTDOWN_TIMEOUT ?? options.get("shutdown-timeout").default);
      assert.ok(grace > shutdown, `${n}: stop_grace_period ${s.stop_grace_period} above --shutdown-timeout ${shutdown} s`);
    }
  });

  test("nginx.conf is deploy/nginx/tidings.conf with the compose services as upstreams, on the nodes' port; published as compose says", () => {
    const conf = readFileSync(path.join(COMPOSE_DIR, "nginx.conf"), "utf8");
    const directives = (t) => t.split("\n").map((l) => l.replace(/#.*$/, "").trim()).filter(Boolean);
    const servers = [...conf.matchAll(/^\s*server\s+([\w.-]+):(\d+)\b/gm)].map((m) => ({ host: m[1], port: Number(m[2]) }));
    assert.ok(servers.length >= 3);
    for (const s of servers) {
      assert.ok(nodes.includes(s.host), `upstream ${s.host} is a compose node service`);
      const listen = compose.services[s.host].environment.TIDINGS_LISTEN;
      assert.equal(s.port, Number(listen.split(":").at(-1)), `upstream ${s.host}:${s.port} is its --listen port`);
    }
    for (const block of conf.matchAll(/upstream\s+\w+\s*\{([^}]*)\}/g)) {
      const named = [...block[1].matchAll(/server\s+([\w.-]+):/g)].map((m) => m[1]).sort();
      assert.deepEqual(named, [...nodes].sort(), "each upstream names every node once");
    }
    // Apart from the server addresses, the same directives as the tested file.
    const normal = (t) => directives(t).map((l) => l.replace(/^server\s+\S+:\d+/, "server NODE"));
    assert.deepEqual(normal(conf), normal(readFileSync(path.join(REPO_ROOT, "deploy/nginx/tidings.conf"), "utf8")),
      "deploy/compose/nginx.conf drifted from deploy/nginx/tidings.conf (which sticky.test.mjs runs)");
    const nginx = compose.services.nginx;
    const mount = nginx.volumes.find((v) => v.startsWith("./nginx.conf:"));
    assert.ok(mount, "nginx mounts ./nginx.conf");
    assert.match(mount, /^\.\/nginx\.conf:\/etc\/nginx\/conf\.d\/[\w.-]+\.conf(:ro)?$/, "into conf.d (included in http { })");
    const listen = Number(/^\s*listen\s+(\d+)/m.exec(conf)[1]);
    assert.ok(nginx.ports.some((p) => Number(String(p).split(":").at(-1)) === listen), `nginx's listen ${listen} is published`);
    for (const n of nodes) assert.ok(nginx.depends_on?.[n], `nginx waits for ${n} (it resolves the names at start)`);
  });
});
