//! The candidates file: the candidates to create at start-up.
//!
//! TOML (`.toml`):
//!
//! ```toml
//! [[candidate]]
//! name = "blue"              # 1..=64 of A-Z a-z 0-9 _ . -
//! comm = ["stress-ng"]       # command names (at most 15 bytes each)
//! pids = [1234]              # processes (all their threads)
//! cgroups = ["/demo/blue"]   # cgroup v2 paths, and everything below them
//! uids = [1000]              # may join blue by comm or exec marker
//!
//! [[candidate]]
//! name = "green"             # every list is optional
//! ```
//!
//! JSON (`.json`), the same shape:
//! `{"candidate": [{"name": "blue", "comm": ["stress-ng"], "pids": [1234], "cgroups": ["/demo/blue"]}]}`.
//!
//! Unknown keys are errors, so a typo does not silently drop a rule.
//! Candidates keep the file's order. A candidate that already exists in the
//! votes journal keeps its journaled members.
//!
//! `uids` are not membership rules and are not journaled: they say whose
//! processes, besides those of the uid scx_ballot runs as and of
//! `--member-uid`, a `comm` rule or the exec marker may make members of
//! that candidate (by name, for as long as scx_ballot runs).

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::{BallotError, validate_member, validate_name};
use crate::election::view::Member;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    candidate: Vec<CandidateEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateEntry {
    name: String,
    #[serde(default)]
    comm: Vec<String>,
    #[serde(default)]
    pids: Vec<i32>,
    #[serde(default)]
    cgroups: Vec<String>,
    #[serde(default)]
    uids: Vec<u32>,
}

/// What a candidates file says: `(name, members)` pairs in file order, and
/// the `(name, uids)` trusted per candidate (see the module docs).
pub type CandidatesFile = (Vec<(String, Vec<Member>)>, Vec<(String, Vec<u32>)>);

/// Reads a candidates file (TOML or JSON, by extension; format in the
/// module docs) into `(name, members)` pairs in file order. Errors name the
/// file and, for syntax errors, the line.
pub fn load_candidates(path: &Path) -> anyhow::Result<Vec<(String, Vec<Member>)>> {
    load_candidates_file(path).map(|(candidates, _)| candidates)
}

/// [`load_candidates`], with the uids trusted per candidate.
pub fn load_candidates_file(path: &Path) -> anyhow::Result<CandidatesFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading candidates file {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let file: FileShape = match ext.as_deref() {
        Some("toml") => toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| line_of(&text, s.start));
            anyhow::anyhow!("{}{}: {}", path.display(), at_line(line), e.message())
        })?,
        Some("json") => serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}{}: {e}", path.display(), at_line(Some(e.line()))))?,
        _ => bail!("candidates file {}: expected a .toml or .json extension", path.display()),
    };
    parse_entries(file.candidate).with_context(|| format!("candidates file {}", path.display()))
}

