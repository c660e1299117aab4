//! Tests of the dependency installer: dpkg-query output, apt sources, mirror choice.

use super::apt::parse_dpkg_query;
use super::sources::{parse_deb822, parse_one_line, pick_mirror, backports_source};

const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

#[test]
fn deb822_mirror_skips_comments_and_security() {
    let sources = parse_deb822(DEB822);
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0].suites, ["bookworm", "bookworm-updates"]);
    assert_eq!(
        pick_mirror(&sources, Some("bookworm")).as_deref(),
        Some("http://mirror.example/debian")
    );
}

#[test]
fn deb822_security_first_still_picks_the_main_mirror() {
    let text = "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                Types: deb deb-src\nURIs: http://a.example/debian http://b.example/debian\nSuites: bookworm\nComponents: main contrib\n";
    assert_eq!(
        pick_mirror(&parse_deb822(text), Some("bookworm")).as_deref(),
        Some("http://a.example/debian")
    );
}

#[test]
fn deb822_disabled_and_source_only_stanzas_are_ignored() {
    let text = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n\
                Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n";
    assert!(parse_deb822(text).is_empty());
}

#[test]
fn third_party_repositories_are_not_the_mirror() {
    let text = "Types: deb\nURIs: https://vendor.example/linux/debian\nSuites: bookworm\nComponents: stable\n\n\
                Types: deb\nURIs: http://other.example/apt\nSuites: focal\nComponents: main\n\n\
                Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n";
    assert_eq!(
        pick_mirror(&parse_deb822(text), Some("bookworm")).as_deref(),
        Some("http://mirror.example/debian")
    );
}

#[test]
fn one_line_sources() {
    let text = "\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://sec.example/debian-security bookworm-security main
deb http://mirror.example/debian/ bookworm main contrib # trailing comment
";
    let sources = parse_one_line(text);
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[1].components, ["main", "contrib"]);
    assert_eq!(
        pick_mirror(&sources, Some("bookworm")).as_deref(),
        Some("http://mirror.example/debian")
    );
}

#[test]
fn no_mirror_when_nothing_fits() {
    assert_eq!(
        pick_mirror(
            &parse_one_line("deb-src http://x/debian bookworm main\n"),
            None
        ),
        None
    );
    assert_eq!(pick_mirror(&[], Some("bookworm")), None);
}

#[test]
fn dpkg_query_status() {
    let out = "clang-19\tinstall ok installed\nudev\tdeinstall ok config-files\nlibelf-dev:amd64\tinstall ok installed\n";
    let set = parse_dpkg_query(out);
    assert!(set.contains("clang-19"));
    assert!(set.contains("libelf-dev"));
    assert!(!set.contains("udev"));
}

#[test]
fn backports_stanza_parses_back() {
    let text = backports_source("http://mirror.example/debian", "bookworm-backports");
    let parsed = parse_deb822(&text);
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].suites, ["bookworm-backports"]);
}
