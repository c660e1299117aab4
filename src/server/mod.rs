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

mod http;
#[cfg(test)]
mod tests;

use http::{App, Hub, Later, Limits, Request, Response};

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

/// Why a request is refused: one variant per status and code.
#[derive(Debug)]
enum ApiError {
    NotFound,
    /// The allowed methods, for the `Allow` header.
    MethodNotAllowed(String),
    Unauthorized,
    /// The request cannot be framed or routed (not the JSON: see `Malformed`).
    BadRequest(String),
    /// The body is not the JSON the route expects.
    Malformed(String),
    /// The limit, in bytes.
    PayloadTooLarge(usize),
    UnsupportedMediaType,
    /// How long until the voter may vote again.
    RateLimited(Duration),
    Ballot(BallotError),
    /// The journal could not record the change.
    Journal,
    Timeout,
    LengthRequired,
    HeadTooLarge,
    VersionNotSupported,
    /// Too many connections.
    Unavailable,
    /// A bug answering the request (logged).
    Internal,
    /// The `Host` header names a host this server does not answer for.
    ForeignHost(String),
    /// A state-changing request from a page of another origin.
    CrossOrigin(String),
    /// Too many distinct voters within the vote interval.
    TooManyVoters,
}

impl ApiError {
    fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::Malformed(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::ForeignHost(_) | ApiError::CrossOrigin(_) => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Timeout => 408,
            ApiError::LengthRequired => 411,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::RateLimited(_) | ApiError::TooManyVoters => 429,
            ApiError::HeadTooLarge => 431,
            ApiError::Journal => 500,
            ApiError::Unavailable => 503,
            ApiError::Internal => 500,
            ApiError::VersionNotSupported => 505,
            ApiError::Ballot(e) => match e {
                BallotError::InvalidName(_)
                | BallotError::InvalidVoter
                | BallotError::InvalidMember(_) => 400,
                BallotError::UnknownCandidate(_) | BallotError::AbsentMember { .. } => 404,
                BallotError::DuplicateCandidate(_)
                | BallotError::DuplicateMember { .. }
                | BallotError::TooManyCandidates
                | BallotError::TooManyMembers(_)
                | BallotError::TooManyVoters => 409,
                BallotError::NoSuchProcess(_) => 422,
            },
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Malformed(_) => "malformed_json",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Ballot(e) => e.code(),
            ApiError::Journal => "journal_error",
            ApiError::Timeout => "request_timeout",
            ApiError::LengthRequired => "length_required",
            ApiError::HeadTooLarge => "headers_too_large",
            ApiError::VersionNotSupported => "http_version_not_supported",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal_error",
            ApiError::ForeignHost(_) => "foreign_host",
            ApiError::CrossOrigin(_) => "cross_origin",
            ApiError::TooManyVoters => "too_many_voters",
        }
    }

    fn response(&self) -> Response {
        let mut response = json_response(
            self.status(),
            &ErrorBody { error: self.to_string(), code: self.code().to_owned() },
        );
        match self {
            ApiError::MethodNotAllowed(allow) => response.headers.push(("Allow", allow.clone())),
            ApiError::Unauthorized => response.headers.push(("WWW-Authenticate", "Bearer".into())),
            ApiError::TooManyVoters => response.headers.push(("Retry-After", "1".into())),
            ApiError::RateLimited(wait) => {
                let secs = wait.as_millis().div_ceil(1000).max(1);
                response.headers.push(("Retry-After", secs.to_string()));
            }
            _ => {}
        }
        response
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::NotFound => write!(f, "no such route"),
            ApiError::MethodNotAllowed(allow) => {
                write!(f, "method not allowed here (allowed: {allow})")
            }
            ApiError::Unauthorized => {
                write!(f, "this route needs Authorization: Bearer <admin token>")
            }
            ApiError::BadRequest(why) => write!(f, "bad request: {why}"),
            ApiError::Malformed(why) => write!(f, "malformed body: {why}"),
            ApiError::PayloadTooLarge(max) => write!(f, "the body is larger than {max} bytes"),
            ApiError::UnsupportedMediaType => write!(
                f,
                "a POST or DELETE must say Content-Type: application/json (even without a body)"
            ),
            ApiError::ForeignHost(host) => write!(
                f,
                "this server does not answer for host {host:?} (allowed: IP addresses, \
                 localhost, and names given with --allow-host)"
            ),
            ApiError::CrossOrigin(origin) => {
                write!(f, "changes are not accepted from pages of another origin ({origin})")
            }
            ApiError::TooManyVoters => write!(
                f,
                "too many distinct voters within the vote interval; retry later"
            ),
            ApiError::RateLimited(wait) => {
                write!(f, "this voter voted too recently; retry in {} ms", wait.as_millis())
            }
            ApiError::Ballot(e) => e.fmt(f),
            ApiError::Journal => {
                write!(f, "the change could not be recorded on disk; nothing changed")
            }
            ApiError::Timeout => write!(f, "the request took too long"),
            ApiError::LengthRequired => {
                write!(f, "send the body with a Content-Length, not chunked")
            }
            ApiError::HeadTooLarge => write!(f, "the request line and headers are too large"),
            ApiError::VersionNotSupported => write!(f, "only HTTP/1.0 and HTTP/1.1 are served"),
            ApiError::Unavailable => write!(f, "too many connections; retry later"),
            ApiError::Internal => write!(f, "the server failed answering this request"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Ballot(e) => ApiError::Ballot(e),
            StoreError::Journal(e) => {
                log::error!("voting server: {e}");
                ApiError::Journal
            }
        }
    }
}

