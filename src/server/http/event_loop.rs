//! The event loop: accepting, reading and framing requests, handing them to
//! the app, and answering them in order.

use super::*;

impl Loop {
    pub(super) fn run(&mut self) {
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

    pub(super) fn accept(&mut self) {
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

    pub(super) fn conn(&mut self, slot: usize) -> Option<&mut Conn> {
        self.conns.get_mut(slot).and_then(Option::as_mut)
    }

    pub(super) fn close(&mut self, slot: usize) {
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

    pub(super) fn write(&mut self, slot: usize) {
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
    pub(super) fn read(&mut self, slot: usize) {
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
    pub(super) fn advance(&mut self, slot: usize) {
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
    pub(super) fn fail(&mut self, slot: usize, error: &ApiError) {
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
    pub(super) fn take_in(&mut self, slot: usize, request: &Request, response: Option<Response>, unread_body: bool, now: Instant) {
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
    pub(super) fn send_ready(&mut self, slot: usize, now: Instant) {
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

    pub(super) fn answer_done(&mut self) {
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
}
