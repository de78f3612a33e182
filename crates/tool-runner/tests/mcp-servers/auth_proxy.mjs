// A streamable-HTTP MCP server that wants a bearer token: server-everything
// (listening on UPSTREAM_PORT) behind a proxy on 127.0.0.1:PORT that answers
// 401 to every request without `Authorization: Bearer ${TOKEN}`.
//
//   PORT=… UPSTREAM_PORT=… TOKEN=… node auth_proxy.mjs
import http from "node:http";

const { PORT, UPSTREAM_PORT, TOKEN } = process.env;
if (!PORT || !UPSTREAM_PORT || !TOKEN) {
  console.error("PORT, UPSTREAM_PORT and TOKEN must be set");
  process.exit(2);
}

process.env.PORT = UPSTREAM_PORT;
await import(
  "./node_modules/@modelcontextprotocol/server-everything/dist/transports/streamableHttp.js"
);

http
  .createServer((req, res) => {
    if (req.headers.authorization !== `Bearer ${TOKEN}`) {
      res.writeHead(401, { "content-type": "text/plain" });
      res.end("missing or wrong bearer token\n");
      return;
    }
    const upstream = http.request(
      {
        host: "127.0.0.1",
        port: Number(UPSTREAM_PORT),
        path: req.url,
        method: req.method,
        headers: req.headers,
      },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  })
  .listen(Number(PORT), "127.0.0.1", () => {
    console.error(`auth proxy on 127.0.0.1:${PORT} → ${UPSTREAM_PORT}`);
  });
