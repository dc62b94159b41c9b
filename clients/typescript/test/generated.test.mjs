// src/schema.ts is generated from docs/openapi.json: regenerating must change nothing, so
// the document, the API's code (routes_agree.rs) and this client cannot drift apart.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const here = new URL("..", import.meta.url).pathname;

test("src/schema.ts is what openapi-typescript makes of docs/openapi.json", () => {
  const dir = mkdtempSync(join(tmpdir(), "todo-client-"));
  try {
    const fresh = join(dir, "schema.ts");
    // Exactly `npm run generate`, written elsewhere.
    const { generate } = JSON.parse(readFileSync(join(here, "package.json"), "utf8")).scripts;
    const [command, ...args] = generate.split(/\s+/);
    assert.equal(command, "openapi-typescript");
    assert.ok(args.includes("src/schema.ts"));
    execFileSync(
      join(here, "node_modules/.bin/openapi-typescript"),
      args.map((arg) => (arg === "src/schema.ts" ? fresh : arg)),
      { cwd: here, stdio: "pipe", timeout: 60_000 },
    );
    assert.ok(
      readFileSync(fresh, "utf8") === readFileSync(join(here, "src/schema.ts"), "utf8"),
      "src/schema.ts is stale: run `npm run generate` in clients/typescript and commit it",
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the package has no runtime dependency but openapi-fetch", () => {
  const pkg = JSON.parse(readFileSync(join(here, "package.json"), "utf8"));
  assert.deepEqual(Object.keys(pkg.dependencies ?? {}), ["openapi-fetch"]);
});
