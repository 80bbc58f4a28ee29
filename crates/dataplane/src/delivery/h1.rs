//! One client-side HTTP/1.1 connection: a POST written and its response
//! read inside the caller's future, on `httparse`.
//!
//! Why not hyper's client connection: it runs each connection as a task of
//! its own, behind a dispatch channel, and turns every request and response
//! into header maps. A delivery is the relay's whole job, and in the 1→1
//! benchmark that machinery (hyper, `http` header maps, the task's wake-ups
//! and allocations) was about a sixth of the relay's CPU per delivery. Here
//! a request is one buffer written with one write, and a response is parsed
//! in place, keeping only what the engine needs: the status, `Retry-After`
//! and whether the connection can be reused.
//!
//! What it speaks: requests with `Content-Length`; responses framed by
//! `Content-Length` or `Transfer-Encoding: chunked` (extensions and trailers
//! skipped), or by the end of the connection; interim 1xx responses skipped;
//! `Connection: close` and HTTP/1.0 honoured. Anything it cannot frame is
//! answered without reading the body, and the connection is not reused.
//!
//! One job in one file: writing the request, reading the head, framing the
//! body and deciding whether the connection can be reused all work on the
//! same connection buffer. Its unit tests are in `h1/tests.rs`.

use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode, header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::policy::parse_retry_after;

/// The most response head (status line and headers) read.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers in a response head.
const MAX_HEADERS: usize = 64;
/// Response bodies beyond this are not read (the connection is then not reused).
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Bodies up to this size are copied behind the head and go out in one write.
const INLINE_BODY: usize = 16 * 1024;
/// Buffers that grew past this are given back after the exchange.
const KEEP_BUFFER: usize = 16 * 1024;
/// Read granularity.
const READ_CHUNK: usize = 4096;

/// The transport under a connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Request header lines (`name: value\r\n` each), ready to be written.
/// Only valid names and values get in, so nothing in them can split a
/// request; `Host`, `Content-Length`, `Transfer-Encoding` and `Connection`
/// are the connection's own and are left out. Never printed: they may carry
/// a token.
#[derive(Clone, Default)]
pub struct HeaderLines(Vec<u8>);

impl HeaderLines {
    pub fn with_capacity(bytes: usize) -> Self {
        Self(Vec::with_capacity(bytes))
    }

    /// Appends one header; false (nothing appended) for a value that no
    /// header may have, or a name that is the connection's own.
    pub fn push(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        let framing = matches!(
            *name,
            header::HOST | header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION
        );
        if framing || !is_header_value(value) {
            return false;
        }
        self.0.extend_from_slice(name.as_str().as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
        true
    }

    /// Every header of `map` but the connection's own.
    pub fn from_map(map: &HeaderMap) -> Self {
        let mut lines = Self::with_capacity(map.len() * 48);
        for (name, value) in map {
            lines.push(name, value.as_bytes());
        }
        lines
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for HeaderLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeaderLines({} bytes)", self.0.len())
    }
}

/// What a header value may hold (RFC 9110 field-value; the rule `http`'s
/// `HeaderValue` applies): no CR, LF, NUL or other control but tab.
pub fn is_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// What the engine needs of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    /// The response was read to its end and the server keeps the
    /// connection open: it can take the next request.
    pub reusable: bool,
}

/// A failed exchange.
#[derive(Debug)]
pub struct ExchangeError {
    pub error: io::Error,
    /// Not one byte of a response arrived: on a connection that sat idle
    /// this is the server having closed it meanwhile, and the request may
    /// go again on a new connection.
    pub before_response: bool,
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    stream: Stream,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
    /// The request being written.
    output: Vec<u8>,
    /// Response bytes received in the current exchange.
    received: usize,
}

