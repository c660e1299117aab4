//! One connection's output: its queue of bytes, their writes, and the bytes
//! of a response or of an event-stream answer.

use super::*;

impl Conn {
    pub(super) fn backlog(&self) -> usize {
        self.out.len() - self.sent
    }

    pub(super) fn queue(&mut self, bytes: &[u8]) {
        if self.sent > 0 && self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Writes what it can of `out`; `Err` when the connection is broken.
    pub(super) fn flush(&mut self, now: Instant) -> io::Result<()> {
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
pub(super) fn response_bytes(response: &Response, close: bool, head_only: bool) -> Vec<u8> {
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
pub(super) fn stream_bytes(response: &Response) -> Vec<u8> {
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

/// Ends the exchange: nothing more is parsed; once the answer is out, the
/// write side is shut and the client has [`LINGER`] to close.
pub(super) fn start_closing(conn: &mut Conn, now: Instant) {
    conn.phase = Phase::Closing;
    conn.deadline = now + LINGER;
    conn.buf = Vec::new();
}