/// A route: what a method on a path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    /// `GET /` (or `GET /index.html`): the ballot page
    Page,
    /// `GET /votes`
    Tally,
    /// `POST /votes` `{"candidate", "voter"}`
    Vote,
    /// `POST /votes/reset` (admin)
    Reset,
    /// `GET /candidates`
    Candidates,
    /// `POST /candidates` `{"name", "members"}` (admin)
    Create,
    /// `DELETE /candidates/<name>` (admin)
    Delete(&'a str),
    /// `POST /candidates/<name>/members` with a member (admin)
    AddMember(&'a str),
    /// `DELETE /candidates/<name>/members` with a member (admin)
    RemoveMember(&'a str),
    /// `GET /schedule`
    Schedule,
    /// `GET /stats`
    Stats,
    /// `GET /events`: a stream of the standing and the shares
    Events,
}

/// The route table: every route the server answers, in one place.
fn resolve<'a>(method: &str, path: &[&'a str]) -> Option<Route<'a>> {
    Some(match (method, path) {
        ("GET", [] | ["index.html"]) => Route::Page,
        ("GET", ["votes"]) => Route::Tally,
        ("POST", ["votes"]) => Route::Vote,
        ("POST", ["votes", "reset"]) => Route::Reset,
        ("GET", ["candidates"]) => Route::Candidates,
        ("POST", ["candidates"]) => Route::Create,
        ("DELETE", ["candidates", name]) => Route::Delete(name),
        ("POST", ["candidates", name, "members"]) => Route::AddMember(name),
        ("DELETE", ["candidates", name, "members"]) => Route::RemoveMember(name),
        ("GET", ["schedule"]) => Route::Schedule,
        ("GET", ["stats"]) => Route::Stats,
        ("GET", ["events"]) => Route::Events,
        _ => return None,
    })
}

const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];

impl Route<'_> {
    fn is_admin(self) -> bool {
        matches!(
            self,
            Route::Reset
                | Route::Create
                | Route::Delete(_)
                | Route::AddMember(_)
                | Route::RemoveMember(_)
        )
    }
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

