-- usersync 0005 down: the runtime role's view of auth.users and the user-id columns' count gone.

DROP FUNCTION IF EXISTS usersync.user_id_column_orphans(integer);
DROP TABLE IF EXISTS usersync.user_id_columns;
DROP VIEW IF EXISTS usersync.auth_users;
