//! The journal's tests: round trips, repairs at open, refusals.

use super::*;
use crate::ballot::store::tests::TempDir;
use crate::election::view::Member;

fn vote(candidate: &str, voter: &str) -> Event {
    Event::Vote { candidate: candidate.into(), voter: voter.into() }
}

fn some_events() -> Vec<Event> {
    vec![
        Event::CreateCandidate {
            name: "blue".into(),
            members: vec![Member::Pid { pid: 7, start_time: Some(99), boot_id: None }],
        },
        vote("blue", "ana"),
        vote("blue", "line\nbreak \"quoted\""),
        Event::ResetVotes,
    ]
}

/// A record line with a good checksum for `json`.
fn record(json: &str) -> String {
    format!("{:08x} {json}\n", crc32(json.as_bytes()))
}

fn header() -> String {
    format!("{HEADER_PREFIX}{FORMAT_MAJOR}.{FORMAT_MINOR}\n")
}

/// A journal at `path` holding `votes` for blue, closed again.
/// The file's text up to its reserved space (NUL bytes to the end, checked).
fn on_disk(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read");
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    assert!(bytes[end..].iter().all(|&b| b == 0), "only NUL bytes after the records");
    String::from_utf8(bytes[..end].to_vec()).expect("text")
}

fn journal_with(path: &Path, votes: &[&str]) {
    let (mut journal, _) = Journal::open(path).expect("open");
    for v in votes {
        journal.append(&vote("blue", v)).expect("append");
    }
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    let line = encode(&vote("blue", "ana"));
    assert_eq!(line, "1478d423 {\"event\":\"vote\",\"candidate\":\"blue\",\"voter\":\"ana\"}\n");
    assert_eq!(crc32(b""), 0);
}

#[test]
fn records_round_trip_across_reopen() {
    let dir = TempDir::new("journal-round-trip");
    let path = dir.path().join("nested/folder/votes.journal");
    let (mut journal, replay) = Journal::open(&path).expect("open creates");
    assert_eq!(replay, Replay::default());
    for e in some_events() {
        journal.append(&e).expect("append");
    }
    drop(journal);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.starts_with(&header()), "a header names the format: {text}");
    assert_eq!(text.lines().count(), 5, "the header, then one line per record: {text}");
    let (_, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, some_events());
    assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
}

#[test]
fn a_journal_without_a_header_is_read_and_kept_as_it_is() {
    let dir = TempDir::new("journal-legacy");
    let path = dir.path().join("votes.journal");
    let old = format!("{}{}", encode(&vote("blue", "a")), encode(&vote("blue", "b")));
    std::fs::write(&path, &old).expect("write");
    let (mut journal, replay) = Journal::open(&path).expect("open");
    assert_eq!(replay.events, vec![vote("blue", "a"), vote("blue", "b")]);
    assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
    journal.append(&vote("blue", "c")).expect("append");
    assert_eq!(on_disk(&path), format!("{old}{}", encode(&vote("blue", "c"))));
}

#[test]
fn a_torn_last_record_is_cut_off_and_appends_continue() {
    let dir = TempDir::new("journal-torn");
    let path = dir.path().join("votes.journal");
    journal_with(&path, &["a", "b"]);
    let full = std::fs::read(&path).expect("read");
    let second_start = full.len() - encode(&vote("blue", "b")).len();
    // A crash in the middle of the second record.
    std::fs::write(&path, &full[..second_start + 20]).expect("truncate mid-line");

    let (mut journal, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, vec![vote("blue", "a")]);
    assert_eq!(replay.warnings.len(), 1, "{:?}", replay.warnings);
    assert!(replay.warnings[0].contains("line 3: torn record"), "{:?}", replay.warnings);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), second_start as u64);
    journal.append(&vote("blue", "c")).expect("append after repair");
    drop(journal);
    let (_, replay) = Journal::open(&path).expect("reopen again");
    assert_eq!(replay.events, vec![vote("blue", "a"), vote("blue", "c")]);
    assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
}

