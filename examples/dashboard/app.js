// The dashboard's logic: one tidings-client connection, a subscription per
// watched trackingId (kept in localStorage with the SDK's last ids, so a
// reload resumes), a row per payment (newest first), a notice per gap.
import { connect, localStorageStorage } from "./sdk/tidings-client.browser.mjs";

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? "http://127.0.0.1:3000";
const IDS_KEY = `tidings-dashboard:ids ${server}`;
const $ = (id) => document.getElementById(id);

const amountFormat = new Intl.NumberFormat(undefined);
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

const client = connect(server, { storage: localStorageStorage() });
const subs = new Map();

$("server").textContent = server;
client.on("connect", () => setConnection("connected", "connected"));
client.on("disconnect", () => setConnection("reconnecting", "reconnecting…"));
client.on("error", (e) => console.warn("tidings:", e.code, e.message));

function setConnection(state, text) {
  const el = $("connection");
  el.dataset.state = state;
  el.textContent = text;
}

function watched() {
  const fromUrl = params.get("ids");
  if (fromUrl !== null) return fromUrl.split(",").filter(Boolean);
  try {
    return JSON.parse(localStorage.getItem(IDS_KEY) ?? "[]");
  } catch {
    return [];
  }
}

function save() {
  localStorage.setItem(IDS_KEY, JSON.stringify([...subs.keys()]));
}

function watch(trackingId) {
  if (subs.has(trackingId)) return;
  const sub = client.subscribe(trackingId);
  sub.on("payment", showPayment);
  sub.on("gap", showGap);
  sub.on("error", (e) => showNotice(`${trackingId}: ${e.code} — ${e.message}`));
  subs.set(trackingId, sub);
  renderIds();
  save();
}

function unwatch(trackingId) {
  subs.get(trackingId)?.unsubscribe();
  subs.delete(trackingId);
  renderIds();
  save();
}

function renderIds() {
  const list = $("ids");
  list.replaceChildren(
    ...[...subs.keys()].map((tid) => {
      const li = document.createElement("li");
      li.textContent = tid;
      const remove = document.createElement("button");
      remove.textContent = "×";
      remove.title = `Stop watching ${tid}`;
      remove.onclick = () => unwatch(tid);
      li.append(remove);
      return li;
    }),
  );
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function showPayment(p) {
  const row = document.createElement("tr");
  row.dataset.id = p.id;
  const status = document.createElement("span");
  status.className = `status status-${p.data.status}`;
  status.textContent = p.data.status;
  const statusCell = document.createElement("td");
  statusCell.append(status);
  row.append(
    // data.timestamp is the on-chain time in seconds.
    cell(timeFormat.format(new Date(p.data.timestamp * 1000))),
    cell(p.data.trackingId, "mono"),
    cell(String(p.seq)),
    cell(amountFormat.format(p.data.amount), "amount"),
    statusCell,
    cell(p.id, "mono"),
  );
  $("payments").prepend(row);
  $("empty").hidden = true;
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

$("add").addEventListener("submit", (e) => {
  e.preventDefault();
  const tid = $("new-id").value.trim();
  if (tid) watch(tid);
  $("new-id").value = "";
});

for (const tid of watched()) watch(tid);
