/**
 * A typed client for the todo API. Every type comes from `./schema.js`, which
 * `npm run generate` produces from docs/openapi.json (never edit it by hand); the calls go
 * through openapi-fetch, so a path, parameter or body that the document does not allow
 * does not compile.
 */
import createClient from "openapi-fetch";
import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths } from "./schema.js";

/** A stored task, as the API returns it. */
export type Task = components["schemas"]["Task"];
/** The body of a create. */
export type TaskCreate = components["schemas"]["TaskCreate"];
/**
 * The body of an update: at least one of `title`, `description`, `completed` (a `null`
 * title or completed counts as absent). Written out here: openapi-typescript renders the
 * schema's `anyOf` as a union with the bare object, which `{}` (a 422) would satisfy.
 */
export type TaskUpdate = {
  title?: Task["title"] | null;
  description?: Task["description"];
  completed?: Task["completed"] | null;
} & ({ title: Task["title"] } | { description: Task["description"] } | { completed: Task["completed"] });
/** One item of a 422's `detail`, in FastAPI's shape. */
export type ValidationErrorItem = components["schemas"]["ValidationErrorItem"];
/** The query parameters of a list: filters, sort and page. */
export type ListQuery = NonNullable<operations["listTasks"]["parameters"]["query"]>;

/** A task together with its `ETag`; pass `etag` back to make a write conditional. */
export type VersionedTask = Task & { etag: string };

/** One page of a list. */
export interface TaskPage {
  tasks: Task[];
  /** All tasks matching the filters (`X-Total-Count`; a list that cannot read it throws). */
  total: number;
  /** The query of the next page, or `null` on the last page (from `Link: rel="next"`). */
  next: ListQuery | null;
}

/** A token, or Better Auth's `authClient.token()` answer (`{ data: { token } }`). */
export type TokenResult = string | null | undefined | { data?: { token?: string } | null };

export interface TodoClientOptions {
  /** The API's base URL, e.g. `https://abc.execute-api.us-east-1.amazonaws.com`. */
  baseUrl: string;
  /**
   * Returns a JWT: Better Auth's `authClient.token` (jwt plugin) as it is, or any function
   * returning a token. Called when no unexpired token of the user in the path is cached
   * (one call at a time: concurrent requests share it), and once more after a 401 or 403.
   * A token is reused until 30 s before its `exp`; on a device whose clock is more than 5
   * minutes off the token's `iat`, until 30 s before its lifetime (`exp - iat`) has passed
   * since it arrived. So return a token issued just now, as `authClient.token` does.
   */
  getToken: () => TokenResult | Promise<TokenResult>;
  /** A `fetch` to use instead of the global one (tests, server-side rendering). */
  fetch?: typeof globalThis.fetch;
}

/** What every call takes. */
export interface CallOptions {
  /**
   * Cancels the call, and a create's retries and waits: it rejects with the signal's reason
   * (an `AbortError`). A write cancelled after it was sent has an unknown outcome.
   */
  signal?: AbortSignal;
}

/** Options of a conditional write. */
export interface IfMatch extends CallOptions {
  /**
   * The task's `etag`: the write fails with 412 and changes nothing if the task changed. An
   * empty one (the `ETag` header could not be read) throws rather than write unconditionally.
   */
  etag?: string;
}

/** Any answer that is not a success: the status and FastAPI's `detail`. */
export class ApiError extends Error {
  readonly status: number;
  /** A message, or the list of validation errors of a 422. */
  readonly detail: string | ValidationErrorItem[];
  readonly requestId: string | null;
  /** From `Retry-After` on a 503, in milliseconds. */
  readonly retryAfterMs: number | null;
  /** On an error of `create`: the `Idempotency-Key` it sent, to retry the create with. */
  idempotencyKey?: string;

  constructor(
    status: number,
    detail: string | ValidationErrorItem[],
    requestId: string | null,
    retryAfterMs: number | null = null,
  ) {
    super(`${status}: ${typeof detail === "string" ? detail : detail.map((e) => e.msg).join("; ")}`);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.requestId = requestId;
    this.retryAfterMs = retryAfterMs;
  }
}

type Answer = { data?: unknown; error?: unknown; response: Response };

