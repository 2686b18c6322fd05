-- usersync 0006 down: scan_state as 0004 made it. The stored findings go (the next full scan
-- finds them again).

COMMENT ON COLUMN usersync.scan_state.data_findings IS NULL;
ALTER TABLE usersync.scan_state
    DROP COLUMN profiles_deleted_counted,
    DROP COLUMN profiles_deleted,
    DROP COLUMN users_deleted_counted,
    DROP COLUMN users_deleted,
    DROP COLUMN data_findings,
    ADD COLUMN findings jsonb NOT NULL DEFAULT '[]';
