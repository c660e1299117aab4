//! The loop's work between requests: the event streams' broadcast, and the
//! sweep of deadlines and idle connections.

use super::*;

impl Loop {
    /// Hands the events sent through the [`Hub`] to the streams, at most
    /// [`BROADCAST_STEP`] connections per call, so that a full room's
    /// streams do not hold up everyone's requests; `true` while a
    /// broadcast is unfinished.
    pub(super) fn broadcast(&mut self) -> bool {
        if self.broadcasting.is_none() {
            let events = std::mem::take(&mut *lock(&self.shared.events));
            if events.is_empty() {
                return false;
            }
            let bytes: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
            self.broadcasting = Some((bytes, 0));
        }
        let Some((bytes, from)) = self.broadcasting.take() else { return false };
        let now = Instant::now();
        let max_backlog = self.limits.max_stream_backlog;
        let to = (from + BROADCAST_STEP).min(self.conns.len());
        for slot in from..to {
            let Some(conn) = self.conn(slot) else { continue };
            if !matches!(conn.phase, Phase::Stream) {
                continue;
            }
            conn.queue(&bytes);
            if conn.backlog() > max_backlog {
                log::debug!("voting server: dropping an event stream {} bytes behind", conn.backlog());
                self.close(slot);
                continue;
            }
            if conn.flush(now).is_err() {
                self.close(slot);
            }
        }
        if to < self.conns.len() {
            self.broadcasting = Some((bytes, to));
            return true;
        }
        !lock(&self.shared.events).is_empty()
    }

    /// Closes what is past its deadline: a request not in by its deadline
    /// (408 if it had started; an idle keep-alive closes quietly), a client
    /// not reading its answer or its stream, a linger that is over.
    pub(super) fn sweep(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            self.accept();
        }
        let write_timeout = self.limits.write_timeout;
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conn(slot) else { continue };
            if conn.stalled_since.is_some_and(|t| now.duration_since(t) >= write_timeout) {
                self.close(slot);
                continue;
            }
            if now < conn.deadline {
                continue;
            }
            match conn.phase {
                // Waiting for this side's answers, not for the client.
                _ if !conn.in_flight.is_empty() => {}
                Phase::Head if conn.buf.is_empty() => self.close(slot),
                Phase::Head | Phase::Body(_) => {
                    conn.buf.clear();
                    self.fail(slot, &ApiError::Timeout);
                }
                Phase::Closing if conn.shut => self.close(slot),
                Phase::Closing | Phase::Drain | Phase::Stream => {}
            }
        }
    }
}
