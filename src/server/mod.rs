//! The voting server: a JSON API over HTTP/1.1 on its own threads. It changes
//! the ballot through [`Store::submit`] (which journals before anything is
//! acknowledged) and reads the [`Board`] snapshots; it never touches BPF or
//! the scheduling loop.
//!
//! Every route is in [`resolve`]. Every refusal is an [`ApiError`], answered
//! as `{"error": "<message>", "code": "<code>"}` with a 4xx/5xx status, and
//! changes nothing.
//!
//! `GET /` is the ballot page (`ballot.html`, compiled in): one HTML file
//! with its CSS and script inline, which uses only the JSON routes below,
//! the way any other client would.
//!
//! Admin routes (creating, deleting and changing candidates, resetting the
//! votes) need `Authorization: Bearer <token>` when a token is set. A server
//! listening beyond loopback always has one: without `admin_token`, a random
//! one is generated and returned in [`ServerHandle::admin_token`].

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ballot::{BallotError, Event, Store, StoreError, standing_leader, tally_of};
use crate::election::view::Board;
use scx_ballot_api::{
    Candidate, CreateCandidateRequest, EVENT_CANDIDATES, EVENT_SCHEDULE, EVENT_TALLY, ErrorBody,
    PidShare, Schedule, VoteRequest,
};

mod api;
mod error;
mod events;
mod http;
mod rate;
mod routes;
#[cfg(test)]
mod tests;

use error::ApiError;
use events::publish_events;
use http::{App, Hub, Later, Limits, Request, Response};
use rate::{MAX_RATE_LIMITED, RateLimiter};
use routes::{METHODS, Route, resolve, split_path};

/// How the voting server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Required as `Authorization: Bearer <token>` on admin routes. `None`:
    /// admin routes are open on a loopback listener, and a random token is
    /// generated for any other.
    pub admin_token: Option<String>,
    /// Least time between two accepted votes of one voter, and of one
    /// client address (0: no limit).
    pub vote_interval_ms: u64,
    /// Take a client's address for the vote interval from the last entry
    /// of `X-Forwarded-For` (what a reverse proxy in front saw), not from
    /// the connection. Only behind such a proxy: otherwise any client can
    /// name any address.
    pub trust_forwarded_for: bool,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Host names (besides IP addresses and `localhost`) that requests may
    /// name in their `Host` header, e.g. the name a room's phones use.
    pub allow_hosts: Vec<String>,
}

impl ServerConfig {
    pub const DEFAULT_MAX_BODY: usize = 4096;

    /// Listening on `listen` with no token, no vote interval and the default
    /// body limit.
    pub fn new(listen: SocketAddr) -> Self {
        ServerConfig {
            listen,
            admin_token: None,
            vote_interval_ms: 0,
            trust_forwarded_for: false,
            max_body: Self::DEFAULT_MAX_BODY,
            allow_hosts: Vec::new(),
        }
    }
}

/// A running voting server. [`ServerHandle::shutdown`], or dropping the
/// handle, stops it: no new connections, open ones closed, their threads
/// waited for (at most a few seconds).
pub struct ServerHandle {
    /// The bound address (the real port when `listen` asked for port 0).
    pub addr: SocketAddr,
    /// The admin token in force (given or generated), for the caller to print.
    pub admin_token: Option<String>,
    running: http::Running,
    publisher: Arc<Publisher>,
    events: Option<std::thread::JoinHandle<()>>,
    store: Arc<Store>,
    stop_flusher: Arc<AtomicBool>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// Stops the server; idempotent.
    pub fn shutdown(&mut self) {
        lock(&self.publisher.state).stop = true;
        self.publisher.changed.notify_all();
        if let Some(events) = self.events.take() {
            let _ = events.join();
        }
        self.running.shutdown();
        // Changes being synced are answered (to connections now closed)
        // before the store is let go.
        self.stop_flusher.store(true, Ordering::SeqCst);
        self.store.wake_flusher();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Binds `cfg.listen` and serves the API on background threads.
pub fn spawn(
    cfg: ServerConfig,
    store: Arc<Store>,
    board: Arc<Board>,
) -> anyhow::Result<ServerHandle> {
    let listener = bind(cfg.listen)?;
    spawn_on(listener, cfg, store, board)
}

/// Binds the voting port, so that a start which cannot serve fails before
/// anything else (the votes journal above all) is touched.
pub fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("listening for votes on {listen}"))?;
    // A room opening its pages at once: a longer queue of connections not
    // yet accepted than the default 128, so that none is dropped and
    // retried a second later (the kernel caps it at net.core.somaxconn).
    // SAFETY: listen() on a socket this process owns; no memory is passed.
    unsafe {
        libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096);
    }
    Ok(listener)
}

/// [`spawn`] on a listener from [`bind`] (`cfg.listen` names what it was
/// bound to).
pub fn spawn_on(
    listener: TcpListener,
    cfg: ServerConfig,
    store: Arc<Store>,
    board: Arc<Board>,
) -> anyhow::Result<ServerHandle> {
    spawn_with_on(listener, cfg, Limits::default(), store, board)
}

