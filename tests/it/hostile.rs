//! Hostile and careless clients against the real `usersync run` binary: half-sent heads,
//! idle connections at the file limit the systemd unit ships, readers that never read big
//! pages; a closed pipe, terminal escapes in names. Secrets: `secrets.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::NEVER;
use crate::support::{TestDb, usersync};

const TOKEN: &str = "hostile-token-0123456789abcdef";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A number the shipped systemd unit sets, e.g. `LimitNOFILE`.
fn unit_setting(key: &str) -> String {
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/systemd/usersync.service")).unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit sets {key}"))
        .to_string()
}

/// The liveness probe's timeout in the shipped Kubernetes Deployment: how long /healthz may
/// take under attack before the pod would count as dead.
fn liveness_timeout() -> Duration {
    let manifest =
        std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/deployment.yaml")).unwrap();
    let probe = manifest
        .split_once("livenessProbe:")
        .expect("the Deployment has a liveness probe")
        .1;
    let secs = probe
        .lines()
        .find_map(|l| l.trim().strip_prefix("timeoutSeconds:"))
        .expect("the liveness probe sets timeoutSeconds");
    Duration::from_secs(secs.trim().parse().unwrap())
}

/// The daemon binary, as a process of its own; killed when dropped.
struct Binary {
    child: Child,
    port: u16,
}

impl Binary {
    fn start(test_db: &TestDb, env: &[(&str, &str)], nofile: Option<u64>) -> Binary {
        Binary::start_logging(test_db, env, nofile, Stdio::null())
    }

    /// The same, its log (stderr) going to `log`.
    fn start_logging(
        test_db: &TestDb,
        env: &[(&str, &str)],
        nofile: Option<u64>,
        log: Stdio,
    ) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_usersync"));
        command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", test_db.runtime_url())
            .env("USERSYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("USERSYNC__SYNC__SCHEDULE", NEVER)
            .env("USERSYNC__SYNC__REPAIR_SCHEDULE", NEVER)
            .env("USERSYNC__INTEGRITY__SCHEDULE", NEVER)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(limit) = nofile {
            use std::os::unix::process::CommandExt;
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let binary = Binary {
            child: command.spawn().unwrap(),
            port,
        };
        let started = Instant::now();
        while binary.get("/healthz").0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        binary
    }

    /// GET on a connection of its own, with a 5 s limit: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    /// /healthz answers 200 within the liveness probe's timeout.
    fn healthy(&self) {
        let started = Instant::now();
        let (status, body) = self.get("/healthz");
        let took = started.elapsed();
        assert_eq!(status, 200, "/healthz: {body}");
        let limit = liveness_timeout();
        assert!(
            took < limit,
            "/healthz took {took:?}, the probe waits {limit:?}"
        );
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets this test process hold many sockets.
fn raise_own_nofile() {
    unsafe {
        let mut rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit);
        rlimit.rlim_cur = rlimit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit);
    }
}

const MB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_half_sent_heads_keep_memory_bounded_and_healthz_answering() {
    raise_own_nofile();
    let test_db = TestDb::migrated().await;
    let binary = Binary::start(&test_db, &[], None);
    let port = binary.port;
    let writers = std::thread::spawn(move || {
        let mut streams = Vec::new();
        for _ in 0..600 {
            let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            stream
                .set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ");
            let pad = vec![b'a'; 380 * 1024];
            // The daemon stops reading (and answers 431) long before: a failed write is fine.
            let _ = stream.write_all(&pad);
            streams.push(stream);
        }
        streams
    });
    while !writers.is_finished() {
        binary.healthy();
        std::thread::sleep(Duration::from_millis(100));
    }
    let streams = writers.join().unwrap();
    binary.healthy();
    let peak = binary.peak_rss();
    assert!(peak <= 64 * MB, "peak RSS {} MB", peak / MB);
    eprintln!(
        "600 half-sent heads of 380 KB: peak RSS {:.1} MB",
        peak as f64 / MB as f64
    );
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_connections_under_the_shipped_file_limit_leave_healthz_answering() {
    raise_own_nofile();
    let nofile: u64 = unit_setting("LimitNOFILE").parse().unwrap();
    let test_db = TestDb::migrated().await;
    let binary = Binary::start(&test_db, &[], Some(nofile));
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", binary.port)) {
            idle.push(stream);
        }
    }
    assert!(idle.len() >= 1000, "only {} connections opened", idle.len());
    for _ in 0..5 {
        binary.healthy();
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = binary.get("/metrics");
    let evicted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("usersync_http_connections_closed_total{reason=\"evicted\"}"))
        .and_then(|v| v.trim().parse().ok())
        .expect("the eviction counter");
    assert!(evicted >= 500.0, "evicted {evicted}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_of_big_pages_are_dropped_after_the_write_deadline() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO auth.users (id, email, raw_user_meta_data, created_at)
             SELECT gen_random_uuid(), 'big' || g || '@example.test',
                    jsonb_build_object('full_name', repeat('n', 200)), now()
             FROM generate_series(1, 1200) g;
             UPDATE public.user_profiles SET full_name = repeat('x', 40 * 1024 * 1024)
             WHERE id = (SELECT id FROM public.user_profiles ORDER BY id LIMIT 1);",
        )
        .await
        .unwrap();
    let memory_max: u64 = unit_setting("MemoryMax")
        .trim_end_matches('M')
        .parse::<u64>()
        .unwrap()
        * MB;
    let binary = Binary::start(
        &test_db,
        &[
            ("USERSYNC__API__TOKEN", TOKEN),
            ("USERSYNC__HTTP__WRITE_TIMEOUT_SECS", "2"),
        ],
        None,
    );
    let stalled: Vec<_> = (0..8).map(|_| stalled_reader(binary.port)).collect();
    // Never read, past the deadline; the daemon stays healthy and small.
    std::thread::sleep(Duration::from_secs(5));
    binary.healthy();
    let (status, _) = binary.get("/v1/users?limit=1");
    assert_eq!(status, 200);
    for (stream, asked) in stalled {
        assert_dropped_before_the_end(stream, asked);
    }
    let peak = binary.peak_rss();
    assert!(
        peak < memory_max,
        "peak RSS {} MB over MemoryMax",
        peak / MB
    );
    eprintln!(
        "8 stalled readers of 1000-user pages with a 40 MB name: peak RSS {:.1} MB",
        peak as f64 / MB as f64
    );
}

