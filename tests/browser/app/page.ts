// The page tests/system/test_browser.py opens at http://localhost:3000/?api=<API URL>:
// it signs a new user up with Better Auth, then runs the README's example (./example.ts)
// and every operation of the typed client against the API, from the browser, and
// publishes what happened as window.__e2e = { steps: [{ name, ok, error? }], done }.
// With &expect=unavailable (the API's database is down), it signs up and then checks only
// that the API's 503 reaches browser code whole.
import { ApiError } from "@todo-api/client";
import { addTask, authClient, todos } from "./example";

type Step = { name: string; ok: boolean; error?: string; errorName?: string; status?: number };
const steps: Step[] = [];
const state: { steps: Step[]; done: boolean } = { steps, done: false };
(window as unknown as { __e2e: typeof state }).__e2e = state;
const log = document.getElementById("log")!;

async function step(name: string, body: () => Promise<void>): Promise<boolean> {
  try {
    await body();
    steps.push({ name, ok: true });
  } catch (err) {
    const e = err as Error;
    steps.push({ name, ok: false, error: e.message, errorName: e.name, status: err instanceof ApiError ? err.status : undefined });
  }
  log.textContent += `${name}: ${steps.at(-1)!.ok ? "ok" : steps.at(-1)!.error}\n`;
  return steps.at(-1)!.ok;
}

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

async function expectStatus(status: number, call: () => Promise<unknown>) {
  try {
    await call();
  } catch (err) {
    check(err instanceof ApiError, `expected an ApiError ${status}, got ${err}`);
    check(err.status === status, `expected ${status}, got ${err.status}: ${err.message}`);
    return err;
  }
  throw new Error(`expected ${status}, the call succeeded`);
}

async function run() {
  const params = new URLSearchParams(location.search);
  const api = params.get("api")!;
  const email = `e2e-${crypto.randomUUID()}@example.com`;
  let userId = "";
  const client = todos(api);

  if (!(await step("sign up with Better Auth", async () => {
    const { data, error } = await authClient.signUp.email({ email, password: crypto.randomUUID(), name: "E2E" });
    check(!error && data, `sign-up failed: ${error?.message}`);
    userId = data.user.id;
  }))) return;

  if (!(await step("get a JWT from the jwt plugin", async () => {
    const { data, error } = await authClient.token();
    check(!error && data?.token, `no token: ${error?.message}`);
    const claims = JSON.parse(atob(data.token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/")));
    const header = JSON.parse(atob(data.token.split(".")[0]!.replace(/-/g, "+").replace(/_/g, "/")));
    check(header.alg === "EdDSA", `alg ${header.alg}`);
    check(claims.sub === userId, "sub is the user id");
    check(claims.iss === location.origin && claims.aud === location.origin, "iss and aud are the base URL");
    check(claims.exp - claims.iat === 900, "a 15-minute token");
  }))) return;

  if (params.get("expect") === "unavailable") {
    await step("a 503's Retry-After and X-Request-Id are readable", async () => {
      const err = await expectStatus(503, () => client.list(userId));
      check(err.retryAfterMs === 2000, `Retry-After read as ${err.retryAfterMs} ms, not 2000`);
      check(err.requestId, "X-Request-Id is readable");
    });
    return;
  }

  let id = "";
  let etag = "";
  if (!(await step("create (the README example)", async () => {
    const task = await addTask(api, "Buy milk");
    check(task.title === "Buy milk" && task.user_id === userId, "the created task");
    check(/^"\d+"$/.test(task.etag), `an ETag, got ${task.etag}`);
    ({ id, etag } = task);
  }))) return;

  await step("list", async () => {
    await client.create(userId, { title: "Walk the dog", completed: true });
    const page = await client.list(userId, { status: "pending", sort: "title", limit: 10 });
    check(page.total === 1 && page.tasks[0]?.id === id, `pending tasks: ${JSON.stringify(page)}`);
    const all = await client.list(userId, { limit: 1 });
    check(all.total === 2 && all.tasks.length === 1 && all.next?.offset === 1, "X-Total-Count and Link are readable");
  });
  await step("get", async () => {
    const task = await client.get(userId, id);
    check(task.id === id && task.etag === etag, "the same task and ETag");
  });
  await step("update with If-Match", async () => {
    const task = await client.update(userId, id, { description: "2 litres" }, { etag });
    check(task.description === "2 litres" && task.etag !== etag, "updated, new ETag");
    etag = task.etag;
  });
  await step("toggle with If-Match", async () => {
    const task = await client.toggle(userId, id, { etag });
    check(task.completed, "completed");
    etag = task.etag;
  });
  await step("a stale If-Match is 412", async () => {
    await expectStatus(412, () => client.update(userId, id, { title: "lost" }, { etag: '"1"' }));
    check((await client.get(userId, id)).title === "Buy milk", "nothing changed");
  });
  await step("a keyed create replayed returns the same task", async () => {
    const key = crypto.randomUUID();
    const first = await client.create(userId, { title: "once" }, { idempotencyKey: key });
    const again = await client.create(userId, { title: "once" }, { idempotencyKey: key });
    check(first.id === again.id, "same id");
    check((await client.list(userId, { search: "once" })).total === 1, "created once");
  });
  await step("another user's path is 403", async () => {
    const err = await expectStatus(403, () => client.list("someone-else"));
    check(typeof err.detail === "string", "detail is a string");
  });
  await step("invalid input is 422 with FastAPI's detail", async () => {
    const err = await expectStatus(422, () => client.create(userId, { title: "" }));
    check(Array.isArray(err.detail) && err.detail[0]?.loc?.[1] === "title", "a 422 list");
  });
  await step("delete with If-Match", async () => {
    await client.remove(userId, id, { etag });
    await expectStatus(404, () => client.get(userId, id));
  });
}

run()
  .catch((err) => steps.push({ name: "page", ok: false, error: String(err) }))
  .finally(() => { state.done = true; });
