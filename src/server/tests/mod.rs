//! The API over real TCP connections, with a tiny HTTP/1.1 client: here the
//! client, the test server and the event-stream reader the topic files share.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::ballot::store::tests::TempDir;

mod admin;
mod connections;
mod event_stream;
mod origins;
mod page;
mod rate_limits;
mod requests;
mod votes;

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
