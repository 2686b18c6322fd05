//! What one HTTP client can make the daemon hold, bounded.
//!
//! - **Connections**: at most `http.max_connections`. At the cap, a new connection closes the
//!   oldest one that is waiting for a request head (an idle or slow client); only when every
//!   connection is busy with a request does it take one of [`RESERVE`] more, which serve
//!   `/healthz`, `/readyz` and `/metrics` only; past those it is closed at once. So probes and
//!   scrapes get through however many clients sit idle, and file descriptors stay bounded.
//! - **Memory per connection**: a request head larger than [`MAX_HEAD`] is refused (431), and
//!   request bodies are never read.
//! - **Time**: `http.header_read_timeout_secs` to send a head; a response write that makes no
//!   progress for `http.write_timeout_secs` ends the connection ([`DeadlineIo`]), so a client
//!   that never reads cannot keep a response in memory; the kernel's send buffer is fixed at
//!   [`SEND_BUFFER`], so a response cannot hide in it either.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Connections beyond `http.max_connections` kept for health checks and scrapes.
pub const RESERVE: usize = 16;

/// The largest request head accepted (hyper's buffer; its floor is 8 KiB).
pub const MAX_HEAD: usize = 16 * 1024;

/// The kernel's send buffer per connection, fixed rather than grown to megabytes: what a
/// client that does not read can make the machine hold (in a container, socket memory counts
/// against the pod's limit), and what makes the write deadline bite.
pub const SEND_BUFFER: usize = 64 * 1024;

/// The open connections, and which of them wait for a request head, oldest first.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    next_id: AtomicU64,
    waiting: Mutex<VecDeque<(u64, Arc<Notify>)>>,
}

/// What the accept loop decided for a new connection.
pub enum Admission {
    /// Served normally.
    Full(Slot),
    /// Served for `/healthz`, `/readyz` and `/metrics` only.
    Reserve(Slot),
    /// Closed at once.
    Refused,
}

impl Connections {
    /// Admits a connection under `cap`, closing the oldest waiting one when at it.
    pub fn admit(self: &Arc<Self>, cap: usize) -> (Admission, bool) {
        let open = self.open.load(Ordering::Relaxed);
        let mut evicted = false;
        if open >= cap {
            if let Some((_, kill)) = self.waiting.lock().expect("not poisoned").pop_front() {
                kill.notify_one();
                evicted = true;
            } else if open >= cap + RESERVE {
                return (Admission::Refused, false);
            } else {
                return (Admission::Reserve(self.slot()), false);
            }
        }
        (Admission::Full(self.slot()), evicted)
    }

    fn slot(self: &Arc<Self>) -> Slot {
        self.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            kill: Arc::new(Notify::new()),
            connections: self.clone(),
        };
        slot.waiting();
        slot
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One admitted connection: counted while it lives, closable by the accept loop while it
/// waits for a request head.
pub struct Slot {
    id: u64,
    pub kill: Arc<Notify>,
    connections: Arc<Connections>,
}

impl Slot {
    /// Waiting for a request head: the first to go when a newcomer needs room.
    pub fn waiting(&self) {
        let mut waiting = self.connections.waiting.lock().expect("not poisoned");
        if !waiting.iter().any(|(id, _)| *id == self.id) {
            waiting.push_back((self.id, self.kill.clone()));
        }
    }

    /// Serving a request: not to be closed for a newcomer.
    pub fn busy(&self) {
        self.connections
            .waiting
            .lock()
            .expect("not poisoned")
            .retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy();
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream whose writes fail once they make no progress for `timeout`.
pub struct DeadlineIo<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> DeadlineIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        DeadlineIo {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when a write is pending: arms the deadline, or fails once it has passed.
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the response in time",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.pending(cx).map(Err),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_waiting_connection_makes_room() {
        let connections = Arc::new(Connections::default());
        let (Admission::Full(a), false) = connections.admit(2) else {
            panic!("first admitted")
        };
        let (Admission::Full(b), false) = connections.admit(2) else {
            panic!("second admitted")
        };
        b.busy();
        // At the cap: a, the waiting one, is told to go.
        let (Admission::Full(c), true) = connections.admit(2) else {
            panic!("third admitted by evicting")
        };
        drop(a);
        c.busy();
        // Everything busy: the reserve, then refusal.
        let reserve: Vec<Slot> = (0..RESERVE)
            .map(|_| match connections.admit(2) {
                (Admission::Reserve(slot), false) => {
                    slot.busy();
                    slot
                }
                _ => panic!("a reserve slot"),
            })
            .collect();
        assert!(matches!(connections.admit(2).0, Admission::Refused));
        assert_eq!(connections.open(), 2 + RESERVE);
        drop(reserve);
        drop((b, c));
        assert_eq!(connections.open(), 0);
    }
}