/// The host part of a `Host` header (`name`, `name:port`, `[v6]:port`).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// A state-changing request that carries an `Origin` must come from this
/// server's own origin (the page it serves): same scheme-less host and port
/// as the request's `Host`. `Sec-Fetch-Site: cross-site` is refused too.
fn check_same_origin(request: &Request) -> Result<(), ApiError> {
    if let Some(site) = request.header("sec-fetch-site")
        && site.eq_ignore_ascii_case("cross-site")
    {
        return Err(ApiError::CrossOrigin(format!("Sec-Fetch-Site: {site}")));
    }
    let Some(origin) = request.header("origin") else { return Ok(()) };
    let same = origin
        .strip_prefix("http://")
        .zip(request.header("host"))
        .is_some_and(|(o, host)| o.trim_end_matches('/').eq_ignore_ascii_case(host.trim()));
    if same { Ok(()) } else { Err(ApiError::CrossOrigin(origin.to_owned())) }
}

/// A mutex's guard, poisoned or not (what it guards stays consistent: no
/// holder panics half-way through a change).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Voters, and apart from them client addresses, that each rate limiter tracks at most: with more
/// distinct ones inside one interval, new ones are refused (429) until some expire.
const MAX_RATE_LIMITED: usize = 100_000;

/// When each voter last voted, for `--vote-interval-ms`. Expiry is O(1)
/// amortised: voters are kept in the order of their last vote as well, and
/// every admission drops the expired ones from the front.
struct RateLimiter {
    last: HashMap<String, Instant>,
    /// (time, voter) in time order; an entry is stale when the voter voted
    /// again later (its time in `last` differs).
    order: std::collections::VecDeque<(Instant, String)>,
    cap: usize,
}

impl RateLimiter {
    fn new(cap: usize) -> Self {
        RateLimiter { last: HashMap::new(), order: std::collections::VecDeque::new(), cap }
    }

