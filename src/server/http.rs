//! A small HTTP/1.1 server written for hostile clients and for a room full of
//! them: one event loop (mio, edge-triggered epoll) holds every connection,
//! so an idle keep-alive client or an open event stream costs a few hundred
//! bytes, not a thread. Every request has a deadline, the head and body are
//! bounded before any allocation, idle connections are reclaimed, and
//! nothing a client sends reaches a panic. Routing and JSON live in the
//! parent module; this one only frames requests and responses.
//!
//! Every request is answered on the loop. One that must wait (a change waits
//! for its journal sync) takes a [`Later`] and is answered through it when
//! its sync is done, so that the loop never blocks and every change queued
//! meanwhile shares the next sync. Pipelined requests are answered in
//! order, up to [`MAX_IN_FLIGHT`] of a connection at once, so that one
//! connection's changes can share a sync too.
//!
//! A response marked [`Response::stream`] turns its connection into an event
//! stream: the loop appends whatever is sent through the [`Hub`] to every
//! such connection, and drops one that falls too far behind.
//!
//! Not tiny_http: its 0.12 request reader drains an unread body on drop with
//! `vec![0; declared Content-Length]`, so one request declaring a huge body
//! aborts the process (tiny-http issue #252), and it has no read timeouts.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::ApiError;

/// Bounds on what one client can make the server wait for or hold.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    /// From waiting for a request (idle keep-alive included) to its last body
    /// byte.
    pub request_timeout: Duration,
    /// Longest a response (or an event stream) may stall, its client reading
    /// nothing, before the connection is dropped.
    pub write_timeout: Duration,
    /// Request line and headers, in bytes.
    pub max_head: usize,
    pub max_headers: usize,
    /// Largest body the transport buffers (the application refuses larger
    /// ones before they are read).
    pub max_body: usize,
    /// Connections held at once; more get a 503. Lowered, with a warning, to
    /// what the process's file descriptor limit allows.
    pub max_connections: usize,
    pub max_requests_per_connection: usize,
    /// Bytes an event stream may fall behind before it is dropped.
    pub max_stream_backlog: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_head: 8192,
            max_headers: 64,
            max_body: 4096,
            max_connections: 16_384,
            max_requests_per_connection: 1000,
            max_stream_backlog: 256 * 1024,
        }
    }
}

/// A request line and its headers; the body comes separately.
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

/// A response: JSON for the API, HTML for the ballot page, or the start of
/// an event stream.
#[derive(Debug)]
pub(super) struct Response {
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// An event stream: `body` is its first events, the connection stays
    /// open and gets every [`Hub::send`] until the client leaves.
    pub stream: bool,
}

/// What answers requests, on the event loop: it must not block.
pub(super) trait App: Send + Sync + 'static {
    /// Looks at a request's head before its body is read. `Err` is the
    /// answer, given at once; a declared body is then not read, and the
    /// connection closes after the answer.
    fn admit(&self, request: &Request) -> Result<(), Response>;
    /// Answers a request, given its whole body: at once (`Some`), or later,
    /// through the [`Later`] it takes out of `later` (`None`).
    fn respond(&self, request: &Request, body: Vec<u8>, later: &mut Option<Later>) -> Option<Response>;
}

/// The way to answer a request after [`App::respond`] has returned, from any
/// thread. Dropped unsent, it answers 500.
pub(super) struct Later {
    shared: Arc<Shared>,
    slot: usize,
    serial: u64,
    exchange: u64,
    sent: bool,
}

impl Later {
    pub fn send(mut self, response: Response) {
        self.sent = true;
        self.deliver(Some(response));
    }

    fn deliver(&self, response: Option<Response>) {
        let mut done = lock(&self.shared.done);
        // The loop empties the list after each wake: one wake per batch.
        let wake = done.is_empty();
        done.push(Done {
            slot: self.slot,
            serial: self.serial,
            exchange: self.exchange,
            response,
        });
        drop(done);
        if wake {
            let _ = self.shared.waker.wake();
        }
    }
}

impl Drop for Later {
    fn drop(&mut self) {
        if !self.sent {
            self.deliver(None);
        }
    }
}

/// Sends events to every open event stream.
#[derive(Clone)]
pub(super) struct Hub {
    shared: Arc<Shared>,
}

