//! Property tests on a time budget with a seed that replays a run.
//!
//! `USERSYNC_PROPTEST_SEED=<n>` replays a run (every run prints its seed);
//! `USERSYNC_PROPTEST_SECS` (default 8) bounds the time each property spends generating new
//! cases, `PROPTEST_CASES` (default 64) their number. Failures are shrunk as usual.

use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `test` on values of `strategy` until the case count or the time budget runs out.
pub fn check<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let seed = env_u64("USERSYNC_PROPTEST_SEED").unwrap_or_else(rand_seed);
    let budget = Duration::from_secs(env_u64("USERSYNC_PROPTEST_SECS").unwrap_or(8));
    let cases = env_u64("PROPTEST_CASES").unwrap_or(64) as u32;
    eprintln!("{name}: seed {seed} (replay with USERSYNC_PROPTEST_SEED={seed})");

    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed.rotate_left(i as u32 * 16) ^ i as u64).to_le_bytes());
    }
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let started = Instant::now();
    let ran = std::cell::Cell::new(0u32);
    let failed = std::cell::Cell::new(false);
    let result = runner.run(&strategy, |value| {
        // Past the budget only a failure being shrunk still runs.
        if started.elapsed() > budget && !failed.get() {
            return Ok(());
        }
        ran.set(ran.get() + 1);
        let outcome = test(value);
        if outcome.is_err() {
            failed.set(true);
        }
        outcome
    });
    eprintln!("{name}: {} cases in {:.1?}", ran.get(), started.elapsed());
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => {
            panic!(
                "{name} failed: {reason}\nminimal input: {value:#?}\nreplay with USERSYNC_PROPTEST_SEED={seed}"
            )
        }
        Err(e) => panic!("{name}: {e}\nreplay with USERSYNC_PROPTEST_SEED={seed}"),
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A runtime for property bodies, which are synchronous closures.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Turns any displayable error into a test case failure.
pub fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}
