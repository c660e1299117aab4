//! The HTTP client the xtask talks to the voting server with: one request
//! per connection (`Connection: close`), JSON content type, the whole
//! answer read back. The in-VM agents (through
//! [`crate::guest::scheduler::api`]) and the browser test both use it; each
//! judges the status and decodes the body its own way.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer: the status line and headers, and the body after them.
#[derive(Debug)]
pub struct Answer {
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The status code from the status line.
    pub fn status(&self) -> Option<u16> {
        self.head.split_whitespace().nth(1).and_then(|x| x.parse().ok())
    }

    /// The status line (`HTTP/1.1 429 Too Many Requests`).
    pub fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
}

/// Why a request got no answer, by the step that failed, so that callers
/// can say which.
#[derive(Debug)]
pub enum Failure {
    /// The connection could not be opened.
    Connect(io::Error),
    /// Setting up the connection or sending the request failed.
    Send(io::Error),
    /// Reading the answer failed.
    Read(io::Error),
    /// What came back has no blank line after a head: the whole text.
    NotHttp(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) | Failure::Send(e) | Failure::Read(e) => e.fmt(f),
            Failure::NotHttp(_) => f.write_str("an HTTP answer without a body"),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Connect(e) | Failure::Send(e) | Failure::Read(e) => e.source(),
            Failure::NotHttp(_) => None,
        }
    }
}

/// `method path` to `addr` with `headers` (each ending in CRLF) and
/// `body`; reading and writing each time out after `io_timeout`.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
    io_timeout: Duration,
) -> Result<Answer, Failure> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(Failure::Connect)?;
    stream.set_read_timeout(Some(io_timeout)).map_err(Failure::Send)?;
    stream.set_write_timeout(Some(io_timeout)).map_err(Failure::Send)?;
    stream.set_nodelay(true).map_err(Failure::Send)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}Connection: close\r\n\r\n{body}"
    );
    stream.write_all(request.as_bytes()).map_err(Failure::Send)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(Failure::Read)?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) => Ok(Answer { head: head.to_string(), body: body.to_string() }),
        None => Err(Failure::NotHttp(answer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comes_from_the_status_line() {
        let answer = Answer { head: "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2".into(), body: "{}".into() };
        assert_eq!(answer.status(), Some(429));
        assert_eq!(answer.status_line(), "HTTP/1.1 429 Too Many Requests");
        let garbled = Answer { head: "nonsense".into(), body: String::new() };
        assert_eq!(garbled.status(), None);
    }

    /// A server that reads one request (head and `len` bytes of body),
    /// answers `answer` and closes; it hands back what it read.
    fn one_shot(answer: &'static str, len: usize) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("the port's address");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("a connection");
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).expect("the request's head");
                got.push(byte[0]);
            }
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).expect("the request's body");
            got.extend(body);
            s.write_all(answer.as_bytes()).expect("the answer");
            String::from_utf8(got).expect("a text request")
        });
        (addr, server)
    }

    #[test]
    fn a_request_is_sent_whole_and_its_answer_split() {
        let (addr, server) = one_shot("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", 7);
        let answer = send(addr, "POST", "/votes", "Content-Length: 7\r\n", "{\"a\":1}", Duration::from_secs(5))
            .expect("an answer");
        assert_eq!(answer.status(), Some(201));
        assert_eq!(answer.body, "{}");
        assert_eq!(
            server.join().expect("the server thread"),
            format!(
                "POST /votes HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{{\"a\":1}}"
            )
        );
    }

    #[test]
    fn an_answer_without_a_blank_line_is_not_http() {
        let (addr, server) = one_shot("garbage", 0);
        let failure = send(addr, "GET", "/votes", "", "", Duration::from_secs(5)).expect_err("not HTTP");
        assert!(matches!(&failure, Failure::NotHttp(text) if text == "garbage"), "{failure:?}");
        assert_eq!(failure.to_string(), "an HTTP answer without a body");
        server.join().expect("the server thread");
    }
}
