-- usersync 0007: metadata that arrives later fills what the profile lacks, a cheaper sign-up,
-- and the history of the integrity findings.
--
-- 1. usersync.policy.fill_from_metadata (sync.fill_from_metadata, on by default): when a live
--    user's raw_user_meta_data gains a name or a picture it did not have (GoTrue writes it in
--    separate UPDATEs: PUT /user, the admin API right after createUser, a signup link
--    generated again, identity linking), the profile's NULL full_name or avatar_url is filled
--    by the same rules as a new profile's (usersync.build_profile). A value already there is
--    never overwritten; a soft-deleted user is never filled. What the triggers missed, the
--    sweep fills.
-- 2. The builder's two rules get names of their own, usersync.meta_name (full_name, else
--    name) and usersync.meta_picture (avatar_url, else picture), and build_profile uses them:
--    one definition, which the update trigger can evaluate as plain expressions.
-- 3. A trigger of its own for the metadata, usersync_on_auth_user_metadata: AFTER UPDATE OF
--    raw_user_meta_data, when it changed. Whether the metadata gained a name or a picture is
--    decided first, by those two rules on the old and the new metadata (expressions, nothing
--    that can fail): most metadata updates return there, before the protected block and its
--    subtransaction. Apart from usersync_on_auth_user_updated on purpose: PostgreSQL skips a
--    trigger whose columns an UPDATE does not set without looking at its WHEN, and prepares
--    the WHEN of the others for every statement, so each keeps a small WHEN over its own
--    columns (a sign-in sets neither; GoTrue sets the metadata alone).
-- 4. The sign-up trigger does the same work for less: the policy is read only for an
--    anonymous user, and the profile is a plain INSERT whose unique violation (a profile the
--    application made first) is caught, instead of a speculative ON CONFLICT insertion. The
--    journal row, the repair queue and the NOTIFY stay as they were.
-- 5. usersync.findings_history: each integrity check's value, a row when it changes, written
--    by the daemon's cycle that counted it and kept integrity.history_days (90 by default,
--    the latest row of each check always), at most integrity.history_max_rows rows.

ALTER TABLE usersync.policy ADD COLUMN fill_from_metadata boolean NOT NULL DEFAULT true;

