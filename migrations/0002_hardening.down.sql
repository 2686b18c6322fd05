-- usersync 0002 down: 0001's functions exactly as 0001 created them, the grants on
-- public.user_profiles as they were before 0002 (as 0002 saved them), nothing of 0002 left.

DROP POLICY IF EXISTS usersync_select_own_profile ON public.user_profiles;
DROP POLICY IF EXISTS usersync_update_own_profile ON public.user_profiles;
-- Every grantee 0002 saved, and the API roles, lose what they hold now and get back what
-- they held then, in the order they held it.
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT DISTINCT s.grantee FROM usersync.grants_before_0002 s
             UNION SELECT 'PUBLIC'
             UNION SELECT r.rolname::pg_catalog.text FROM pg_catalog.pg_roles r
                   WHERE r.rolname OPERATOR(pg_catalog.=) ANY (ARRAY['anon', 'authenticated']::pg_catalog.name[]) LOOP
        IF g.grantee OPERATOR(pg_catalog.=) 'PUBLIC' THEN
            REVOKE ALL ON TABLE public.user_profiles FROM PUBLIC;
        ELSIF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) g.grantee) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON TABLE public.user_profiles FROM %I', g.grantee);
        END IF;
    END LOOP;
    FOR g IN SELECT s.grantee, s.privilege, s.column_name, s.grantable
             FROM usersync.grants_before_0002 s
             WHERE s.grantee OPERATOR(pg_catalog.=) 'PUBLIC'
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) s.grantee)
             ORDER BY s.position LOOP
        EXECUTE pg_catalog.format('GRANT %s%s ON TABLE public.user_profiles TO %s%s',
            g.privilege,
            CASE WHEN g.column_name IS NULL THEN '' ELSE pg_catalog.format(' (%I)', g.column_name) END,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(g.grantee) END,
            CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;
DROP TABLE usersync.grants_before_0002;

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
CREATE OR REPLACE FUNCTION usersync.on_auth_user_created()
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

DROP FUNCTION usersync.analyze_profiles();
DROP FUNCTION usersync.build_profile(uuid, text, jsonb, timestamptz);
DROP FUNCTION usersync.meta_text(jsonb, text);
