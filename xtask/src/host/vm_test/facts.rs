//! What a guest case recorded: `key=value` lines, read on the host, where
//! every judgement is made.

use std::collections::BTreeMap;
use std::path::Path;

/// Facts one case recorded, by key.
#[derive(Debug, Default, Clone)]
pub struct CaseFacts(BTreeMap<String, String>);

impl CaseFacts {
    pub fn parse(text: &str) -> Self {
        CaseFacts(
            text.lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    pub fn read(dir: &Path) -> Self {
        Self::parse(&std::fs::read_to_string(dir.join("result")).unwrap_or_default())
    }

    #[cfg(test)]
    pub fn set(&mut self, key: &str, value: &str) {
        self.0.insert(key.to_string(), value.to_string());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn num(&self, key: &str) -> Option<i64> {
        self.get(key)?.parse().ok()
    }

    /// The SCHED_EXT burner's CPU time as a share of the window.
    pub fn ext_share(&self) -> Option<f64> {
        let window = self.num("window_ns")?;
        let ext = self.num("ext_cpu_ns")?;
        (window > 0).then(|| ext as f64 / window as f64)
    }
}


/// Collects the problems of one case: each `expect*` call that does not hold
/// adds a line.
pub struct Verdict<'a> {
    facts: &'a CaseFacts,
    pub problems: Vec<String>,
}

impl<'a> Verdict<'a> {
    pub fn new(facts: &'a CaseFacts) -> Self {
        Verdict { facts, problems: Vec::new() }
    }

    /// `key` must equal `want`; `what` says what it means when it does not.
    pub fn expect(&mut self, key: &str, want: &str, what: &str) -> &mut Self {
        match self.facts.get(key) {
            Some(v) if v == want => {}
            Some(v) => self.problems.push(format!("{what}: {key} is {v:?}, expected {want:?}")),
            None => self.problems.push(format!("{what}: {key} was not recorded")),
        }
        self
    }

    /// `key` must be a number within `range`.
    pub fn expect_in(&mut self, key: &str, range: std::ops::RangeInclusive<i64>, what: &str) -> &mut Self {
        match self.facts.num(key) {
            Some(v) if range.contains(&v) => {}
            Some(v) => self.problems.push(format!("{what}: {key} is {v}, expected {range:?}")),
            None => self.problems.push(format!("{what}: {key} was not recorded")),
        }
        self
    }

    pub fn fail(&mut self, problem: String) -> &mut Self {
        self.problems.push(problem);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_without_equals_are_ignored_and_values_trimmed() {
        let f = CaseFacts::parse("a=1\nnoise\nb = x y \n");
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.get("b"), Some("x y"));
        assert_eq!(f.num("b"), None);
    }

    #[test]
    fn a_verdict_collects_every_miss() {
        let f = CaseFacts::parse("state=enabled\nn=5\n");
        let mut v = Verdict::new(&f);
        v.expect("state", "enabled", "ok")
            .expect("state", "disabled", "wrong state")
            .expect_in("n", 1..=4, "too many")
            .expect_in("missing", 0..=1, "absent");
        assert_eq!(v.problems.len(), 3, "{:?}", v.problems);
    }
}
