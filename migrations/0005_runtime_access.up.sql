-- usersync 0005: a runtime role that hosted Supabase's `postgres` can grant everything it needs.
--
-- On hosted Supabase the migration role (`postgres`) is not a superuser, does not own schema
-- auth and holds USAGE on it without grant option: it cannot give another role USAGE on
-- auth, so a runtime role can never name auth.users. It reads auth.users here instead:
--
-- 1. usersync.auth_users: a view of exactly the columns usersync reads, and each row's
--    address (row_address, the ctid) for the sweep's page ranges. A plain view, owned by the
--    role that ran this migration: PostgreSQL checks auth.users' privileges and row level
--    security against that owner (on hosted Supabase `postgres`, which has BYPASSRLS), and
--    inlines the view, so the planner sees auth.users itself (TID range scans, the primary
--    key). The runtime role gets SELECT on the view, and needs neither USAGE on auth nor
--    BYPASSRLS.
-- 2. usersync.user_id_columns and usersync.user_id_column_orphans(): the integrity check's
--    count of rows whose user is gone, in columns that carry user ids without a foreign key
--    (GoTrue's auth.refresh_tokens.user_id, an application's table). `usersync migrate grant`
--    registers the configured columns; the function, owned by the migration role, counts only
--    registered ones, so the runtime role reads no other table through it.

CREATE VIEW usersync.auth_users AS
SELECT u.ctid AS row_address,
       u.id,
       u.email,
       u.phone,
       u.raw_user_meta_data,
       u.created_at,
       u.last_sign_in_at,
       u.confirmed_at,
       u.banned_until,
       u.deleted_at,
       u.is_anonymous
FROM auth.users u;
COMMENT ON VIEW usersync.auth_users IS 'usersync: the columns of auth.users its runtime role reads, read with the privileges of the role that ran usersync migrate up';

CREATE TABLE usersync.user_id_columns (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    column_name text NOT NULL,
    PRIMARY KEY (schema_name, table_name, column_name)
);
COMMENT ON TABLE usersync.user_id_columns IS 'usersync: columns holding user ids without a foreign key whose orphans the integrity check counts; written by usersync migrate grant from integrity.user_id_columns';

-- For each registered column: whether it exists, whether this function's owner may read it,
-- how many of its rows name no user, and up to `samples` of those values. The names reach the
-- statement only through format()'s %I; a uuid column is compared with the primary key, any
-- other type as text.
CREATE FUNCTION usersync.user_id_column_orphans(samples integer)
RETURNS TABLE (
    schema_name text,
    table_name text,
    column_name text,
    present boolean,
    readable boolean,
    orphans bigint,
    sample text[]
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c record;
    is_uuid boolean;
BEGIN
    FOR c IN SELECT r.schema_name, r.table_name, r.column_name
             FROM usersync.user_id_columns r ORDER BY 1, 2, 3 LOOP
        schema_name := c.schema_name;
        table_name := c.table_name;
        column_name := c.column_name;
        readable := true;
        orphans := 0;
        sample := '{}';
        SELECT a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.uuid'::pg_catalog.regtype
        INTO is_uuid
        FROM pg_catalog.pg_attribute a
        JOIN pg_catalog.pg_class t ON t.oid OPERATOR(pg_catalog.=) a.attrelid
        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.relnamespace
        WHERE n.nspname OPERATOR(pg_catalog.=) c.schema_name
          AND t.relname OPERATOR(pg_catalog.=) c.table_name
          AND a.attname OPERATOR(pg_catalog.=) c.column_name
          AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
        present := FOUND;
        IF present THEN
            BEGIN
                EXECUTE pg_catalog.format(
                    'SELECT pg_catalog.count(*), COALESCE((pg_catalog.array_agg(t.%3$I::pg_catalog.text))[1:$1], ''{}'')
                     FROM %1$I.%2$I t
                     WHERE t.%3$I IS NOT NULL AND NOT EXISTS (SELECT 1 FROM auth.users u WHERE %4$s)',
                    c.schema_name, c.table_name, c.column_name,
                    CASE WHEN is_uuid
                         THEN pg_catalog.format('u.id OPERATOR(pg_catalog.=) t.%I', c.column_name)
                         ELSE pg_catalog.format('u.id::pg_catalog.text OPERATOR(pg_catalog.=) t.%I::pg_catalog.text', c.column_name)
                    END)
                INTO orphans, sample
                USING samples;
            EXCEPTION WHEN insufficient_privilege THEN
                readable := false;
            END;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

REVOKE ALL ON TABLE usersync.auth_users FROM PUBLIC;
REVOKE ALL ON TABLE usersync.user_id_columns FROM PUBLIC;
REVOKE ALL ON FUNCTION usersync.user_id_column_orphans(integer) FROM PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON TABLE usersync.auth_users FROM %I', r);
            EXECUTE pg_catalog.format('REVOKE ALL ON TABLE usersync.user_id_columns FROM %I', r);
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION usersync.user_id_column_orphans(integer) FROM %I', r);
        END IF;
    END LOOP;
END
$$;
