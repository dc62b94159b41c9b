// A frontend's origin, as a Next.js app with Better Auth would have it, on
// http://localhost:3000: Better Auth (email and password, the jwt plugin with its
// defaults: EdDSA, JWKS at /api/auth/jwks, iss = aud = the base URL, 15-minute tokens)
// under /api/auth/*, and a page (app/page.ts bundled with esbuild) at /.
//
// Environment: AUTH_DATABASE_URL (its own Postgres database; its tables are created at
// start), BETTER_AUTH_SECRET. Prints "auth server ready" once it listens.
import { createServer } from "node:http";
import { fileURLToPath } from "node:url";

import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";
import * as esbuild from "esbuild";
import pg from "pg";

const BASE_URL = "http://localhost:3000";
const here = fileURLToPath(new URL(".", import.meta.url));

const pool = new pg.Pool({ connectionString: process.env.AUTH_DATABASE_URL, max: 5 });
// An idle connection that the server closes is replaced on the next query.
pool.on("error", (err) => console.error(`auth database: ${err.message}`));
export const auth = betterAuth({
  baseURL: BASE_URL,
  secret: process.env.BETTER_AUTH_SECRET,
  database: pool,
  emailAndPassword: { enabled: true },
  plugins: [jwt()],
  telemetry: { enabled: false },
});

const { runMigrations } = await getMigrations(auth.options);
await runMigrations();

const bundle = await esbuild.build({
  entryPoints: [`${here}app/page.ts`],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "chrome120",
  write: false,
  logLevel: "warning",
});
const script = bundle.outputFiles[0].contents;

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>todo e2e</title></head>
<body><pre id="log"></pre><script type="module" src="/app.js"></script></body></html>`;

const authHandler = toNodeHandler(auth);
const server = createServer((req, res) => {
  const path = new URL(req.url, BASE_URL).pathname;
  if (path.startsWith("/api/auth/")) return authHandler(req, res);
  if (path === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    return res.end(page);
  }
  if (path === "/app.js") {
    res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
    return res.end(script);
  }
  if (path === "/favicon.ico") {
    res.writeHead(204);
    return res.end();
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found");
});

server.listen(3000, "127.0.0.1", () => console.log("auth server ready"));
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    pool.end().finally(() => process.exit(0));
  });
}