/// A client that asks for a big page through a small receive window and never reads.
fn stalled_reader(port: u16) -> (TcpStream, Instant) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small window: the response cannot all sit in kernel buffers.
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut stream: TcpStream = socket.into();
    let request = format!(
        "GET /v1/users?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    (stream, Instant::now())
}

/// The daemon closed the connection (EOF or reset) before the page was all sent, and not
/// before the write deadline.
fn assert_dropped_before_the_end(mut stream: TcpStream, asked: Instant) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let ended = stream.read_to_end(&mut got);
    // The connection was closed (EOF or reset) before the page was all sent.
    assert!(
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{ended:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let declared: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content length");
    let body = got.len() - text.find("\r\n\r\n").unwrap() - 4;
    assert!(body < declared, "all {declared} bytes arrived: not stalled");
    assert!(asked.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn a_closed_pipe_ends_the_listing_quietly_and_escapes_are_shown_escaped() {
    let test_db = TestDb::migrated().await;
    let admin = test_db.admin().await;
    admin
        .batch_execute(
            "INSERT INTO auth.users (id, email, raw_user_meta_data, created_at)
             SELECT gen_random_uuid(), 'pipe' || g || '@example.test', '{}', now()
             FROM generate_series(1, 300) g;
             UPDATE public.user_profiles
             SET full_name = E'\\u001b]0;pwned\\u0007Eve\\u001b[2J'
             WHERE id = (SELECT id FROM public.user_profiles ORDER BY id LIMIT 1);",
        )
        .await
        .unwrap();
    let url = test_db.runtime_url();
    // `usersync users list | head -0`: the reader is gone before the first write.
    let mut child = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(["users", "list", "--limit", "1000"])
        .env_clear()
        .env("DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, stdout, _) = usersync(
        &["users", "list", "--limit", "1"],
        &[("DATABASE_URL", url.as_str())],
    );
    assert_eq!(code, 0);
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "{stdout:?}"
    );
    assert!(
        stdout.contains("\\u{1b}]0;pwned\\u{7}Eve\\u{1b}[2J"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_request_is_one_log_line_without_the_token_or_the_query_and_is_not_cached() {
    let test_db = TestDb::migrated().await;
    let user = crate::support::AuthUser::email("logged@example.test");
    crate::support::insert_users(&test_db.admin().await, std::slice::from_ref(&user))
        .await
        .unwrap();
    let log_path =
        std::env::temp_dir().join(format!("usersync-it-{}-access.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let binary = Binary::start_logging(
        &test_db,
        &[
            ("USERSYNC__API__TOKEN", TOKEN),
            ("USERSYNC__LOG__FORMAT", "json"),
        ],
        None,
        Stdio::from(log),
    );
    let cursor = usersync::db::users::encode_cursor(user.id);
    let path = format!("/v1/users?limit=7&cursor={cursor}");
    let mut stream = TcpStream::connect(("127.0.0.1", binary.port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{response}"
    );
    let (status, _) = binary.get(&format!("/v1/users/{}", user.id));
    assert_eq!(status, 200);
    drop(binary);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("api request")).collect();
    assert_eq!(lines.len(), 2, "one line per API request:\n{log}");
    assert!(
        lines[0].contains("\"route\":\"/v1/users\"") && lines[0].contains("\"status\":200"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("\"route\":\"/v1/users/{id}\""),
        "{}",
        lines[1]
    );
    for secret in [
        TOKEN,
        cursor.as_str(),
        &user.id.to_string(),
        "limit=7",
        "logged@example.test",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    let _ = std::fs::remove_file(log_path);
}
