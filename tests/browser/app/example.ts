import { createAuthClient } from "better-auth/client";
import { jwtClient } from "better-auth/client/plugins";
import { createTodoClient, type TodoClient } from "@todo-api/client";

export const authClient = createAuthClient({ plugins: [jwtClient()] });

// Your API's URL (the ApiUrl output of `sam deploy`, or scripts/dev's http://127.0.0.1:9000).
// One client per URL, kept: it reuses its token (clearToken() it when the user signs out).
const clients = new Map<string, TodoClient>();
export const todos = (apiUrl: string): TodoClient =>
  clients.get(apiUrl) ??
  clients.set(apiUrl, createTodoClient({ baseUrl: apiUrl, getToken: authClient.token })).get(apiUrl)!;

export async function addTask(apiUrl: string, title: string, idempotencyKey?: string) {
  const { data: session } = await authClient.getSession();
  if (!session) throw new Error("not signed in");
  return todos(apiUrl).create(session.user.id, { title }, { idempotencyKey });
}
