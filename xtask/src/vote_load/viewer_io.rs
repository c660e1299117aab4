//! What a viewer's connection does on each event: connect, send its
//! request, read the answer's head and body, count it answered, late or
//! refused.

use std::cmp::Reverse;
use std::io::{self, ErrorKind, Read, Write};
use std::time::Instant;

use anyhow::anyhow;
use mio::{Interest, Token};

use super::ns;
use super::cmd::View;
use super::viewers::{POLL_EVERY, POLL_LATE, FIRST_POLL_SLACK, STREAM_LATE, MAX_HEAD, Phase, Framing, Viewer, Ctx, io_reason};
use super::parse::{find_head_end, Head, parse_head, ChunkedDecoder, SseItem};

impl Ctx<'_> {
    /// Opens `v`'s connection (it completes in [`Ctx::ready`]).
    pub(super) fn open(&mut self, v: &mut Viewer, i: usize, now: Instant) {
        v.phase = Phase::Connecting;
        v.opened_at = now;
        match mio::net::TcpStream::connect(self.plan.addr) {
            Ok(mut sock) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                match self.registry.register(&mut sock, Token(i), interest) {
                    Ok(()) => v.sock = Some(sock),
                    Err(e) => self.refuse(v, format!("registering a socket: {e}")),
                }
            }
            Err(e) => self.connect_failed(v, &e),
        }
    }

    fn connect_failed(&mut self, v: &mut Viewer, e: &io::Error) {
        if e.kind() == ErrorKind::ConnectionRefused && !self.ever_connected && !self.plan.voters {
            self.fatal.get_or_insert_with(|| {
                anyhow!("nothing listens at {} (connection refused)", self.plan.host)
            });
        }
        self.refuse(v, format!("connect: {}", io_reason(e)));
    }

    fn refuse(&mut self, v: &mut Viewer, reason: String) {
        self.close(v);
        v.phase = Phase::Failed;
        *self.refusals.entry(reason).or_default() += 1;
    }

    fn close(&mut self, v: &mut Viewer) {
        if let Some(mut sock) = v.sock.take() {
            let _ = self.registry.deregister(&mut sock);
        }
    }

    /// A poll viewer's timer.
    pub(super) fn due(&mut self, v: &mut Viewer, i: usize, due: Instant, now: Instant) {
        if v.due != due {
            return;
        }
        match v.phase {
            Phase::Idle => self.send(v, now),
            Phase::Waiting => {
                self.reconnects += 1;
                self.open(v, i, now);
            }
            _ => {}
        }
    }

    /// `v`'s socket has news.
    pub(super) fn ready(&mut self, v: &mut Viewer, i: usize, now: Instant, scratch: &mut [u8]) {
        if v.phase == Phase::Connecting {
            let Some(sock) = v.sock.as_ref() else { return };
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => return self.connect_failed(v, &e),
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => return self.connect_failed(v, &e),
            }
            let _ = sock.set_nodelay(true);
            self.ever_connected = true;
            self.connect_ns.push(ns(now - v.opened_at));
            v.phase = Phase::Idle;
            if v.answered == 0 && v.due + FIRST_POLL_SLACK < now {
                // Connected well after its first poll was due (a server
                // slow to accept: see the connect times): it polls from the
                // next second at its own offset, as the page would once
                // loaded, not all at once with the others that waited.
                let behind = (now - v.due).as_nanos().div_ceil(POLL_EVERY.as_nanos());
                v.due += POLL_EVERY * u32::try_from(behind).unwrap_or(u32::MAX);
            }
            match self.plan.view {
                View::Stream => self.send(v, now),
                View::Poll if v.due <= now => self.send(v, now),
                View::Poll => self.timers.push(Reverse((v.due, i))),
            }
        }
        if v.unsent > 0 {
            self.flush(v);
        }
        self.read(v, i, now, scratch);
    }

    fn send(&mut self, v: &mut Viewer, now: Instant) {
        v.phase = Phase::Head;
        v.head.clear();
        v.unsolicited = false;
        v.sent_at = now;
        v.unsent = self.request.len();
        self.flush(v);
    }

    fn flush(&mut self, v: &mut Viewer) {
        while v.unsent > 0 {
            let Some(sock) = v.sock.as_mut() else { return };
            let from = self.request.len() - v.unsent;
            match sock.write(&self.request[from..]) {
                Ok(0) => return self.refuse(v, "closed by the server".into()),
                Ok(n) => v.unsent -= n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.refuse(v, format!("sending: {}", io_reason(&e))),
            }
        }
    }

    /// Reads what is there (the events are edge-triggered).
    fn read(&mut self, v: &mut Viewer, i: usize, now: Instant, scratch: &mut [u8]) {
        loop {
            let Some(sock) = v.sock.as_mut() else { return };
            match sock.read(scratch) {
                Ok(0) => return self.eof(v, i, now),
                Ok(n) => {
                    self.bytes(v, i, &scratch[..n], now);
                    if v.phase == Phase::Failed {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.refuse(v, format!("reading: {}", io_reason(&e))),
            }
        }
    }

    fn eof(&mut self, v: &mut Viewer, i: usize, now: Instant) {
        let reason = match (v.phase, &v.framing, self.plan.view) {
            (Phase::Body, Framing::UntilClose, View::Poll) => {
                // An answer without a length ends with its connection.
                v.close_after = true;
                return self.answered(v, i, now);
            }
            (Phase::Body, _, View::Stream) => "the server closed the stream",
            (Phase::Idle, _, _) => "closed by the server between polls",
            (Phase::Head, _, _) if v.head.is_empty() => "closed by the server before answering",
            _ => "closed by the server mid-answer",
        };
        self.refuse(v, reason.into());
    }

    fn bytes(&mut self, v: &mut Viewer, i: usize, data: &[u8], now: Instant) {
        match v.phase {
            Phase::Idle => {
                v.phase = Phase::Head;
                v.head.clear();
                v.unsolicited = true;
                self.head_bytes(v, i, data, now);
            }
            Phase::Head => self.head_bytes(v, i, data, now),
            Phase::Body => self.body_bytes(v, i, data, now),
            Phase::Waiting | Phase::Connecting | Phase::Failed => {}
        }
    }

    fn head_bytes(&mut self, v: &mut Viewer, i: usize, data: &[u8], now: Instant) {
        v.head.extend_from_slice(data);
        let Some(end) = find_head_end(&v.head) else {
            if v.head.len() > MAX_HEAD {
                self.refuse(v, "an answer head over 16 KiB".into());
            }
            return;
        };
        let rest = v.head.split_off(end);
        let head = match parse_head(&v.head) {
            Ok(head) => head,
            Err(e) => return self.refuse(v, format!("a malformed answer ({e})")),
        };
        v.head = Vec::new();
        if head.status != 200 {
            if let Some(e) = self.wrong_route(&head, &rest) {
                self.fatal.get_or_insert(e);
            }
            return self.refuse(v, format!("answered {} {}", head.status, head.reason));
        }
        if v.unsolicited {
            return self.refuse(v, "an answer without a request".into());
        }
        if self.plan.view == View::Stream
            && !head
                .content_type
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        {
            self.fatal.get_or_insert_with(|| {
                anyhow!(
                    "GET /events at {} answered 200 but not with an event stream (Content-Type {:?})",
                    self.plan.host,
                    head.content_type
                )
            });
            return self.refuse(v, "not an event stream".into());
        }
        v.close_after = head.close;
        v.framing = if head.chunked {
            Framing::Chunked(ChunkedDecoder::default())
        } else if let Some(len) = head.content_length {
            Framing::Length(len)
        } else {
            Framing::UntilClose
        };
        v.phase = Phase::Body;
        v.streaming = self.plan.view == View::Stream;
        if !rest.is_empty() || matches!(v.framing, Framing::Length(0)) {
            self.body_bytes(v, i, &rest, now);
        }
    }

    /// The error that stops the run when a viewer's request is one the
    /// server does not serve at all (no route, a bad request): waiting for
    /// thousands of the same answers says nothing more.
    fn wrong_route(&self, head: &Head, rest: &[u8]) -> Option<anyhow::Error> {
        if !(400..500).contains(&head.status) || matches!(head.status, 408 | 429) {
            return None;
        }
        let body = String::from_utf8_lossy(&rest[..rest.len().min(300)]);
        let body = body.trim();
        let answer = format!("{} {}", head.status, head.reason);
        let host = &self.plan.host;
        Some(match (self.plan.view, head.status) {
            (View::Stream, 404) => anyhow!(
                "the server at {host} has no /events stream: GET /events answered {answer} \
                 ({body}); viewers that poll (--view poll) work without it"
            ),
            (View::Poll, 404) => {
                anyhow!("the server at {host} has no GET /votes: it answered {answer} ({body})")
            }
            (view, _) => anyhow!(
                "the server at {host} refuses the viewers' request: GET {} answered {answer} ({body})",
                if view == View::Stream {
                    "/events"
                } else {
                    "/votes"
                }
            ),
        })
    }

    fn body_bytes(&mut self, v: &mut Viewer, i: usize, data: &[u8], now: Instant) {
        match self.plan.view {
            View::Poll => {
                let done = match &mut v.framing {
                    Framing::Length(left) => {
                        *left -= (*left).min(data.len() as u64);
                        *left == 0
                    }
                    Framing::Chunked(chunks) => match chunks.feed(data, &mut |_| {}) {
                        Ok(done) => done,
                        Err(e) => return self.refuse(v, format!("a malformed answer ({e})")),
                    },
                    Framing::UntilClose => false,
                };
                if done {
                    self.answered(v, i, now);
                }
            }
            View::Stream => {
                let (mut events, mut others) = (0u64, 0u64);
                let names = &mut self.event_names;
                let mut on_item = |item: SseItem| match item {
                    SseItem::Event(name) => {
                        events += 1;
                        *names.entry(name).or_default() += 1;
                    }
                    SseItem::Other => others += 1,
                };
                let sse = &mut v.sse;
                let ended = match &mut v.framing {
                    Framing::Length(left) => {
                        let take = (*left).min(data.len() as u64);
                        sse.feed(&data[..take as usize], &mut on_item);
                        *left -= take;
                        Ok(*left == 0)
                    }
                    Framing::Chunked(chunks) => {
                        chunks.feed(data, &mut |b| sse.feed(b, &mut on_item))
                    }
                    Framing::UntilClose => {
                        sse.feed(data, &mut on_item);
                        Ok(false)
                    }
                };
                self.events += events;
                self.comments += others;
                if events > 0 {
                    let since = v.last_event.unwrap_or(v.sent_at);
                    let gap = now.saturating_duration_since(since);
                    v.late |= gap > STREAM_LATE;
                    if v.last_event.is_some() {
                        self.worst_gap = Some(self.worst_gap.map_or(gap, |w| w.max(gap)));
                    } else {
                        self.first_event_ns.push(ns(now - v.sent_at));
                    }
                    v.last_event = Some(now);
                }
                match ended {
                    Ok(false) => {}
                    Ok(true) => self.refuse(v, "the server ended the stream".into()),
                    Err(e) => self.refuse(v, format!("a malformed stream ({e})")),
                }
            }
        }
    }

    /// A poll viewer's answer is complete.
    fn answered(&mut self, v: &mut Viewer, i: usize, now: Instant) {
        self.answer_ns.push(ns(now - v.sent_at));
        v.late |= now.saturating_duration_since(v.due) > POLL_LATE;
        v.answered += 1;
        let mut next = v.due + POLL_EVERY;
        if next + POLL_LATE < now {
            // Far behind: a page would ask once now, not catch up.
            next = now;
        }
        v.due = next;
        v.phase = Phase::Idle;
        if v.close_after {
            // Announced: the next poll opens a new connection.
            self.close(v);
            v.phase = Phase::Waiting;
        }
        self.timers.push(Reverse((next, i)));
    }
}
