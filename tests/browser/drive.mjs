// Opens http://localhost:3000/?api=<API URL> in headless Chromium (Debian's, driven by
// playwright-core; no browser download) and prints one JSON line: the page's steps and
// the browser console. Usage: node drive.mjs <API URL> [timeout seconds] [more query, a=b&c=d]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

const [api, timeoutSeconds = "60", query = ""] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "todo-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  timeout: 60_000,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const consoleLines = [];
let result = { steps: [], done: false };
try {
  const page = await context.newPage();
  page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
  page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`));
  await page.goto(`http://localhost:3000/?api=${encodeURIComponent(api)}${query ? `&${query}` : ""}`, { timeout: 30_000 });
  await page.waitForFunction(() => window.__e2e?.done === true, null, { timeout: Number(timeoutSeconds) * 1000 })
    .catch(() => consoleLines.push("driver: the page did not finish in time"));
  result = await page.evaluate(() => window.__e2e ?? { steps: [], done: false });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify({ ...result, console: consoleLines }));