#[test]
fn a_journal_torn_in_its_first_record_opens_empty() {
    let dir = TempDir::new("journal-torn-first");
    let path = dir.path().join("votes.journal");
    let line = encode(&vote("blue", "a"));
    std::fs::write(&path, &line[..15]).expect("write");
    let (_, replay) = Journal::open(&path).expect("open");
    assert!(replay.events.is_empty());
    assert_eq!(std::fs::read_to_string(&path).expect("read"), header());
}

#[test]
fn a_bad_record_in_the_middle_is_skipped_and_kept() {
    let dir = TempDir::new("journal-middle");
    let path = dir.path().join("votes.journal");
    journal_with(&path, &["a", "b", "c"]);
    let text = std::fs::read_to_string(&path).expect("read");
    let damaged = text.replacen("\"voter\":\"b\"", "\"voter\":\"x\"", 1);
    assert_ne!(damaged, text);
    std::fs::write(&path, &damaged).expect("write");

    let (_, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, vec![vote("blue", "a"), vote("blue", "c")]);
    assert_eq!(replay.warnings.len(), 1, "{:?}", replay.warnings);
    assert!(replay.warnings[0].contains("line 3: checksum mismatch"), "{:?}", replay.warnings);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), damaged, "middle records stay");
}

#[test]
fn records_with_a_bad_checksum_at_the_end_are_cut_back_to_the_last_good_one() {
    let dir = TempDir::new("journal-bad-tail");
    let path = dir.path().join("votes.journal");
    journal_with(&path, &["a"]);
    let good = std::fs::read_to_string(&path).expect("read");
    let bad = encode(&vote("blue", "b")).replacen("\"b\"", "\"x\"", 1);
    std::fs::write(&path, format!("{good}{bad}{bad}")).expect("write");

    let (_, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, vec![vote("blue", "a")]);
    assert_eq!(replay.warnings.len(), 2, "{:?}", replay.warnings);
    assert!(replay.warnings[0].contains("line 3: checksum mismatch"), "{:?}", replay.warnings);
    assert!(replay.warnings[1].contains("line 4: checksum mismatch"), "{:?}", replay.warnings);
    assert!(replay.warnings[1].contains("cut off"), "{:?}", replay.warnings);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), good);
}

#[test]
fn records_this_version_cannot_read_are_kept() {
    let dir = TempDir::new("journal-newer-records");
    let path = dir.path().join("votes.journal");
    journal_with(&path, &["a"]);
    let extra_field = record(r#"{"event":"vote","candidate":"blue","voter":"b","weight":2}"#);
    let unknown_event = record(r#"{"event":"recount","candidate":"blue"}"#);
    let before = format!(
        "{}{extra_field}{unknown_event}",
        std::fs::read_to_string(&path).expect("read")
    );
    std::fs::write(&path, &before).expect("write");

    let (mut journal, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, vec![vote("blue", "a")]);
    assert_eq!(replay.warnings.len(), 2, "{:?}", replay.warnings);
    for (w, line) in replay.warnings.iter().zip([3, 4]) {
        assert!(w.contains(&format!("line {line}: a record this version cannot read")), "{w}");
        assert!(w.contains("kept"), "{w}");
    }
    assert_eq!(on_disk(&path), before, "nothing was cut");
    journal.append(&vote("blue", "c")).expect("append");
    assert_eq!(on_disk(&path), format!("{before}{}", encode(&vote("blue", "c"))));
}

#[test]
fn lines_that_are_not_records_are_never_cut() {
    let dir = TempDir::new("journal-foreign-tail");
    let path = dir.path().join("votes.journal");
    journal_with(&path, &["a"]);
    let with_tail =
        format!("{}a note someone added\nno newline", std::fs::read_to_string(&path).unwrap());
    std::fs::write(&path, &with_tail).expect("write");
    let (_, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, vec![vote("blue", "a")]);
    assert_eq!(replay.warnings.len(), 2, "{:?}", replay.warnings);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), with_tail);
}

