// The client against the real API (scripts/dev under cargo lambda watch). The system test
// tests/system/test_typescript_client.py starts the API and runs this with TODO_API_URL,
// BETTER_AUTH_SECRET and DEV_TOKEN (target/debug/dev-token) set.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";

import { ApiError, createTodoClient } from "../dist/index.js";

const baseUrl = process.env.TODO_API_URL;
const skip = baseUrl ? false : "TODO_API_URL is not set (tests/system/test_typescript_client.py sets it)";
if (!baseUrl && process.env.CI) throw new Error("TODO_API_URL must be set in CI");

function mint(userId, seconds = 600) {
  return execFileSync(process.env.DEV_TOKEN, [userId, String(seconds)], {
    env: { ...process.env },
    encoding: "utf8",
  }).trim();
}

/** A new user with a client whose getToken counts its calls. */
function newUser(tokens) {
  const userId = `ts-${randomUUID()}`;
  const calls = { getToken: 0 };
  const queue = tokens ? [...tokens(userId)] : null;
  const client = createTodoClient({
    baseUrl,
    getToken: async () => {
      calls.getToken += 1;
      return queue ? queue.shift() : mint(userId);
    },
  });
  return { userId, client, calls };
}

/**
 * A client that records the Idempotency-Key of every request it sends; `answer` turns the
 * API's response to the n-th request into what the client sees (by default, itself).
 */
function recordingKeys(getToken, answer = (response) => response) {
  const keys = [];
  const client = createTodoClient({
    baseUrl,
    getToken,
    fetch: async (request) => {
      keys.push(request.headers.get("idempotency-key"));
      return answer(await fetch(request), keys.length);
    },
  });
  return { client, keys };
}

/** A client whose first request reaches the API (a create: 201) and whose answer `lose` replaces. */
function firstAnswerLost(userId, lose) {
  return recordingKeys(
    () => mint(userId),
    (response, n) => {
      if (n > 1) return response;
      assert.equal(response.status, 201);
      return lose();
    },
  );
}

async function rejects(promise, status) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof ApiError, `expected an ApiError, got ${err}`);
    assert.equal(err.status, status, err.message);
    return err;
  }
  assert.fail(`expected ${status}, the call succeeded`);
}

