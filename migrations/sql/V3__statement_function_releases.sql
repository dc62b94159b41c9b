-- Which statement functions (schema todo_api, see shared::procedures) each release calls, so
-- that `migrate --prune` can drop the functions of releases that nothing runs anymore.
-- `migrate` records its release (the sorted names of its functions) at every run; the most
-- recent run's release is the one deployed.
CREATE SCHEMA IF NOT EXISTS todo_api;
CREATE TABLE todo_api.releases (
    id           text        PRIMARY KEY,
    functions    text[]      NOT NULL,
    installed_at timestamptz NOT NULL
);
