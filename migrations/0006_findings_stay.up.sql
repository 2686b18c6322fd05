-- usersync 0006: findings stay until a later count clears them, whichever job counts and
-- whatever the order of the jobs and the number of replicas.
--
-- 1. usersync.scan_state.data_findings replaces `findings`: what the last count of each group
--    of data checks found (the census of users and profiles, the orphan profiles, the
--    configured user-id columns), each group replaced only when it is counted again: by the
--    full scan, or by a cycle that recounts one group.
-- 2. The journal's deletions are added up where every job and every replica sees them:
--    `users_deleted` and `profiles_deleted` count the users and profiles deleted through
--    usersync's triggers, as whichever cycle emptied the journal found them; `…_counted` is how
--    many of them the last count of the user-id columns (users) or of the orphans (profiles)
--    had seen. While the first is ahead, that count is due.

ALTER TABLE usersync.scan_state
    DROP COLUMN findings,
    ADD COLUMN data_findings jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN users_deleted bigint NOT NULL DEFAULT 0,
    ADD COLUMN users_deleted_counted bigint NOT NULL DEFAULT 0,
    ADD COLUMN profiles_deleted bigint NOT NULL DEFAULT 0,
    ADD COLUMN profiles_deleted_counted bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN usersync.scan_state.data_findings IS 'usersync: the last count of each group of data checks (census, orphans, user_id_columns), shown until counted again';
