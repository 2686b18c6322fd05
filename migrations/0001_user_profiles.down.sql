-- usersync 0001 down: removes exactly what 0001 up created. No CASCADE: if the application
-- has built on these objects (a view, a foreign key to user_profiles), this stops and says so
-- instead of dropping the application's objects. auth.users rows are never touched.

DROP TRIGGER IF EXISTS usersync_on_auth_user_created ON auth.users;
DROP FUNCTION IF EXISTS usersync.on_auth_user_created();
DROP FUNCTION IF EXISTS usersync.build_profile(auth.users);
DROP TABLE IF EXISTS usersync.repair_queue;
DROP TABLE IF EXISTS public.user_profiles;
DROP TABLE IF EXISTS usersync.schema_migrations;
DROP SCHEMA IF EXISTS usersync;