impl Connection {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            received: 0,
        }
    }

    /// True while an idle connection is open and quiet. Polls once without
    /// waiting: a server that closed the connection (or, wrongly, sent
    /// something unasked) makes it unusable.
    pub fn is_open(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// POSTs `body` to `path` on `host` with `headers` and reads the response.
    pub async fn post(
        &mut self,
        host: &[u8],
        path: &str,
        headers: &HeaderLines,
        body: &[u8],
    ) -> Result<Response, ExchangeError> {
        self.received = 0;
        let result = self.exchange(host, path, headers, body).await;
        if self.input.capacity() > KEEP_BUFFER {
            self.input = Vec::new();
        }
        if self.output.capacity() > KEEP_BUFFER {
            self.output = Vec::new();
        }
        result.map_err(|error| ExchangeError {
            error,
            before_response: self.received == 0,
        })
    }

    async fn exchange(
        &mut self,
        host: &[u8],
        path: &str,
        headers: &HeaderLines,
        body: &[u8],
    ) -> io::Result<Response> {
        write_head(&mut self.output, host, path, headers, body.len());
        if body.len() <= INLINE_BODY {
            self.output.extend_from_slice(body);
            self.stream.write_all(&self.output).await?;
        } else {
            self.stream.write_all(&self.output).await?;
            self.stream.write_all(body).await?;
        }
        self.stream.flush().await?;

        let head = loop {
            let head = self.read_head().await?;
            // Interim responses (103 Early Hints, an unasked 100) precede the real one.
            if !(100..200).contains(&head.status) || head.status == 101 {
                break head;
            }
        };
        let status =
            StatusCode::from_u16(head.status).map_err(|_| invalid("response status out of range"))?;
        if head.status == 101 {
            return Err(invalid("the server switched protocols"));
        }
        let mut reusable = head.keep_alive;
        let body_follows = !matches!(head.status, 204 | 304);
        if body_follows && reusable {
            // The status is the answer: a body that then breaks off or is
            // malformed only means the connection cannot be reused (as
            // with a client that reads the head and drops the body).
            reusable = self.skip_body(head.framing).await.unwrap_or(false);
        }
        // Bytes beyond the response: the server is not speaking plain
        // request/response; do not trust the connection further.
        if !self.input.is_empty() {
            reusable = false;
        }
        Ok(Response {
            status,
            retry_after: head.retry_after,
            reusable,
        })
    }

    /// Reads and parses one response head, leaving what follows it in `input`.
    async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some((len, head)) = parse_head(&self.input)? {
                self.input.drain(..len);
                return Ok(head);
            }
            if self.input.len() >= MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            self.fill().await?;
        }
    }

    /// Reads and discards a response body: true when it was read to its end.
    async fn skip_body(&mut self, framing: Framing) -> io::Result<bool> {
        match framing {
            Framing::Chunked => self.skip_chunked().await,
            Framing::Length(n) if n <= MAX_RESPONSE_BODY as u64 => {
                self.skip(n as usize).await?;
                Ok(true)
            }
            // Too long to read, or delimited by the end of the connection.
            Framing::Length(_) | Framing::UntilClose => Ok(false),
        }
    }

    /// Reads and discards `n` body bytes.
    async fn skip(&mut self, mut n: usize) -> io::Result<()> {
        loop {
            let take = n.min(self.input.len());
            self.input.drain(..take);
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Reads and discards a chunked body and its trailers: false when it
    /// is longer than [`MAX_RESPONSE_BODY`] (then not read to its end).
    async fn skip_chunked(&mut self) -> io::Result<bool> {
        let mut total = 0u64;
        loop {
            let (consumed, size) = loop {
                match httparse::parse_chunk_size(&self.input) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) if self.input.len() < READ_CHUNK => self.fill().await?,
                    _ => return Err(invalid("bad chunk size line")),
                }
            };
            self.input.drain(..consumed);
            if size == 0 {
                break;
            }
            // Checked: a size near u64::MAX after a small chunk must not wrap.
            total = match total.checked_add(size) {
                Some(sum) if sum <= MAX_RESPONSE_BODY as u64 => sum,
                _ => return Ok(false),
            };
            self.skip(size as usize).await?;
            self.expect_crlf().await?;
        }
        // Trailer lines, up to the empty line that ends the message.
        loop {
            match self.input.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.input.drain(..2);
                    return Ok(true);
                }
                Some(end) => drop(self.input.drain(..end + 2)),
                None if self.input.len() < MAX_HEAD => self.fill().await?,
                None => return Err(invalid("response trailers too large")),
            }
        }
    }

    async fn expect_crlf(&mut self) -> io::Result<()> {
        while self.input.len() < 2 {
            self.fill().await?;
        }
        if &self.input[..2] != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
        self.input.drain(..2);
        Ok(())
    }

    /// Reads what is available into `input`; the end of the stream is an error
    /// (every caller is waiting for more of a response).
    async fn fill(&mut self) -> io::Result<()> {
        self.input.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.input).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before the response ended",
            ));
        }
        self.received += n;
        Ok(())
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// The parts of a response head the client acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
    /// HTTP/1.1 without `Connection: close`, and framing that leaves the
    /// connection in a known state.
    keep_alive: bool,
    retry_after: Option<Duration>,
}

/// Writes a POST request head into `out` (cleared first).
fn write_head(out: &mut Vec<u8>, host: &[u8], path: &str, headers: &HeaderLines, body_len: usize) {
    out.clear();
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(if path.is_empty() { b"/" } else { path.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(headers.as_bytes());
    // Writing into a Vec cannot fail.
    let _ = write!(out, "content-length: {body_len}\r\n\r\n");
}

/// Parses a response head at the start of `input`: its length and what it
/// says, or `None` while it is incomplete.
fn parse_head(input: &[u8]) -> io::Result<Option<(usize, Head)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("malformed response head: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only
    // when it says `Connection: keep-alive` (RFC 9112 §9.3).
    let mut persistent = response.version == Some(1);
    let mut framing_suspect = false;
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut retry_after = None;
    let mut close = false;
    // No body follows these, whatever the head says of one (RFC 9112 §6.3),
    // so their framing headers are not read.
    let bodiless = matches!(status, 100..=199 | 204 | 304);
    for h in response.headers.iter() {
        let name = h.name;
        let framing_header =
            name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding");
        if bodiless && framing_header {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| invalid("bad Content-Length"))?;
            if length.is_some_and(|seen| seen != n) {
                return Err(invalid("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                // Several lists: read only the simple case.
                framing_suspect = true;
            }
            transfer_encoding = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    persistent = true;
                }
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = parse_retry_after(h.value);
        }
    }
    if transfer_encoding.is_some() && response.version == Some(0) {
        // RFC 9112 §6.1: faulty framing, refused as hyper refuses it.
        return Err(invalid("Transfer-Encoding in an HTTP/1.0 response"));
    }
    let framing = match (transfer_encoding, length) {
        (Some(te), length) => {
            // Both given: the encoding wins, but the message is suspect.
            if length.is_some() {
                framing_suspect = true;
            }
            let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        }
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    };
    let keep_alive = persistent && !close && !framing_suspect;
    Ok(Some((
        len,
        Head {
            status,
            framing,
            keep_alive,
            retry_after,
        },
    )))
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;