#[test]
fn a_file_that_is_not_a_journal_is_refused_and_left_untouched() {
    let dir = TempDir::new("journal-not-one");
    let candidates = "# candidates\n[[candidate]]\nname = \"blue\"\ncomm = [\"stress-ng\"]\n";
    for (name, content, kind) in [
        ("candidates.toml", candidates, "TOML"),
        ("notes.txt", "just some words\nand more\n", "text"),
        ("one-line", "no newline at all", "text"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let err = Journal::open(&path).expect_err("not a journal");
        let msg = err.to_string();
        assert!(msg.contains("is not a scx_ballot votes journal"), "{msg}");
        assert!(msg.contains(kind), "{msg}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), content, "{name} untouched");
    }
}

#[test]
fn a_symbolic_link_is_refused_and_its_target_untouched() {
    let dir = TempDir::new("journal-symlink");
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, "precious\n").expect("write");
    let link = dir.path().join("votes.journal");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let err = Journal::open(&link).expect_err("a symlink is refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "precious\n");
    // Even a link to a real journal.
    let real = dir.path().join("real.journal");
    journal_with(&real, &["a"]);
    let link2 = dir.path().join("link.journal");
    std::os::unix::fs::symlink(&real, &link2).expect("symlink");
    assert!(Journal::open(&link2).is_err());
}

#[test]
fn a_second_open_of_the_same_journal_is_refused_while_the_first_holds_it() {
    let dir = TempDir::new("journal-lock");
    let path = dir.path().join("votes.journal");
    let (mut first, _) = Journal::open(&path).expect("open");
    first.append(&vote("blue", "a")).expect("append");
    let before = std::fs::read(&path).expect("read");
    let err = Journal::open(&path).expect_err("locked");
    assert!(err.to_string().contains("in use by another scx_ballot"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), before, "the refused open wrote nothing");
    first.append(&vote("blue", "b")).expect("the holder goes on");
    drop(first);
    let (_, replay) = Journal::open(&path).expect("free again");
    assert_eq!(replay.events, vec![vote("blue", "a"), vote("blue", "b")]);
}

#[test]
fn a_newer_major_version_is_refused_and_a_newer_minor_one_read() {
    let dir = TempDir::new("journal-version");
    let path = dir.path().join("votes.journal");
    let rec = encode(&vote("blue", "a"));
    let newer = format!("{HEADER_PREFIX}{}.0\n{rec}", FORMAT_MAJOR + 1);
    std::fs::write(&path, &newer).expect("write");
    let err = Journal::open(&path).expect_err("newer major");
    assert!(err.to_string().contains("newer scx_ballot"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), newer);

    let minor = format!("{HEADER_PREFIX}{FORMAT_MAJOR}.{}\n{rec}", FORMAT_MINOR + 7);
    std::fs::write(&path, &minor).expect("write");
    let (_, replay) = Journal::open(&path).expect("newer minor");
    assert_eq!(replay.events, vec![vote("blue", "a")]);
}

#[test]
fn an_empty_or_missing_file_replays_nothing() {
    let dir = TempDir::new("journal-empty");
    let path = dir.path().join("votes.journal");
    std::fs::write(&path, "").expect("create empty");
    let (_, replay) = Journal::open(&path).expect("open empty");
    assert_eq!(replay, Replay::default());
    let missing = dir.path().join("missing.journal");
    let (_, replay) = Journal::open(&missing).expect("open missing");
    assert_eq!(replay, Replay::default());
    assert!(missing.exists());
}

#[test]
fn a_failed_append_reports_the_error() {
    let dir = TempDir::new("journal-fail");
    let mut journal = Journal::failing_for_test(&dir.path().join("votes.journal"));
    assert!(journal.append(&vote("blue", "a")).is_err());
    assert!(journal.append(&vote("blue", "a")).is_err(), "still failing, still no panic");
}

#[test]
fn a_folder_is_not_a_journal() {
    let dir = TempDir::new("journal-io");
    let err = Journal::open(dir.path()).expect_err("a folder is not a journal");
    assert!(err.kind() != ErrorKind::NotFound, "{err}");
}

#[test]
fn space_is_reserved_while_open_and_given_back_at_close() {
    let dir = TempDir::new("journal-reserve");
    let path = dir.path().join("votes.journal");
    let (mut journal, _) = Journal::open(&path).expect("open");
    journal.append(&vote("blue", "a")).expect("append");
    let text = format!("{}{}", header(), encode(&vote("blue", "a")));
    assert_eq!(on_disk(&path), text);
    let len = std::fs::metadata(&path).expect("stat").len();
    if journal.reserve {
        assert!(len >= RESERVE, "reserved ahead: {len} bytes");
    } else {
        assert_eq!(len, text.len() as u64, "this file system reserves nothing");
    }
    drop(journal);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text, "closed: the records alone");
}

#[test]
fn reserved_space_left_by_a_kill_is_cut_off_and_appends_follow_the_last_record() {
    let dir = TempDir::new("journal-killed");
    let path = dir.path().join("votes.journal");
    journal_with(&path, &["a", "b"]);
    let records = std::fs::read(&path).expect("read");
    // As a SIGKILL leaves it: the records, then reserved space.
    let mut killed = records.clone();
    killed.resize(records.len() + 100_000, 0);
    std::fs::write(&path, &killed).expect("write");
    let (mut journal, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, vec![vote("blue", "a"), vote("blue", "b")]);
    assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
    journal.append(&vote("blue", "c")).expect("append");
    drop(journal);
    let (_, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, vec![vote("blue", "a"), vote("blue", "b"), vote("blue", "c")]);
}

#[test]
fn a_write_cut_short_in_reserved_space_is_cut_off_with_a_warning() {
    let dir = TempDir::new("journal-cut-short");
    let path = dir.path().join("votes.journal");
    journal_with(&path, &["a"]);
    let mut bytes = std::fs::read(&path).expect("read");
    let good = bytes.len();
    // A batch of two records whose second block never reached the disk.
    let batch = format!("{}{}", encode(&vote("blue", "b")), encode(&vote("blue", "c")));
    bytes.extend_from_slice(&batch.as_bytes()[..20]);
    bytes.resize(good + 8192, 0);
    bytes[good + 4096..good + 4096 + 30].copy_from_slice(&batch.as_bytes()[40..70]);
    std::fs::write(&path, &bytes).expect("write");
    let (journal, replay) = Journal::open(&path).expect("reopen");
    assert_eq!(replay.events, vec![vote("blue", "a")]);
    assert!(!replay.warnings.is_empty(), "a warning for what was cut");
    for w in &replay.warnings {
        assert!(w.contains("a write cut short") && w.contains("cut off"), "{w}");
    }
    drop(journal);
    assert_eq!(std::fs::read(&path).expect("read"), bytes[..good]);
}

#[test]
fn a_file_of_nul_bytes_opens_empty_but_binary_data_is_refused_untouched() {
    let dir = TempDir::new("journal-nul");
    let reserved = dir.path().join("reserved.journal");
    std::fs::write(&reserved, vec![0u8; 4096]).expect("write");
    let (_, replay) = Journal::open(&reserved).expect("open");
    assert!(replay.events.is_empty() && replay.warnings.is_empty(), "{replay:?}");

    let binary = dir.path().join("image.bin");
    let mut bytes = vec![0u8; 64];
    bytes.extend_from_slice(b"\x7fELF and more");
    std::fs::write(&binary, &bytes).expect("write");
    let e = Journal::open(&binary).expect_err("not a journal");
    assert!(e.to_string().contains("not a scx_ballot votes journal"), "{e}");
    assert_eq!(std::fs::read(&binary).expect("read"), bytes, "untouched");
}
