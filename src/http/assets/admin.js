// The admin page: nodes (every 2 s) and a trackingId inspector (its latest
// history, then a live tail every second, and its subscribers per node).
// The API key is kept in sessionStorage and sent as a bearer token; every
// value from the server is written as text, never as HTML.
"use strict";

const KEY = "tidings-admin-key";
const $ = (id) => document.getElementById(id);
let nodesTimer = null;
let tailTimer = null;
let inspecting = null; // { trackingId, lastId, seen: Set }

async function api(path) {
  const key = sessionStorage.getItem(KEY);
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), 5000);
  try {
    const r = await fetch(path, { headers: { authorization: `Bearer ${key}` }, signal: ctl.signal, cache: "no-store" });
    const body = await r.json().catch(() => null);
    if (r.status === 401) { logout(body?.error?.message ?? "Unauthorized"); throw new Error("unauthorized"); }
    if (!r.ok) throw new Error(body?.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${r.status}`);
    return body;
  } finally {
    clearTimeout(t);
  }
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

const fmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const bytes = (n) => (n >= 1 << 30 ? `${fmt.format(n / (1 << 30))} GiB` : `${fmt.format(n / (1 << 20))} MiB`);
const lag = (n) => (n.lagP99Ms == null ? "–" : `${n.lagP99Capped ? ">" : "≤"} ${fmt.format(n.lagP99Ms)} ms`);

function renderNodes(body) {
  const tbody = $("nodes").tBodies[0];
  tbody.replaceChildren();
  for (const n of body.nodes) {
    const tr = document.createElement("tr");
    tr.dataset.nodeId = n.id;
    if (n.silent) tr.className = "silent";
    cell(tr, `${n.hostname} ${n.id}${n.id === body.node ? " (this node)" : ""}`);
    cell(tr, n.listen);
    cell(tr, String(n.sockets), "num sockets");
    cell(tr, `${n.polling} / ${n.websocket}`, "num");
    cell(tr, String(n.subscriptions), "num subscriptions");
    cell(tr, String(n.topics), "num");
    cell(tr, `${n.connections} / ${n.connectionsLimit}`, "num");
    cell(tr, fmt.format(n.ingestPerSecond), "num ingest");
    cell(tr, fmt.format(n.broadcastsPerSecond), "num");
    cell(tr, lag(n), "num lag");
    cell(tr, `${n.droppedRecent} / ${n.droppedTotal}`, n.droppedRecent > 0 ? "num bad" : "num");
    cell(tr, n.storeUp ? "up" : "DOWN", n.storeUp ? "ok" : "bad");
    cell(tr, bytes(n.rssBytes), "num");
    cell(tr, n.silent ? `silent ${Math.round(n.ageMs / 1000)} s` : `${Math.round(n.ageMs / 100) / 10} s ago`);
    tbody.appendChild(tr);
  }
  $("nodes-updated").textContent = `${body.nodes.length} node${body.nodes.length === 1 ? "" : "s"}, updated ${new Date().toLocaleTimeString()}`;
}

async function refreshNodes() {
  try {
    renderNodes(await api("/admin/api/nodes"));
    $("status").textContent = "";
  } catch (err) {
    if (err.message !== "unauthorized") $("status").textContent = `Nodes: ${err.message}`;
  }
}

function renderSubscribers(list) {
  const tbody = $("subscribers").tBodies[0];
  tbody.replaceChildren();
  for (const s of list) {
    const tr = document.createElement("tr");
    tr.dataset.nodeId = s.node;
    if (s.silent) tr.className = "silent";
    cell(tr, `${s.hostname} ${s.node}`);
    cell(tr, s.listen);
    cell(tr, s.subscribers == null ? "counting…" : String(s.subscribers), "num count");
    tbody.appendChild(tr);
  }
}

function addPayments(envelopes, fresh) {
  const tbody = $("history").tBodies[0];
  for (const p of envelopes) {
    if (inspecting.seen.has(p.id)) continue;
    inspecting.seen.add(p.id);
    inspecting.lastId = p.id;
    const tr = document.createElement("tr");
    tr.dataset.seq = String(p.seq);
    tr.dataset.id = p.id;
    if (fresh) tr.className = "fresh";
    cell(tr, String(p.seq), "num");
    cell(tr, p.id);
    cell(tr, String(p.data.amount), "num");
    cell(tr, p.data.status);
    cell(tr, new Date(p.timestamp).toLocaleString());
    cell(tr, p.data.signature ?? "");
    tbody.appendChild(tr);
  }
}

function renderPosition(body) {
  const pos = body.position;
  $("position").textContent = pos.id == null
    ? "No history yet."
    : `Last stored: seq ${pos.seq} (${pos.id})${body.history.truncated ? "; older payments are no longer retained" : ""}`;
}

async function inspect(trackingId) {
  clearTimeout(tailTimer);
  $("inspect-error").textContent = "";
  try {
    const body = await api(`/admin/api/tracking?trackingId=${encodeURIComponent(trackingId)}`);
    inspecting = { trackingId, lastId: null, seen: new Set() };
    $("tid-title").textContent = trackingId;
    $("history").tBodies[0].replaceChildren();
    renderPosition(body);
    renderSubscribers(body.subscribers);
    addPayments(body.history.data, false);
    $("inspector").hidden = false;
    tail();
  } catch (err) {
    if (err.message !== "unauthorized") $("inspect-error").textContent = err.message;
  }
}

async function tail() {
  const current = inspecting;
  if (!current) return;
  try {
    const since = current.lastId ? `&since=${encodeURIComponent(current.lastId)}` : "";
    const body = await api(`/admin/api/tracking?trackingId=${encodeURIComponent(current.trackingId)}${since}&limit=100`);
    if (inspecting !== current) return;
    renderPosition(body);
    renderSubscribers(body.subscribers);
    addPayments(body.history.data, true);
    $("tail-state").textContent = "(live)";
  } catch (err) {
    $("tail-state").textContent = `(paused: ${err.message})`;
  }
  if (inspecting === current) tailTimer = setTimeout(tail, 1000);
}

function loggedIn() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  refreshNodes();
  clearInterval(nodesTimer);
  nodesTimer = setInterval(refreshNodes, 2000);
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(nodesTimer);
  clearTimeout(tailTimer);
  inspecting = null;
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message ?? "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key").value);
    $("login-error").textContent = "";
    try {
      await api("/admin/api/nodes");
      loggedIn();
    } catch (err) {
      if (err.message !== "unauthorized") $("login-error").textContent = err.message;
    }
  });
  $("logout").addEventListener("click", () => logout());
  $("inspect-form").addEventListener("submit", (e) => {
    e.preventDefault();
    inspect($("tid").value.trim());
  });
  if (sessionStorage.getItem(KEY)) loggedIn();
});
