// A TCP proxy in front of a redis-server, for the faults no Redis command
// can make for one node only:
//
// - hold(): the replies to the node's command connections wait (Redis
//   "answers slowly" to that node's requests), while its pub/sub connection
//   keeps flowing; release() sends what waited, in order.
// - cutPubsub(): the node's pub/sub connection is dropped and new
//   connections are refused until heal() (publications sent meanwhile are
//   lost to that node, as in a network partition).
// - dropSubscription(channel): Redis forgets one of the node's
//   subscriptions while the node believes it holds it.
//
// A connection is the pub/sub one once its client has sent a SUBSCRIBE.

import net from "node:net";
import { freePort } from "./cluster.mjs";
import { withTimeout } from "./harness.mjs";

export async function startRedisProxy(redisPort) {
  const conns = new Set();
  let holding = false;
  let refusing = false;
  // Waiters for a client→Redis chunk matching a pattern.
  const watchers = new Set();

  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(redisPort, "127.0.0.1");
    const c = { client, upstream, pubsub: false, held: [] };
    conns.add(c);
    const close = () => {
      conns.delete(c);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
    client.on("data", (buf) => {
      const text = buf.toString("latin1");
      if (!c.pubsub && /SUBSCRIBE/i.test(text)) c.pubsub = true;
      if (!c.pubsub) {
        for (const w of watchers) if (w.pattern.test(text)) w.resolve();
      }
      upstream.write(buf);
    });
    upstream.on("data", (buf) => {
      if (holding && !c.pubsub) c.held.push(buf);
      else client.write(buf);
    });
  });
  const port = await freePort();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });

  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    /** Replies to command connections wait until release(). */
    hold() { holding = true; },
    release() {
      holding = false;
      for (const c of conns) {
        for (const buf of c.held.splice(0)) c.client.write(buf);
      }
    },
    /**
     * Resolves when a command connection sends something matching
     * `pattern` (e.g. /EVALSHA/ for a script call), from now on.
     */
    seen(pattern, timeoutMs = 5000) {
      let w;
      const p = new Promise((resolve) => {
        w = { pattern, resolve };
        watchers.add(w);
      });
      return withTimeout(p, timeoutMs, `a command matching ${pattern} through the Redis proxy`)
        .finally(() => watchers.delete(w));
    },
    /** Drops the pub/sub connections and refuses new ones until heal(). */
    cutPubsub() {
      refusing = true;
      let cut = 0;
      for (const c of [...conns]) {
        if (c.pubsub) {
          cut++;
          c.client.destroy();
          c.upstream.destroy();
        }
      }
      return cut;
    },
    heal() { refusing = false; },
    /**
     * Unsubscribes the node's pub/sub connection from `channel` behind its
     * back (an UNSUBSCRIBE written upstream as if the node had sent it):
     * the node believes it listens, Redis no longer delivers. Returns how
     * many connections it was done on.
     */
    dropSubscription(channel) {
      const arg = Buffer.from(channel, "utf8");
      const cmd = Buffer.concat([Buffer.from(`*2\r\n$11\r\nUNSUBSCRIBE\r\n$${arg.length}\r\n`), arg, Buffer.from("\r\n")]);
      let done = 0;
      for (const c of conns) {
        if (c.pubsub) {
          c.upstream.write(cmd);
          done++;
        }
      }
      return done;
    },
    /** What each proxied connection is, for diagnostics. */
    connections() {
      return [...conns].map((c) => ({ pubsub: c.pubsub, held: c.held.length, port: c.client.remotePort }));
    },
    async stop() {
      for (const c of [...conns]) {
        c.client.destroy();
        c.upstream.destroy();
      }
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
