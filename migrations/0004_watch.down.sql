-- usersync 0004 down: the counting triggers and their tables gone, the sign-up trigger's
-- function as 0003 made it.

DROP TRIGGER IF EXISTS usersync_on_profiles_deleted ON public.user_profiles;
DROP TRIGGER IF EXISTS usersync_on_auth_users_deleted ON auth.users;
DROP FUNCTION IF EXISTS usersync.on_profiles_deleted();
DROP FUNCTION IF EXISTS usersync.on_auth_users_deleted();

CREATE OR REPLACE FUNCTION usersync.on_auth_user_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    BEGIN
        -- Born deleted, or anonymous when the policy leaves them out: no profile.
        IF NEW.deleted_at IS NOT NULL
           OR (NEW.is_anonymous AND NOT COALESCE((SELECT p.include_anonymous FROM usersync.policy p), true)) THEN
            RETURN NULL;
        END IF;
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

DROP TABLE IF EXISTS usersync.scan_state;
DROP TABLE IF EXISTS usersync.journal;
