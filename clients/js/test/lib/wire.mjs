// An HTTP proxy in front of a Tidings node for socket.io-client's long-polling
// transport, that makes the faults a healthy server never makes on purpose:
// it drops or duplicates chosen packets of the server's polling responses
// (a delivery lost or repeated on the way), and it can cut the connection
// (every request refused until heal()), so that the client reconnects.
//
// `stats.rest` holds the query of every REST backfill (GET /v1/events) passed on.
//
// A polling response carries Engine.IO packets separated by \x1e; a Socket.IO
// event is the packet `42["event",payload]`.

import http from "node:http";
import { freePort } from "./cluster.mjs";

/**
 * Starts the proxy. `rule(action, match, times = 1)` adds a rule: `match(event,
 * payload)` picks server events; `action` is "drop" or "duplicate".
 */
export async function startWireProxy(targetUrl) {
  const target = new URL(targetUrl);
  const rules = [];
  const sockets = new Set();
  let down = false;
  const stats = { dropped: [], duplicated: [], rest: [] };

  const apply = (text) => {
    const out = [];
    for (const packet of text.split("\x1e")) {
      let event;
      let payload;
      if (packet.startsWith("42")) {
        try { [event, payload] = JSON.parse(packet.slice(2)); } catch { /* not an event */ }
      }
      const rule = event === undefined ? undefined : rules.find((r) => r.times > 0 && r.match(event, payload));
      if (!rule) { out.push(packet); continue; }
      rule.times--;
      if (rule.action === "drop") { stats.dropped.push(payload); continue; }
      stats.duplicated.push(payload);
      out.push(packet, packet);
    }
    // An empty body would be a parse error (the client would reconnect, and recover by resubscribing):
    // a dropped packet that was alone is replaced by an Engine.IO noop.
    if (out.length === 0) out.push("6");
    return out.join("\x1e");
  };

  const server = http.createServer((req, res) => {
    if (down) { req.socket.destroy(); return; }
    if (req.url?.startsWith("/v1/events")) stats.rest.push(new URL(req.url, "http://x").searchParams);
    const up = http.request({
      host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers,
    }, (ur) => {
      const chunks = [];
      ur.on("data", (c) => chunks.push(c));
      ur.on("end", () => {
        let body = Buffer.concat(chunks);
        if (req.method === "GET" && ur.statusCode === 200 && !body.includes(0)) body = Buffer.from(apply(body.toString("utf8")));
        const headers = { ...ur.headers };
        delete headers["transfer-encoding"];
        headers["content-length"] = String(body.length);
        res.writeHead(ur.statusCode, headers);
        res.end(body);
      });
      ur.on("error", () => req.socket.destroy());
    });
    up.on("error", () => req.socket.destroy());
    req.pipe(up);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  const port = await freePort();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });

  return {
    url: `http://127.0.0.1:${port}`,
    stats,
    rule(action, match, times = 1) { rules.push({ action, match, times }); },
    /** Refuses everything (open connections are reset) until heal(). */
    cut() {
      down = true;
      for (const s of sockets) s.destroy();
    },
    heal() { down = false; },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}
