//! The SQL rules every layer shares: what "a user who should have a profile" means, what a
//! profile holding personal data is, and how `auth.users` is found in the catalog. Macros that
//! expand to string literals, so that each statement stays one constant (`concat!`); this module
//! imports nothing of the crate, so any layer may use it.
//!
//! Statements the runtime role runs read `auth.users` through `usersync.auth_users` (migration
//! 0005): hosted Supabase's `postgres` cannot grant USAGE on schema `auth`, so the runtime role
//! may not even name it. Catalog lookups therefore find `auth.users` by name in `pg_class`
//! ([`auth_users_oid!`]): `'auth.users'::regclass` and `to_regclass('auth.users')` check USAGE on
//! the schema and fail for such a role.

/// "A live user who should have a profile", the one definition every statement uses: not
/// soft-deleted, and not anonymous unless `include` (a parameter or an expression) says so.
/// The user's alias is `u`.
#[macro_export]
macro_rules! should_have_profile {
    ($include:literal) => {
        concat!(
            "(u.deleted_at IS NULL AND (",
            $include,
            " OR NOT u.is_anonymous))"
        )
    };
}

/// "This profile still holds the person": what the `scrub` policy clears. `$p` is the
/// profile's alias.
#[macro_export]
macro_rules! holds_personal_data {
    ($p:literal) => {
        concat!(
            "(",
            $p,
            ".email IS NOT NULL OR ",
            $p,
            ".full_name IS NOT NULL OR ",
            $p,
            ".avatar_url IS NOT NULL OR ",
            $p,
            ".is_active)"
        )
    };
}

/// "This live user's metadata has what the profile lacks": a name or a picture the builder
/// would take (`$b`, a `usersync.build_profile` row of the user) where the profile (`$p`) has
/// NULL. The user's alias is `u`; a soft-deleted user is never filled.
#[macro_export]
macro_rules! fillable {
    ($p:literal, $b:literal) => {
        concat!(
            "(u.deleted_at IS NULL AND ((",
            $p,
            ".full_name IS NULL AND ",
            $b,
            ".full_name IS NOT NULL) OR (",
            $p,
            ".avatar_url IS NULL AND ",
            $b,
            ".avatar_url IS NOT NULL)))"
        )
    };
}

/// The oid of `auth.users`, NULL without one, found by name: needs no privilege on schema auth.
#[macro_export]
macro_rules! auth_users_oid {
    () => {
        "(SELECT c.oid FROM pg_catalog.pg_class c \
          JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE n.nspname OPERATOR(pg_catalog.=) 'auth' AND c.relname OPERATOR(pg_catalog.=) 'users' \
            AND c.relkind OPERATOR(pg_catalog.=) 'r')"
    };
}

/// The oid of a relation given as `$1` schema and `$2` name text parameters (any two
/// expressions), NULL without one; like [`auth_users_oid!`], needs no privilege on the schema.
#[macro_export]
macro_rules! relation_oid {
    ($schema:literal, $name:literal) => {
        concat!(
            "(SELECT c.oid FROM pg_catalog.pg_class c \
              JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
              WHERE n.nspname OPERATOR(pg_catalog.=) ",
            $schema,
            " AND c.relname OPERATOR(pg_catalog.=) ",
            $name,
            ")"
        )
    };
}
