-- Idempotent creates: a key a client sent with a POST, what it was sent with, and the task
-- that POST created. Keys are per user and stop counting after 24 hours.
CREATE TABLE idempotency_keys (
    user_id      text        NOT NULL,
    key          text        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    request_hash bytea       NOT NULL,
    task_id      uuid        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
-- Expired keys are removed a few at a time by later keyed creates (no separate job).
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- The role every request runs as (`SET LOCAL ROLE todo_app` in its transaction). It has no
-- BYPASSRLS, so the policies below hold even when the login role is a superuser or the
-- table owner, as Neon's default role is.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'todo_app') THEN
        CREATE ROLE todo_app NOLOGIN NOBYPASSRLS;
    END IF;
END
$$;
GRANT todo_app TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO todo_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tasks, idempotency_keys TO todo_app;

-- Row-level security keyed on the request's user id, set per transaction with
-- set_config('app.user_id', …, true). Unset means no rows at all.
ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY tasks_owner ON tasks
    USING (user_id = current_setting('app.user_id', true))
    WITH CHECK (user_id = current_setting('app.user_id', true));

-- idempotency_keys holds no task data, and its cleanup deletes any user's expired keys, so
-- it has no row-level security; every statement on it names the user explicitly.
