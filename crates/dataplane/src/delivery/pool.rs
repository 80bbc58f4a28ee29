//! Keep-alive HTTP/1.1 connections to one origin (scheme and authority).
//!
//! Why not hyper-util's pooled client: every request there hashes the
//! origin and takes the shared pool lock twice (check-out, return), and
//! rewrites the request on the way. A subscriber's origin never changes
//! between its messages, so the engine looks its pool up once and a
//! request costs one short lock to take an idle connection and one to give
//! it back. The TCP connector (with the destination policy) is
//! hyper-util's, TLS is tokio-rustls, and the protocol is [`super::h1`].

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderValue, Uri};
use rustls_pki_types::ServerName;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::h1::Connection;

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The connections of one origin. At most `slots` requests are in flight,
/// each on a connection of its own, so at most `slots` connections exist:
/// every connection opened is kept and reused, and a burst never opens and
/// closes a connection per message.
pub struct OriginPool {
    /// The URI the connectors take: scheme and authority.
    pub connect_to: Uri,
    /// The `Host` header of every request.
    pub host: HeaderValue,
    /// The name TLS verifies: `Some` exactly for `https`.
    pub server_name: Option<ServerName<'static>>,
    slots: Semaphore,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<(Connection, Instant)>>,
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
        let server_name = if https {
            // An IPv6 literal is bracketed in a URI, not in a server name.
            let name = authority.host().trim_start_matches('[').trim_end_matches(']');
            Some(ServerName::try_from(name.to_string()).ok()?)
        } else {
            None
        };
        Some(Self {
            connect_to,
            host: HeaderValue::from_str(&host).ok()?,
            server_name,
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

    /// The most recently used idle connection that is still open.
    pub fn take_idle(&self) -> Option<Connection> {
        loop {
            let (mut connection, since) = self.lock().pop()?;
            if since.elapsed() <= IDLE_TIMEOUT && connection.is_open() {
                return Some(connection);
            }
        }
    }

    /// Keeps a connection whose exchange ended cleanly for the next request.
    pub fn give_back(&self, connection: Connection) {
        self.lock().push((connection, Instant::now()));
    }

    /// Closes connections unused for longer than [`IDLE_TIMEOUT`], and those
    /// the server closed.
    pub fn close_expired(&self) {
        self.lock()
            .retain_mut(|(c, since)| since.elapsed() <= IDLE_TIMEOUT && c.is_open());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Connection, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}
