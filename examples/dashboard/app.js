// The merchant view: one tidings-client subscription to an account stream
// (`merchant-42:*`: every payment of every trackingId of the account), its
// payments grouped by trackingId (a trackingId never seen before gets its
// group with its first payment), newest first; a status filter (all / failed
// only) that resubscribes with the filter; a notice per gap. The SDK keeps
// the stream's last id in localStorage, so a reload or a server restart
// resumes where the page was.
import { connect, localStorageStorage } from "./sdk/tidings-client.browser.mjs";

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? "http://127.0.0.1:3000";
const stream = params.get("stream") ?? "merchant-42:*";
const FILTERS = { all: null, failed: { status: ["failed"] } };
const VIEW_KEY = `tidings-dashboard:view ${server} ${stream}`;
const $ = (id) => document.getElementById(id);

const amountFormat = new Intl.NumberFormat(undefined);
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

// The filter, and the stream's last id when it was narrowed (what "all" must
// read back), kept across reloads; `?filter=failed` chooses it the first time.
let view = (() => {
  try {
    const v = JSON.parse(localStorage.getItem(VIEW_KEY) ?? "null");
    if (v && v.filter in FILTERS) return v;
  } catch { /* start afresh */ }
  return { filter: params.get("filter") in FILTERS ? params.get("filter") : "all", narrowedAt: null };
})();
const saveView = () => localStorage.setItem(VIEW_KEY, JSON.stringify(view));

/** Every payment shown, by the stream's event id; and per trackingId, newest first. */
const seen = new Map();
const groups = new Map();

/**
 * Newest first: by the stream's (epoch, seq), read from its id `s<epoch>-<seq>`
 * (docs/reference.md): a history begun afresh (a larger epoch) counts its
 * seqs from 1 again.
 */
function newestFirst(a, b) {
  const [ea, eb] = [a, b].map((p) => Number(/^s?(\d+)-\d+$/.exec(p.id)?.[1] ?? 0));
  return eb - ea || b.seq - a.seq;
}

const client = connect(server, { storage: localStorageStorage() });
const sub = client.subscribe(stream, { filter: FILTERS[view.filter] });
sub.on("payment", (p) => {
  add(p);
  render();
});
sub.on("gap", showGap);
sub.on("error", (e) => showNotice(`${stream}: ${e.code} — ${e.message}`));
// The server acknowledged a subscribe: what it sends from now on follows the filter shown.
sub.on("subscribed", () => { $("filters").dataset.applied = view.filter; });
client.on("connect", () => setConnection("connected", "connected"));
client.on("disconnect", () => setConnection("reconnecting", "reconnecting…"));
client.on("error", (e) => console.warn("tidings:", e.code, e.message));

$("stream").textContent = stream;
$("server").textContent = server;

function setConnection(state, text) {
  const el = $("connection");
  el.dataset.state = state;
  el.textContent = text;
}

function add(p) {
  if (seen.has(p.id)) return;
  seen.set(p.id, p);
  const tid = p.data.trackingId;
  const list = groups.get(tid) ?? [];
  list.push(p);
  list.sort(newestFirst);
  groups.set(tid, list);
}

/** Narrowing resubscribes with the filter; widening too, then reads back what the narrower filter left out. */
function setFilter(name) {
  if (name === view.filter) return;
  const from = view.narrowedAt;
  const widening = FILTERS[name] === null;
  view = { filter: name, narrowedAt: widening ? null : (view.filter === "all" ? sub.lastId : from) };
  saveView();
  $("filters").dataset.applied = "";
  sub.setFilter(FILTERS[name]);
  render();
  if (widening) void readBack(from);
}

async function readBack(since) {
  try {
    for (let page = 0; page < 100 && view.filter === "all"; page++) {
      const p = await sub.history({ since: since ?? undefined, status: null, limit: 1000 });
      for (const env of p.data) add(env);
      render();
      if (!p.hasMore || p.data.length === 0) break;
      since = p.data[p.data.length - 1].id;
    }
  } catch (e) {
    showNotice(`${stream}: could not read back the payments the filter left out (${e.code ?? e.message})`);
  }
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function row(p) {
  const tr = document.createElement("tr");
  tr.dataset.id = p.id;
  tr.dataset.source = p.source.id;
  const status = document.createElement("span");
  status.className = `status status-${p.data.status}`;
  status.textContent = p.data.status;
  const statusCell = document.createElement("td");
  statusCell.append(status);
  tr.append(
    // data.timestamp is the on-chain time in seconds.
    cell(timeFormat.format(new Date(p.data.timestamp * 1000))),
    cell(`#${p.source.seq}`, "num"),
    cell(amountFormat.format(p.data.amount), "amount"),
    statusCell,
    cell(String(p.seq), "num"),
    cell(p.id, "mono"),
  );
  return tr;
}

function render() {
  const filter = FILTERS[view.filter];
  const shown = (p) => filter === null || filter.status.includes(p.data.status);
  const list = [...groups]
    .map(([tid, ps]) => [tid, ps.filter(shown)])
    .filter(([, ps]) => ps.length > 0)
    .sort((a, b) => newestFirst(a[1][0], b[1][0])); // the latest activity on top
  $("groups").replaceChildren(...list.map(([tid, ps]) => {
    const section = document.createElement("section");
    section.className = "group";
    section.dataset.tid = tid;
    const h = document.createElement("h2");
    const name = document.createElement("span");
    name.className = "mono";
    name.textContent = tid;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${ps.length} payment${ps.length === 1 ? "" : "s"}`;
    h.append(name, count);
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>Time</th><th title=\"seq in its trackingId\">#</th><th class=\"amount\">Amount</th>" +
      "<th>Status</th><th title=\"seq in the stream\">Stream</th><th>Event</th></tr></thead>";
    const body = document.createElement("tbody");
    body.append(...ps.map(row));
    table.append(body);
    section.append(h, table);
    return section;
  }));
  $("empty").hidden = list.length > 0;
  for (const b of document.querySelectorAll("#filters button")) b.setAttribute("aria-pressed", String(b.dataset.filter === view.filter));
}

function showGap(g) {
  const lost = g.restarted
    ? `the server lost its history after ${g.lastId ?? "the start"}; it resumes at seq ${g.nextSeq}`
    : `seq ${g.fromSeq}–${g.toSeq} are no longer retained`;
  showNotice(`Payments of ${g.trackingId} cannot be recovered: ${lost}.`);
}

function showNotice(text) {
  const div = document.createElement("div");
  div.className = "gap";
  div.setAttribute("role", "alert");
  div.textContent = text;
  $("gaps").append(div);
}

for (const b of document.querySelectorAll("#filters button")) b.addEventListener("click", () => setFilter(b.dataset.filter));
render();
