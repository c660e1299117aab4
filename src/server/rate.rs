//! The vote rate limiter (`--vote-interval-ms`), per voter and per client
//! address, with bounded memory.

use super::*;

/// Voters, and apart from them client addresses, that each rate limiter tracks at most: with more
/// distinct ones inside one interval, new ones are refused (429) until some expire.
pub(super) const MAX_RATE_LIMITED: usize = 100_000;

/// When each voter last voted, for `--vote-interval-ms`. Expiry is O(1)
/// amortised: voters are kept in the order of their last vote as well, and
/// every admission drops the expired ones from the front.
pub(super) struct RateLimiter {
    last: HashMap<String, Instant>,
    /// (time, voter) in time order; an entry is stale when the voter voted
    /// again later (its time in `last` differs).
    order: std::collections::VecDeque<(Instant, String)>,
    cap: usize,
}

impl RateLimiter {
    pub(super) fn new(cap: usize) -> Self {
        RateLimiter { last: HashMap::new(), order: std::collections::VecDeque::new(), cap }
    }

    /// Records a vote of `voter` at `now` if the interval allows it; returns
    /// the voter's previous time, for [`RateLimiter::undo`].
    pub(super) fn admit(
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
    pub(super) fn undo(&mut self, voter: &str, at: Instant, previous: Option<Instant>) {
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
    pub(super) fn len(&self) -> usize {
        self.last.len()
    }

    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.order.len()
    }
}
