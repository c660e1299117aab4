//! The event stream (`GET /events`): the thread that sends the standing on
//! every change and the candidates and shares once a second, and the
//! events themselves.

use super::*;

/// How often the event streams get the candidates and the CPU shares.
const SHARES_EVERY: Duration = Duration::from_secs(1);
/// Least time between two standing events: a storm of votes reaches the
/// streams as its latest standing, at most this often.
const TALLY_EVERY: Duration = Duration::from_millis(50);
/// And this much more per open stream: a standing sent to 10,000 streams is
/// 10,000 writes, so with a full room the standing goes out every 250 ms
/// and the streams never take more than about a quarter of the loop.
const TALLY_EVERY_PER_STREAM: Duration = Duration::from_micros(20);


/// The event thread: sends the standing to the streams after every change
/// (at most every [`TALLY_EVERY`], and more rarely with many streams), the candidates and the shares every
/// [`SHARES_EVERY`], until stopped.
pub(super) fn publish_events(api: &Api, hub: &Hub, publisher: &Publisher) {
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
    pub(super) fn tally_event(&self) -> Vec<u8> {
        let tally = tally_of(&self.board.standing.load());
        sse(EVENT_TALLY, &serde_json::to_vec(&tally).expect("a tally always serializes"))
    }

    /// `candidates` and `schedule`: what `GET /candidates` and
    /// `GET /schedule` answer.
    pub(super) fn shares_events(&self) -> Vec<u8> {
        let mut out = sse(EVENT_CANDIDATES, &self.candidates().body);
        out.extend(sse(EVENT_SCHEDULE, &self.schedule().body));
        out
    }

    /// `GET /events`: a reconnection delay for the browser, then every
    /// event once, then the stream.
    pub(super) fn events_response(&self) -> Response {
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
