// Compile-time checks of the client's types (`npm run typecheck`, which scripts/test runs):
// each line under `@ts-expect-error` must fail to compile, or the check fails.
import { ApiError, createTodoClient } from "../src/index.js";

declare const client: ReturnType<typeof createTodoClient>;

export async function bodiesAndQueriesAreTyped(): Promise<void> {
  await client.update("u", "t", { title: "x" });
  await client.update("u", "t", { description: null });
  await client.update("u", "t", { completed: true });
  // @ts-expect-error a misspelt field
  await client.update("u", "t", { titel: "x" });
  // @ts-expect-error not an object
  await client.update("u", "t", 42);
  // @ts-expect-error nothing to change (a 422)
  await client.update("u", "t", {});
  // @ts-expect-error a null title counts as absent: nothing to change (a 422)
  await client.update("u", "t", { title: null });
  await client.update("u", "t", { title: null, completed: false });
  await client.list("u", { completed: true });
  await client.list("u", {}, { signal: new AbortController().signal });
  await client.update("u", "t", { title: "x" }, { etag: '"1"', signal: AbortSignal.timeout(1000) });
  // @ts-expect-error the filter is a boolean
  await client.list("u", { completed: "true" });
}

export function validationContextIsUnknownUntilChecked(err: ApiError): number | undefined {
  const limit = typeof err.detail === "string" ? undefined : err.detail[0]?.ctx?.["max_length"];
  // @ts-expect-error any JSON value: unknown, not a number, until checked
  const unchecked: number | undefined = limit;
  return typeof limit === "number" ? limit : unchecked;
}
