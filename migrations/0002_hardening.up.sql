-- usersync 0002: hardening.
--
-- 1. The sign-up trigger pins `search_path = pg_catalog, pg_temp`. With 0001's `''` PostgreSQL
--    still looked in pg_temp first for type names, so a session could shadow `text` with a
--    temporary domain whose CHECK ran its own code as the function's owner. Every type,
--    function and operator in both functions' bodies is now schema-qualified as well.
-- 2. The profile builder reads columns, not the whole auth.users row: the runtime role then
--    needs SELECT on a few columns of auth.users only (`usersync migrate grant`), never the
--    password hashes and tokens. build_profile(auth.users) stays, as a wrapper of the same body.
-- 3. The API roles and public.user_profiles: whatever default privileges granted anon and
--    authenticated is revoked (the table's grants are saved, so that down restores them); authenticated may
--    read its own row and update its own full_name and avatar_url; nobody else writes.
--    Own-row policies are created when auth.uid() exists.

-- 2. The one definition of a new profile, from the columns it needs. A name or a picture is
-- taken only from a non-blank JSON string. Both functions are plain SQL without SET options,
-- so the planner inlines them into the daemon's batch INSERT.
CREATE FUNCTION usersync.meta_text(meta jsonb, key text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(meta OPERATOR(pg_catalog.->) key) OPERATOR(pg_catalog.=) 'string'
                 AND pg_catalog.btrim(meta OPERATOR(pg_catalog.->>) key) OPERATOR(pg_catalog.<>) ''
                THEN pg_catalog.btrim(meta OPERATOR(pg_catalog.->>) key) END
$$;

CREATE FUNCTION usersync.build_profile(user_id uuid, user_email text, user_meta jsonb, signed_up_at timestamptz)
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
    SELECT user_id,
           user_email,
           COALESCE(usersync.meta_text(user_meta, 'full_name'), usersync.meta_text(user_meta, 'name')),
           COALESCE(usersync.meta_text(user_meta, 'avatar_url'), usersync.meta_text(user_meta, 'picture')),
           'user'::pg_catalog.text,
           true,
           COALESCE(signed_up_at, pg_catalog.now()),
           pg_catalog.now()
$$;

CREATE OR REPLACE FUNCTION usersync.build_profile(u auth.users)
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
    SELECT * FROM usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at)
$$;

-- 1. AFTER INSERT on auth.users, pinned. Every error is caught: the sign-up always commits.
CREATE OR REPLACE FUNCTION usersync.on_auth_user_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    BEGIN
        INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
        SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
        FROM usersync.build_profile(NEW.id, NEW.email::pg_catalog.text, NEW.raw_user_meta_data, NEW.created_at) AS p
        ON CONFLICT (id) DO NOTHING;
    EXCEPTION WHEN OTHERS THEN
        BEGIN
            INSERT INTO usersync.repair_queue AS q (user_id, last_error, last_sqlstate)
            VALUES (NEW.id, SQLERRM, SQLSTATE)
            ON CONFLICT (user_id) DO UPDATE
                SET last_error = EXCLUDED.last_error,
                    last_sqlstate = EXCLUDED.last_sqlstate,
                    failures = q.failures OPERATOR(pg_catalog.+) 1,
                    last_failed_at = pg_catalog.now(),
                    next_attempt_at = pg_catalog.now();
            PERFORM pg_catalog.pg_notify('usersync_repair', NEW.id::pg_catalog.text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'usersync: profile for user % neither created nor queued: % (SQLSTATE %)',
                NEW.id, SQLERRM, SQLSTATE;
        END;
    END;
    RETURN NULL;
END;
$$;

-- The sweep refreshes the profile table's statistics before a backfill (a stale estimate of
-- one row makes the planner choose a quadratic plan). ANALYZE needs the table's owner: the
-- runtime role gets this function, not ownership.
CREATE FUNCTION usersync.analyze_profiles()
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    ANALYZE (SKIP_LOCKED) public.user_profiles;
END;
$$;

REVOKE ALL ON FUNCTION usersync.analyze_profiles() FROM PUBLIC;
REVOKE ALL ON FUNCTION usersync.meta_text(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION usersync.build_profile(uuid, text, jsonb, timestamptz) FROM PUBLIC;

-- 4. Every privilege on public.user_profiles before this migration, its owner's included (table
-- and column privileges, in ACL order), so that down puts back exactly that.
CREATE TABLE usersync.grants_before_0002 (
    position bigint NOT NULL,
    grantee text NOT NULL,
    privilege text NOT NULL,
    column_name text,
    grantable boolean NOT NULL
);
INSERT INTO usersync.grants_before_0002 (position, grantee, privilege, column_name, grantable)
SELECT a.position,
       CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE r.rolname::pg_catalog.text END,
       a.privilege_type, NULL, a.is_grantable
FROM pg_catalog.pg_class c
CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, position)
LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
WHERE c.oid OPERATOR(pg_catalog.=) 'public.user_profiles'::pg_catalog.regclass
UNION ALL
SELECT 1000000 OPERATOR(pg_catalog.*) t.attnum OPERATOR(pg_catalog.+) a.position,
       CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE r.rolname::pg_catalog.text END,
       a.privilege_type, t.attname::pg_catalog.text, a.is_grantable
FROM pg_catalog.pg_attribute t
CROSS JOIN LATERAL pg_catalog.aclexplode(t.attacl) WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, position)
LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
WHERE t.attrelid OPERATOR(pg_catalog.=) 'public.user_profiles'::pg_catalog.regclass
  AND t.attnum OPERATOR(pg_catalog.>) 0 AND NOT t.attisdropped;

REVOKE ALL ON TABLE public.user_profiles FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'anon') THEN
        REVOKE ALL ON TABLE public.user_profiles FROM anon;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'authenticated') THEN
        REVOKE ALL ON TABLE public.user_profiles FROM authenticated;
        GRANT SELECT ON TABLE public.user_profiles TO authenticated;
        GRANT UPDATE (full_name, avatar_url) ON TABLE public.user_profiles TO authenticated;
        -- Row level security narrows both to the caller's own row. An application that wants
        -- other rules drops these two by name and creates its own (README: "Policies").
        IF pg_catalog.to_regprocedure('auth.uid()') IS NOT NULL THEN
            CREATE POLICY usersync_select_own_profile ON public.user_profiles
                FOR SELECT TO authenticated
                USING ((SELECT auth.uid()) OPERATOR(pg_catalog.=) id);
            CREATE POLICY usersync_update_own_profile ON public.user_profiles
                FOR UPDATE TO authenticated
                USING ((SELECT auth.uid()) OPERATOR(pg_catalog.=) id)
                WITH CHECK ((SELECT auth.uid()) OPERATOR(pg_catalog.=) id);
        END IF;
    END IF;
END
$$;
