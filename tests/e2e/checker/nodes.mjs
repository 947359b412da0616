// A Tidings node on a fixed port of its own, so that it can be SIGKILLed and
// started again on the same port (clients and ingesters keep its URL), and
// SIGSTOPped / SIGCONTed. Built on harness.startServer (which also kills
// whatever is left at exit).

import { startServer, INGEST_TOKEN, httpGet } from "../lib/harness.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class TidingsNode {
  /**
   * @param {object} o
   * @param {string} o.name   "n0" …
   * @param {number} o.port
   * @param {string[]} o.args variant flags (--redis-url …, --history-limit …)
   * @param {(node, info) => void} [o.onCrash] called when it exits without being killed
   */
  constructor({ name, port, args, onCrash }) {
    this.name = name;
    this.port = port;
    this.args = args;
    this.onCrash = onCrash;
    this.h = null;
    this.state = "down"; // "up" | "stopped" | "down"
    this.incarnations = [];
  }

  get url() { return `http://127.0.0.1:${this.port}`; }
  get live() { return this.state === "up"; }

  async start() {
    if (this.h) throw new Error(`${this.name} already running`);
    const baseArgs = ["--listen", `127.0.0.1:${this.port}`, "--ingest-token", INGEST_TOKEN, "--log-format", "json"];
    let h;
    for (let attempt = 0; ; attempt++) {
      try {
        h = await startServer(this.args, {}, { baseArgs, timeoutMs: 20000 });
        break;
      } catch (err) {
        if (attempt < 20 && /in use|AddrInUse|Address already/i.test(err.message)) { await sleep(200); continue; }
        throw err;
      }
    }
    this.h = h;
    this.incarnations.push(h);
    this.state = "up";
    h.exited.then((info) => {
      if (this.h === h && !h.expected) {
        this.h = null;
        this.state = "down";
        this.onCrash?.(this, info);
      }
    });
  }

  /** Polls /readyz until 200 (there is no event to await), bounded. */
  async waitReady(timeoutMs = 15000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await httpGet(`${this.url}/readyz`, { timeoutMs: 2000 }).catch(() => null);
      if (r?.status === 200) return true;
      if (Date.now() > deadline) return false;
      await sleep(100);
    }
  }

  async kill() {
    const h = this.h;
    if (!h) return;
    h.expected = true;
    this.h = null;
    this.state = "down";
    if (this.paused) { this.paused = false; }
    await h.stop("SIGKILL", 5000);
  }

  pause() {
    if (!this.h || this.state !== "up") return false;
    process.kill(this.h.proc.pid, "SIGSTOP");
    this.state = "stopped";
    return true;
  }

  resume() {
    if (!this.h || this.state !== "stopped") return;
    process.kill(this.h.proc.pid, "SIGCONT");
    this.state = "up";
  }

  /** End of run: SIGCONT if stopped, then SIGTERM (bounded, SIGKILL after). */
  async stop() {
    const h = this.h;
    if (!h) return;
    if (this.state === "stopped") {
      try { process.kill(h.proc.pid, "SIGCONT"); } catch { /* gone */ }
    }
    h.expected = true;
    this.h = null;
    this.state = "down";
    await h.stop("SIGTERM", 8000).catch(() => {});
  }

  /** Logs of every incarnation, oldest first. */
  logs() {
    return this.incarnations.map((h, i) => `===== ${this.name} incarnation ${i + 1} (pid ${h.proc.pid}) =====\n${h.logs()}`).join("\n");
  }
}
