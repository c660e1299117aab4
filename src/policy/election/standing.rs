//! The classes' weights under a standing ([`weights`]), and
//! `Election::refresh`, which follows the standing when it changes.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Class, Election, UNAFFILIATED};
use crate::ballot::standing_leader;
use crate::election::view::{Mode, Standing};

/// The weights of the classes under `standing`: one per candidate, plus
/// [`UNAFFILIATED`].
pub fn weights(standing: &Standing, mode: Mode, min_share: f64) -> BTreeMap<String, u64> {
    let mut w: BTreeMap<String, u64> = standing
        .candidates
        .iter()
        .map(|c| (c.name.clone(), 1))
        .collect();
    w.insert(UNAFFILIATED.to_string(), 1);
    match mode {
        Mode::Proportional => {
            for c in &standing.candidates {
                w.insert(c.name.clone(), c.votes.saturating_add(1));
            }
        }
        Mode::Winner => {
            if let Some(leader) = standing_leader(standing) {
                // Each of the k other classes weighs 1 and must keep
                // min_share: leader / (leader + k) <= 1 - k * min_share.
                let k = (w.len() - 1) as f64;
                let m = min_share.clamp(0.001, 1.0 / (k + 1.0));
                // (1 - 2 * 0.2) / 0.2 is 2.9999999999999996 in floating
                // point: round away the error before taking the floor, or
                // the leader weighs one less and losers get more.
                let lead = ((1.0 - k * m) / m + 1e-9).floor().max(1.0) as u64;
                w.insert(leader.to_string(), lead);
            }
        }
    }
    w
}

impl Election {
    /// Follows the standing: new weights, and every class restarts from the
    /// current virtual time (held tasks are tagged again, in their order).
    /// Returns the classes whose part of the CPU shrank, when some did.
    pub(super) fn refresh(&mut self) -> Vec<Arc<str>> {
        let standing = self.board.standing.load();
        if self.generation == Some(standing.generation) {
            return Vec::new();
        }
        let first = self.generation.is_none();
        self.generation = Some(standing.generation);
        let standing = if self.ignore_votes {
            let mut blind = Standing::clone(&standing);
            blind.candidates.iter_mut().for_each(|c| c.votes = 0);
            Arc::new(blind)
        } else {
            Arc::clone(&standing)
        };
        let weights = weights(&standing, self.mode, self.min_share);
        let leader = match self.mode {
            Mode::Winner => standing_leader(&standing).map(str::to_string),
            Mode::Proportional => None,
        };
        let part = |w: &BTreeMap<String, u64>, name: &str| {
            let total: u64 = w.values().sum();
            w.get(name).copied().unwrap_or(1) as f64 / total.max(1) as f64
        };
        let before: BTreeMap<String, u64> =
            self.classes.iter().map(|(n, c)| (n.to_string(), c.weight)).collect();
        let shrunk: Vec<Arc<str>> = if first {
            Vec::new()
        } else {
            self.classes
                .keys()
                .filter(|n| part(&weights, n) < part(&before, n) - 1e-9)
                .cloned()
                .collect()
        };
        self.classes.clear();
        for (name, weight) in weights {
            let capped = self.cap && leader.as_ref().is_some_and(|l| *l != name);
            self.classes.insert(
                Arc::from(name.as_str()),
                Class {
                    weight,
                    vclock: self.vnow,
                    capped,
                },
            );
        }
        let mut order: Vec<(u64, u64, i32, u64)> = self.held.drain().map(|Reverse(k)| k).collect();
        order.sort_unstable();
        for (_, _, pid, _) in order {
            if let Some((_, class)) = self.tasks.get(&pid) {
                let class = class.clone();
                self.hold(pid, &class);
            }
        }
        shrunk
    }
}