impl Hub {
    /// Queues `event` (whole SSE records) for every stream open now.
    pub fn send(&self, event: Vec<u8>) {
        let mut pending = lock(&self.shared.events);
        let wake = pending.is_empty();
        pending.push(Arc::from(event));
        drop(pending);
        if wake {
            let _ = self.shared.waker.wake();
        }
    }

    /// Event streams open now.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers.load(Ordering::Relaxed)
    }
}

/// A listening server; [`Running::shutdown`] (or drop) stops it.
pub(super) struct Running {
    pub addr: SocketAddr,
    pub hub: Hub,
    shared: Arc<Shared>,
    event_loop: Option<JoinHandle<()>>,
}

/// What the loop, the [`Later`]s, the [`Hub`] and the handle share.
struct Shared {
    stop: AtomicBool,
    waker: Waker,
    /// Answers given through a [`Later`], for the loop to send.
    done: Mutex<Vec<Done>>,
    /// Events for the streams.
    events: Mutex<Vec<Arc<[u8]>>>,
    subscribers: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Done {
    slot: usize,
    serial: u64,
    exchange: u64,
    /// `None`: the [`Later`] was dropped unsent.
    response: Option<Response>,
}

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// How often deadlines are checked.
const SWEEP: Duration = Duration::from_millis(100);
/// How long a connection being closed waits for its client to finish
/// sending, so that the last answer is not lost to a reset.
const LINGER: Duration = Duration::from_secs(1);
/// Refused connections lingering at once, at most; more are dropped at once.
const MAX_LINGERING_REFUSALS: usize = 256;
/// Streams handed their events per turn of the loop.
const BROADCAST_STEP: usize = 512;
/// Requests of one connection being answered at once (pipelining); more
/// wait in its buffer.
const MAX_IN_FLIGHT: usize = 64;
/// Descriptors kept free for everything else the process opens.
const RESERVED_FDS: u64 = 64;

/// Serves `app` on `listener` (already bound): one event-loop thread and
/// nothing else: no thread per connection, no worker pool.
pub(super) fn serve(
    listener: std::net::TcpListener,
    app: Arc<dyn App>,
    mut limits: Limits,
) -> io::Result<Running> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let fds = raise_fd_limit();
    let room = fds.saturating_sub(RESERVED_FDS) as usize;
    if limits.max_connections > room {
        log::warn!(
            "voting server: the file descriptor limit ({fds}) allows {room} connections, not {}",
            limits.max_connections
        );
        limits.max_connections = room.max(1);
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        waker,
        done: Mutex::new(Vec::new()),
        events: Mutex::new(Vec::new()),
        subscribers: AtomicUsize::new(0),
    });
    let mut event_loop = Loop {
        poll,
        listener: Some(listener),
        conns: Vec::new(),
        free: Vec::new(),
        open: 0,
        lingering_refusals: 0,
        next_serial: 0,
        app,
        limits,
        shared: Arc::clone(&shared),
        accept_paused_until: None,
        scratch: vec![0; 16 * 1024],
        broadcasting: None,
    };
    let handle = std::thread::Builder::new()
        .name("ballot-http".into())
        .spawn(move || event_loop.run())?;
    Ok(Running {
        addr,
        hub: Hub { shared: Arc::clone(&shared) },
        shared,
        event_loop: Some(handle),
    })
}

/// Raises the soft limit on open files to the hard one; returns the limit
/// in force.
fn raise_fd_limit() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