/** The longest `create` waits before a retry by default, whatever `Retry-After` says. */
const MAX_RETRY_WAIT_MS = 10_000;

/** Tokens are reused until 30 s before they expire, for the user they name (`sub`). */
const TOKEN_MARGIN_MS = 30_000;

/**
 * A token whose `iat` is further than this from the device's clock was issued by a clock
 * that disagrees with it: its lifetime (`exp - iat`) is then counted from its arrival.
 */
const CLOCK_AGREEMENT_MS = 5 * 60_000;

export function createTodoClient(options: TodoClientOptions) {
  const api = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  let cached: { token: string; expiresAt: number; subject: string | null } | null = null;
  let pending: Promise<string> | null = null;
  // Bumped by clearToken: a getToken call that started before it neither caches its token
  // nor serves calls made after it (it may still be the signed-out user's).
  let generation = 0;

  /** A token from `getToken`; concurrent callers share one call. */
  function fetchToken(): Promise<string> {
    if (pending) return pending;
    const started = generation;
    // In a callback, so that `pending` is set before getToken runs (one that throws at once
    // must not leave its rejection behind as `pending` for every later call).
    const call = Promise.resolve().then(async () => {
      try {
        const result = await options.getToken();
        const value = typeof result === "string" ? result : (result?.data?.token ?? null);
        if (!value) throw new ApiError(401, "getToken returned no token", null);
        if (started === generation) {
          const claims = claimsOf(value);
          cached = { token: value, expiresAt: claims.expiresAt - TOKEN_MARGIN_MS, subject: claims.sub };
        }
        return value;
      } finally {
        if (pending === call) pending = null;
      }
    });
    pending = call;
    return call;
  }

  /** The cached token while it is unexpired and names `userId` (when it names anyone). */
  async function token(userId: string, fresh: boolean): Promise<string> {
    const reusable =
      cached && Date.now() < cached.expiresAt && (cached.subject === null || cached.subject === userId);
    if (!fresh && cached && reusable) return cached.token;
    return fetchToken();
  }

  /**
   * Runs a request for `userId` with a token; after a 401 or 403, once more with a fresh
   * token (a sign-in as someone else since the token was cached).
   */
  async function send<A extends Answer>(
    userId: string,
    signal: AbortSignal | undefined,
    request: (headers: Record<string, string>) => Promise<A>,
  ) {
    const attempt = async (fresh: boolean) => {
      signal?.throwIfAborted();
      const bearer = await token(userId, fresh);
      signal?.throwIfAborted();
      return request({ Authorization: `Bearer ${bearer}` });
    };
    let answer = await attempt(false);
    if (answer.response.status === 401 || answer.response.status === 403) {
      answer = await attempt(true);
    }
    if (!answer.response.ok) throw toApiError(answer);
    return answer as A & { data: Exclude<A["data"], undefined> };
  }

  const user = (userId: string) => ({ user_id: userId });
  const task = (userId: string, id: string) => ({ user_id: userId, id });
  const ifMatch = (opts?: IfMatch) => {
    if (opts && "etag" in opts && !opts.etag) {
      // A task whose `ETag` could not be read (a CORS setup that does not expose it): a
      // write sent without `If-Match` would not be conditional at all.
      // Not a TypeError, which says that no answer came: this sends nothing.
      throw new Error(
        "no ETag to send as If-Match (is ETag in the API's CORS ExposeHeaders?); refusing an unconditional write",
      );
    }
    return opts?.etag ? { "If-Match": opts.etag } : {};
  };

  return {
    /** Forgets the cached token: call it when the user signs out. */
    clearToken(): void {
      generation += 1;
      cached = null;
      pending = null;
    },

    /** `GET /api/{user_id}/tasks`: one page of tasks, the total and the next page's query. */
    async list(userId: string, query: ListQuery = {}, opts: CallOptions = {}): Promise<TaskPage> {
      const { signal } = opts;
      const { data, response } = await send(userId, signal, (headers) =>
        api.GET("/api/{user_id}/tasks", { params: { path: user(userId), query }, headers, signal }),
      );
      const total = response.headers.get("x-total-count");
      if (total === null) {
        // The API always sends it: a CORS setup that does not expose it hides `Link` too, and
        // a page without them would pass for the whole list.
        throw new Error(
          "no X-Total-Count on the list (are X-Total-Count and Link in the API's CORS ExposeHeaders?); the page may not be the whole list",
        );
      }
      return { tasks: data, total: Number(total), next: nextPage(response.headers.get("link")) };
    },

    /**
     * `POST /api/{user_id}/tasks`, with an `Idempotency-Key` generated here (or given) and
     * reused on every retry, so a retried create never creates a second task. A 503 (not
     * done), a 504 (outcome unknown) or no answer at all (`fetch` failed: the outcome is
     * unknown too) is retried with the same key up to `attempts` times in all (3; at most 10), after
     * `Retry-After` (or a second; at most `maxWaitMs`): the retry returns the task if an
     * earlier attempt did create it. Every error it throws carries the key as
     * `idempotencyKey`: a later create with it (a "try again" button) is just as safe.
     */
    async create(
      userId: string,
      body: TaskCreate,
      opts: CallOptions & { idempotencyKey?: string; attempts?: number; maxWaitMs?: number } = {},
    ): Promise<VersionedTask> {
      const { signal } = opts;
      const key = opts.idempotencyKey ?? newKey();
      const attempts = Math.min(10, Math.max(1, opts.attempts ?? 3) || 1);
      const maxWaitMs = Math.max(0, opts.maxWaitMs ?? MAX_RETRY_WAIT_MS);
      for (let attempt = 1; ; attempt++) {
        try {
          const { data, response } = await send(userId, signal, (headers) =>
            api.POST("/api/{user_id}/tasks", {
              params: { path: user(userId), header: { "Idempotency-Key": key } },
              body,
              headers,
              signal,
            }),
          );
          return versioned(data, response);
        } catch (err) {
          // fetch rejects with a TypeError when no answer came (an abort is a DOMException).
          const unanswered = err instanceof TypeError && !signal?.aborted;
          const retriable = unanswered || (err instanceof ApiError && (err.status === 503 || err.status === 504));
          if (err instanceof Error) (err as Error & { idempotencyKey?: string }).idempotencyKey = key;
          if (!retriable || attempt >= attempts) throw err;
          const wait = err instanceof ApiError ? (err.retryAfterMs ?? 1000) : 1000;
          await sleep(Math.min(wait, maxWaitMs), signal).catch((reason: unknown) => {
            if (reason instanceof Error) (reason as Error & { idempotencyKey?: string }).idempotencyKey = key;
            throw reason;
          });
        }
      }
    },

    /** `GET /api/{user_id}/tasks/{id}` */
    async get(userId: string, id: string, opts: CallOptions = {}): Promise<VersionedTask> {
      const { signal } = opts;
      const { data, response } = await send(userId, signal, (headers) =>
        api.GET("/api/{user_id}/tasks/{id}", { params: { path: task(userId, id) }, headers, signal }),
      );
      return versioned(data, response);
    },

    /** `PUT /api/{user_id}/tasks/{id}`: a partial update. */
    async update(userId: string, id: string, changes: TaskUpdate, opts?: IfMatch): Promise<VersionedTask> {
      const { data, response } = await send(userId, opts?.signal, (headers) =>
        api.PUT("/api/{user_id}/tasks/{id}", {
          params: { path: task(userId, id), header: ifMatch(opts) },
          body: changes,
          headers,
          signal: opts?.signal,
        }),
      );
      return versioned(data, response);
    },

    /** `PATCH /api/{user_id}/tasks/{id}/complete` without a body: flips `completed`. */
    async toggle(userId: string, id: string, opts?: IfMatch): Promise<VersionedTask> {
      const { data, response } = await send(userId, opts?.signal, (headers) =>
        api.PATCH("/api/{user_id}/tasks/{id}/complete", {
          params: { path: task(userId, id), header: ifMatch(opts) },
          headers,
          signal: opts?.signal,
        }),
      );
      return versioned(data, response);
    },

    /** `PATCH /api/{user_id}/tasks/{id}/complete` with `{"completed": …}`. */
    async setCompleted(userId: string, id: string, completed: boolean, opts?: IfMatch): Promise<VersionedTask> {
      const { data, response } = await send(userId, opts?.signal, (headers) =>
        api.PATCH("/api/{user_id}/tasks/{id}/complete", {
          params: { path: task(userId, id), header: ifMatch(opts) },
          body: { completed },
          headers,
          signal: opts?.signal,
        }),
      );
      return versioned(data, response);
    },

    /** `DELETE /api/{user_id}/tasks/{id}` */
    async remove(userId: string, id: string, opts?: IfMatch): Promise<void> {
      await send(userId, opts?.signal, (headers) =>
        api.DELETE("/api/{user_id}/tasks/{id}", {
          params: { path: task(userId, id), header: ifMatch(opts) },
          headers,
          signal: opts?.signal,
        }),
      );
    },
  };
}