fn parse_entries(entries: Vec<CandidateEntry>) -> anyhow::Result<CandidatesFile> {
    let mut out: Vec<(String, Vec<Member>)> = Vec::with_capacity(entries.len());
    let mut trusted = Vec::new();
    for entry in entries {
        validate_name(&entry.name)?;
        if out.iter().any(|(n, _)| *n == entry.name) {
            return Err(BallotError::DuplicateCandidate(entry.name).into());
        }
        let members: Vec<Member> = (entry.comm.into_iter().map(|comm| Member::Comm { comm }))
            .chain(entry.pids.into_iter().map(|pid| Member::Pid {
                pid,
                start_time: None,
                boot_id: None,
            }))
            .chain(entry.cgroups.into_iter().map(|path| Member::Cgroup { path }))
            .collect();
        for member in &members {
            validate_member(member).with_context(|| format!("candidate {:?}", entry.name))?;
        }
        if entry.uids.contains(&u32::MAX) {
            bail!(
                "candidate {:?}: uid {} is no user's (it means \"no uid\")",
                entry.name,
                u32::MAX
            );
        }
        if !entry.uids.is_empty() {
            trusted.push((entry.name.clone(), entry.uids));
        }
        out.push((entry.name, members));
    }
    Ok((out, trusted))
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(": line {l}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ballot::store::tests::TempDir;

    #[test]
    fn toml_and_json_give_the_same_candidates() {
        let dir = TempDir::new("candidates-same");
        let toml = dir.path().join("c.toml");
        std::fs::write(
            &toml,
            "[[candidate]]\nname = \"blue\"\ncomm = [\"stress-ng\"]\npids = [1234]\n\
             cgroups = [\"/demo/blue\"]\n\n[[candidate]]\nname = \"green\"\n",
        )
        .expect("write");
        let json = dir.path().join("c.JSON");
        std::fs::write(
            &json,
            r#"{"candidate": [{"name": "blue", "comm": ["stress-ng"], "pids": [1234],
                "cgroups": ["/demo/blue"]}, {"name": "green"}]}"#,
        )
        .expect("write");
        let want = vec![
            (
                "blue".to_owned(),
                vec![
                    Member::Comm { comm: "stress-ng".into() },
                    Member::Pid { pid: 1234, start_time: None, boot_id: None },
                    Member::Cgroup { path: "/demo/blue".into() },
                ],
            ),
            ("green".to_owned(), vec![]),
        ];
        assert_eq!(load_candidates(&toml).expect("toml loads"), want);
        assert_eq!(load_candidates(&json).expect("json loads"), want);
    }

    #[test]
    fn uids_are_trusted_per_candidate_and_are_no_members() {
        let dir = TempDir::new("candidates-uids");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[candidate]]\nname = \"blue\"\ncomm = [\"x\"]\nuids = [1000, 65534]\n\n\
             [[candidate]]\nname = \"green\"\n",
        )
        .expect("write");
        let (candidates, uids) = load_candidates_file(&path).expect("loads");
        assert_eq!(
            candidates,
            [("blue".into(), vec![Member::Comm { comm: "x".into() }]), ("green".into(), vec![])]
        );
        assert_eq!(uids, [("blue".to_string(), vec![1000, 65534])]);
        assert_eq!(load_candidates(&path).expect("loads"), candidates);
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        let dir = TempDir::new("candidates-errors");
        let cases = [
            ("bad.toml", "[[candidate]]\nname = blue\ncomm = [\"a\"]\n", "line 2"),
            ("typo.toml", "[[candidate]]\nname = \"blue\"\n\ncoms = [\"a\"]\n", "line 4"),
            ("bad.json", "{\"candidate\": [\n{\"name\": \"blue\",}\n]}", "line 2"),
            ("name.toml", "[[candidate]]\nname = \"blue team\"\n", "invalid candidate name"),
            (
                "dup.toml",
                "[[candidate]]\nname = \"a\"\n[[candidate]]\nname = \"a\"\n",
                "already exists",
            ),
            (
                "comm.toml",
                "[[candidate]]\nname = \"a\"\ncomm = [\"sixteen-bytes-xx\"]\n",
                "comm must be",
            ),
            (
                "cg.json",
                r#"{"candidate": [{"name": "a", "cgroups": ["demo"]}]}"#,
                "must start with /",
            ),
            ("pid.toml", "[[candidate]]\nname = \"a\"\npids = [0]\n", "pid must be positive"),
            ("uid.toml", "[[candidate]]\nname = \"a\"\nuids = [-1]\n", "line 3"),
            ("nouid.toml", "[[candidate]]\nname = \"a\"\nuids = [4294967295]\n", "no user's"),
            ("c.yaml", "candidate: []\n", "expected a .toml or .json"),
        ];
        for (name, text, want) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let err = format!("{:#}", load_candidates(&path).expect_err(name));
            assert!(err.contains(name), "{name}: {err}");
            assert!(err.contains(want), "{name}: {err}");
        }
        let missing = dir.path().join("missing.toml");
        let err = format!("{:#}", load_candidates(&missing).expect_err("missing"));
        assert!(err.contains("missing.toml"), "{err}");
    }
}
