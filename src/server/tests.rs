//! The API over real TCP connections, with a tiny HTTP/1.1 client.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::ballot::store::tests::TempDir;
use crate::election::view::{LiveMember, Observations, Share};
use crate::journal::Journal;
use crate::stats::Metrics;

/// Every client read gives up after this: no test waits longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when it is empty or not JSON).
    body: Value,
    /// The body as text.
    text: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("read timeout");
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).expect("write timeout");
    stream
}

/// One response: status line, headers, and a Content-Length body.
fn read_reply(reader: &mut BufReader<TcpStream>) -> Reply {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("a header");
        headers.push((n.to_owned(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("a length"))
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("body");
    let is_json = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("content-type") && v == "application/json");
    let text = String::from_utf8(body).expect("UTF-8 body");
    let body = if text.is_empty() || !is_json {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON")
    };
    Reply { status, headers, body, text }
}

/// Sends raw bytes and reads one reply.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = connect(addr);
    stream.write_all(bytes).expect("send");
    read_reply(&mut BufReader::new(stream))
}

/// A request with the given headers (plus Host, Connection: close and
/// Content-Length).
fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes())
}

/// A request with a JSON body (or none).
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Reply {
    match body {
        Some(b) => {
            call_with(addr, method, path, &[("Content-Type", "application/json")], &b.to_string())
        }
        // Every change says it is JSON, body or not (what the server asks).
        None if matches!(method, "POST" | "DELETE") => {
            call_with(addr, method, path, &[("Content-Type", "application/json")], "")
        }
        None => call_with(addr, method, path, &[], ""),
    }
}

fn vote(addr: SocketAddr, candidate: &str, voter: &str) -> Reply {
    call(addr, "POST", "/votes", Some(json!({"candidate": candidate, "voter": voter})))
}

/// A connection to `addr` (IPv4 loopback) from the loopback address `from`
/// (any of 127.0.0.0/8), so that tests can play several clients.
fn connect_from(addr: SocketAddr, from: std::net::Ipv4Addr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = addr else { panic!("an IPv4 server address: {addr}") };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns, with
    // sockaddr_in values that outlive them; the descriptor goes to the
    // TcpStream only once connected.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(from, 0);
        let rc = libc::bind(fd, (&raw const local).cast(), len);
        assert_eq!(rc, 0, "bind {from}: {}", std::io::Error::last_os_error());
        let remote = sockaddr(*to.ip(), to.port());
        let rc = libc::connect(fd, (&raw const remote).cast(), len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).expect("write timeout");
        stream
    }
}

