//! Keep-alive HTTP/1.1 connections to one origin (scheme and authority).
//!
//! Why not hyper-util's pooled client: every request there hashes the
//! origin and takes the shared pool lock twice (check-out, return), and
//! rewrites the request on the way. A subscriber's origin never changes
//! between its messages, so the engine looks its pool up once and a
//! request costs one short lock to take an idle connection and one to give
//! it back. The connectors (TCP with the destination policy, TLS) are
//! still hyper-util's and hyper-rustls'; the protocol is hyper's.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub type Sender = SendRequest<Full<Bytes>>;

/// The connections of one origin. At most `slots` requests are in flight,
/// each on a connection of its own, so at most `slots` connections exist:
/// every connection opened is kept and reused, and a burst never opens and
/// closes a connection per message.
pub struct OriginPool {
    pub https: bool,
    /// The URI the connectors take: scheme and authority.
    pub connect_to: Uri,
    /// The `Host` header of every request.
    pub host: HeaderValue,
    slots: Semaphore,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl OriginPool {
    /// The pool of `uri`'s origin (`https` or not); `None` without an authority.
    pub fn new(https: bool, uri: &Uri, slots: usize) -> Option<Self> {
        let authority = uri.authority()?;
        let default_port = if https { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_string(),
        };
        let connect_to = Uri::builder()
            .scheme(if https { "https" } else { "http" })
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        Some(Self {
            https,
            connect_to,
            host: HeaderValue::from_str(&host).ok()?,
            slots: Semaphore::new(slots),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Waits for a free slot (FIFO among waiters).
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        self.slots.acquire().await.ok()
    }

    /// True while no request holds a slot.
    pub fn unused(&self, slots: usize) -> bool {
        self.slots.available_permits() == slots
    }

    /// The most recently used idle connection that can take a request now.
    pub async fn take_idle(&self) -> Option<Sender> {
        loop {
            let (mut sender, since) = self.lock().pop()?;
            if since.elapsed() > IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            // Ready at once unless the connection is still finishing the
            // previous exchange, or was closed by the server meanwhile.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Keeps a connection whose exchange ended cleanly for the next request.
    pub fn give_back(&self, sender: Sender) {
        if !sender.is_closed() {
            self.lock().push((sender, Instant::now()));
        }
    }

    /// Closes connections unused for longer than [`IDLE_TIMEOUT`].
    pub fn close_expired(&self) {
        self.lock()
            .retain(|(s, since)| since.elapsed() <= IDLE_TIMEOUT && !s.is_closed());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Sender, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}
