//! The system's apt sources (deb822 and one-line formats), the mirror
//! picked from them, and the backports source written from it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{DEBIAN_KEYRING, os_codename};

/// One `deb` entry of the apt sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// Parses deb822 `.sources` text: every enabled stanza whose `Types:`
/// include `deb`, one entry per URI.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut stanza: Vec<(String, String)> = Vec::new();
    let flush = |stanza: &mut Vec<(String, String)>, out: &mut Vec<AptSource>| {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| v != "no");
        if enabled && field("Types").iter().any(|t| t == "deb") {
            for uri in field("URIs") {
                out.push(AptSource {
                    uri,
                    suites: field("Suites"),
                    components: field("Components"),
                });
            }
        }
        stanza.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut stanza, &mut out);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            // A continuation line (multi-line fields such as Signed-By blocks).
            if let Some((_, v)) = stanza.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut stanza, &mut out);
    out
}

/// Parses one-line `sources.list` text: `deb [options] URI suite comp...`
/// lines (`deb-src` and comments are skipped).
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
        });
    }
    out
}

/// Picks the Debian mirror among `sources`: the first entry with a `main`
/// component and a suite that is not a security suite, preferring suites of
/// the host's release (`codename`, `codename-updates`, ...) so a third-party
/// repository is not mistaken for the mirror. Trailing slashes are dropped.
pub fn pick_mirror(sources: &[AptSource], codename: Option<&str>) -> Option<String> {
    let usable = |s: &&AptSource| {
        s.components.iter().any(|c| c == "main")
            && !s.uri.contains("security")
            && s.suites.iter().any(|suite| !is_security_suite(suite))
    };
    let of_release = |s: &&AptSource| {
        codename.is_some_and(|c| {
            s.suites
                .iter()
                .any(|suite| suite == c || suite.starts_with(&format!("{c}-")))
        })
    };
    sources
        .iter()
        .filter(usable)
        .find(of_release)
        .or_else(|| sources.iter().find(usable))
        .map(|s| s.uri.trim_end_matches('/').to_string())
}

fn is_security_suite(suite: &str) -> bool {
    suite.ends_with("-security") || suite.ends_with("/updates")
}

/// Every `deb` entry the host's apt knows: /etc/apt/sources.list.d/*.sources
/// (deb822), /etc/apt/sources.list and /etc/apt/sources.list.d/*.list.
pub fn system_sources() -> Result<Vec<AptSource>> {
    let mut out = Vec::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sources"))
    {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        out.extend(parse_deb822(&text));
    }
    let main_list = PathBuf::from("/etc/apt/sources.list");
    let lists = std::iter::once(&main_list).chain(
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "list")),
    );
    for path in lists {
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(parse_one_line(&text));
        }
    }
    Ok(out)
}

/// The Debian mirror URI this machine already uses, read from its apt
/// sources (never hard-coded).
pub fn system_mirror() -> Result<String> {
    let sources = system_sources()?;
    pick_mirror(&sources, os_codename().as_deref()).context(
        "no Debian mirror found in /etc/apt/sources.list{,.d/}: \
         the default kernel and the backports QEMU come from Debian's archive",
    )
}

/// Whether some apt source of this machine carries `suite`.
pub(super) fn system_has_suite(suite: &str) -> Result<bool> {
    Ok(system_sources()?
        .iter()
        .any(|s| s.suites.iter().any(|x| x == suite)))
}

/// A deb822 stanza for `suite main` on `mirror`, signed by Debian's keyring.
pub fn backports_source(mirror: &str, suite: &str) -> String {
    format!(
        "Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\nSigned-By: {DEBIAN_KEYRING}\n"
    )
}