/// A vote sent from the loopback address `from`, with extra headers.
fn vote_from(
    addr: SocketAddr,
    from: std::net::Ipv4Addr,
    headers: &[(&str, &str)],
    candidate: &str,
    voter: &str,
) -> Reply {
    let body = json!({"candidate": candidate, "voter": voter}).to_string();
    let mut req = format!(
        "POST /votes HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut stream = connect_from(addr, from);
    stream.write_all(req.as_bytes()).expect("send");
    read_reply(&mut BufReader::new(stream))
}

struct Fixture {
    handle: ServerHandle,
    store: Arc<Store>,
    board: Arc<Board>,
    journal: PathBuf,
    _dir: TempDir,
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    fn generation(&self) -> u64 {
        self.board.standing.load().generation
    }
}

fn test_limits() -> Limits {
    Limits {
        request_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

fn start_with(
    candidates: &[&str],
    limits: Limits,
    configure: impl FnOnce(&mut ServerConfig),
) -> Fixture {
    let dir = TempDir::new("server");
    let journal = dir.path().join("votes.journal");
    let board = Board::new();
    let initial = candidates.iter().map(|c| (c.to_string(), vec![])).collect();
    let (store, warnings) =
        Store::open(Some(&journal), initial, Arc::clone(&board)).expect("open store");
    assert!(warnings.is_empty(), "{warnings:?}");
    let store = Arc::new(store);
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
    configure(&mut cfg);
    let handle = spawn_with(cfg, limits, Arc::clone(&store), Arc::clone(&board)).expect("spawn");
    Fixture { handle, store, board, journal, _dir: dir }
}

fn start(candidates: &[&str]) -> Fixture {
    start_with(candidates, test_limits(), |_| {})
}

#[test]
fn a_vote_returns_the_new_tally_and_get_votes_agrees() {
    let f = start(&["blue", "green"]);
    let r = vote(f.addr(), "green", "ana");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        json!({"votes": {"blue": 0, "green": 1}, "leader": "green", "generation": 2})
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = call(f.addr(), "GET", "/votes", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"votes": {"blue": 0, "green": 1}, "leader": "green", "generation": 2})
    );
    assert_eq!(f.store.standing().generation, 2);
}

#[test]
fn ties_go_to_the_name_first_in_byte_order() {
    let f = start(&["green", "blue", "Red"]);
    assert_eq!(
        call(f.addr(), "GET", "/votes", None).body["leader"],
        Value::Null,
        "no votes, no leader"
    );
    vote(f.addr(), "green", "a");
    assert_eq!(vote(f.addr(), "blue", "b").body["leader"], "blue");
    assert_eq!(vote(f.addr(), "Red", "c").body["leader"], "Red", "uppercase sorts first");
    assert_eq!(vote(f.addr(), "green", "d").body["leader"], "green", "most votes wins");
}

#[test]
fn a_vote_for_an_unknown_candidate_is_404_and_changes_nothing() {
    let f = start(&["blue"]);
    let r = vote(f.addr(), "red", "ana");
    assert_eq!((r.status, r.code()), (404, "unknown_candidate"), "{r:?}");
    assert!(r.body["error"].as_str().expect("a message").contains("red"));
    assert_eq!(f.generation(), 1);
}

#[test]
fn malformed_bodies_are_400_and_change_nothing() {
    let f = start(&["blue"]);
    let cases = [
        "{",
        "[]",
        "null",
        r#"{"candidate": "blue"}"#,
        r#"{"candidate": "blue", "voter": "a", "extra": 1}"#,
        r#"{"candidate": 1, "voter": "a"}"#,
        "\u{feff}{}",
        &format!("{}1{}", "[".repeat(1000), "]".repeat(1000)),
    ];
    for body in cases {
        let r =
            call_with(f.addr(), "POST", "/votes", &[("Content-Type", "application/json")], body);
        assert_eq!((r.status, r.code()), (400, "malformed_json"), "{body}: {r:?}");
    }
    let r = call_with(f.addr(), "POST", "/votes", &[("Content-Type", "application/json")], "");
    assert_eq!((r.status, r.code()), (400, "malformed_json"), "empty body: {r:?}");
    let r = vote(f.addr(), "blue", "");
    assert_eq!((r.status, r.code()), (400, "invalid_voter"), "{r:?}");
    let r = call(f.addr(), "POST", "/candidates", Some(json!({"name": "a b"})));
    assert_eq!((r.status, r.code()), (400, "invalid_name"), "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates/blue/members",
        Some(json!({"kind": "comm", "comm": ""})),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_member"), "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates/blue/members",
        Some(json!({"kind": "thread", "tid": 1})),
    );
    assert_eq!((r.status, r.code()), (400, "malformed_json"), "{r:?}");
    assert_eq!(f.generation(), 1);
}

#[test]
fn oversized_bodies_are_413_without_being_read() {
    let f = start_with(&["blue"], test_limits(), |c| c.max_body = 64);
    let body = json!({"candidate": "blue", "voter": "v".repeat(64)}).to_string();
    let r = call_with(f.addr(), "POST", "/votes", &[("Content-Type", "application/json")], &body);
    assert_eq!((r.status, r.code()), (413, "payload_too_large"), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    // A declared body of 4 EiB: answered at once, nothing allocated, no abort.
    let r = raw(
        f.addr(),
        b"POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 4611686018427387904\r\n\r\n{",
    );
    assert_eq!((r.status, r.code()), (413, "payload_too_large"), "{r:?}");
    let r = raw(
        f.addr(),
        b"POST /votes HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200, "still serving");

    let f = start(&["blue"]);
    let body = format!(
        r#"{{"candidate": "blue", "voter": "{}"}}"#,
        "v".repeat(ServerConfig::DEFAULT_MAX_BODY)
    );
    let r = call_with(f.addr(), "POST", "/votes", &[("Content-Type", "application/json")], &body);
    assert_eq!(r.status, 413, "the default limit is {}", ServerConfig::DEFAULT_MAX_BODY);
}

#[test]
fn a_wrong_method_is_405_with_allow() {
    let f = start(&["blue"]);
    for (method, path, allow) in [
        ("PUT", "/votes", "GET, POST"),
        ("DELETE", "/votes", "GET, POST"),
        ("GET", "/votes/reset", "POST"),
        ("PATCH", "/candidates", "GET, POST"),
        ("GET", "/candidates/blue", "DELETE"),
        ("GET", "/candidates/blue/members", "POST, DELETE"),
        ("POST", "/schedule", "GET"),
        ("DELETE", "/stats", "GET"),
    ] {
        let r = call(f.addr(), method, path, None);
        assert_eq!((r.status, r.code()), (405, "method_not_allowed"), "{method} {path}: {r:?}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    let mut stream = connect(f.addr());
    stream.write_all(b"HEAD /votes HTTP/1.1\r\nConnection: close\r\n\r\n").expect("send");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD gets no body: {text}");
}

#[test]
fn a_body_that_is_not_json_is_415() {
    let f = start(&["blue"]);
    let body = r#"{"candidate": "blue", "voter": "ana"}"#;
    for headers in
        [&[("Content-Type", "text/plain")][..], &[], &[("Content-Type", "application/jsonx")]]
    {
        let r = call_with(f.addr(), "POST", "/votes", headers, body);
        assert_eq!((r.status, r.code()), (415, "unsupported_media_type"), "{headers:?}: {r:?}");
    }
    let r = call_with(
        f.addr(),
        "POST",
        "/votes",
        &[("content-type", "Application/JSON; charset=utf-8")],
        body,
    );
    assert_eq!(r.status, 200, "parameters and case are fine: {r:?}");
}

#[test]
fn unknown_routes_are_404() {
    let f = start(&["blue"]);
    for (method, path) in [
        ("GET", "/index.htm"),
        ("GET", "/ballot.html"),
        ("GET", "/favicon.ico"),
        ("GET", "/votes/blue/extra"),
        ("POST", "/candidates/blue/members/1"),
        ("GET", "/%2e%2e/etc/passwd"),
        ("BREW", "/coffee"),
    ] {
        let r = call(f.addr(), method, path, None);
        assert_eq!((r.status, r.code()), (404, "not_found"), "{method} {path}: {r:?}");
    }
    let r = call(f.addr(), "GET", "/votes/%zz", None);
    assert_eq!((r.status, r.code()), (400, "bad_request"), "{r:?}");
    let r = call(f.addr(), "GET", "/votes?pretty=1", None);
    assert_eq!(r.status, 200, "a query is ignored: {r:?}");
}

#[test]
fn the_ballot_page_is_served_at_the_root() {
    let f = start(&["blue"]);
    for path in ["/", "/index.html", "/?voter=ana"] {
        let r = call(f.addr(), "GET", path, None);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"), "{path}");
        assert_eq!(r.text, BALLOT_PAGE, "{path}");
        let csp = r.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    }
    let r = call(f.addr(), "POST", "/", None);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")), "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "errors stay JSON");
}

#[test]
fn the_ballot_page_loads_nothing_from_elsewhere() {
    let page = BALLOT_PAGE.to_ascii_lowercase();
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains(r#"<meta name="viewport" content="width=device-width"#));
    let forbidden = ["http://", "https://", "//cdn", "<link rel=\"stylesheet", "@import", "url("];
    for forbidden in forbidden.into_iter().chain(["<img", "<iframe", "<object", "<embed"]) {
        assert!(!page.contains(forbidden), "the page must be self-contained, found {forbidden:?}");
    }
    // Every `src=` or `href=` is inline data, never a URL.
    for attr in ["src=", "href="] {
        for (i, _) in page.match_indices(attr) {
            let value = &page[i + attr.len()..];
            let shown = &value[..40.min(value.len())];
            assert!(value.starts_with("\"data:"), "{attr} at {i} loads something: {shown}");
        }
    }
    // Exactly one script and one style, both inline.
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains("<script>"), "the script is inline");
    assert_eq!(page.matches("<style").count(), 1);
}

#[test]
fn the_ballot_page_calls_only_documented_api_routes() {
    let script = BALLOT_PAGE.split("<script>").nth(1).expect("a script");
    let mut calls: Vec<(&str, &str)> = script
        .match_indices("api(\"")
        .map(|(i, m)| {
            let rest = &script[i + m.len()..];
            let method = &rest[..rest.find('"').expect("closing quote")];
            let path = rest.split('"').nth(2).expect("a path argument");
            (method, path)
        })
        .collect();
    calls.extend(script.match_indices("new EventSource(\"").map(|(i, m)| {
        let rest = &script[i + m.len()..];
        ("GET", &rest[..rest.find('"').expect("closing quote")])
    }));
    let mut seen: Vec<String> = calls.iter().map(|(m, p)| format!("{m} {p}")).collect();
    seen.sort();
    assert_eq!(
        seen,
        ["GET /candidates", "GET /events", "GET /schedule", "GET /votes", "POST /votes"]
    );
    for (method, path) in calls {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let route =
            resolve(method, &segments).unwrap_or_else(|| panic!("{method} {path} is no route"));
        assert!(!route.is_admin() && route != Route::Page, "{method} {path}");
    }
    assert_eq!(script.matches("fetch(").count(), 1, "every request goes through api()");
    assert_eq!(script.matches("EventSource(").count(), 1, "one place opens the stream");
}

#[test]
fn the_ballot_page_has_the_hooks_the_browser_test_uses() {
    for hook in [
        "dataset.candidate",
        "dataset.tally",
        "dataset.share",
        "dataset.processes",
        "dataset.pid",
        "dataset.feed",
        r#"id="conn""#,
        r#"id="message""#,
        r#"id="voter-name""#,
        "localStorage",
        "Retry-After",
    ] {
        assert!(BALLOT_PAGE.contains(hook), "the page lost {hook}");
    }
}

#[test]
fn admin_routes_create_change_and_delete_candidates() {
    let f = start(&["blue"]);
    let r = call(
        f.addr(),
        "POST",
        "/candidates",
        Some(json!({"name": "red", "members": [{"kind": "comm", "comm": "stress-ng"}]})),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["votes"], json!({"blue": 0, "red": 0}));
    let r = call(f.addr(), "POST", "/candidates", Some(json!({"name": "red"})));
    assert_eq!((r.status, r.code()), (409, "duplicate_candidate"), "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates",
        Some(json!({"name": "pink", "members": [{"kind": "comm", "comm": "stress-ng"}]})),
    );
    assert_eq!((r.status, r.code()), (409, "duplicate_member"), "{r:?}");

    let me = std::process::id() as i32;
    let r =
        call(f.addr(), "POST", "/candidates/red/members", Some(json!({"kind": "pid", "pid": me})));
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates/red/members",
        Some(json!({"kind": "cgroup", "path": "/demo/red"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(
        f.addr(),
        "POST",
        "/candidates/red/members",
        Some(json!({"kind": "pid", "pid": i32::MAX})),
    );
    assert_eq!((r.status, r.code()), (422, "no_such_process"), "{r:?}");
    let r =
        call(f.addr(), "POST", "/candidates/nope/members", Some(json!({"kind": "pid", "pid": me})));
    assert_eq!((r.status, r.code()), (404, "unknown_candidate"), "{r:?}");

    let r = call(f.addr(), "GET", "/candidates", None);
    assert_eq!(r.status, 200);
    let start_time = crate::ballot::proc_start_time(me).expect("this process exists");
    assert_eq!(
        r.body,
        json!([
            {"name": "blue", "votes": 0, "members": [], "live": []},
            {"name": "red", "votes": 0, "members": [
                {"kind": "comm", "comm": "stress-ng"},
                {"kind": "pid", "pid": me, "start_time": start_time,
                 "boot_id": crate::election::procfs::current_boot_id()},
                {"kind": "cgroup", "path": "/demo/red"},
            ], "live": []},
        ])
    );

    let r = call(
        f.addr(),
        "DELETE",
        "/candidates/red/members",
        Some(json!({"kind": "pid", "pid": me})),
    );
    assert_eq!(r.status, 200, "a bare pid removes the member: {r:?}");
    let r = call(
        f.addr(),
        "DELETE",
        "/candidates/red/members",
        Some(json!({"kind": "pid", "pid": me})),
    );
    assert_eq!((r.status, r.code()), (404, "absent_member"), "{r:?}");
    let members = &call(f.addr(), "GET", "/candidates", None).body[1]["members"];
    assert_eq!(members.as_array().map(Vec::len), Some(2), "{members}");

    vote(f.addr(), "red", "ana");
    vote(f.addr(), "blue", "bo");
    let r = call(f.addr(), "POST", "/votes/reset", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["votes"], json!({"blue": 0, "red": 0}));
    assert_eq!(r.body["leader"], Value::Null);

    let r = call(f.addr(), "DELETE", "/candidates/red", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["votes"], json!({"blue": 0}));
    let r = call(f.addr(), "DELETE", "/candidates/red", None);
    assert_eq!((r.status, r.code()), (404, "unknown_candidate"), "{r:?}");
    let r = call(f.addr(), "DELETE", "/candidates/bl%75e", None);
    assert_eq!(r.status, 200, "percent-encoded names are decoded: {r:?}");
}

#[test]
fn admin_routes_need_the_token_when_one_is_set() {
    let f = start_with(&["blue"], test_limits(), |c| c.admin_token = Some("s3cret".into()));
    assert_eq!(f.handle.admin_token.as_deref(), Some("s3cret"));
    let reset = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        call_with(f.addr(), "POST", "/votes/reset", &all, "")
    };
    let r = reset(&[]);
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    for wrong in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "Bearer "] {
        let r = reset(&[("Authorization", wrong)]);
        assert_eq!(r.status, 401, "{wrong}: {r:?}");
    }
    let r = call_with(f.addr(), "DELETE", "/candidates/blue", &[], "");
    assert_eq!(r.status, 401, "{r:?}");
    let r = call_with(
        f.addr(),
        "POST",
        "/candidates",
        &[("Content-Type", "application/json")],
        r#"{"name":"x"}"#,
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(f.generation(), 1, "nothing changed");
    assert_eq!(reset(&[("Authorization", "Bearer s3cret")]).status, 200);
    assert_eq!(reset(&[("authorization", "bearer s3cret")]).status, 200);
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200, "voting needs no token");
    assert_eq!(call(f.addr(), "GET", "/candidates", None).status, 200);
}

#[test]
fn a_listener_beyond_loopback_always_has_a_token() {
    let loopback: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let v6: SocketAddr = "[::1]:1".parse().expect("addr");
    let anywhere: SocketAddr = "0.0.0.0:1".parse().expect("addr");
    assert_eq!(admin_token_for(loopback, None).expect("token"), None);
    assert_eq!(admin_token_for(v6, None).expect("token"), None);
    assert_eq!(admin_token_for(anywhere, Some("t".into())).expect("token").as_deref(), Some("t"));
    let a = admin_token_for(anywhere, None).expect("token").expect("generated");
    let b = admin_token_for(anywhere, None).expect("token").expect("generated");
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, b);
    let store = Arc::new(Store::open(None, vec![], Board::new()).expect("store").0);
    for bad in ["", "two words"] {
        let mut cfg = ServerConfig::new(loopback);
        cfg.admin_token = Some(bad.into());
        assert!(spawn(cfg, Arc::clone(&store), Board::new()).is_err(), "{bad:?}");
    }
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
}

#[test]
fn votes_of_one_voter_are_rate_limited_when_asked() {
    let f = start_with(&["blue"], test_limits(), |c| c.vote_interval_ms = 60_000);
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200);
    let r = vote(f.addr(), "blue", "ana");
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{r:?}");
    let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    let other = |n: u8| std::net::Ipv4Addr::new(127, 0, 0, n);
    let r = vote_from(f.addr(), other(2), &[], "blue", "ana");
    assert_eq!(r.status, 429, "a voter is limited from any address: {r:?}");
    assert_eq!(vote_from(f.addr(), other(3), &[], "blue", "bo").status, 200, "other voters are not limited");
    assert_eq!(vote_from(f.addr(), other(4), &[], "nope", "cy").status, 404);
    assert_eq!(vote_from(f.addr(), other(4), &[], "blue", "cy").status, 200, "a refused vote does not count");
    assert_eq!(f.store.standing().candidates[0].votes, 3);

    let f = start(&["blue"]);
    for _ in 0..3 {
        assert_eq!(vote(f.addr(), "blue", "ana").status, 200, "no interval, no limit");
    }
}

#[test]
fn a_script_that_changes_its_voter_id_is_held_by_its_address() {
    let ip = |n: u8| std::net::Ipv4Addr::new(127, 0, 0, n);
    let f = start_with(&["blue"], test_limits(), |c| c.vote_interval_ms = 60_000);
    assert_eq!(vote_from(f.addr(), ip(10), &[], "blue", "v1").status, 200);
    for i in 2..20 {
        let r = vote_from(f.addr(), ip(10), &[], "blue", &format!("v{i}"));
        assert_eq!((r.status, r.code()), (429, "rate_limited"), "voter v{i}: {r:?}");
    }
    // The refusals did not take the new voters' slots: from another
    // address they vote.
    assert_eq!(vote_from(f.addr(), ip(11), &[], "blue", "v2").status, 200);
    // X-Forwarded-For names nobody unless the server is told to trust it.
    let xff = [("X-Forwarded-For", "203.0.113.7")];
    assert_eq!(vote_from(f.addr(), ip(10), &xff, "blue", "v3").status, 429, "not trusted");
    assert_eq!(f.store.standing().candidates[0].votes, 2);

    let f = start_with(&["blue"], test_limits(), |c| {
        c.vote_interval_ms = 60_000;
        c.trust_forwarded_for = true;
    });
    // Behind a proxy every vote comes from the proxy's address; the last
    // X-Forwarded-For entry is the client the proxy saw.
    let from = |a: &'static str| [("X-Forwarded-For", a)];
    assert_eq!(vote_from(f.addr(), ip(10), &from("198.51.100.1"), "blue", "a").status, 200);
    assert_eq!(vote_from(f.addr(), ip(10), &from("10.0.0.9, 198.51.100.2"), "blue", "b").status, 200);
    let r = vote_from(f.addr(), ip(10), &from("198.51.100.9, 198.51.100.1"), "blue", "c");
    assert_eq!(r.status, 429, "only the last entry counts: {r:?}");
    // IPv6 clients count by their /64.
    assert_eq!(vote_from(f.addr(), ip(10), &from("2001:db8:1:2::1"), "blue", "d").status, 200);
    assert_eq!(vote_from(f.addr(), ip(10), &from("2001:db8:1:2::ff"), "blue", "e").status, 429);
    assert_eq!(vote_from(f.addr(), ip(10), &from("2001:db8:1:3::1"), "blue", "f").status, 200);
    assert_eq!(f.store.standing().candidates[0].votes, 4);
}

#[test]
fn votes_survive_a_restart_on_the_same_journal() {
    let f = start(&["blue", "green"]);
    vote(f.addr(), "green", "a");
    vote(f.addr(), "green", "b");
    vote(f.addr(), "blue", "c");
    call(f.addr(), "POST", "/candidates", Some(json!({"name": "red"})));
    vote(f.addr(), "red", "d");
    let before = call(f.addr(), "GET", "/votes", None).body;
    let Fixture { mut handle, store, journal, _dir, .. } = f;
    handle.shutdown();
    drop(handle);
    drop(store);

    let board = Board::new();
    let initial = vec![("blue".into(), vec![]), ("green".into(), vec![])];
    let (store, warnings) =
        Store::open(Some(&journal), initial, Arc::clone(&board)).expect("reopen");
    assert!(warnings.is_empty(), "{warnings:?}");
    let cfg = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
    let handle = spawn_with(cfg, test_limits(), Arc::new(store), board).expect("spawn");
    let after = call(handle.addr, "GET", "/votes", None).body;
    assert_eq!(after["votes"], before["votes"]);
    assert_eq!(after["votes"], json!({"blue": 1, "green": 2, "red": 1}));
    assert_eq!(after["leader"], "green");
}

#[test]
fn a_journal_that_cannot_be_written_is_500_and_changes_nothing() {
    let f = start(&["blue"]);
    f.store.set_journal_for_test(Journal::failing_for_test(&f.journal.with_extension("ro")));
    let r = vote(f.addr(), "blue", "ana");
    assert_eq!((r.status, r.code()), (500, "journal_error"), "{r:?}");
    assert_eq!(f.generation(), 1);
    assert_eq!(call(f.addr(), "GET", "/votes", None).body["votes"], json!({"blue": 0}));
}

#[test]
fn reads_show_what_the_scheduler_side_observed() {
    let f = start(&["blue", "green"]);
    vote(f.addr(), "green", "ana");
    let metrics = Metrics { nr_online_cpus: 2, nr_user_dispatches: 17, ..Default::default() };
    f.board.observations.store(Arc::new(Observations {
        members: BTreeMap::from([(
            "green".to_owned(),
            vec![
                LiveMember { pid: 42, comm: "stress-ng".into() },
                LiveMember { pid: 43, comm: "yes".into() },
            ],
        )]),
        candidate_shares: BTreeMap::from([(
            "green".to_owned(),
            Share { share: 0.75, cpu_ns: 1_500_000 },
        )]),
        pid_shares: BTreeMap::from([
            (42, Share { share: 0.5, cpu_ns: 1_000_000 }),
            (43, Share { share: 0.25, cpu_ns: 500_000 }),
            (7, Share { share: 0.125, cpu_ns: 250_000 }),
        ]),
        window_ms: 1000,
    }));
    f.board.metrics.store(Arc::new(metrics));
    let r = call(f.addr(), "GET", "/candidates", None);
    assert_eq!(
        r.body[1]["live"],
        json!([{"pid": 42, "comm": "stress-ng"}, {"pid": 43, "comm": "yes"}])
    );
    assert_eq!(r.body[0]["live"], json!([]));
    let r = call(f.addr(), "GET", "/schedule", None);
    assert_eq!(
        r.body,
        json!({
            "window_ms": 1000,
            "leader": "green",
            "candidates": {
                "blue": {"share": 0.0, "cpu_ns": 0},
                "green": {"share": 0.75, "cpu_ns": 1_500_000},
            },
            "pids": {
                "7": {"share": 0.125, "cpu_ns": 250_000, "candidate": null},
                "42": {"share": 0.5, "cpu_ns": 1_000_000, "candidate": "green"},
                "43": {"share": 0.25, "cpu_ns": 500_000, "candidate": "green"},
            },
        })
    );
    let r = call(f.addr(), "GET", "/stats", None);
    assert_eq!(r.body, serde_json::to_value(metrics).expect("serializable"));
}

#[test]
fn hostile_input_gets_a_4xx_and_the_server_keeps_serving() {
    let limits = Limits { request_timeout: Duration::from_secs(1), ..test_limits() };
    let f = start_with(&["blue"], limits, |_| {});
    for (bytes, status) in [
        (&b"\x00\x01\x02garbage\r\n\r\n"[..], 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET /votes HTTP/1.1\r\nX: \xc3\x28\r\n\r\n", 400),
        (b"GET /vo\xfftes HTTP/1.1\r\n\r\n", 400),
        (b"POST /votes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"POST /votes HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
        (b"GET /votes%00 HTTP/1.1\r\n\r\n", 404),
    ] {
        let r = raw(f.addr(), bytes);
        assert_eq!(r.status, status, "{}: {r:?}", String::from_utf8_lossy(bytes));
    }
    let long = format!("GET /votes HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(raw(f.addr(), long.as_bytes()).status, 431);
    let endless = format!("GET /{}", "a".repeat(20_000));
    assert_eq!(raw(f.addr(), endless.as_bytes()).status, 431, "no end of head in sight");

    // A client that stops half-way holds nobody else up, and is cut off.
    let mut stalled = connect(f.addr());
    stalled.write_all(b"POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"cand").expect("send");
    let mut idle = connect(f.addr());
    idle.write_all(b"GET /vo").expect("send");
    let t = Instant::now();
    assert_eq!(call(f.addr(), "GET", "/votes", None).status, 200);
    assert!(t.elapsed() < Duration::from_millis(900), "served while others stall");
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200);
    let r = read_reply(&mut BufReader::new(stalled));
    assert_eq!((r.status, r.code()), (408, "request_timeout"), "{r:?}");
    assert_eq!(read_reply(&mut BufReader::new(idle)).status, 408);
    // A client that closes mid-body or before a request gets nothing.
    let mut gone = connect(f.addr());
    gone.write_all(
        b"POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{",
    )
    .expect("send");
    gone.shutdown(Shutdown::Write).expect("half-close");
    drop(connect(f.addr()));
    assert_eq!(vote(f.addr(), "blue", "bo").status, 200);
    assert_eq!(f.store.standing().candidates[0].votes, 2);
}

#[test]
fn one_connection_carries_several_requests_and_100_continue() {
    let f = start(&["blue"]);
    let mut stream = connect(f.addr());
    let body = r#"{"candidate":"blue","voter":"ana"}"#;
    let one = format!(
        "POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Two pipelined requests, then a third after the replies.
    stream.write_all(format!("{one}GET /votes HTTP/1.1\r\n\r\n").as_bytes()).expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let r = read_reply(&mut reader);
    assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    let r = read_reply(&mut reader);
    assert_eq!((r.status, r.body["votes"]["blue"].as_u64()), (200, Some(1)));
    // Another voter (one vote per voter: ana's again would not count).
    let body = r#"{"candidate":"blue","voter":"bo"}"#;
    let head = format!(
        "POST /votes HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send head");
    assert_eq!(read_reply(&mut reader).status, 100);
    stream.write_all(body.as_bytes()).expect("send body");
    let r = read_reply(&mut reader);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert_eq!(r.body["votes"]["blue"], 2);
}

#[test]
fn connections_beyond_the_cap_get_503() {
    let limits = Limits { max_connections: 2, ..test_limits() };
    let f = start_with(&["blue"], limits, |_| {});
    let held: Vec<TcpStream> = (0..2).map(|_| connect(f.addr())).collect();
    let r = call(f.addr(), "GET", "/votes", None);
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{r:?}");
    drop(held);
    let t = Instant::now();
    loop {
        let r = call(f.addr(), "GET", "/votes", None);
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < CLIENT_TIMEOUT, "the slots never came back: {r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_closes_open_connections_and_stops_listening() {
    let mut f = start(&["blue"]);
    let addr = f.addr();
    let mut idle = connect(addr);
    idle.write_all(b"GET /vo").expect("send");
    let t = Instant::now();
    f.handle.shutdown();
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).is_err(), "still listening");
    f.handle.shutdown();
}

#[test]
fn path_segments_are_percent_decoded_strictly() {
    assert_eq!(
        split_path("/candidates/a%2Db/").ok(),
        Some(vec!["candidates".into(), "a-b".into()])
    );
    assert!(split_path("/a%2").is_err());
    assert!(split_path("/a%+f").is_err());
    assert!(split_path("/a%ff").is_err(), "not UTF-8");
    assert_eq!(split_path("//").ok(), Some(vec![]));
}

#[test]
fn a_request_naming_a_foreign_host_is_refused() {
    let f = start(&["blue"]);
    for host in ["evil.example", "evil.example:7447", "127.0.0.1.evil.example", "localhost.evil"] {
        let req = format!("GET /votes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let alone = raw(f.addr(), req.as_bytes());
        assert_eq!((alone.status, alone.code()), (403, "foreign_host"), "{host}: {alone:?}");
        let body = r#"{"candidate":"blue","voter":"x"}"#;
        let req = format!(
            "POST /votes HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(raw(f.addr(), req.as_bytes()).status, 403, "{host}");
    }
    assert_eq!(f.generation(), 1, "nothing changed");
    for host in ["127.0.0.1:7447", "localhost:7447", "LOCALHOST", "[::1]:7447", "10.1.2.3"] {
        let req = format!("GET /votes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw(f.addr(), req.as_bytes()).status, 200, "{host}");
    }
}

#[test]
fn a_configured_host_name_is_answered() {
    let f = start_with(&["blue"], test_limits(), |c| c.allow_hosts = vec!["Ballot.Local".into()]);
    for host in ["ballot.local", "ballot.local:7447"] {
        let req = format!("GET /votes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw(f.addr(), req.as_bytes()).status, 200, "{host}");
    }
    let req = "GET /votes HTTP/1.1\r\nHost: other.local\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(f.addr(), req.as_bytes()).status, 403);
}

#[test]
fn a_bodiless_change_without_json_is_refused_so_no_simple_request_can_reset() {
    let f = start(&["blue"]);
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200);
    // What fetch(url, {method: "POST", mode: "no-cors"}) sends: no body, no
    // JSON content type, an Origin of another site.
    for headers in [
        vec![],
        vec![("Content-Type", "text/plain")],
        vec![("Content-Type", "application/x-www-form-urlencoded")],
        vec![("Origin", "http://evil.example"), ("Content-Type", "text/plain")],
    ] {
        let r = call_with(f.addr(), "POST", "/votes/reset", &headers, "");
        assert!(matches!(r.status, 403 | 415), "{headers:?}: {r:?}");
        let r = call_with(f.addr(), "DELETE", "/candidates/blue", &headers, "");
        assert!(matches!(r.status, 403 | 415), "{headers:?}: {r:?}");
    }
    assert_eq!(f.store.standing().candidates.len(), 1, "blue is still there");
    assert_eq!(call(f.addr(), "GET", "/votes", None).body["votes"], json!({"blue": 1}));
}

#[test]
fn changes_from_another_origin_are_refused_and_the_own_page_is_not() {
    let f = start(&["blue"]);
    let json_ct = ("Content-Type", "application/json");
    let body = r#"{"candidate":"blue","voter":"x"}"#;
    for origin in ["http://evil.example", "null", "https://127.0.0.1", "http://127.0.0.1:1"] {
        let r = call_with(f.addr(), "POST", "/votes", &[json_ct, ("Origin", origin)], body);
        assert_eq!((r.status, r.code()), (403, "cross_origin"), "{origin}: {r:?}");
        let r = call_with(f.addr(), "POST", "/votes/reset", &[json_ct, ("Origin", origin)], "");
        assert_eq!(r.status, 403, "{origin}: {r:?}");
    }
    let r = call_with(
        f.addr(),
        "POST",
        "/votes",
        &[json_ct, ("Sec-Fetch-Site", "cross-site")],
        body,
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(f.generation(), 1, "nothing changed");
    // The ballot page's own requests: Origin is this server.
    let own = format!("http://{}", f.addr());
    let req = format!(
        "POST /votes HTTP/1.1\r\nHost: {}\r\nOrigin: {own}\r\nContent-Type: application/json\r\n\
         Sec-Fetch-Site: same-origin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        f.addr(),
        body.len()
    );
    assert_eq!(raw(f.addr(), req.as_bytes()).status, 200);
}

#[test]
fn the_last_request_a_connection_may_carry_says_close() {
    let limits = Limits { max_requests_per_connection: 3, ..test_limits() };
    let f = start_with(&["blue"], limits, |_| {});
    let mut conn = BufReader::new(connect(f.addr()));
    for n in 1..=3 {
        conn.get_mut()
            .write_all(b"GET /votes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("send");
        let r = read_reply(&mut conn);
        let want = if n == 3 { "close" } else { "keep-alive" };
        assert_eq!(r.header("connection"), Some(want), "response {n}: {r:?}");
    }
}

#[test]
fn the_rate_limiter_forgets_expired_voters_as_it_goes_and_is_capped() {
    let interval = Duration::from_millis(10);
    let mut limiter = RateLimiter::new(1000);
    let t0 = Instant::now();
    // 50,000 distinct voters, one per millisecond: only the last interval's
    // voters are kept, whatever the total, and each vote expires only what
    // fell out of the interval (the queue never holds more than that).
    for i in 0..50_000u64 {
        let now = t0 + Duration::from_millis(i);
        limiter.admit(&format!("v{i}"), now, interval).expect("a new voter");
        assert!(limiter.len() <= 10 && limiter.queued() <= 10, "at {i}: {}", limiter.len());
    }
    // A voter again within the interval is refused, after it is admitted.
    let now = t0 + Duration::from_millis(50_000);
    limiter.admit("ana", now, interval).expect("first vote");
    assert!(matches!(
        limiter.admit("ana", now + Duration::from_millis(3), interval),
        Err(ApiError::RateLimited(_))
    ));
    limiter.admit("ana", now + interval, interval).expect("after the interval");

    // Full of live voters: a new one is refused, a known one still limited.
    let mut full = RateLimiter::new(3);
    let hour = Duration::from_secs(3600);
    for v in ["a", "b", "c"] {
        full.admit(v, t0, hour).expect("room");
    }
    assert!(matches!(full.admit("d", t0, hour), Err(ApiError::TooManyVoters)));
    assert!(matches!(full.admit("a", t0, hour), Err(ApiError::RateLimited(_))));
    assert_eq!(full.len(), 3);
    // Voting again and again keeps the queue bounded too.
    let mut again = RateLimiter::new(2);
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_millis(i);
        again.admit("a", now, Duration::from_millis(1)).expect("one per interval");
        assert!(again.queued() <= 4, "at {i}: {}", again.queued());
    }
}

#[test]
fn a_vote_that_fails_gives_the_voter_its_slot_back() {
    let f = start_with(&["blue"], test_limits(), |c| c.vote_interval_ms = 3_600_000);
    assert_eq!(vote(f.addr(), "nope", "ana").status, 404, "an unknown candidate");
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200, "the failed vote did not count");
    assert_eq!(vote(f.addr(), "blue", "ana").status, 429);
}

/// Reads server-sent events until `want` accepts one (name, data), or the
/// client timeout passes.
fn next_event(
    reader: &mut BufReader<TcpStream>,
    mut want: impl FnMut(&str, &str) -> bool,
) -> (String, String) {
    let t = Instant::now();
    let (mut name, mut data) = (String::new(), String::new());
    let mut line = String::new();
    while t.elapsed() < CLIENT_TIMEOUT {
        line.clear();
        if reader.read_line(&mut line).expect("an event line") == 0 {
            panic!("the stream ended");
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if !name.is_empty() && want(&name, &data) {
                return (name, data);
            }
            (name, data) = (String::new(), String::new());
        } else if let Some(v) = l.strip_prefix("event: ") {
            name = v.to_owned();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
    panic!("no such event within {CLIENT_TIMEOUT:?}");
}

/// Opens `GET /events` and reads its head.
fn subscribe(addr: SocketAddr) -> BufReader<TcpStream> {
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head line");
        if line.trim_end().is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    reader
}

#[test]
fn the_event_stream_sends_the_standing_on_every_change_and_the_shares_every_second() {
    let f = start(&["blue", "green"]);
    let mut events = subscribe(f.addr());
    // At once: the standing, the candidates and the shares as they are.
    let (_, data) = next_event(&mut events, |name, _| name == "tally");
    let tally: Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(tally["votes"], json!({"blue": 0, "green": 0}));
    next_event(&mut events, |name, _| name == "candidates");
    next_event(&mut events, |name, _| name == "schedule");
    // A vote reaches the stream without a poll.
    let t = Instant::now();
    assert_eq!(vote(f.addr(), "green", "ana").status, 200);
    let (_, data) = next_event(&mut events, |name, data| {
        name == "tally" && serde_json::from_str::<Value>(data).expect("JSON")["votes"]["green"] == 1
    });
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let tally: Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(tally["leader"], "green");
    // The shares come again within about a second, unasked.
    let t = Instant::now();
    next_event(&mut events, |name, _| name == "schedule");
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
}

#[test]
fn a_storm_of_votes_reaches_the_stream_as_its_last_standing() {
    let f = start(&["blue"]);
    let mut events = subscribe(f.addr());
    for i in 0..200 {
        assert_eq!(vote(f.addr(), "blue", &format!("v{i}")).status, 200);
    }
    let mut tallies = 0;
    next_event(&mut events, |name, data| {
        if name != "tally" {
            return false;
        }
        tallies += 1;
        serde_json::from_str::<Value>(data).expect("JSON")["votes"]["blue"] == 200
    });
    assert!(tallies < 200, "every vote was sent on its own: {tallies} tallies");
}

#[test]
fn more_keep_alive_clients_than_threads_are_all_answered() {
    // Well past the 64 connections a thread each allowed.
    const CLIENTS: usize = 600;
    // Idle clients are reclaimed after the request timeout: a slow test
    // build must not see its clients go while it opens the others.
    let limits = Limits { request_timeout: Duration::from_secs(60), ..test_limits() };
    let f = start_with(&["blue"], limits, |_| {});
    let mut clients: Vec<BufReader<TcpStream>> =
        (0..CLIENTS).map(|_| BufReader::new(connect(f.addr()))).collect();
    let streams: Vec<BufReader<TcpStream>> = (0..CLIENTS / 2).map(|_| subscribe(f.addr())).collect();
    for round in 0..2 {
        for c in &mut clients {
            c.get_mut()
                .write_all(b"GET /votes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .expect("send");
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let r = read_reply(c);
            assert_eq!(r.status, 200, "client {i}, round {round}: {r:?}");
            assert_eq!(r.header("connection"), Some("keep-alive"));
        }
    }
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200);
    for mut s in streams {
        next_event(&mut s, |name, data| name == "tally" && data.contains("\"blue\":1"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_and_their_changes_share_syncs() {
    let f = start(&["blue", "green"]);
    let flushes = f.store.flushes();
    let mut conn = BufReader::new(connect(f.addr()));
    let mut all = String::new();
    for i in 0..40 {
        let body = json!({"candidate": if i % 2 == 0 { "blue" } else { "green" }, "voter": format!("v{i}")})
            .to_string();
        all.push_str(&format!(
            "POST /votes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        if i == 20 {
            // A read between changes answers in its place.
            all.push_str("GET /votes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        }
    }
    conn.get_mut().write_all(all.as_bytes()).expect("send");
    let mut generations = Vec::new();
    for i in 0..41 {
        let r = read_reply(&mut conn);
        assert_eq!(r.status, 200, "answer {i}: {r:?}");
        generations.push(r.body["generation"].as_u64().expect("a generation"));
    }
    // Each change's answer shows the standing with it; the read between
    // them, the standing as it was when it was read (at least the change
    // before it).
    assert!(generations.windows(2).all(|w| w[0] <= w[1]), "{generations:?}");
    assert_eq!(call(f.addr(), "GET", "/votes", None).body["votes"], json!({"blue": 20, "green": 20}));
    let syncs = f.store.flushes() - flushes;
    assert!(syncs < 40, "40 pipelined changes took {syncs} syncs");
}
