//! systemd's notify protocol, for `Type=notify` units: READY once the daemon serves, WATCHDOG
//! pings while its scheduler is alive (so `WatchdogSec` restarts a hung daemon), STOPPING on
//! shutdown. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use crate::state::Shared;

/// Sends one notification; errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &address).map(|_| ())
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %path, "notifying systemd");
    }
}

/// The watchdog interval systemd asked for, if it asked this process.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval while the scheduler's heartbeat is fresh; a stalled
/// scheduler stops the pings and systemd restarts the daemon.
pub async fn watchdog(shared: Arc<Shared>) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        if shared.alive() {
            notify("WATCHDOG=1");
        } else {
            tracing::warn!("scheduler heartbeat stale; withholding the systemd watchdog ping");
        }
    }
}
