// The Kubernetes manifests in deploy/k8s/, without a cluster (none runs
// here, and kubeconform needs schemas from the network): every manifest is
// parsed and checked field by field against the parts of the API it uses
// (known apiVersion/kind pairs, no unknown field where we know the
// schema), then for what Tidings needs (selectors, probes on the container
// port, grace period arithmetic against the --shutdown-timeout actually
// passed, env names that are options of the binary, secrets from the
// Secret, PDB and HPA on the Deployment). Then the binary is run with the
// Deployment's container args and env (the example Secret's values, the
// Redis URL pointing at a test redis-server, the listen address on a free
// port), probed as the kubelet would, and stopped as the kubelet would.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { parseAllDocuments } from "yaml";
import { REPO_ROOT, startServer, httpGet, ingest, payment, uid, withTimeout } from "./lib/harness.mjs";
import { startRedis, freePort } from "./lib/cluster.mjs";
import { tidingsOptions } from "./lib/deploy.mjs";

const DIR = path.join(REPO_ROOT, "deploy/k8s");

/** apiVersion → kinds it serves (the ones a deploy like this may use). */
const API = {
  v1: ["Service", "Secret", "ConfigMap", "ServiceAccount"],
  "apps/v1": ["Deployment", "StatefulSet"],
  "policy/v1": ["PodDisruptionBudget"],
  "autoscaling/v2": ["HorizontalPodAutoscaler"],
  "kustomize.config.k8s.io/v1beta1": ["Kustomization"],
};

// The fields of the API objects the manifests use (Kubernetes 1.29+). A
// field not listed here is a typo or an API we do not know: the test says
// so. Values: nested schema, or null for a leaf / an object not checked
// further.
const labelSelector = { matchLabels: null, matchExpressions: null };
const objectMeta = { name: null, namespace: null, labels: null, annotations: null };
const probe = {
  httpGet: { path: null, port: null, host: null, scheme: null, httpHeaders: null },
  tcpSocket: null, exec: null, grpc: null,
  initialDelaySeconds: null, periodSeconds: null, timeoutSeconds: null,
  successThreshold: null, failureThreshold: null, terminationGracePeriodSeconds: null,
};
const handler = { exec: { command: null }, httpGet: probe.httpGet, sleep: { seconds: null }, tcpSocket: null };
const container = {
  name: null, image: null, imagePullPolicy: null, command: null, args: null, workingDir: null,
  ports: [{ name: null, containerPort: null, protocol: null, hostPort: null, hostIP: null }],
  env: [{ name: null, value: null, valueFrom: {
    secretKeyRef: { name: null, key: null, optional: null },
    configMapKeyRef: { name: null, key: null, optional: null },
    fieldRef: null, resourceFieldRef: null,
  } }],
  envFrom: null,
  readinessProbe: probe, livenessProbe: probe, startupProbe: probe,
  lifecycle: { preStop: handler, postStart: handler },
  resources: { requests: null, limits: null, claims: null },
  securityContext: {
    allowPrivilegeEscalation: null, readOnlyRootFilesystem: null, runAsNonRoot: null,
    runAsUser: null, runAsGroup: null, privileged: null, capabilities: { add: null, drop: null },
    seccompProfile: { type: null, localhostProfile: null }, procMount: null,
  },
  volumeMounts: null, terminationMessagePolicy: null, terminationMessagePath: null,
};
const podSpec = {
  containers: [container], initContainers: null,
  terminationGracePeriodSeconds: null, enableServiceLinks: null, automountServiceAccountToken: null,
  serviceAccountName: null, securityContext: {
    runAsNonRoot: null, runAsUser: null, runAsGroup: null, fsGroup: null, supplementalGroups: null,
    seccompProfile: { type: null, localhostProfile: null }, sysctls: null,
  },
  topologySpreadConstraints: [{ maxSkew: null, topologyKey: null, whenUnsatisfiable: null, labelSelector, minDomains: null, nodeAffinityPolicy: null, nodeTaintsPolicy: null, matchLabelKeys: null }],
  affinity: null, nodeSelector: null, tolerations: null, volumes: null, priorityClassName: null, imagePullSecrets: null,
};
const SCHEMA = {
  Deployment: {
    apiVersion: null, kind: null, metadata: objectMeta,
    spec: {
      replicas: null, revisionHistoryLimit: null, minReadySeconds: null, progressDeadlineSeconds: null, paused: null,
      selector: labelSelector,
      strategy: { type: null, rollingUpdate: { maxUnavailable: null, maxSurge: null } },
      template: { metadata: objectMeta, spec: podSpec },
    },
  },
  Service: {
    apiVersion: null, kind: null, metadata: objectMeta,
    spec: {
      type: null, selector: null, sessionAffinity: null,
      sessionAffinityConfig: { clientIP: { timeoutSeconds: null } },
      ports: [{ name: null, port: null, targetPort: null, protocol: null, nodePort: null, appProtocol: null }],
      clusterIP: null, externalTrafficPolicy: null, internalTrafficPolicy: null, ipFamilyPolicy: null, publishNotReadyAddresses: null,
    },
  },
  PodDisruptionBudget: {
    apiVersion: null, kind: null, metadata: objectMeta,
    spec: { minAvailable: null, maxUnavailable: null, selector: labelSelector, unhealthyPodEvictionPolicy: null },
  },
  HorizontalPodAutoscaler: {
    apiVersion: null, kind: null, metadata: objectMeta,
    spec: {
      scaleTargetRef: { apiVersion: null, kind: null, name: null },
      minReplicas: null, maxReplicas: null,
      metrics: [{ type: null, resource: { name: null, target: { type: null, averageUtilization: null, averageValue: null, value: null } }, pods: null, object: null, external: null, containerResource: null }],
      behavior: {
        scaleDown: { stabilizationWindowSeconds: null, selectPolicy: null, policies: [{ type: null, value: null, periodSeconds: null }] },
        scaleUp: { stabilizationWindowSeconds: null, selectPolicy: null, policies: [{ type: null, value: null, periodSeconds: null }] },
      },
    },
  },
  Secret: { apiVersion: null, kind: null, metadata: objectMeta, type: null, stringData: null, data: null, immutable: null },
  Kustomization: { apiVersion: null, kind: null, resources: null, namespace: null, labels: null, images: null, commonLabels: null },
};