    /// Records a vote of `voter` at `now` if the interval allows it; returns
    /// the voter's previous time, for [`RateLimiter::undo`].
    fn admit(
        &mut self,
        voter: &str,
        now: Instant,
        interval: Duration,
    ) -> Result<Option<Instant>, ApiError> {
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < interval {
                break;
            }
            let (t, v) = self.order.pop_front().expect("just looked");
            if self.last.get(&v) == Some(&t) {
                self.last.remove(&v);
            }
        }
        let previous = self.last.get(voter).copied();
        if let Some(wait) = previous
            .and_then(|t| interval.checked_sub(now.duration_since(t)))
            .filter(|w| !w.is_zero())
        {
            return Err(ApiError::RateLimited(wait));
        }
        if previous.is_none() && self.last.len() >= self.cap {
            return Err(ApiError::TooManyVoters);
        }
        self.last.insert(voter.to_owned(), now);
        self.order.push_back((now, voter.to_owned()));
        // Stale entries (voters who voted again) are at most one per vote
        // and leave from the front as they expire; keep them bounded too.
        if self.order.len() > 2 * self.cap.max(1) {
            let last = &self.last;
            self.order.retain(|(t, v)| last.get(v) == Some(t));
        }
        Ok(previous)
    }

    /// Takes back the admission of `voter` at `at` (its vote failed).
    fn undo(&mut self, voter: &str, at: Instant, previous: Option<Instant>) {
        if self.last.get(voter) != Some(&at) {
            return;
        }
        match previous {
            Some(t) => {
                self.last.insert(voter.to_owned(), t);
            }
            None => {
                self.last.remove(voter);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len()
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.order.len()
    }
}

impl App for Api {
    fn admit(&self, request: &Request) -> Result<(), Response> {
        self.check(request).map_err(|e| {
            log::debug!("voting server: {} {:?}: {e}", request.method, request.path);
            e.response()
        })
    }

    fn respond(&self, request: &Request, body: Vec<u8>, later: &mut Option<Later>) -> Option<Response> {
        self.handle(request, body, later).unwrap_or_else(|e| {
            log::debug!("voting server: {} {:?}: {e}", request.method, request.path);
            Some(e.response())
        })
    }
}

impl Api {
    /// What can be told from the head alone: the route, the host, the
    /// origin, the token, the declared body's size and type.
    fn check(&self, request: &Request) -> Result<(), ApiError> {
        let segments = split_path(&request.path)?;
        let path: Vec<&str> = segments.iter().map(String::as_str).collect();
        let Some(route) = resolve(&request.method, &path) else {
            let allow: Vec<&str> =
                METHODS.into_iter().filter(|m| resolve(m, &path).is_some()).collect();
            return Err(if allow.is_empty() {
                ApiError::NotFound
            } else {
                ApiError::MethodNotAllowed(allow.join(", "))
            });
        };
        self.check_host(request)?;
        let changes_state = matches!(request.method.as_str(), "POST" | "DELETE");
        if changes_state {
            check_same_origin(request)?;
        }
        if route.is_admin() && !self.authorized(request) {
            return Err(ApiError::Unauthorized);
        }
        if request.content_length() > self.max_body as u64 {
            return Err(ApiError::PayloadTooLarge(self.max_body));
        }
        // A browser sends application/json to another origin only after a
        // CORS preflight, which this server never grants: no page elsewhere
        // can change anything, body or not.
        if changes_state && !is_json(request.header("content-type")) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Ok(())
    }

    /// Answers a request [`Api::check`] admitted, given its body: reads at
    /// once, changes through `later` once they are on disk.
    fn handle(
        &self,
        request: &Request,
        raw: Vec<u8>,
        later: &mut Option<Later>,
    ) -> Result<Option<Response>, ApiError> {
        let segments = split_path(&request.path)?;
        let path: Vec<&str> = segments.iter().map(String::as_str).collect();
        let route = resolve(&request.method, &path).ok_or(ApiError::NotFound)?;
        // Each route below answers once, so `later` is there to take.
        let mut later = || later.take().ok_or(ApiError::Internal);
        let response = match route {
            Route::Page => Ok(page_response()),
            Route::Events => Ok(self.events_response()),
            Route::Tally => Ok(json_response(200, &tally_of(&self.board.standing.load()))),
            Route::Vote => {
                let VoteRequest { candidate, voter } = parse(&raw)?;
                return self.vote(request, candidate, voter, later()?);
            }
            Route::Reset => return self.submit(Event::ResetVotes, 200, later()?, None),
            Route::Candidates => Ok(self.candidates()),
            Route::Create => {
                let CreateCandidateRequest { name, members } = parse(&raw)?;
                return self.submit(Event::CreateCandidate { name, members }, 201, later()?, None);
            }
            Route::Delete(name) => {
                return self.submit(Event::DeleteCandidate { name: name.into() }, 200, later()?, None);
            }
            Route::AddMember(name) => {
                let member = parse(&raw)?;
                let event = Event::AddMember { candidate: name.into(), member };
                return self.submit(event, 200, later()?, None);
            }
            Route::RemoveMember(name) => {
                let member = parse(&raw)?;
                let event = Event::RemoveMember { candidate: name.into(), member };
                return self.submit(event, 200, later()?, None);
            }
            Route::Schedule => Ok(self.schedule()),
            Route::Stats => Ok(json_response(200, &**self.board.metrics.load())),
        };
        response.map(Some)
    }

    /// The `Host` header must name an IP address, `localhost`, or a name
    /// given with `--allow-host`: a page served from another name that
    /// resolves here (DNS rebinding) is refused. A request without one
    /// (HTTP/1.0) passes: browsers always send it.
    fn check_host(&self, request: &Request) -> Result<(), ApiError> {
        let Some(host) = request.header("host") else { return Ok(()) };
        let name = host_name(host).to_ascii_lowercase();
        let ip = name.trim_start_matches('[').trim_end_matches(']');
        if ip.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || self.allow_hosts.iter().any(|a| *a == name || *a == host.to_ascii_lowercase())
        {
            Ok(())
        } else {
            Err(ApiError::ForeignHost(host.to_owned()))
        }
    }

    fn authorized(&self, request: &Request) -> bool {
        let Some(token) = &self.admin_token else { return true };
        let Some((scheme, given)) = request.header("authorization").and_then(|h| h.split_once(' '))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }

    /// Submits `event`; once it is on disk (or refused), `later` gets the
    /// new tally with `status` (or the error), and a refusal first runs
    /// `undo`. Never waits: what the store queues shares the next sync.
    fn submit(
        &self,
        event: Event,
        status: u16,
        later: Later,
        undo: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<Option<Response>, ApiError> {
        self.store.submit_then(
            event,
            Box::new(move |result| {
                let response = match result {
                    Ok(standing) => json_response(status, &tally_of(&standing)),
                    Err(e) => {
                        if let Some(undo) = undo {
                            undo();
                        }
                        ApiError::from(e).response()
                    }
                };
                later.send(response);
            }),
        );
        Ok(None)
    }

    fn vote(
        &self,
        request: &Request,
        candidate: String,
        voter: String,
        later: Later,
    ) -> Result<Option<Response>, ApiError> {
        let event = Event::Vote { candidate, voter: voter.clone() };
        if self.vote_interval.is_zero() {
            return self.submit(event, 200, later, None);
        }
        // The voter's and the address's slots are taken before the submit
        // and given back if it fails, so two votes of one voter (or from
        // one address) cannot both pass, and no lock is held across the
        // journal's disk write.
        let now = Instant::now();
        let from = self.client_address(request);
        let previous = lock(&self.last_vote).admit(&voter, now, self.vote_interval)?;
        let previous_from = match &from {
            Some(addr) => match lock(&self.last_vote_from).admit(addr, now, self.vote_interval) {
                Ok(p) => p,
                Err(e) => {
                    lock(&self.last_vote).undo(&voter, now, previous);
                    return Err(e);
                }
            },
            None => None,
        };
        let (by_voter, by_address) = (Arc::clone(&self.last_vote), Arc::clone(&self.last_vote_from));
        let undo = move || {
            lock(&by_voter).undo(&voter, now, previous);
            if let Some(addr) = &from {
                lock(&by_address).undo(addr, now, previous_from);
            }
        };
        self.submit(event, 200, later, Some(Box::new(undo)))
    }

    /// Who a vote comes from, for the vote interval: the connection's
    /// address, or with `trust_forwarded_for` the last `X-Forwarded-For`
    /// entry. An IPv6 client counts by its /64 (one host usually holds a
    /// whole /64 and can pick any address in it).
    fn client_address(&self, request: &Request) -> Option<String> {
        let forwarded = || {
            let list = request.header("x-forwarded-for")?;
            list.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        };
        let ip = if self.trust_forwarded_for { forwarded().or(request.peer) } else { request.peer };
        Some(match ip? {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
        })
    }

    fn candidates(&self) -> Response {
        let standing = self.board.standing.load();
        let observations = self.board.observations.load();
        let view: Vec<Candidate> = standing
            .candidates
            .iter()
            .map(|c| Candidate {
                name: c.name.clone(),
                votes: c.votes,
                members: c.members.clone(),
                live: observations.members.get(&c.name).cloned().unwrap_or_default(),
            })
            .collect();
        json_response(200, &view)
    }

    fn schedule(&self) -> Response {
        let standing = self.board.standing.load();
        let observations = self.board.observations.load();
        let owner: HashMap<i32, &str> = observations
            .members
            .iter()
            .flat_map(|(name, live)| live.iter().map(move |m| (m.pid, name.as_str())))
            .collect();
        let view = Schedule {
            window_ms: observations.window_ms,
            leader: standing_leader(&standing).map(str::to_owned),
            candidates: standing
                .candidates
                .iter()
                .map(|c| {
                    let share = observations.candidate_shares.get(&c.name).cloned().unwrap_or_default();
                    (c.name.clone(), share)
                })
                .collect(),
            pids: observations
                .pid_shares
                .iter()
                .map(|(&pid, s)| {
                    let candidate = owner.get(&pid).map(|c| c.to_string());
                    (pid, PidShare { share: s.share, cpu_ns: s.cpu_ns, candidate })
                })
                .collect(),
        };
        json_response(200, &view)
    }
}

/// How often the event streams get the candidates and the CPU shares.
const SHARES_EVERY: Duration = Duration::from_secs(1);
/// Least time between two standing events: a storm of votes reaches the
/// streams as its latest standing, at most this often.
const TALLY_EVERY: Duration = Duration::from_millis(50);
/// And this much more per open stream: a standing sent to 10,000 streams is
/// 10,000 writes, so with a full room the standing goes out every 250 ms
/// and the streams never take more than about a quarter of the loop.
const TALLY_EVERY_PER_STREAM: Duration = Duration::from_micros(20);

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

/// The event thread: sends the standing to the streams after every change
/// (at most every [`TALLY_EVERY`], and more rarely with many streams), the candidates and the shares every
/// [`SHARES_EVERY`], until stopped.
fn publish_events(api: &Api, hub: &Hub, publisher: &Publisher) {
    let mut last_tally: Option<Instant> = None;
    let mut next_shares = Instant::now() + SHARES_EVERY;
    loop {
        let mut state = lock(&publisher.state);
        let send_tally = loop {
            if state.stop {
                return;
            }
            let now = Instant::now();
            let every = TALLY_EVERY + TALLY_EVERY_PER_STREAM * hub.subscribers().min(100_000) as u32;
            let tally_at = last_tally.map_or(now, |t| t + every);
            if state.changed && now >= tally_at {
                break true;
            }
            if now >= next_shares {
                break false;
            }
            let until = if state.changed { tally_at.min(next_shares) } else { next_shares };
            state = match publisher.changed.wait_timeout(state, until - now) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        };
        if send_tally {
            state.changed = false;
        }
        drop(state);
        let now = Instant::now();
        if send_tally {
            last_tally = Some(now);
            if hub.subscribers() > 0 {
                hub.send(api.tally_event());
            }
        }
        if now >= next_shares {
            next_shares = now + SHARES_EVERY;
            if hub.subscribers() > 0 {
                hub.send(api.shares_events());
            }
        }
    }
}

/// One server-sent event; `data` is one line of JSON.
fn sse(event: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("event: {event}\ndata: ").into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

impl Api {
    /// `tally`: what `GET /votes` answers.
    fn tally_event(&self) -> Vec<u8> {
        let tally = tally_of(&self.board.standing.load());
        sse(EVENT_TALLY, &serde_json::to_vec(&tally).expect("a tally always serializes"))
    }

    /// `candidates` and `schedule`: what `GET /candidates` and
    /// `GET /schedule` answer.
    fn shares_events(&self) -> Vec<u8> {
        let mut out = sse(EVENT_CANDIDATES, &self.candidates().body);
        out.extend(sse(EVENT_SCHEDULE, &self.schedule().body));
        out
    }

    /// `GET /events`: a reconnection delay for the browser, then every
    /// event once, then the stream.
    fn events_response(&self) -> Response {
        let mut body = b"retry: 2000\n\n".to_vec();
        body.extend(self.tally_event());
        body.extend(self.shares_events());
        Response {
            status: 200,
            content_type: "text/event-stream",
            headers: vec![("X-Accel-Buffering", "no".to_owned())],
            body,
            stream: true,
        }
    }
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

/// The non-empty segments of a path, percent-decoded.
fn split_path(path: &str) -> Result<Vec<String>, ApiError> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(s)
                .ok_or_else(|| ApiError::BadRequest("malformed percent-encoding".into()))
        })
        .collect()
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