export type TodoClient = ReturnType<typeof createTodoClient>;

/** Waits `ms`, or rejects with `signal`'s reason as soon as it aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function versioned(data: Task, response: Response): VersionedTask {
  return { ...data, etag: response.headers.get("etag") ?? "" };
}

function toApiError({ error, response }: Answer): ApiError {
  const body = (error && typeof error === "object" ? error : {}) as { detail?: unknown; message?: unknown };
  const detail =
    typeof body.detail === "string" || Array.isArray(body.detail)
      ? (body.detail as string | ValidationErrorItem[])
      : // API Gateway's own answers (its 429, a throttled or failed invocation's 500).
        typeof body.message === "string"
        ? body.message
        : response.statusText || `HTTP ${response.status}`;
  const header = response.headers.get("retry-after");
  const retryAfter = header === null || header.trim() === "" ? NaN : Number(header);
  return new ApiError(
    response.status,
    detail,
    response.headers.get("x-request-id"),
    Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter * 1000 : null,
  );
}

/**
 * When a JWT just received expires on this device's clock, in milliseconds (0, use once,
 * when it cannot be read), and the user it names (`sub`, or Better Auth's `user.id`; null
 * when it names none). Its `exp`, unless its `iat` is more than 5 minutes off this device's
 * clock: then the device clock is off (a token is issued just before `getToken` returns it)
 * and the expiry is now plus the token's lifetime, so that a clock ahead of the issuer's
 * does not make every call fetch a token. (A token kept for over 5 minutes before
 * `getToken` returned it would then be kept past its `exp`: its 401 fetches a fresh one.)
 */
