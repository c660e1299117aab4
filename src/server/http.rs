//! A small HTTP/1.1 server on `std::net`, written for hostile clients: every
//! read has a deadline, the request head and body are bounded before any
//! allocation, connections are capped, and nothing a client sends reaches a
//! panic. Routing and JSON live in the parent module; this one only frames
//! requests and responses.
//!
//! Not tiny_http: its 0.12 request reader drains an unread body on drop with
//! `vec![0; declared Content-Length]`, so one request declaring a huge body
//! aborts the process (tiny-http issue #252), and it has no read timeouts.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ApiError;

/// Bounds on what one client can make the server wait for or hold.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    /// From waiting for a request (idle keep-alive included) to its last body
    /// byte.
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    /// Request line and headers, in bytes.
    pub max_head: usize,
    pub max_headers: usize,
    /// Connections served at once; more get a 503.
    pub max_connections: usize,
    pub max_requests_per_connection: usize,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_head: 8192,
            max_headers: 64,
            max_connections: 64,
            max_requests_per_connection: 1000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A request line and its headers; the body is read through [`Body`].
#[derive(Debug)]
pub(super) struct Request {
    pub method: String,
    /// The path of the target, without the query, not yet percent-decoded.
    pub path: String,
    headers: Vec<(String, String)>,
    content_length: u64,
    keep_alive: bool,
    expect_continue: bool,
    /// The address of the client's end of the connection.
    pub peer: Option<IpAddr>,
}

impl Request {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The declared body length.
    pub fn content_length(&self) -> u64 {
        self.content_length
    }
}

/// A response: JSON for the API, HTML for the ballot page.
#[derive(Debug)]
pub(super) struct Response {
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// What answers requests.
pub(super) trait App: Send + Sync + 'static {
    fn respond(&self, request: &Request, body: &mut Body<'_>) -> Response;
}

/// The body of the request being answered, read on demand.
pub(super) struct Body<'a> {
    conn: &'a mut Conn,
    length: u64,
    deadline: Instant,
    expect_continue: bool,
    state: BodyState,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyState {
    Unread,
    Read,
    /// Not fully read: the connection cannot carry another request.
    Broken,
}

impl Body<'_> {
    /// The whole body, if it is at most `max` bytes; never reads more than
    /// the declared length, and never past the request deadline.
    pub fn read(&mut self, max: usize) -> Result<Vec<u8>, ApiError> {
        if self.length == 0 {
            return Ok(Vec::new());
        }
        if self.state != BodyState::Unread {
            return Err(ApiError::BadRequest("the body was already read".into()));
        }
        if self.length > max as u64 {
            self.state = BodyState::Broken;
            return Err(ApiError::PayloadTooLarge(max));
        }
        self.state = BodyState::Broken;
        let length = self.length as usize;
        if self.expect_continue && length > self.conn.buf.len() {
            self.conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let buffered = length.min(self.conn.buf.len());
        let mut body: Vec<u8> = self.conn.buf.drain(..buffered).collect();
        while body.len() < length {
            if self.conn.buf.is_empty() && self.conn.fill(self.deadline)? == 0 {
                return Err(ApiError::BadRequest(
                    "the connection closed inside the body".into(),
                ));
            }
            let take = (length - body.len()).min(self.conn.buf.len());
            body.extend(self.conn.buf.drain(..take));
        }
        self.state = BodyState::Read;
        Ok(body)
    }
}

/// A listening server; [`Running::shutdown`] (or drop) stops it.
pub(super) struct Running {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    grace: Duration,
}

struct Shared {
    stop: AtomicBool,
    /// Open connections (a clone of each stream, to close them at shutdown).
    conns: Mutex<HashMap<u64, TcpStream>>,
    conns_changed: Condvar,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves `app` on `listener` (already bound), a thread per connection.
pub(super) fn serve(listener: TcpListener, app: Arc<dyn App>, limits: Limits) -> io::Result<Running> {
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        conns: Mutex::new(HashMap::new()),
        conns_changed: Condvar::new(),
    });
    let grace = limits.shutdown_grace;
    let accept_shared = Arc::clone(&shared);
    let accept = std::thread::Builder::new()
        .name("ballot-http".into())
        .spawn(move || accept_loop(listener, app, limits, accept_shared))?;
    Ok(Running {
        addr,
        shared,
        accept: Some(accept),
        grace,
    })
}

