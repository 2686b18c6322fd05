-- usersync 0007 down: no metadata trigger, the sign-up trigger as 0004 made it, the builder
-- as 0002 made it, the policy without fill_from_metadata, no findings history.

DROP TABLE usersync.findings_history;
DROP TRIGGER IF EXISTS usersync_on_auth_user_metadata ON auth.users;
DROP FUNCTION usersync.on_auth_user_metadata();

-- The sign-up trigger's function, as 0004 made it.
CREATE OR REPLACE FUNCTION usersync.on_auth_user_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    BEGIN
        -- Counted, so that a sign-up this trigger did not see shows (usersync.journal).
        INSERT INTO usersync.journal (kind) VALUES ('i');
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

-- The builder, as 0002 made it, and without the two rules' own functions.
CREATE OR REPLACE FUNCTION usersync.build_profile(user_id uuid, user_email text, user_meta jsonb, signed_up_at timestamptz)
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

DROP FUNCTION usersync.meta_picture(jsonb);
DROP FUNCTION usersync.meta_name(jsonb);

ALTER TABLE usersync.policy DROP COLUMN fill_from_metadata;
