-- Tasks, each owned by one user (the token's `sub`, an opaque string, not a UUID).
CREATE TABLE tasks (
    id          uuid        PRIMARY KEY,
    user_id     text        NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 255),
    title       text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 255),
    description text                 CHECK (char_length(description) <= 1000),
    completed   boolean     NOT NULL DEFAULT false,
    -- Incremented by every write; the basis of ETags.
    version     bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every query filters on the owner; the default listing order rides this index.
CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at, id);