-- The builder's rules for a name and a picture. Plain SQL without SET options, so that the
-- planner inlines them (into the daemon's batch INSERT, into the triggers' expressions).
CREATE FUNCTION usersync.meta_name(meta jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT COALESCE(usersync.meta_text(meta, 'full_name'), usersync.meta_text(meta, 'name'))
$$;

CREATE FUNCTION usersync.meta_picture(meta jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT COALESCE(usersync.meta_text(meta, 'avatar_url'), usersync.meta_text(meta, 'picture'))
$$;

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
           usersync.meta_name(user_meta),
           usersync.meta_picture(user_meta),
           'user'::pg_catalog.text,
           true,
           COALESCE(signed_up_at, pg_catalog.now()),
           pg_catalog.now()
$$;

REVOKE ALL ON FUNCTION usersync.meta_name(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION usersync.meta_picture(jsonb) FROM PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION usersync.meta_name(jsonb) FROM %I', r);
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION usersync.meta_picture(jsonb) FROM %I', r);
        END IF;
    END LOOP;
END
$$;

-- AFTER INSERT on auth.users. Every error is caught: the sign-up always commits.
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
        IF NEW.deleted_at IS NOT NULL THEN
            RETURN NULL;
        END IF;
        IF NEW.is_anonymous THEN
            IF NOT COALESCE((SELECT p.include_anonymous FROM usersync.policy p), true) THEN
                RETURN NULL;
            END IF;
        END IF;
        INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
        SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
        FROM usersync.build_profile(NEW.id, NEW.email::pg_catalog.text, NEW.raw_user_meta_data, NEW.created_at) AS p;
    EXCEPTION
        WHEN unique_violation THEN
            -- The user has a profile already (the application made it first): kept as it is.
            -- The journal row went with the block; counted again.
            BEGIN
                INSERT INTO usersync.journal (kind) VALUES ('i');
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'usersync: sign-up of user % not counted: % (SQLSTATE %)',
                    NEW.id, SQLERRM, SQLSTATE;
            END;
        WHEN OTHERS THEN
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

-- AFTER UPDATE of raw_user_meta_data, when it changed: what it gained, where the profile
-- lacks it. Every error in the protected block is caught: GoTrue's UPDATE always commits.
CREATE FUNCTION usersync.on_auth_user_metadata()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name_gained boolean;
    picture_gained boolean;
BEGIN
    -- A soft-deleted user is never filled (GoTrue empties its metadata). Whether the metadata
    -- gained a name or a picture, by the builder's rules: expressions, no table read,
    -- nothing here can fail.
    IF NEW.deleted_at IS NOT NULL
       OR ((OLD.raw_user_meta_data OPERATOR(pg_catalog.->) 'full_name') IS NOT DISTINCT FROM (NEW.raw_user_meta_data OPERATOR(pg_catalog.->) 'full_name')
           AND (OLD.raw_user_meta_data OPERATOR(pg_catalog.->) 'name') IS NOT DISTINCT FROM (NEW.raw_user_meta_data OPERATOR(pg_catalog.->) 'name')
           AND (OLD.raw_user_meta_data OPERATOR(pg_catalog.->) 'avatar_url') IS NOT DISTINCT FROM (NEW.raw_user_meta_data OPERATOR(pg_catalog.->) 'avatar_url')
           AND (OLD.raw_user_meta_data OPERATOR(pg_catalog.->) 'picture') IS NOT DISTINCT FROM (NEW.raw_user_meta_data OPERATOR(pg_catalog.->) 'picture')) THEN
        -- Soft-deleted, or none of the four keys the builder reads changed.
        RETURN NULL;
    END IF;
    name_gained := usersync.meta_name(NEW.raw_user_meta_data) IS NOT NULL
                   AND usersync.meta_name(OLD.raw_user_meta_data) IS NULL;
    picture_gained := usersync.meta_picture(NEW.raw_user_meta_data) IS NOT NULL
                      AND usersync.meta_picture(OLD.raw_user_meta_data) IS NULL;
    IF NOT (name_gained OR picture_gained) THEN
        RETURN NULL;
    END IF;
    BEGIN
        -- What the profile lacks, never what it has.
        UPDATE public.user_profiles AS t
        SET full_name = CASE WHEN name_gained
                             THEN COALESCE(t.full_name, usersync.meta_name(NEW.raw_user_meta_data))
                             ELSE t.full_name END,
            avatar_url = CASE WHEN picture_gained
                              THEN COALESCE(t.avatar_url, usersync.meta_picture(NEW.raw_user_meta_data))
                              ELSE t.avatar_url END,
            updated_at = pg_catalog.now()
        WHERE t.id OPERATOR(pg_catalog.=) NEW.id
          AND ((name_gained AND t.full_name IS NULL) OR (picture_gained AND t.avatar_url IS NULL))
          AND COALESCE((SELECT p.fill_from_metadata FROM usersync.policy p), true);
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
            RAISE WARNING 'usersync: profile of user % not filled nor queued: % (SQLSTATE %)',
                NEW.id, SQLERRM, SQLSTATE;
        END;
    END;
    RETURN NULL;
END;
$$;

-- The WHEN is stored as an expression tree and evaluated by GoTrue's own statement: built-in
-- operators only, no usersync function, which GoTrue's role may not execute.
CREATE TRIGGER usersync_on_auth_user_metadata
    AFTER UPDATE OF raw_user_meta_data ON auth.users
    FOR EACH ROW
    WHEN (OLD.raw_user_meta_data IS DISTINCT FROM NEW.raw_user_meta_data)
    EXECUTE FUNCTION usersync.on_auth_user_metadata();

REVOKE ALL ON FUNCTION usersync.on_auth_user_metadata() FROM PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION usersync.on_auth_user_metadata() FROM %I', r);
        END IF;
    END LOOP;
END
$$;

CREATE TABLE usersync.findings_history (
    check_name text NOT NULL,
    at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    value bigint NOT NULL,
    PRIMARY KEY (check_name, at)
);
CREATE INDEX findings_history_at ON usersync.findings_history (at);
COMMENT ON TABLE usersync.findings_history IS 'usersync: each integrity check''s value, a row when it changes, written by the daemon; kept integrity.history_days';
REVOKE ALL ON TABLE usersync.findings_history FROM PUBLIC;
