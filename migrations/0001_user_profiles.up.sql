-- usersync 0001: the profile table, the profile builder shared by trigger and daemon,
-- a sign-up trigger that can never fail a sign-up, and a durable repair queue.
-- Plain SQL: `usersync migrate up` runs it in one transaction; `psql -1 -f` does too.

CREATE SCHEMA usersync;
COMMENT ON SCHEMA usersync IS 'usersync: migration history, profile builder, sign-up trigger and repair queue';

CREATE TABLE usersync.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration_ms bigint NOT NULL DEFAULT 0
);

CREATE TABLE public.user_profiles (
    id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    email text,
    full_name text,
    avatar_url text,
    role text NOT NULL DEFAULT 'user',
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.user_profiles IS 'One row per live auth.users row; created by usersync.on_auth_user_created() and repaired by the usersync daemon';
-- Exposed schemas are read through PostgREST: deny by default, the application adds policies.
ALTER TABLE public.user_profiles ENABLE ROW LEVEL SECURITY;

-- Users whose profile the trigger could not create. The daemon drains it.
CREATE TABLE usersync.repair_queue (
    user_id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    last_error text NOT NULL,
    last_sqlstate text NOT NULL,
    failures integer NOT NULL DEFAULT 1,
    attempts integer NOT NULL DEFAULT 0,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX repair_queue_next_attempt_at_idx ON usersync.repair_queue (next_attempt_at);

-- The one definition of a new profile. The trigger and the daemon both insert what this
-- returns, so a repaired profile is the one the trigger would have made. The name and picture
-- come from OAuth-style metadata (full_name or name, avatar_url or picture), taken only when
-- they are non-blank JSON strings. A set-returning SQL function without SET options, so the
-- planner inlines it into the daemon's batch INSERT.
CREATE FUNCTION usersync.build_profile(u auth.users)
RETURNS TABLE (
    id uuid,
    email text,
    full_name text,
    avatar_url text,
    role text,
    is_active boolean,
    created_at timestamptz,
    updated_at timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT u.id,
           u.email::text,
           COALESCE(NULLIF(pg_catalog.btrim(CASE WHEN pg_catalog.jsonb_typeof(u.raw_user_meta_data OPERATOR(pg_catalog.->) 'full_name') = 'string'
                                                 THEN u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'full_name' END), ''),
                    NULLIF(pg_catalog.btrim(CASE WHEN pg_catalog.jsonb_typeof(u.raw_user_meta_data OPERATOR(pg_catalog.->) 'name') = 'string'
                                                 THEN u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'name' END), '')),
           COALESCE(NULLIF(pg_catalog.btrim(CASE WHEN pg_catalog.jsonb_typeof(u.raw_user_meta_data OPERATOR(pg_catalog.->) 'avatar_url') = 'string'
                                                 THEN u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'avatar_url' END), ''),
                    NULLIF(pg_catalog.btrim(CASE WHEN pg_catalog.jsonb_typeof(u.raw_user_meta_data OPERATOR(pg_catalog.->) 'picture') = 'string'
                                                 THEN u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'picture' END), '')),
           'user'::text,
           true,
           COALESCE(u.created_at, pg_catalog.now()),
           pg_catalog.now()
$$;

-- AFTER INSERT on auth.users. Every error is caught: the sign-up always commits. A failure is
-- recorded in the repair queue and announced on channel usersync_repair for the daemon.
CREATE FUNCTION usersync.on_auth_user_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    BEGIN
        INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
        SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
        FROM usersync.build_profile(NEW) AS p
        ON CONFLICT (id) DO NOTHING;
    EXCEPTION WHEN OTHERS THEN
        BEGIN
            INSERT INTO usersync.repair_queue AS q (user_id, last_error, last_sqlstate)
            VALUES (NEW.id, SQLERRM, SQLSTATE)
            ON CONFLICT (user_id) DO UPDATE
                SET last_error = EXCLUDED.last_error,
                    last_sqlstate = EXCLUDED.last_sqlstate,
                    failures = q.failures + 1,
                    last_failed_at = pg_catalog.now(),
                    next_attempt_at = pg_catalog.now();
            PERFORM pg_catalog.pg_notify('usersync_repair', NEW.id::text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'usersync: profile for user % neither created nor queued: % (SQLSTATE %)',
                NEW.id, SQLERRM, SQLSTATE;
        END;
    END;
    RETURN NULL;
END;
$$;

CREATE TRIGGER usersync_on_auth_user_created
    AFTER INSERT ON auth.users
    FOR EACH ROW EXECUTE FUNCTION usersync.on_auth_user_created();

-- Nobody calls these through the API.
REVOKE ALL ON FUNCTION usersync.on_auth_user_created() FROM PUBLIC;
REVOKE ALL ON FUNCTION usersync.build_profile(auth.users) FROM PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION usersync.on_auth_user_created() FROM %I', r);
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION usersync.build_profile(auth.users) FROM %I', r);
        END IF;
    END LOOP;
END
$$;
