-- usersync 0003: the profile follows the user through GoTrue's whole lifecycle.
--
-- 1. usersync.policy: the policies the triggers and the daemon's sweep both apply, one row,
--    written by `usersync migrate up` from its configuration (sync.include_anonymous,
--    sync.follow_email, sync.soft_deleted).
-- 2. The sign-up trigger skips users inserted already deleted, and anonymous users when the
--    policy leaves them out.
-- 3. A trigger for GoTrue's updates, only of the columns that matter and only when one really
--    changed (a sign-in, which updates last_sign_in_at, does not fire it): an anonymous user
--    who converts gets a profile and a NULL email filled; a soft-deleted user's profile is
--    scrubbed, deleted or kept; an e-mail change is followed when the policy says so; a user
--    restored from soft delete gets a profile. Like the sign-up trigger it never fails the
--    statement: an error queues the user for repair and notifies the daemon.

CREATE TABLE usersync.policy (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    include_anonymous boolean NOT NULL DEFAULT true,
    follow_email boolean NOT NULL DEFAULT false,
    soft_deleted text NOT NULL DEFAULT 'scrub' CHECK (soft_deleted IN ('scrub', 'delete', 'keep')),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE usersync.policy IS 'usersync: the lifecycle policies its triggers and its daemon apply; written by usersync migrate up from its configuration';
INSERT INTO usersync.policy DEFAULT VALUES;

-- AFTER INSERT on auth.users. Every error is caught: the sign-up always commits.
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

-- AFTER UPDATE of email, is_anonymous or deleted_at, when one of them changed.
CREATE FUNCTION usersync.on_auth_user_updated()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pol usersync.policy;
BEGIN
    BEGIN
        SELECT * INTO pol FROM usersync.policy;
        IF NEW.deleted_at IS NOT NULL THEN
            -- Soft deleted (GoTrue has blanked e-mail, phone and metadata): the profile's
            -- personal data goes too, or the whole profile, as the policy says.
            IF OLD.deleted_at IS NULL THEN
                IF COALESCE(pol.soft_deleted, 'scrub') OPERATOR(pg_catalog.=) 'scrub' THEN
                    UPDATE public.user_profiles
                    SET email = NULL, full_name = NULL, avatar_url = NULL, is_active = false,
                        updated_at = pg_catalog.now()
                    WHERE id OPERATOR(pg_catalog.=) NEW.id;
                ELSIF pol.soft_deleted OPERATOR(pg_catalog.=) 'delete' THEN
                    DELETE FROM public.user_profiles WHERE id OPERATOR(pg_catalog.=) NEW.id;
                END IF;
            END IF;
            RETURN NULL;
        END IF;
        -- Live (restored from soft delete, converted from anonymous, a new e-mail): a user who
        -- should have a profile gets one if it has none.
        IF NOT NEW.is_anonymous OR COALESCE(pol.include_anonymous, true) THEN
            INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
            SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
            FROM usersync.build_profile(NEW.id, NEW.email::pg_catalog.text, NEW.raw_user_meta_data, NEW.created_at) AS p
            ON CONFLICT (id) DO NOTHING;
        END IF;
        IF OLD.email IS DISTINCT FROM NEW.email AND NEW.email IS NOT NULL THEN
            -- A NULL e-mail (an anonymous user's) is always filled; another only when the
            -- policy follows e-mail changes.
            UPDATE public.user_profiles
            SET email = NEW.email::pg_catalog.text, updated_at = pg_catalog.now()
            WHERE id OPERATOR(pg_catalog.=) NEW.id
              AND (email IS NULL OR COALESCE(pol.follow_email, false))
              AND email IS DISTINCT FROM NEW.email::pg_catalog.text;
        END IF;
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
            RAISE WARNING 'usersync: profile of user % not updated nor queued: % (SQLSTATE %)',
                NEW.id, SQLERRM, SQLSTATE;
        END;
    END;
    RETURN NULL;
END;
$$;

CREATE TRIGGER usersync_on_auth_user_updated
    AFTER UPDATE OF email, is_anonymous, deleted_at ON auth.users
    FOR EACH ROW
    WHEN (OLD.email IS DISTINCT FROM NEW.email
          OR OLD.is_anonymous IS DISTINCT FROM NEW.is_anonymous
          OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
    EXECUTE FUNCTION usersync.on_auth_user_updated();

REVOKE ALL ON FUNCTION usersync.on_auth_user_updated() FROM PUBLIC;
REVOKE ALL ON TABLE usersync.policy FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'anon') THEN
        REVOKE ALL ON FUNCTION usersync.on_auth_user_updated() FROM anon;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'authenticated') THEN
        REVOKE ALL ON FUNCTION usersync.on_auth_user_updated() FROM authenticated;
    END IF;
END
$$;