impl Running {
    /// Stops accepting, closes every connection, and waits (a bounded time)
    /// for their threads. Idempotent.
    pub fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // accept() returns for this connection and sees the flag.
        let wake = match TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1)) {
            Ok(_) => true,
            Err(e) => {
                log::warn!("stopping the voting server: cannot wake its listener: {e}");
                false
            }
        };
        if wake {
            let _ = accept.join();
        }
        let mut conns = self.shared.conns();
        for stream in conns.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + self.grace;
        while !conns.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                log::warn!(
                    "stopping the voting server: {} connections still open",
                    conns.len()
                );
                break;
            };
            conns = match self.shared.conns_changed.wait_timeout(conns, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where to connect to reach a listener bound to `addr`.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn accept_loop(listener: TcpListener, app: Arc<dyn App>, limits: Limits, shared: Arc<Shared>) {
    let next_id = AtomicU64::new(0);
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                log::warn!("voting server: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let admitted = {
            let mut conns = shared.conns();
            match stream.try_clone() {
                Ok(clone) if conns.len() < limits.max_connections => {
                    conns.insert(id, clone);
                    true
                }
                _ => false,
            }
        };
        if !admitted {
            refuse_busy(stream);
            continue;
        }
        let (app, limits, conn_shared) = (Arc::clone(&app), limits.clone(), Arc::clone(&shared));
        let spawned = std::thread::Builder::new()
            .name("ballot-http-conn".into())
            .spawn(move || {
                let registered = Registered {
                    shared: conn_shared,
                    id,
                };
                serve_connection(stream, &*app, &limits);
                // What the connection holds (the ballot, with its journal
                // and the journal's lock) goes before the connection counts
                // as closed: once shutdown has seen every connection close,
                // the journal can be opened again.
                drop(app);
                drop(registered);
            });
        if let Err(e) = spawned {
            log::warn!("voting server: starting a connection thread: {e}");
            if let Some(stream) = shared.conns().remove(&id) {
                refuse_busy(stream);
            }
            shared.conns_changed.notify_all();
        }
    }
}

/// Unregisters a connection when its thread ends, however it ends.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.conns().remove(&self.id);
        self.shared.conns_changed.notify_all();
    }
}

fn refuse_busy(stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        read_timeout: None,
    };
    let _ = conn.send(&ApiError::Unavailable.response(), true, false);
}

/// A client connection with the bytes read but not yet used.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The socket's read timeout as last set.
    read_timeout: Option<Duration>,
}

impl Conn {
    /// Reads once more into `buf`; 0 at end of stream; a `TimedOut` error
    /// past the deadline.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(ErrorKind::TimedOut)?;
            // A timeout between half of what is left and all of it is kept:
            // a read still ends by the deadline, and a keep-alive
            // connection saves a system call per request. One that ends
            // early only brings another round.
            if !self
                .read_timeout
                .is_some_and(|t| t <= left && t >= left / 2)
            {
                self.stream.set_read_timeout(Some(left))?;
                self.read_timeout = Some(left);
            }
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // The timeout passed; the deadline too, unless the
                // timeout was shorter.
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes `response`, announcing whether the connection stays open.
    fn send(&mut self, response: &Response, close: bool, head_only: bool) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: {}\r\n",
            response.status,
            reason(response.status),
            response.content_type,
            response.body.len(),
            if close { "close" } else { "keep-alive" },
        )
        .into_bytes();
        for (name, value) in &response.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&response.body);
        }
        self.write_all(&out)
    }
}

impl From<io::Error> for ApiError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ApiError::Timeout,
            _ => ApiError::BadRequest(format!("reading the request: {e}")),
        }
    }
}

fn serve_connection(stream: TcpStream, app: &dyn App, limits: &Limits) {
    if stream
        .set_write_timeout(Some(limits.write_timeout))
        .is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        read_timeout: None,
    };
    for served in 1..=limits.max_requests_per_connection {
        let deadline = Instant::now() + limits.request_timeout;
        let request = match read_request(&mut conn, deadline, limits) {
            Ok(Some(request)) => Request { peer, ..request },
            // The client left, or stayed idle past the deadline.
            Ok(None) => return,
            Err(e) => {
                let _ = conn.send(&e.response(), true, false);
                return;
            }
        };
        let head_only = request.method == "HEAD";
        let mut body = Body {
            conn: &mut conn,
            length: request.content_length,
            deadline,
            expect_continue: request.expect_continue,
            state: if request.content_length == 0 {
                BodyState::Read
            } else {
                BodyState::Unread
            },
        };
        let response = app.respond(&request, &mut body);
        // The last request a connection may carry says so in its answer.
        let close = body.state != BodyState::Read
            || !request.keep_alive
            || served == limits.max_requests_per_connection;
        if conn.send(&response, close, head_only).is_err() || close {
            return;
        }
    }
}

