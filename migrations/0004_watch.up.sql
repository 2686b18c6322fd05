-- usersync 0004: an unchanged database costs next to nothing per cycle.
--
-- PostgreSQL's cumulative statistics count every row inserted into or deleted from a table
-- (pg_stat_all_tables.n_tup_ins, n_tup_del): COPY, aborted transactions, disabled triggers and
-- session_replication_role = replica included. usersync's triggers add one row to
-- usersync.journal for each row of auth.users inserted or deleted and each profile deleted
-- that they see, and the statistics count those rows too, flushed by the same backend at the
-- same moment. While the two totals agree, every such change went through a trigger, which
-- made, queued or released its profile, and the daemon need not read auth.users; when the
-- statistics count more, a write went around the triggers and the daemon runs a full scan.
-- usersync.scan_state keeps what the statistics and the catalog said when the last full scan
-- started (its baseline). The journal's rows carry nothing else; each cycle deletes them.
--
-- A profile deleted while its user is live and should have one (an application's DELETE) is
-- queued for repair at once and the daemon notified, as a failed sign-up is.

CREATE UNLOGGED TABLE usersync.journal (
    -- 'i' a user inserted, 'd' a user deleted, 'p' a profile deleted.
    kind "char" NOT NULL
);
COMMENT ON TABLE usersync.journal IS 'usersync: one row per change its triggers saw, counted by the statistics against auth.users and public.user_profiles; emptied by the daemon';

CREATE TABLE usersync.scan_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- What the statistics and the catalog said when the last full scan started.
    baseline jsonb NOT NULL,
    -- What its integrity checks of the two whole tables found, shown until the next one.
    findings jsonb NOT NULL DEFAULT '[]',
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL
);
COMMENT ON TABLE usersync.scan_state IS 'usersync: where the last full scan started from; the daemon reads auth.users again only when something changed around its triggers';

-- AFTER INSERT on auth.users, as 0003 made it, counting each row it sees.
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

-- AFTER DELETE on auth.users, per statement: one journal row per user deleted.
CREATE FUNCTION usersync.on_auth_users_deleted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    BEGIN
        INSERT INTO usersync.journal (kind) SELECT 'd' FROM gone;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'usersync: deleted users not counted: % (SQLSTATE %)', SQLERRM, SQLSTATE;
    END;
    RETURN NULL;
END;
$$;

CREATE TRIGGER usersync_on_auth_users_deleted
    AFTER DELETE ON auth.users
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT
    EXECUTE FUNCTION usersync.on_auth_users_deleted();

-- AFTER DELETE on public.user_profiles, per statement: one journal row per profile deleted,
-- and the users among them who are live and should have a profile queued for repair (their
-- user's deletion, a soft delete under the policy `delete`, are not).
CREATE FUNCTION usersync.on_profiles_deleted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    queued pg_catalog.int8;
BEGIN
    BEGIN
        INSERT INTO usersync.journal (kind) SELECT 'p' FROM gone;
        INSERT INTO usersync.repair_queue AS q (user_id, last_error, last_sqlstate)
        SELECT u.id, 'profile deleted while the user is live', ''
        FROM gone g JOIN auth.users u ON u.id OPERATOR(pg_catalog.=) g.id
        WHERE u.deleted_at IS NULL
          AND (NOT u.is_anonymous
               OR COALESCE((SELECT p.include_anonymous FROM usersync.policy p), true))
        ON CONFLICT (user_id) DO UPDATE
            SET last_error = EXCLUDED.last_error,
                last_sqlstate = EXCLUDED.last_sqlstate,
                last_failed_at = pg_catalog.now(),
                next_attempt_at = pg_catalog.now();
        GET DIAGNOSTICS queued = ROW_COUNT;
        IF queued OPERATOR(pg_catalog.>) 0 THEN
            PERFORM pg_catalog.pg_notify('usersync_repair', '');
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'usersync: deleted profiles not counted nor queued: % (SQLSTATE %)',
            SQLERRM, SQLSTATE;
    END;
    RETURN NULL;
END;
$$;

CREATE TRIGGER usersync_on_profiles_deleted
    AFTER DELETE ON public.user_profiles
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT
    EXECUTE FUNCTION usersync.on_profiles_deleted();

REVOKE ALL ON FUNCTION usersync.on_auth_users_deleted() FROM PUBLIC;
REVOKE ALL ON FUNCTION usersync.on_profiles_deleted() FROM PUBLIC;
REVOKE ALL ON TABLE usersync.journal FROM PUBLIC;
REVOKE ALL ON TABLE usersync.scan_state FROM PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION usersync.on_auth_users_deleted() FROM %I', r);
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION usersync.on_profiles_deleted() FROM %I', r);
        END IF;
    END LOOP;
END
$$;
