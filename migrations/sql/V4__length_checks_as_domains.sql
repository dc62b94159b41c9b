-- The length checks move from the tables to domains, the columns' types. Postgres parses a
-- table's CHECK constraints anew from their stored text at every INSERT and UPDATE, all of
-- them, whichever columns the statement writes: about 97,000 instructions of a toggle's
-- 220,000 (callgrind, BENCHMARKS.md). A domain's checks are parsed once per connection
-- and run only where a value is assigned to the column.
--
-- The same rules as before, enforced by the database as before (SQLSTATE 23514). Without
-- a rewrite of the tables: a column changes to a domain that has no check yet (the same
-- representation), and each check is added after, validating the stored values.
CREATE DOMAIN task_owner AS text;
CREATE DOMAIN task_title AS text;
CREATE DOMAIN task_description AS text;
CREATE DOMAIN idempotency_key AS text;

-- The policy reads user_id, whose type changes: it is dropped and created again, the same.
DROP POLICY tasks_owner ON tasks;
ALTER TABLE tasks
    DROP CONSTRAINT tasks_user_id_check,
    DROP CONSTRAINT tasks_title_check,
    DROP CONSTRAINT tasks_description_check,
    ALTER COLUMN user_id TYPE task_owner,
    ALTER COLUMN title TYPE task_title,
    ALTER COLUMN description TYPE task_description;
CREATE POLICY tasks_owner ON tasks
    USING (user_id = current_setting('app.user_id', true))
    WITH CHECK (user_id = current_setting('app.user_id', true));

ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_key_check,
    ALTER COLUMN key TYPE idempotency_key;

ALTER DOMAIN task_owner ADD CONSTRAINT task_owner_length
    CHECK (char_length(VALUE) BETWEEN 1 AND 255);
ALTER DOMAIN task_title ADD CONSTRAINT task_title_length
    CHECK (char_length(VALUE) BETWEEN 1 AND 255);
ALTER DOMAIN task_description ADD CONSTRAINT task_description_length
    CHECK (char_length(VALUE) <= 1000);
ALTER DOMAIN idempotency_key ADD CONSTRAINT idempotency_key_length
    CHECK (char_length(VALUE) BETWEEN 1 AND 255);

-- The statement functions of earlier releases return these columns as they read them,
-- now as domains, into row types that say text, which PL/pgSQL refuses ("structure of
-- query does not match function result type"). Their row types take the domains, so a
-- release still draining, or rolled back to, keeps working. (Clients see no change: a
-- result column of a domain type is described as its base type.) This release's
-- statements return the columns as text, into row types of their own.
DO $row_types$
DECLARE
    attribute record;
BEGIN
    FOR attribute IN
        SELECT t.oid::regtype AS row_type, a.attname, d.domain
        FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN (VALUES ('user_id', 'task_owner'), ('title', 'task_title'),
                     ('description', 'task_description')) AS d (attname, domain)
            ON d.attname = a.attname
        WHERE n.nspname = 'todo_api' AND t.typtype = 'c' AND t.typname LIKE 'r\_%'
            AND a.atttypid = 'text'::regtype
    LOOP
        EXECUTE format('ALTER TYPE %s ALTER ATTRIBUTE %I TYPE %s',
                       attribute.row_type, attribute.attname, attribute.domain);
    END LOOP;
END
$row_types$;

-- A column's type change drops its statistics; the planner gets them back now rather than
-- at the next autovacuum analyze, which the change itself does not bring about.
ANALYZE tasks (user_id, title, description);
ANALYZE idempotency_keys (key);