function claimsOf(jwt: string): { expiresAt: number; sub: string | null } {
  try {
    const payload = jwt.split(".")[1] ?? "";
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json) as {
      exp?: unknown;
      iat?: unknown;
      sub?: unknown;
      user?: { id?: unknown };
    };
    const sub = typeof claims.sub === "string" ? claims.sub : claims.user?.id;
    const { exp, iat } = claims;
    const now = Date.now();
    const expiresAt =
      typeof exp !== "number"
        ? 0
        : typeof iat === "number" && iat < exp && Math.abs(now - iat * 1000) > CLOCK_AGREEMENT_MS
          ? now + (exp - iat) * 1000
          : exp * 1000;
    return { expiresAt, sub: typeof sub === "string" ? sub : null };
  } catch {
    return { expiresAt: 0, sub: null };
  }
}

/**
 * A fresh random key (a version 4 UUID). `crypto.randomUUID` exists only in secure contexts
 * (HTTPS, localhost); `crypto.getRandomValues` also on plain HTTP (a phone on the LAN).
 */
function newKey(): string {
  if (typeof globalThis.crypto.randomUUID === "function") return globalThis.crypto.randomUUID();
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The query of `Link: <…>; rel="next"`, or null. */
function nextPage(link: string | null): ListQuery | null {
  const match = link?.match(/<([^>]*)>\s*;\s*rel="?next"?/);
  if (!match?.[1]) return null;
  const params = new URL(match[1], "http://relative.invalid").searchParams;
  const query: Record<string, string | number | boolean> = {};
  for (const [name, value] of params) {
    if (name in query) continue; // the API reads the first of repeated parameters
    query[name] =
      name === "limit" || name === "offset" ? Number(value) : name === "completed" ? value === "true" : value;
  }
  return query as ListQuery;
}
