//! SIGKILL in the middle of a vote storm loses no acknowledged vote: 16
//! keep-alive connections vote against `scx_ballot --no-sched` with a
//! journal, the server is killed, restarted on the same journal, and the
//! replayed tally is compared with the acknowledgements.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Kills the server when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(journal: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scx_ballot"))
        .args(["--no-sched", "--listen", "127.0.0.1:0", "--votes-file"])
        .arg(journal)
        .args(["--candidates", concat!(env!("CARGO_MANIFEST_DIR"), "/vm/demo-candidates.toml")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start scx_ballot");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("voting server: http://").nth(1) {
                let _ = tx.send(rest.trim_end_matches('/').to_owned());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => addr.parse().expect("an address"),
        Err(_) => {
            let _ = child.kill();
            panic!("scx_ballot printed no voting server address within 20 s");
        }
    };
    Server { child, addr }
}

/// One request on a keep-alive connection; the status and the body.
fn request(conn: &mut BufReader<TcpStream>, addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let msg = format!(
        "{head} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(msg.as_bytes()).expect("send");
    let mut line = String::new();
    conn.read_line(&mut line).expect("status line");
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).expect("header") == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    BufReader::new(s)
}

fn blue_votes(addr: SocketAddr) -> u64 {
    let (status, body) = request(&mut connect(addr), addr, "GET /votes", "");
    assert_eq!(status, 200, "{body}");
    let tally: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    tally["votes"]["blue"].as_u64().expect("blue's votes")
}

#[test]
fn sigkill_mid_storm_loses_no_acknowledged_vote() {
    let dir = std::env::temp_dir().join(format!("scx_ballot-storm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let journal = dir.join("votes.journal");
    let mut server = start(&journal);
    let addr = server.addr;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let voters: Vec<_> = (0..16)
        .map(|c| {
            let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut conn = connect(addr);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!(r#"{{"candidate":"blue","voter":"c{c}-{n}"}}"#);
                    let msg = format!(
                        "POST /votes HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    n += 1;
                    // The server dies mid-request: every error ends this voter.
                    if conn.get_mut().write_all(msg.as_bytes()).is_err() {
                        return;
                    }
                    let mut line = String::new();
                    match conn.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let ok = line.starts_with("HTTP/1.1 200");
                    let mut len = 0usize;
                    let mut close = false;
                    loop {
                        line.clear();
                        match conn.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        close |= lower.starts_with("connection:") && lower.contains("close");
                    }
                    let mut body = vec![0; len];
                    if conn.read_exact(&mut body).is_err() {
                        return;
                    }
                    // Counted only once the whole answer is here.
                    if ok {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    if close {
                        conn = connect(addr);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.load(Ordering::SeqCst) < 3000 {
        assert!(Instant::now() < deadline, "fewer than 3000 votes acknowledged in 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    let acked_at_kill = acked.load(Ordering::SeqCst);
    stop.store(true, Ordering::Relaxed);
    for v in voters {
        v.join().expect("a voter panicked");
    }
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked >= acked_at_kill);
    drop(server);
    let server = start(&journal);
    let replayed = blue_votes(server.addr);
    assert!(
        replayed >= acked,
        "{acked} votes were acknowledged but only {replayed} replayed after SIGKILL"
    );
    // At most one vote per connection was on disk without its answer.
    assert!(replayed <= acked + 16, "{replayed} replayed, {acked} acknowledged");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