describe("the typed client against the API", { skip }, () => {
  test("create, get, update, toggle, setCompleted, remove", async () => {
    const { userId, client, calls } = newUser();
    const created = await client.create(userId, { title: "  Buy milk ", description: "2 l" });
    assert.equal(created.title, "Buy milk");
    assert.equal(created.user_id, userId);
    assert.match(created.etag, /^"\d+"$/);
    const got = await client.get(userId, created.id);
    assert.deepEqual(got, created);
    const updated = await client.update(userId, created.id, { description: null }, { etag: got.etag });
    assert.equal(updated.description, null);
    assert.notEqual(updated.etag, got.etag);
    const toggled = await client.toggle(userId, created.id, { etag: updated.etag });
    assert.equal(toggled.completed, true);
    const set = await client.setCompleted(userId, created.id, true);
    assert.equal(set.completed, true);
    await client.remove(userId, created.id, { etag: set.etag });
    await rejects(client.get(userId, created.id), 404);
    assert.equal(calls.getToken, 1, "one token serves every call until it expires");
  });

  test("a stale etag is a 412 and changes nothing", async () => {
    const { userId, client } = newUser();
    const task = await client.create(userId, { title: "original" });
    await client.update(userId, task.id, { title: "changed elsewhere" });
    for (const write of [
      () => client.update(userId, task.id, { title: "lost update" }, { etag: task.etag }),
      () => client.toggle(userId, task.id, { etag: task.etag }),
      () => client.setCompleted(userId, task.id, true, { etag: task.etag }),
      () => client.remove(userId, task.id, { etag: task.etag }),
    ]) {
      const err = await rejects(write(), 412);
      assert.equal(typeof err.detail, "string");
    }
    const now = await client.get(userId, task.id);
    assert.equal(now.title, "changed elsewhere");
    assert.equal(now.completed, false);
  });

  test("list passes every query parameter and follows the next page", async () => {
    const { userId, client } = newUser();
    for (const title of ["alpha 1", "beta 2", "alpha 3", "gamma 4"]) {
      await client.create(userId, { title, completed: title === "gamma 4" });
    }
    const first = await client.list(userId, { status: "all", sort: "title", order: "asc", limit: 3 });
    assert.deepEqual(first.tasks.map((t) => t.title), ["alpha 1", "alpha 3", "beta 2"]);
    assert.equal(first.total, 4);
    assert.deepEqual(first.next, { status: "all", sort: "title", order: "asc", limit: 3, offset: 3 });
    const second = await client.list(userId, first.next);
    assert.deepEqual(second.tasks.map((t) => t.title), ["gamma 4"]);
    assert.equal(second.next, null);
    const pending = await client.list(userId, { status: "pending", search: "ALPHA", sort: "created_at", order: "desc" });
    assert.deepEqual(pending.tasks.map((t) => t.title), ["alpha 3", "alpha 1"]);
    assert.equal(pending.total, 2);
    const done = await client.list(userId, { completed: true, offset: 0 });
    assert.deepEqual(done.tasks.map((t) => t.title), ["gamma 4"]);
    assert.deepEqual((await client.list(userId, { sort: "updated_at", limit: 1, offset: 3 })).tasks.length, 1);
  });

  test("errors carry the status and FastAPI's detail", async () => {
    const { userId, client } = newUser();
    const invalid = await rejects(client.create(userId, { title: "   " }), 422);
    assert.ok(Array.isArray(invalid.detail));
    assert.deepEqual(invalid.detail[0].loc, ["body", "title"]);
    assert.ok(invalid.requestId);
    const badQuery = await rejects(client.list(userId, { limit: 0 }), 422);
    assert.deepEqual(badQuery.detail[0].loc, ["query", "limit"]);
    const other = await rejects(client.list(`someone-else-${randomUUID()}`), 403);
    assert.equal(typeof other.detail, "string");
    const missing = await rejects(client.get(userId, randomUUID()), 404);
    assert.equal(missing.detail, "Task not found");
  });

  test("a 401 is retried once with a fresh token", async () => {
    const { userId, client, calls } = newUser((id) => [mint(id, -3600), mint(id)]);
    const page = await client.list(userId);
    assert.equal(page.total, 0);
    assert.equal(calls.getToken, 2);

    const refused = newUser(() => ["not-a-jwt", "still-not-a-jwt"]);
    const err = await rejects(refused.client.list(refused.userId), 401);
    assert.equal(typeof err.detail, "string");
    assert.equal(refused.calls.getToken, 2, "exactly one retry");
  });

  test("after a sign-in as someone else, the new user's token is used, not the cached one", async () => {
    const users = [`ts-${randomUUID()}`, `ts-${randomUUID()}`];
    let signedIn = users[0];
    let fetched = 0;
    const client = createTodoClient({
      baseUrl,
      getToken: () => {
        fetched += 1;
        return mint(signedIn);
      },
    });
    await client.create(users[0], { title: "first user's" });
    signedIn = users[1];
    assert.equal((await client.list(users[1])).total, 0, "the second user's own list");
    assert.equal(fetched, 2, "the first user's token was not sent for the second");
    client.clearToken();
    await client.list(users[1]);
    assert.equal(fetched, 3, "clearToken forgets the token");
  });

  test("a token fetched across clearToken is neither shared nor kept", async () => {
    const userId = `ts-${randomUUID()}`;
    const sent = [];
    let fetched = 0;
    let release;
    const client = createTodoClient({
      baseUrl,
      getToken: async () => {
        fetched += 1;
        if (fetched > 1) return mint(userId, 601);
        await new Promise((resolve) => (release = resolve));
        return mint(userId, 600); // the signed-out session's token, arriving late
      },
      fetch: async (request) => {
        sent.push(request.headers.get("authorization"));
        return fetch(request);
      },
    });
    const before = client.list(userId);
    await new Promise((resolve) => setTimeout(resolve, 20));
    client.clearToken();
    const after = client.list(userId);
    await new Promise((resolve) => setTimeout(resolve, 20));
    release();
    await Promise.all([before, after]);
    assert.equal(fetched, 2, "a call after clearToken does not wait for the earlier getToken");
    // Sent: the new token (the call after clearToken), then the late one (the call before).
    assert.notEqual(sent[0], sent[1]);
    await client.list(userId);
    assert.equal(fetched, 2);
    assert.equal(sent[2], sent[0], "the token kept is the one fetched after clearToken");
  });

  test("a getToken that throws at once does not fail the calls after it", async () => {
    const userId = `ts-${randomUUID()}`;
    let fetched = 0;
    const client = createTodoClient({
      baseUrl,
      getToken: () => {
        fetched += 1;
        if (fetched === 1) throw new Error("offline");
        return mint(userId);
      },
    });
    await assert.rejects(client.list(userId), /offline/);
    assert.equal((await client.list(userId)).total, 0);
  });

  test("a device clock an hour ahead still reuses a token for its lifetime", async () => {
    const { userId, client, calls } = newUser();
    const realNow = Date.now;
    Date.now = () => realNow() + 3_600_000;
    try {
      for (let i = 0; i < 3; i += 1) await client.list(userId);
    } finally {
      Date.now = realNow;
    }
    assert.equal(calls.getToken, 1);
  });

  test("a list whose X-Total-Count cannot be read throws rather than pass a page for the list", async () => {
    const userId = `ts-${randomUUID()}`;
    const { client } = recordingKeys(
      () => mint(userId),
      (response) => {
        const headers = new Headers(response.headers);
        headers.delete("x-total-count");
        headers.delete("link");
        return new Response(response.body, { status: response.status, headers });
      },
    );
    await assert.rejects(client.list(userId), (err) => {
      assert.match(err.message, /X-Total-Count/);
      assert.ok(!(err instanceof TypeError), "an answer came");
      return true;
    });
  });

  test("concurrent calls share one getToken call", async () => {
    const { userId, client, calls } = newUser();
    const pages = await Promise.all(Array.from({ length: 5 }, () => client.list(userId)));
    assert.ok(pages.every((page) => page.total === 0));
    assert.equal(calls.getToken, 1);
  });

  test("outside a secure context (no crypto.randomUUID) create still sends a UUID key", async () => {
    const userId = `ts-${randomUUID()}`;
    const { client, keys } = recordingKeys(() => mint(userId));
    Object.defineProperty(globalThis.crypto, "randomUUID", { value: undefined, configurable: true });
    try {
      await client.create(userId, { title: "from http://192.168.1.20:3000" });
    } finally {
      delete globalThis.crypto.randomUUID;
    }
    assert.equal(typeof globalThis.crypto.randomUUID, "function");
    assert.match(keys[0], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  test("a conditional write without a readable ETag is refused, not sent unconditionally", async () => {
    const { userId, client } = newUser();
    const task = await client.create(userId, { title: "guarded" });
    // Not a TypeError: that would say "no answer came", when nothing was sent.
    await assert.rejects(client.update(userId, task.id, { title: "blind" }, { etag: "" }), (err) => {
      assert.match(err.message, /ETag/);
      assert.ok(!(err instanceof TypeError));
      return true;
    });
    assert.equal((await client.get(userId, task.id)).title, "guarded");
  });

  test("getToken may be Better Auth's authClient.token() answer", async () => {
    const { userId, client } = newUser((id) => [{ data: { token: mint(id) }, error: null }]);
    assert.equal((await client.list(userId)).total, 0);
  });

  test("create sends one Idempotency-Key and reuses it on the retry", async () => {
    const userId = `ts-${randomUUID()}`;
    const tokens = [mint(userId, -3600), mint(userId)];
    const { client, keys } = recordingKeys(() => tokens.shift());
    const task = await client.create(userId, { title: "once" });
    assert.equal(keys.length, 2);
    assert.ok(keys[0] && keys[0] === keys[1], "the retry reuses the key");
    const again = await client.create(userId, { title: "once" }, { idempotencyKey: keys[0] });
    assert.equal(again.id, task.id, "a replayed key returns the first task");
    assert.equal((await client.list(userId)).total, 1);
    await rejects(client.create(userId, { title: "another body" }, { idempotencyKey: keys[0] }), 422);
  });

  // The first create reaches the API and is applied; its answer is then lost: a 504, as
  // when the database connection dies after COMMIT, or none at all, as when the network
  // drops (fetch rejects with a TypeError, as browsers do).
  for (const [lost, lose] of [
    [
      "answered 504 (outcome unknown)",
      () =>
        new Response(JSON.stringify({ detail: "may or may not have been applied" }), {
          status: 504,
          headers: { "content-type": "application/json", "retry-after": "0" },
        }),
    ],
    [
      "whose answer never came (fetch failed)",
      () => {
        throw new TypeError("Failed to fetch");
      },
    ],
  ]) {
    test(`a create ${lost} is retried with the same key and made once`, async () => {
      const userId = `ts-${randomUUID()}`;
      const { client, keys } = firstAnswerLost(userId, lose);
      const task = await client.create(userId, { title: "exactly once" }, { maxWaitMs: 0 });
      assert.equal(keys.length, 2);
      assert.equal(keys[0], keys[1], "the retry reuses the key");
      assert.equal(task.title, "exactly once");
      assert.equal((await client.list(userId)).total, 1);
    });
  }

  test("an error of create carries its key, and a later create with it is safe", async () => {
    const userId = `ts-${randomUUID()}`;
    const { client, keys } = firstAnswerLost(userId, () => {
      throw new TypeError("Failed to fetch");
    });
    let thrown;
    try {
      await client.create(userId, { title: "try again" }, { attempts: 1 });
    } catch (err) {
      thrown = err;
    }
    assert.ok(thrown instanceof TypeError, `${thrown}`);
    assert.equal(thrown.idempotencyKey, keys[0]);
    const task = await client.create(userId, { title: "try again" }, { idempotencyKey: thrown.idempotencyKey });
    assert.equal(task.title, "try again");
    assert.equal((await client.list(userId)).total, 1, "the first attempt's task, not a second");
  });

  test("a long Retry-After is waited at most maxWaitMs", { timeout: 5000 }, async () => {
    const userId = `ts-${randomUUID()}`;
    const { client, keys } = recordingKeys(
      () => mint(userId),
      (response, n) =>
        n > 1
          ? response
          : new Response(JSON.stringify({ detail: "Service unavailable" }), {
              status: 503,
              headers: { "content-type": "application/json", "retry-after": "30" },
            }),
    );
    const started = Date.now();
    await client.create(userId, { title: "soon" }, { maxWaitMs: 50 });
    assert.equal(keys.length, 2);
    assert.ok(Date.now() - started < 4000);
  });

  test("API Gateway's own error bodies keep their message", async () => {
    const userId = `ts-${randomUUID()}`;
    const client = createTodoClient({
      baseUrl,
      getToken: () => mint(userId),
      fetch: async () =>
        new Response(JSON.stringify({ message: "Too Many Requests" }), {
          status: 429,
          headers: { "content-type": "application/json" },
        }),
    });
    const err = await rejects(client.list(userId), 429);
    assert.equal(err.detail, "Too Many Requests");
    assert.equal(err.requestId, null);
  });

  test("an aborted signal cancels a call before anything is sent", async () => {
    const userId = `ts-${randomUUID()}`;
    let sent = 0;
    const client = createTodoClient({
      baseUrl,
      getToken: () => mint(userId),
      fetch: async (request) => {
        sent += 1;
        return fetch(request);
      },
    });
    const controller = new AbortController();
    controller.abort();
    for (const call of [
      () => client.list(userId, {}, { signal: controller.signal }),
      () => client.create(userId, { title: "never" }, { signal: controller.signal }),
      () => client.get(userId, randomUUID(), { signal: controller.signal }),
      () => client.remove(userId, randomUUID(), { signal: controller.signal }),
    ]) {
      await assert.rejects(call(), { name: "AbortError" });
    }
    assert.equal(sent, 0);
    assert.equal((await client.list(userId)).total, 0);
  });

  test("a signal reaches the request and stops a create's wait for its retry", { timeout: 5000 }, async () => {
    const userId = `ts-${randomUUID()}`;
    // A list whose answer never comes until the request's own signal aborts it.
    const hanging = createTodoClient({
      baseUrl,
      getToken: () => mint(userId),
      fetch: (request) =>
        new Promise((_, reject) => request.signal.addEventListener("abort", () => reject(request.signal.reason))),
    });
    const stale = new AbortController();
    const listing = hanging.list(userId, { search: "ab" }, { signal: stale.signal });
    setTimeout(() => stale.abort(), 50);
    await assert.rejects(listing, { name: "AbortError" });

    // A create answered 503 with a long Retry-After, cancelled while it waits.
    const { client, keys } = recordingKeys(
      () => mint(userId),
      () =>
        new Response(JSON.stringify({ detail: "Service unavailable" }), {
          status: 503,
          headers: { "content-type": "application/json", "retry-after": "3" },
        }),
    );
    const unmounted = new AbortController();
    const creating = client.create(userId, { title: "cancelled" }, { signal: unmounted.signal });
    setTimeout(() => unmounted.abort(), 50);
    const err = await creating.then(
      () => assert.fail("the create succeeded"),
      (reason) => reason,
    );
    assert.equal(err.name, "AbortError");
    assert.equal(err.idempotencyKey, keys[0], "the key to try again with");
    assert.equal(keys.length, 1, "no retry after the abort");
  });
});