/// The next request head, `None` if the connection ends (or idles out)
/// before one starts.
fn read_request(
    conn: &mut Conn,
    deadline: Instant,
    limits: &Limits,
) -> Result<Option<Request>, ApiError> {
    loop {
        // Empty lines before a request line are allowed (RFC 9112 2.2).
        let blank = conn
            .buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        conn.buf.drain(..blank);
        if let Some(end) = head_end(&conn.buf) {
            let head: Vec<u8> = conn.buf.drain(..end).collect();
            return parse_head(&head, limits).map(Some);
        }
        if conn.buf.len() > limits.max_head {
            return Err(ApiError::HeadTooLarge);
        }
        match conn.fill(deadline) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(_) if conn.buf.is_empty() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The length of the head (through its empty line), if `buf` holds one.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .find_map(|(i, _)| match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        })
}

fn parse_head(head: &[u8], limits: &Limits) -> Result<Request, ApiError> {
    if head.len() > limits.max_head {
        return Err(ApiError::HeadTooLarge);
    }
    let bad = |why: &str| ApiError::BadRequest(why.to_owned());
    let text = std::str::from_utf8(head).map_err(|_| bad("the request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    if !target.starts_with('/') {
        return Err(bad("the request target must be a path"));
    }
    let http_1_0 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err(ApiError::VersionNotSupported),
        _ => return Err(bad("malformed request line")),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(bad("folded header lines are not allowed"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("malformed header name"));
        }
        if headers.len() >= limits.max_headers {
            return Err(ApiError::HeadTooLarge);
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let has = |name: &str| {
        headers
            .iter()
            .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(name))
    };
    if has("transfer-encoding") {
        return Err(ApiError::LengthRequired);
    }
    let mut content_length = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("malformed content-length"));
        }
        // Too many digits is simply too large.
        let n = value.parse::<u64>().unwrap_or(u64::MAX);
        if content_length.is_some_and(|c| c != n) {
            return Err(bad("conflicting content-length headers"));
        }
        content_length = Some(n);
    }
    let tokens = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect()
    };
    let connection = tokens("connection");
    let keep_alive = if http_1_0 {
        connection.iter().any(|t| t == "keep-alive")
    } else {
        !connection.iter().any(|t| t == "close")
    };
    let expect_continue = tokens("expect").iter().any(|t| t == "100-continue");
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(Request {
        method: method.to_owned(),
        path,
        headers,
        content_length: content_length.unwrap_or(0),
        keep_alive,
        expect_continue,
        peer: None,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\nbody"), Some(21));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn heads_are_parsed_strictly() {
        let limits = Limits::default();
        let ok = parse_head(
            b"POST /votes?x=1 HTTP/1.1\r\nContent-Type: application/json\r\ncontent-length: 12\r\n\
              Connection: Keep-Alive, close\r\n\r\n",
            &limits,
        )
        .expect("valid head");
        assert_eq!((ok.method.as_str(), ok.path.as_str()), ("POST", "/votes"));
        assert_eq!(ok.header("CONTENT-TYPE"), Some("application/json"));
        assert_eq!(ok.content_length(), 12);
        assert!(!ok.keep_alive);
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n", &limits).expect("valid");
        assert!(!old.keep_alive, "HTTP/1.0 closes by default");
        let huge = parse_head(
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            &limits,
        )
        .expect("valid");
        assert_eq!(huge.content_length(), u64::MAX);
        for (head, code) in [
            (&b"GET /\r\n\r\n"[..], "bad_request"),
            (b"get / HTTP/1.1\r\n\r\n", "bad_request"),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", "bad_request"),
            (b"GET / HTTP/2.0\r\n\r\n", "http_version_not_supported"),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "bad_request"),
            (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", "bad_request"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "bad_request",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "bad_request",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "length_required",
            ),
            (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", "bad_request"),
        ] {
            let err = parse_head(head, &limits).expect_err(&String::from_utf8_lossy(head));
            assert_eq!(err.code(), code, "{}", String::from_utf8_lossy(head));
        }
        let many: String = (0..=limits.max_headers)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let err = parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), &limits)
            .expect_err("too many headers");
        assert_eq!(err.code(), "headers_too_large");
    }

    #[test]
    fn the_wake_address_of_a_wildcard_listener_is_loopback() {
        let any: SocketAddr = "0.0.0.0:80".parse().expect("addr");
        assert_eq!(wake_addr(any), "127.0.0.1:80".parse().expect("addr"));
        let any6: SocketAddr = "[::]:80".parse().expect("addr");
        assert_eq!(wake_addr(any6), "[::1]:80".parse().expect("addr"));
        let one: SocketAddr = "10.1.2.3:80".parse().expect("addr");
        assert_eq!(wake_addr(one), one);
    }
}