#[cfg(test)]
fn spawn_with(
    cfg: ServerConfig,
    limits: Limits,
    store: Arc<Store>,
    board: Arc<Board>,
) -> anyhow::Result<ServerHandle> {
    let listener = bind(cfg.listen)?;
    spawn_with_on(listener, cfg, limits, store, board)
}

fn spawn_with_on(
    listener: TcpListener,
    cfg: ServerConfig,
    limits: Limits,
    store: Arc<Store>,
    board: Arc<Board>,
) -> anyhow::Result<ServerHandle> {
    if let Some(token) = &cfg.admin_token
        && (token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()))
    {
        bail!("the admin token must be non-empty printable ASCII without spaces");
    }
    if cfg.max_body == 0 {
        bail!("the largest request body must be at least 1 byte");
    }
    let admin_token = admin_token_for(cfg.listen, cfg.admin_token)?;
    let api = Arc::new(Api {
        store,
        board,
        admin_token: admin_token.clone(),
        max_body: cfg.max_body,
        vote_interval: Duration::from_millis(cfg.vote_interval_ms),
        last_vote: Arc::new(Mutex::new(RateLimiter::new(MAX_RATE_LIMITED))),
        last_vote_from: Arc::new(Mutex::new(RateLimiter::new(MAX_RATE_LIMITED))),
        trust_forwarded_for: cfg.trust_forwarded_for,
        allow_hosts: cfg.allow_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
    });
    let limits = Limits { max_body: cfg.max_body, ..limits };
    let running = http::serve(listener, Arc::clone(&api) as Arc<dyn App>, limits)
        .with_context(|| format!("listening for votes on {}", cfg.listen))?;
    let publisher = Arc::new(Publisher::default());
    let weak = Arc::downgrade(&publisher);
    api.store.on_publish(move |_| {
        if let Some(publisher) = weak.upgrade() {
            lock(&publisher.state).changed = true;
            publisher.changed.notify_all();
        }
    });
    let stop_flusher = Arc::new(AtomicBool::new(false));
    let (flusher_store, flusher_stop) = (Arc::clone(&api.store), Arc::clone(&stop_flusher));
    let flusher = std::thread::Builder::new()
        .name("ballot-journal".into())
        .spawn(move || flusher_store.run_flusher(&flusher_stop))
        .context("starting the journal thread")?;
    let store = Arc::clone(&api.store);
    let (hub, events_publisher) = (running.hub.clone(), Arc::clone(&publisher));
    let events = std::thread::Builder::new()
        .name("ballot-events".into())
        .spawn(move || publish_events(&api, &hub, &events_publisher))
        .context("starting the event stream thread")?;
    Ok(ServerHandle {
        addr: running.addr,
        admin_token,
        running,
        publisher,
        events: Some(events),
        store,
        stop_flusher,
        flusher: Some(flusher),
    })
}

/// The token in force: the given one; none on a loopback listener; a random
/// one otherwise, so a server reachable from the network is never open.
fn admin_token_for(listen: SocketAddr, given: Option<String>) -> anyhow::Result<Option<String>> {
    Ok(match given {
        Some(token) => Some(token),
        None if listen.ip().is_loopback() => None,
        None => Some(random_token().context("generating an admin token")?),
    })
}

/// 16 bytes from /dev/urandom, in hex.
fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y))) == 0
}

struct Api {
    store: Arc<Store>,
    board: Arc<Board>,
    admin_token: Option<String>,
    max_body: usize,
    vote_interval: Duration,
    /// When each voter's last vote was accepted (only with an interval).
    last_vote: Arc<Mutex<RateLimiter>>,
    /// The same, by client address: a script that changes its voter id at
    /// every vote is still held to one vote per interval.
    last_vote_from: Arc<Mutex<RateLimiter>>,
    trust_forwarded_for: bool,
    /// Lower-case names allowed in `Host` besides IPs and localhost.
    allow_hosts: Vec<String>,
}


/// A mutex's guard, poisoned or not (what it guards stays consistent: no
/// holder panics half-way through a change).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}


/// Tells the event thread that the standing changed, or to stop.
#[derive(Default)]
struct Publisher {
    state: Mutex<PublisherState>,
    changed: Condvar,
}

#[derive(Default)]
struct PublisherState {
    changed: bool,
    stop: bool,
}


fn json_response(status: u16, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("API values have string keys and always serialize");
    Response { status, content_type: "application/json", headers: Vec::new(), body, stream: false }
}

/// The ballot page: HTML with inline CSS and script, nothing else.
const BALLOT_PAGE: &str = include_str!("ballot.html");

/// What the page may load and where it may connect: nothing but itself and
/// this server, so even a mistake in it cannot pull in another site.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn page_response() -> Response {
    Response {
        status: 200,
        content_type: "text/html; charset=utf-8",
        headers: vec![
            ("Content-Security-Policy", PAGE_CSP.to_owned()),
            ("X-Content-Type-Options", "nosniff".to_owned()),
            ("Referrer-Policy", "no-referrer".to_owned()),
        ],
        body: BALLOT_PAGE.as_bytes().to_vec(),
        stream: false,
    }
}

fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::Malformed("expected a JSON body".into()));
    }
    serde_json::from_slice(raw).map_err(|e| ApiError::Malformed(e.to_string()))
}

/// `application/json`, with or without parameters.
fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}