/** Every field path in `obj` that `schema` does not know. */
function unknownFields(obj, schema, where) {
  if (schema === null || obj === null || typeof obj !== "object") return [];
  if (Array.isArray(schema)) {
    assert.ok(Array.isArray(obj), `${where} must be a list`);
    return obj.flatMap((o, i) => unknownFields(o, schema[0], `${where}[${i}]`));
  }
  assert.ok(!Array.isArray(obj), `${where} must be an object, not a list`);
  return Object.entries(obj).flatMap(([k, v]) => (k in schema ? unknownFields(v, schema[k], `${where}.${k}`) : [`${where}.${k}`]));
}

const matches = (selector, labels) => Object.entries(selector).every(([k, v]) => labels?.[k] === v);

describe("Kubernetes manifests (deploy/k8s/)", () => {
  const docs = [];
  let options;
  const byKind = (kind) => {
    const found = docs.filter((d) => d.doc.kind === kind);
    assert.equal(found.length, 1, `exactly one ${kind} in deploy/k8s`);
    return found[0].doc;
  };
  let redis;
  let server;

  before(async () => {
    for (const file of readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f)).sort()) {
      for (const d of parseAllDocuments(readFileSync(path.join(DIR, file), "utf8"))) {
        assert.deepEqual(d.errors, [], `${file}: YAML errors`);
        if (d.contents !== null) docs.push({ file, doc: d.toJS() });
      }
    }
    options = await tidingsOptions();
  });
  after(async () => {
    await server?.stop("SIGKILL");
    await redis?.stop();
  });

  test("every manifest: a real apiVersion/kind pair, no unknown field, labelled; kustomization lists the rest", () => {
    assert.ok(docs.length >= 6, `manifests found: ${docs.map((d) => d.file)}`);
    for (const { file, doc } of docs) {
      const kinds = API[doc.apiVersion];
      assert.ok(kinds, `${file}: unknown apiVersion ${doc.apiVersion}`);
      assert.ok(kinds.includes(doc.kind), `${file}: ${doc.apiVersion} has no kind ${doc.kind}`);
      assert.ok(SCHEMA[doc.kind], `${file}: no schema for ${doc.kind} in this test`);
      assert.deepEqual(unknownFields(doc, SCHEMA[doc.kind], `${file}:${doc.kind}`), [], "fields the API does not have");
      if (doc.kind !== "Kustomization") {
        assert.equal(doc.metadata?.name, "tidings", `${file}: named tidings`);
        assert.equal(doc.metadata?.labels?.["app.kubernetes.io/name"], "tidings", `${file}: labelled`);
      }
    }
    const k = byKind("Kustomization");
    const files = docs.map((d) => d.file);
    for (const r of k.resources) assert.ok(files.includes(r), `kustomization resource ${r} exists`);
    const listed = new Set(k.resources);
    for (const f of files) {
      if (f !== "kustomization.yaml" && !f.includes("example")) assert.ok(listed.has(f), `${f} is in kustomization.yaml`);
    }
    assert.ok(!k.resources.some((r) => r.includes("secret")), "the example Secret is not applied by kustomize");
  });

  test("Deployment: 3 replicas, selector matches the pod labels, probes on the container port, securityContext, resources", () => {
    const dep = byKind("Deployment");
    assert.equal(dep.spec.replicas, 3);
    const pod = dep.spec.template;
    assert.ok(Object.keys(dep.spec.selector.matchLabels).length > 0);
    assert.ok(matches(dep.spec.selector.matchLabels, pod.metadata.labels), "the selector selects the pod template");
    assert.equal(dep.spec.strategy.rollingUpdate.maxUnavailable, 0, "a rolling update never goes below the replica count");
    assert.equal(pod.spec.enableServiceLinks, false, "no Kubernetes service variables (TIDINGS_SERVICE_HOST...) in the TIDINGS_* space");
    assert.equal(pod.spec.containers.length, 1);
    const c = pod.spec.containers[0];
    const port = c.ports.find((p) => p.name === "http");
    assert.ok(port, "a container port named http");
    const listen = c.args[c.args.indexOf("--listen") + 1];
    assert.equal(Number(listen.split(":").at(-1)), port.containerPort, "--listen is on the container port");
    for (const [name, path_] of [["readinessProbe", "/readyz"], ["livenessProbe", "/healthz"]]) {
      const p = c[name];
      assert.equal(p.httpGet.path, path_, `${name} path`);
      assert.ok(p.httpGet.port === port.name || p.httpGet.port === port.containerPort, `${name} port is the container port`);
    }
    const sec = { ...pod.spec.securityContext, ...c.securityContext };
    assert.equal(sec.runAsNonRoot, true);
    assert.ok(sec.runAsUser > 0, "a non-root uid");
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(c.securityContext.capabilities.drop, ["ALL"]);
    assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, "requests and a memory limit");
    assert.ok(c.image && !c.image.endsWith(":latest"), "a pinned image tag");
  });

  test("grace period: preStop + --shutdown-timeout (as passed) + margin ≤ terminationGracePeriodSeconds", () => {
    const pod = byKind("Deployment").spec.template.spec;
    const c = pod.containers[0];
    const cmd = c.lifecycle.preStop.exec?.command;
    const preStop = c.lifecycle.preStop.sleep?.seconds ?? (cmd?.[0] === "sleep" ? Number(cmd[1]) : NaN);
    assert.ok(preStop > 0, `preStop sleeps: ${JSON.stringify(c.lifecycle.preStop)}`);
    const i = c.args.indexOf("--shutdown-timeout");
    const fromEnv = c.env.find((e) => e.name === "TIDINGS_SHUTDOWN_TIMEOUT")?.value;
    const shutdown = Number(i >= 0 ? c.args[i + 1] : fromEnv ?? options.get("shutdown-timeout").default);
    assert.ok(shutdown > 0);
    const grace = pod.terminationGracePeriodSeconds;
    assert.ok(grace >= preStop + shutdown + 5,
      `terminationGracePeriodSeconds ${grace} < preStop ${preStop} + --shutdown-timeout ${shutdown} + 5: the kubelet would SIGKILL a draining node`);
  });

  test("env: every TIDINGS_* name is an option of the binary; Redis URL and ingest token come from the Secret's keys", () => {
    const c = byKind("Deployment").spec.template.spec.containers[0];
    const known = new Set([...options.values()].map((o) => o.env).filter(Boolean));
    for (const e of c.env) assert.ok(known.has(e.name), `${e.name} is not an option of tidings (tidings --help)`);
    for (const a of c.args.filter((x) => x.startsWith("--"))) {
      assert.ok(options.has(a.slice(2).split("=")[0]), `${a} is not a flag of tidings`);
    }
    const secret = byKind("Secret");
    for (const name of ["TIDINGS_REDIS_URL", "TIDINGS_INGEST_TOKEN"]) {
      const ref = c.env.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
      assert.ok(ref, `${name} from a secretKeyRef`);
      assert.equal(ref.name, secret.metadata.name, `${name}: the Secret's name`);
      assert.ok(ref.key in (secret.stringData ?? {}) || ref.key in (secret.data ?? {}), `${name}: key ${ref.key} is in the Secret`);
    }
  });

  test("Service, PodDisruptionBudget and HorizontalPodAutoscaler select and target the Deployment", () => {
    const dep = byKind("Deployment");
    const labels = dep.spec.template.metadata.labels;
    const c = dep.spec.template.spec.containers[0];
    const svc = byKind("Service");
    assert.ok(matches(svc.spec.selector, labels), "the Service selects the pods");
    for (const p of svc.spec.ports) {
      assert.ok(c.ports.some((cp) => cp.name === p.targetPort || cp.containerPort === p.targetPort), `Service port ${p.port} targets a container port`);
    }
    assert.equal(svc.spec.sessionAffinity, "ClientIP", "long-polling through the Service stays on one pod");
    const pdb = byKind("PodDisruptionBudget");
    assert.ok(matches(pdb.spec.selector.matchLabels, labels), "the PDB selects the pods");
    assert.ok((pdb.spec.maxUnavailable ?? 0) >= 1 || pdb.spec.minAvailable < dep.spec.replicas, "the PDB allows a drain to proceed");
    const hpa = byKind("HorizontalPodAutoscaler");
    assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: dep.apiVersion, kind: dep.kind, name: dep.metadata.name });
    assert.ok(hpa.spec.minReplicas >= dep.spec.replicas && hpa.spec.maxReplicas > hpa.spec.minReplicas);
    for (const m of hpa.spec.metrics.filter((x) => x.type === "Resource")) {
      assert.ok(c.resources.requests[m.resource.name], `the HPA's ${m.resource.name} utilisation needs a ${m.resource.name} request`);
    }
  });

  test("the binary runs with the Deployment's args and env (example Secret, test Redis): probes answer 200, ingest 202, SIGTERM exits 0 within the grace period", async (t) => {
    const pod = byKind("Deployment").spec.template.spec;
    const c = pod.containers[0];
    const secret = byKind("Secret");
    const value = (ref) => secret.stringData?.[ref.key] ?? Buffer.from(secret.data[ref.key], "base64").toString("utf8");
    redis = await startRedis();
    const env = {};
    for (const e of c.env) env[e.name] = e.valueFrom?.secretKeyRef ? value(e.valueFrom.secretKeyRef) : e.value;
    assert.equal(env.TIDINGS_REDIS_URL, "redis://redis:6379", "the example Secret's Redis");
    env.TIDINGS_REDIS_URL = redis.url;
    const port = await freePort();
    const args = [...c.args];
    args[args.indexOf("--listen") + 1] = `127.0.0.1:${port}`;
    assert.equal(c.command, undefined, "the image's ENTRYPOINT (the binary) runs, with these args");
    server = await startServer([], env, { baseArgs: args, timeoutMs: 20000 });
    // As the kubelet probes: the container port, the probes' paths.
    for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe].filter(Boolean)) {
      const r = await httpGet(`http://127.0.0.1:${port}${probe.httpGet.path}`, { timeoutMs: probe.timeoutSeconds * 1000 });
      assert.equal(r.status, 200, `${probe.httpGet.path}: ${r.text}`);
    }
    const ok = await ingest(server.url, payment(uid("k8s")), { token: env.TIDINGS_INGEST_TOKEN });
    assert.equal(ok.status, 202, `ingest with the Secret's token: ${ok.text}`);
    // The kubelet runs preStop, then sends SIGTERM, then waits out the rest of the grace period.
    const preStop = Number(c.lifecycle.preStop.exec.command[1]);
    const started = Date.now();
    const exit = await withTimeout(server.stop("SIGTERM", 60000), (pod.terminationGracePeriodSeconds - preStop) * 1000,
      "exit after SIGTERM within the grace period left after preStop");
    t.diagnostic(`exited ${JSON.stringify(exit)} ${Date.now() - started} ms after SIGTERM`);
    assert.equal(exit.code, 0);
  });
});
