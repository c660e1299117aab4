//! `kernel-config/kernel.lock`: the kernel the snapshots were recorded on,
//! by Debian package name, version and SHA-256 of the `.deb`.
//!
//! `cargo xtask kernel --update` rewrites it with the newest kernel Debian
//! serves. Every other command boots exactly the locked kernel when it can
//! be had (checksums checked); when it cannot (Debian keeps only the newest
//! backport), it boots the newest and [`Kernel::differs`] says so, loudly,
//! in the run's summary and in every snapshot failure.
//!
//! [`Kernel::differs`]: crate::host::kernel::Kernel::differs

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::project_root;

/// The lock file, relative to the workspace root.
pub const LOCK: &str = "kernel-config/kernel.lock";

/// One package of a kernel: name, version and the `.deb`'s SHA-256 (empty
/// when not known, as in a tree unpacked before checksums were kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// The locked kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLock {
    /// The kernel release (`uname -r` in the guest).
    pub release: String,
    pub packages: Vec<Package>,
}

impl Package {
    /// A line of a tree's completion marker or of the lock: `name version
    /// [sha256]`.
    pub fn parse_line(line: &str) -> Option<Package> {
        let mut it = line.split_whitespace();
        let name = it.next()?.to_string();
        let version = it.next()?.to_string();
        let sha256 = it.next().unwrap_or("").to_string();
        Some(Package { name, version, sha256 })
    }

    pub fn line(&self) -> String {
        format!("{} {} {}", self.name, self.version, self.sha256).trim_end().to_string()
    }
}

/// The packages listed in a completion marker.
pub fn parse_packages(text: &str) -> Vec<Package> {
    text.lines().filter_map(Package::parse_line).collect()
}

impl KernelLock {
    pub fn path() -> PathBuf {
        project_root().join(LOCK)
    }

    /// The committed lock; None when the file is missing.
    pub fn read() -> Result<Option<KernelLock>> {
        match std::fs::read_to_string(Self::path()) {
            Ok(text) => Self::parse(&text).map(Some).with_context(|| format!("reading {LOCK}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {LOCK}")),
        }
    }

    pub fn parse(text: &str) -> Result<KernelLock> {
        let mut release = None;
        let mut packages = Vec::new();
        for (i, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(' ') {
                Some(("release", r)) => release = Some(r.trim().to_string()),
                Some(("package", rest)) => match Package::parse_line(rest) {
                    Some(p) if p.sha256.len() == 64 && p.sha256.chars().all(|c| c.is_ascii_hexdigit()) => {
                        packages.push(p)
                    }
                    _ => bail!("line {i}: expected `package NAME VERSION SHA256`, found {line:?}"),
                },
                _ => bail!("line {i}: expected `release ...` or `package ...`, found {line:?}"),
            }
        }
        let release = release.context("no `release` line")?;
        if packages.is_empty() {
            bail!("no `package` line");
        }
        Ok(KernelLock { release, packages })
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# The kernel the VM snapshots were recorded on (Debian packages, with the\n\
             # SHA-256 of each .deb). Runs boot exactly this one while Debian serves it;\n\
             # otherwise the newest, and they say so. Rewritten by\n\
             # `cargo xtask kernel --update` (then re-record the snapshots on it).\n",
        );
        out += &format!("release {}\n", self.release);
        for p in &self.packages {
            out += &format!("package {}\n", p.line());
        }
        out
    }

    /// Whether an unpacked tree (its release and packages) is this kernel:
    /// the same release, every locked package at its version, and the same
    /// checksum where the tree knows it.
    pub fn matches(&self, release: &str, packages: &[Package]) -> bool {
        release == self.release
            && self.packages.iter().all(|want| {
                packages.iter().any(|have| {
                    have.name == want.name
                        && have.version == want.version
                        && (have.sha256.is_empty() || have.sha256 == want.sha256)
                })
            })
    }

    /// The lock's kernel in one phrase.
    pub fn describe(&self) -> String {
        let version = self.packages.first().map(|p| p.version.as_str()).unwrap_or("?");
        format!("{} ({version})", self.release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn lock() -> KernelLock {
        KernelLock {
            release: "7.3.4+deb13-cloud-amd64".into(),
            packages: vec![
                Package { name: "linux-image-7.3.4+deb13-cloud-amd64".into(), version: "7.3.4-1~bpo13+1".into(), sha256: SHA.into() },
                Package { name: "linux-binary-7.3.4+deb13-cloud-amd64".into(), version: "7.3.4-1~bpo13+1".into(), sha256: SHA.into() },
            ],
        }
    }

    #[test]
    fn render_and_parse_round_trip() {
        let l = lock();
        assert_eq!(KernelLock::parse(&l.render()).unwrap(), l);
    }

    #[test]
    fn malformed_locks_are_refused() {
        assert!(KernelLock::parse("").is_err());
        assert!(KernelLock::parse("release 7.3\n").is_err());
        assert!(KernelLock::parse("release 7.3\npackage a 1\n").is_err(), "no checksum");
        assert!(KernelLock::parse("release 7.3\npackage a 1 xyz\n").is_err(), "bad checksum");
        assert!(KernelLock::parse("kernel 7.3\n").is_err());
    }

    #[test]
    fn a_tree_matches_by_release_versions_and_known_checksums() {
        let l = lock();
        let same: Vec<Package> = l.packages.clone();
        assert!(l.matches(&l.release, &same));
        let unknown_sums: Vec<Package> = same.iter().map(|p| Package { sha256: String::new(), ..p.clone() }).collect();
        assert!(l.matches(&l.release, &unknown_sums));
        let other_sum: Vec<Package> = same.iter().map(|p| Package { sha256: "f".repeat(64), ..p.clone() }).collect();
        assert!(!l.matches(&l.release, &other_sum));
        let newer: Vec<Package> = same.iter().map(|p| Package { version: "7.3.5-1".into(), ..p.clone() }).collect();
        assert!(!l.matches(&l.release, &newer));
        assert!(!l.matches("7.4.0+deb13-cloud-amd64", &same));
        assert!(!l.matches(&l.release, &same[..1]));
    }

    #[test]
    fn marker_lines_with_and_without_checksums() {
        let p = parse_packages("a 1\nb 2 abc\n\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].sha256, "");
        assert_eq!(p[1].line(), "b 2 abc");
        assert_eq!(p[0].line(), "a 1");
    }

    #[test]
    fn the_committed_lock_parses() {
        KernelLock::read().unwrap().expect("kernel-config/kernel.lock is committed");
    }
}
