import { createAuthClient } from "better-auth/client";
import { jwtClient } from "better-auth/client/plugins";
import { createTodoClient } from "@todo-api/client";

export const authClient = createAuthClient({ plugins: [jwtClient()] });

// Your API's URL (the ApiUrl output of `sam deploy`, or scripts/dev's http://127.0.0.1:9000).
export const todos = (apiUrl: string) =>
  createTodoClient({ baseUrl: apiUrl, getToken: authClient.token });

export async function addTask(apiUrl: string, title: string) {
  const { data: session } = await authClient.getSession();
  if (!session) throw new Error("not signed in");
  return todos(apiUrl).create(session.user.id, { title });
}
