//! What the benchmarks share: a database of their own with the fixture and the migration,
//! GoTrue-shaped users, and timing helpers.

#![allow(dead_code)] // each benchmark uses its own part

use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config, NoTls};

const ROLES_SQL: &str = include_str!("../../tests/fixtures/roles.sql");
const AUTH_SQL: &str = include_str!("../../tests/fixtures/auth_schema.sql");

/// A database created for one benchmark run, migrated, dropped by [`BenchDb::drop_db`].
pub struct BenchDb {
    admin: Client,
    pub name: String,
    pub config: Config,
    /// A URL for the usersync binary and settings.
    pub url: String,
}

impl BenchDb {
    /// Creates the database on `USERSYNC_BENCH_DATABASE_URL`, `DATABASE_URL` or the local
    /// server (a superuser), with the fixture auth schema and every migration applied.
    pub async fn create() -> (BenchDb, Client) {
        let url = std::env::var("USERSYNC_BENCH_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin_config = Config::from_str(&url).expect("a PostgreSQL URL");
        let admin = connect(&admin_config).await;
        let name = format!("usersync_bench_{}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut config = admin_config.clone();
        config.dbname(&name);
        let mut db = connect(&config).await;
        db.batch_execute(ROLES_SQL).await.unwrap();
        db.batch_execute(AUTH_SQL).await.unwrap();
        usersync::db::migrate::up(&mut db, Default::default())
            .await
            .unwrap();
        let url = url_for(&config);
        (
            BenchDb {
                admin,
                name,
                config,
                url,
            },
            db,
        )
    }

    pub async fn drop_db(self) {
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }

    /// Settings for this database, with `env` overrides.
    pub fn settings(&self, env: &[(&str, &str)]) -> usersync::config::Settings {
        let mut vars = vec![("DATABASE_URL".to_string(), self.url.clone())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        usersync::config::Settings::load(&usersync::config::Sources {
            file: None,
            env: vars,
        })
        .unwrap()
    }
}

/// The bare backfill: one statement, a hash anti-join, the builder usersync shares.
pub const BARE_INSERT: &str = "
    INSERT INTO public.user_profiles (id, email, full_name, avatar_url, role, is_active, created_at, updated_at)
    SELECT p.id, p.email, p.full_name, p.avatar_url, p.role, p.is_active, p.created_at, p.updated_at
    FROM auth.users u CROSS JOIN LATERAL usersync.build_profile(u.id, u.email::pg_catalog.text, u.raw_user_meta_data, u.created_at) AS p
    WHERE u.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM public.user_profiles x WHERE x.id = u.id)
    ON CONFLICT (id) DO NOTHING";

/// The bare detection: the anti-join, counted.
pub const BARE_COUNT: &str = "
    SELECT count(*) FROM auth.users u
    WHERE u.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM public.user_profiles p WHERE p.id = u.id)";

/// Users shaped like GoTrue's: e-mail sign-ups, some OAuth metadata, 5% soft-deleted,
/// 3% anonymous. The trigger is off, as for users from before it existed.
pub async fn populate(db: &Client, users: u64) {
    populate_range(db, 1, users).await;
    db.batch_execute("VACUUM ANALYZE auth.users").await.unwrap();
}

/// Users `from..=to` of [`populate`]'s shapes, plus phone-only users (2%) and metadata that
/// is not what the builder expects (1%: a number, a blank, an object), the trigger off.
pub async fn populate_range(db: &Client, from: u64, to: u64) {
    db.batch_execute(&format!(
        "ALTER TABLE auth.users DISABLE TRIGGER usersync_on_auth_user_created;
         INSERT INTO auth.users (instance_id, id, aud, role, email, phone, encrypted_password,
             email_confirmed_at, phone_confirmed_at, confirmation_token, recovery_token,
             email_change_token_new, email_change, raw_app_meta_data, raw_user_meta_data,
             created_at, updated_at, is_anonymous, deleted_at)
         SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated',
             'authenticated',
             CASE WHEN g % 33 <> 0 AND g % 50 <> 7 THEN 'user' || g || '@bench.invalid' END,
             CASE WHEN g % 50 = 7 THEN '1555' || g END,
             '$2a$10$abcdefghijklmnopqrstuv',
             CASE WHEN g % 50 <> 7 THEN now() END, CASE WHEN g % 50 = 7 THEN now() END,
             '', '', '', '',
             '{{\"provider\": \"email\", \"providers\": [\"email\"]}}',
             CASE WHEN g % 4 = 0 THEN jsonb_build_object('full_name', 'User ' || g,
                                                         'avatar_url', 'https://img.invalid/' || g)
                  WHEN g % 100 = 1 THEN jsonb_build_object('full_name', g)
                  WHEN g % 100 = 2 THEN jsonb_build_object('name', '  ', 'picture', '')
                  WHEN g % 100 = 3 THEN jsonb_build_object('full_name', jsonb_build_object('first', 'U'))
                  ELSE '{{}}' END,
             now() - g * interval '1 second', now(), g % 33 = 0,
             CASE WHEN g % 20 = 0 THEN now() END
         FROM generate_series({from}, {to}) g;
         ALTER TABLE auth.users ENABLE TRIGGER usersync_on_auth_user_created;"
    ))
    .await
    .unwrap();
}

pub fn row(label: &str, d: Duration, ratio: f64, target: &str) {
    println!(
        "    {label:<46} {:>9.3} s  {ratio:>6.2}x  {target}",
        d.as_secs_f64()
    );
}

pub async fn timed<T>(f: impl std::future::Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let out = f.await;
    (started.elapsed(), out)
}

pub async fn median_of<F, Fut>(n: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(f().await);
    }
    samples.sort();
    samples[n / 2]
}

pub fn arg_value(flag: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == flag)?;
    let value = args.get(i + 1)?;
    Some(
        value
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{flag} {value}: not a number")),
    )
}

fn url_for(config: &Config) -> String {
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    format!(
        "postgres://{user}{password}@{host}:{port}/{}",
        config.get_dbname().unwrap()
    )
}

pub async fn connect(config: &Config) -> Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("connecting to PostgreSQL");
    tokio::spawn(connection);
    client
}

pub struct BinaryRun {
    pub elapsed: Duration,
    pub created: u64,
    pub longest_batch_ms: f64,
    pub peak_rss_mb: f64,
}

/// Runs `usersync sync --json` and reads its peak resident memory from wait4's rusage.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's wait cannot replace here
pub fn run_binary(url: &str, workers: usize) -> BinaryRun {
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(["sync", "--json"])
        .env("DATABASE_URL", url)
        .env("USERSYNC__SYNC__WORKERS", workers.to_string())
        .env("USERSYNC__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running usersync");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let mut json = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut json).unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let elapsed = started.elapsed();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "usersync sync failed: {json}"
    );
    let report: serde_json::Value = serde_json::from_str(&json).expect("a JSON report");
    BinaryRun {
        elapsed,
        created: report["created"].as_u64().unwrap(),
        longest_batch_ms: report["longest_batch_ms"].as_f64().unwrap(),
        peak_rss_mb: usage.ru_maxrss as f64 / 1024.0,
    }
}