impl Running {
    /// Stops accepting and closes every connection. Idempotent.
    pub fn shutdown(&mut self) {
        let Some(event_loop) = self.event_loop.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.shared.waker.wake() {
            log::warn!("stopping the voting server: cannot wake its loop: {e}");
        }
        let _ = event_loop.join();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where a connection is in its exchange.
enum Phase {
    /// Reading a request head (or idle between requests).
    Head,
    /// Head read and admitted; reading its body.
    Body(Request),
    /// No more requests are read: the last one asked to close, or opened
    /// a stream, or the client finished sending. Waiting for the answers
    /// in flight.
    Drain,
    /// An event stream.
    Stream,
    /// Closing: the last answer is written (or being written); what the
    /// client still sends is read and dropped until it closes or
    /// [`LINGER`] passes.
    Closing,
}

/// A request read and passed on, with its answer once there is one.
struct InFlight {
    exchange: u64,
    head_only: bool,
    /// The answer says `Connection: close` and the connection closes.
    close: bool,
    response: Option<Response>,
}

struct Conn {
    stream: TcpStream,
    /// Tells this connection from a later one in the same slot.
    serial: u64,
    /// Requests answered or being answered: tells a [`Later`]'s answer to
    /// this request from one to an earlier request.
    exchange: u64,
    peer: Option<IpAddr>,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// How much of `out` is written.
    sent: usize,
    phase: Phase,
    /// The current request's deadline (reading phases), or the end of the
    /// linger (closing).
    deadline: Instant,
    /// Since when `out` has waited without progress.
    stalled_since: Option<Instant>,
    served: usize,
    /// The client will send nothing more.
    eof: bool,
    /// The socket may hold more to read (reading stopped at the buffer cap).
    unread: bool,
    /// `100 Continue` sent for the current request.
    continued: bool,
    /// A refusal (503) rather than a connection that was served.
    refused: bool,
    /// Requests being answered, in the order they came.
    in_flight: VecDeque<InFlight>,
    /// Closing, and the write side is shut: the answer is out.
    shut: bool,
}

impl Conn {
    fn backlog(&self) -> usize {
        self.out.len() - self.sent
    }

    fn queue(&mut self, bytes: &[u8]) {
        if self.sent > 0 && self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Writes what it can of `out`; `Err` when the connection is broken.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        let before = self.sent;
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            self.stalled_since = None;
        } else if self.sent != before || self.stalled_since.is_none() {
            self.stalled_since = Some(now);
        }
        if self.sent > 64 * 1024 && self.sent * 2 > self.out.len() {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }
}

/// The head of `response`, announcing whether the connection stays open.
fn response_bytes(response: &Response, close: bool, head_only: bool) -> Vec<u8> {
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
    out
}

/// The head of an event stream and its first events. The stream ends when
/// the connection does, so it has no length.
fn stream_bytes(response: &Response) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
    )
    .into_bytes();
    for (name, value) in &response.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
    out
}

