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

mod conn;
mod event_loop;
mod parse;
mod streams;

use conn::{response_bytes, start_closing, stream_bytes};
use parse::{head_end, parse_head, reason};

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
