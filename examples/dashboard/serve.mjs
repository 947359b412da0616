// Serves the dashboard page and the SDK's browser bundle (built in
// clients/js/dist) on one port: `node serve.mjs [--port 8000]`.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const SDK = path.resolve(here, "../../clients/js/dist");
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json" };
const FILES = { "/": path.join(here, "index.html"), "/index.html": path.join(here, "index.html"), "/app.js": path.join(here, "app.js") };

/** Starts the page server on `port` (0: any free one); resolves to it. */
export function serve(port = 8000, host = "127.0.0.1") {
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    let file = FILES[url.pathname];
    if (!file && url.pathname.startsWith("/sdk/")) {
      const name = path.basename(url.pathname);
      if (/^tidings-client\.browser\.m?js(\.map)?$/.test(name)) file = path.join(SDK, name);
    }
    if (!file) {
      res.writeHead(404).end("not found");
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end(`${path.basename(file)} missing: build the SDK (npm --prefix clients/js run build)`);
    }
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve(server));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf("--port");
  const port = i > 0 ? Number(process.argv[i + 1]) : Number(process.env.PORT ?? 8000);
  const server = await serve(port);
  const { port: bound } = server.address();
  console.log(`dashboard on http://127.0.0.1:${bound}/?server=http://127.0.0.1:3000&stream=merchant-42:*`);
}