struct Loop {
    poll: Poll,
    listener: Option<TcpListener>,
    /// Connections by slot (token - [`FIRST_CONN`]).
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections held (refusals not counted).
    open: usize,
    lingering_refusals: usize,
    next_serial: u64,
    app: Arc<dyn App>,
    limits: Limits,
    shared: Arc<Shared>,
    accept_paused_until: Option<Instant>,
    scratch: Vec<u8>,
    /// The events being handed to the streams, and the next slot to get
    /// them.
    broadcasting: Option<(Vec<u8>, usize)>,
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        let mut broadcasting = false;
        while !self.shared.stop.load(Ordering::SeqCst) {
            let timeout = if broadcasting {
                Duration::ZERO
            } else {
                next_sweep.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("voting server: waiting for connections: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => {
                        let slot = t - FIRST_CONN;
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            self.write(slot);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(slot);
                        }
                    }
                }
            }
            self.answer_done();
            broadcasting = self.broadcast();
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP;
            }
        }
        // Dropping the listener and every connection closes them.
        self.listener = None;
        self.conns.clear();
        self.shared.subscribers.store(0, Ordering::Relaxed);
    }

    fn accept(&mut self) {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        loop {
            let accepted = match &self.listener {
                Some(listener) => listener.accept(),
                None => return,
            };
            let (mut stream, addr) = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: try again at the
                    // next sweep, do not spin.
                    log::warn!("voting server: accepting a connection: {e}");
                    self.accept_paused_until = Some(now + SWEEP / 2);
                    return;
                }
            };
            let refused = self.open >= self.limits.max_connections;
            if refused && self.lingering_refusals >= MAX_LINGERING_REFUSALS {
                let mut refusal = ApiError::Unavailable.response();
                refusal.headers.push(("Retry-After", "1".into()));
                let _ = stream.write(&response_bytes(&refusal, true, false));
                continue;
            }
            let _ = stream.set_nodelay(true);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot + FIRST_CONN),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("voting server: watching a connection: {e}");
                self.free.push(slot);
                continue;
            }
            self.next_serial += 1;
            let mut conn = Conn {
                stream,
                serial: self.next_serial,
                exchange: 0,
                peer: Some(addr.ip()),
                buf: Vec::new(),
                out: Vec::new(),
                sent: 0,
                phase: Phase::Head,
                deadline: now + self.limits.request_timeout,
                stalled_since: None,
                served: 0,
                eof: false,
                unread: false,
                continued: false,
                refused,
                in_flight: VecDeque::new(),
                shut: false,
            };
            if refused {
                self.lingering_refusals += 1;
                let mut refusal = ApiError::Unavailable.response();
                refusal.headers.push(("Retry-After", "1".into()));
                conn.queue(&response_bytes(&refusal, true, false));
                start_closing(&mut conn, now);
            } else {
                self.open += 1;
            }
            self.conns[slot] = Some(conn);
            self.write(slot);
        }
    }

    fn conn(&mut self, slot: usize) -> Option<&mut Conn> {
        self.conns.get_mut(slot).and_then(Option::as_mut)
    }

    fn close(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if matches!(conn.phase, Phase::Stream) {
            self.shared.subscribers.fetch_sub(1, Ordering::Relaxed);
        }
        if conn.refused {
            self.lingering_refusals -= 1;
        } else {
            self.open -= 1;
        }
        self.free.push(slot);
    }

    fn write(&mut self, slot: usize) {
        let now = Instant::now();
        let Some(conn) = self.conn(slot) else { return };
        if conn.flush(now).is_err() {
            self.close(slot);
            return;
        }
        if matches!(conn.phase, Phase::Closing) && conn.backlog() == 0 && !conn.shut {
            conn.shut = true;
            conn.deadline = now + LINGER;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        if conn.shut && conn.eof {
            self.close(slot);
        }
    }

    /// Reads what the client sent, then moves its exchange on as far as it
    /// goes.
    fn read(&mut self, slot: usize) {
        let cap = self.limits.max_head + self.limits.max_body;
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            // Bytes of a stream's client or a closing one are dropped; other
            // phases read up to the cap and leave the rest in the socket.
            let discard = matches!(conn.phase, Phase::Stream | Phase::Closing | Phase::Drain);
            conn.unread = false;
            while !conn.eof {
                if !discard && conn.buf.len() >= cap {
                    conn.unread = true;
                    break;
                }
                match conn.stream.read(&mut self.scratch) {
                    Ok(0) => conn.eof = true,
                    Ok(n) if discard => {
                        let _ = n;
                    }
                    Ok(n) => conn.buf.extend_from_slice(&self.scratch[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.close(slot);
                        return;
                    }
                }
            }
            let before = (conn.buf.len(), conn.eof);
            self.advance(slot);
            let Some(conn) = self.conn(slot) else { return };
            // More is waiting in the socket and the buffer has room again.
            if !(conn.unread && conn.buf.len() < before.0) {
                return;
            }
        }
    }

    /// Parses and answers what the buffer holds, as far as it goes.
    fn advance(&mut self, slot: usize) {
        let now = Instant::now();
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            match &conn.phase {
                Phase::Drain => {
                    if conn.in_flight.is_empty() {
                        start_closing(conn, now);
                        self.write(slot);
                    }
                    return;
                }
                Phase::Stream | Phase::Closing => {
                    if conn.eof && (matches!(conn.phase, Phase::Stream) || conn.backlog() == 0) {
                        self.close(slot);
                    }
                    return;
                }
                Phase::Head => {
                    if conn.in_flight.len() >= MAX_IN_FLIGHT {
                        return;
                    }
                    // Empty lines before a request line are allowed (RFC
                    // 9112 2.2).
                    let blank = conn.buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
                    conn.buf.drain(..blank);
                    let Some(end) = head_end(&conn.buf) else {
                        if conn.buf.len() > self.limits.max_head {
                            self.fail(slot, &ApiError::HeadTooLarge);
                        } else if conn.eof {
                            conn.phase = Phase::Drain;
                            continue;
                        }
                        return;
                    };
                    let head: Vec<u8> = conn.buf.drain(..end).collect();
                    let mut request = match parse_head(&head, &self.limits) {
                        Ok(r) => r,
                        Err(e) => {
                            self.fail(slot, &e);
                            return;
                        }
                    };
                    request.peer = conn.peer;
                    match self.app.admit(&request) {
                        Ok(()) => {
                            let Some(conn) = self.conn(slot) else { return };
                            conn.continued = false;
                            conn.phase = Phase::Body(request);
                        }
                        Err(response) => {
                            // A declared body is left unread: nothing after
                            // it can be told from it.
                            let unread_body = request.content_length > 0;
                            self.take_in(slot, &request, Some(response), unread_body, now);
                        }
                    }
                }
                Phase::Body(..) => {
                    let Phase::Body(request) = std::mem::replace(&mut conn.phase, Phase::Head) else {
                        unreachable!("matched just above")
                    };
                    let length = usize::try_from(request.content_length).unwrap_or(usize::MAX);
                    if length > self.limits.max_body {
                        // Admitted, yet larger than the transport holds:
                        // refused, unread.
                        let response = ApiError::PayloadTooLarge(self.limits.max_body).response();
                        self.take_in(slot, &request, Some(response), true, now);
                        continue;
                    }
                    if conn.buf.len() < length {
                        let send_continue = request.expect_continue && !conn.continued;
                        conn.phase = Phase::Body(request);
                        if conn.eof {
                            conn.phase = Phase::Drain;
                            continue;
                        } else if send_continue {
                            conn.continued = true;
                            conn.queue(b"HTTP/1.1 100 Continue\r\n\r\n");
                            self.write(slot);
                        }
                        return;
                    }
                    // A read waits for the changes before it: its answer
                    // shows them, as if each request had waited for the one
                    // before.
                    if !conn.in_flight.is_empty() && matches!(request.method.as_str(), "GET" | "HEAD") {
                        conn.phase = Phase::Body(request);
                        return;
                    }
                    let body: Vec<u8> = conn.buf.drain(..length).collect();
                    let mut later = Some(Later {
                        shared: Arc::clone(&self.shared),
                        slot,
                        serial: conn.serial,
                        exchange: conn.exchange + 1,
                        sent: false,
                    });
                    let response = self.app.respond(&request, body, &mut later);
                    let response = match (response, later) {
                        (Some(response), later) => {
                            if let Some(mut later) = later {
                                later.sent = true;
                            }
                            Some(response)
                        }
                        // Answered later, through the `Later`.
                        (None, None) => None,
                        (None, Some(mut later)) => {
                            later.sent = true;
                            log::error!("voting server: {} {} got no answer", request.method, request.path);
                            Some(ApiError::Internal.response())
                        }
                    };
                    self.take_in(slot, &request, response, false, now);
                }
            }
        }
    }

    /// Answers a request that failed before it was parsed, and closes.
    fn fail(&mut self, slot: usize, error: &ApiError) {
        let Some(conn) = self.conn(slot) else { return };
        conn.queue(&response_bytes(&error.response(), true, false));
        conn.in_flight.clear();
        start_closing(conn, Instant::now());
        self.write(slot);
    }

    /// Records a request as in flight, with its answer if there is one
    /// already, and sends what answers are ready in order. The connection
    /// reads no more requests after the last one it may carry, after a body
    /// left unread, when either side asked to close, or after a stream.
    fn take_in(&mut self, slot: usize, request: &Request, response: Option<Response>, unread_body: bool, now: Instant) {
        let max = self.limits.max_requests_per_connection;
        let Some(conn) = self.conn(slot) else { return };
        conn.exchange += 1;
        conn.served += 1;
        let stream = response.as_ref().is_some_and(|r| r.stream);
        let close = unread_body || !request.keep_alive || conn.served >= max;
        conn.in_flight.push_back(InFlight {
            exchange: conn.exchange,
            head_only: request.method == "HEAD",
            close: close || stream,
            response,
        });
        if close || stream {
            conn.phase = Phase::Drain;
        }
        self.send_ready(slot, now);
        self.write(slot);
    }

    /// Queues the answers that are ready, in the order of their requests
    /// (the caller writes them).
    fn send_ready(&mut self, slot: usize, now: Instant) {
        let request_timeout = self.limits.request_timeout;
        let Some(conn) = self.conn(slot) else { return };
        let mut subscribed = false;
        while conn.in_flight.front().is_some_and(|f| f.response.is_some()) {
            let Some(InFlight { head_only, close, response: Some(response), .. }) = conn.in_flight.pop_front()
            else {
                unreachable!("checked just above")
            };
            if response.stream && !head_only {
                conn.queue(&stream_bytes(&response));
                conn.in_flight.clear();
                conn.phase = Phase::Stream;
                subscribed = true;
                break;
            }
            conn.queue(&response_bytes(&response, close || response.stream, head_only));
            if close || response.stream {
                conn.in_flight.clear();
                start_closing(conn, now);
                break;
            }
            // The next request's time starts now.
            conn.deadline = now + request_timeout;
        }
        if matches!(conn.phase, Phase::Drain) && conn.in_flight.is_empty() {
            start_closing(conn, now);
        }
        if subscribed {
            self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn answer_done(&mut self) {
        let done = std::mem::take(&mut *lock(&self.shared.done));
        let now = Instant::now();
        let mut answered = Vec::new();
        for Done { slot, serial, exchange, response } in done {
            // The connection may have gone (and its slot been taken since).
            let Some(conn) = self.conn(slot) else { continue };
            if conn.serial != serial {
                continue;
            }
            let Some(waiting) = conn.in_flight.iter_mut().find(|f| f.exchange == exchange) else {
                continue;
            };
            if waiting.response.is_some() {
                continue;
            }
            waiting.response = Some(response.unwrap_or_else(|| {
                log::error!("voting server: a request got no answer");
                ApiError::Internal.response()
            }));
            self.send_ready(slot, now);
            if answered.last() != Some(&slot) {
                answered.push(slot);
            }
        }
        // One write per connection, however many of its answers came.
        answered.sort_unstable();
        answered.dedup();
        for slot in answered {
            self.write(slot);
            self.read(slot);
        }
    }

    /// Hands the events sent through the [`Hub`] to the streams, at most
    /// [`BROADCAST_STEP`] connections per call, so that a full room's
    /// streams do not hold up everyone's requests; `true` while a
    /// broadcast is unfinished.
    fn broadcast(&mut self) -> bool {
        if self.broadcasting.is_none() {
            let events = std::mem::take(&mut *lock(&self.shared.events));
            if events.is_empty() {
                return false;
            }
            let bytes: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
            self.broadcasting = Some((bytes, 0));
        }
        let Some((bytes, from)) = self.broadcasting.take() else { return false };
        let now = Instant::now();
        let max_backlog = self.limits.max_stream_backlog;
        let to = (from + BROADCAST_STEP).min(self.conns.len());
        for slot in from..to {
            let Some(conn) = self.conn(slot) else { continue };
            if !matches!(conn.phase, Phase::Stream) {
                continue;
            }
            conn.queue(&bytes);
            if conn.backlog() > max_backlog {
                log::debug!("voting server: dropping an event stream {} bytes behind", conn.backlog());
                self.close(slot);
                continue;
            }
            if conn.flush(now).is_err() {
                self.close(slot);
            }
        }
        if to < self.conns.len() {
            self.broadcasting = Some((bytes, to));
            return true;
        }
        !lock(&self.shared.events).is_empty()
    }

    /// Closes what is past its deadline: a request not in by its deadline
    /// (408 if it had started; an idle keep-alive closes quietly), a client
    /// not reading its answer or its stream, a linger that is over.
    fn sweep(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            self.accept();
        }
        let write_timeout = self.limits.write_timeout;
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conn(slot) else { continue };
            if conn.stalled_since.is_some_and(|t| now.duration_since(t) >= write_timeout) {
                self.close(slot);
                continue;
            }
            if now < conn.deadline {
                continue;
            }
            match conn.phase {
                // Waiting for this side's answers, not for the client.
                _ if !conn.in_flight.is_empty() => {}
                Phase::Head if conn.buf.is_empty() => self.close(slot),
                Phase::Head | Phase::Body(_) => {
                    conn.buf.clear();
                    self.fail(slot, &ApiError::Timeout);
                }
                Phase::Closing if conn.shut => self.close(slot),
                Phase::Closing | Phase::Drain | Phase::Stream => {}
            }
        }
    }
}

/// Ends the exchange: nothing more is parsed; once the answer is out, the
/// write side is shut and the client has [`LINGER`] to close.
fn start_closing(conn: &mut Conn, now: Instant) {
    conn.phase = Phase::Closing;
    conn.deadline = now + LINGER;
    conn.buf = Vec::new();
}

impl From<io::Error> for ApiError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ApiError::Timeout,
            _ => ApiError::BadRequest(format!("reading the request: {e}")),
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
}
