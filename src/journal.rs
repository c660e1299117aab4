//! The votes journal: every acknowledged change to the ballot, appended and
//! synced to disk before the acknowledgement, replayed at start-up.
//!
//! The first line names the format and its version; then one record per
//! line: the CRC-32 of the JSON (IEEE, as zlib's `crc32`, 8 lowercase hex
//! digits), a space, and the JSON of an [`Event`]:
//!
//! ```text
//! scx_ballot votes journal v1.0
//! 1478d423 {"event":"vote","candidate":"blue","voter":"ana"}
//! ```
//!
//! A journal written before the header existed (records only) is read as
//! v1.0. A journal of a newer major version is refused; a newer minor
//! version is read.
//!
//! Opening never destroys what it cannot read:
//! - a record with a good checksum that this version cannot parse (an
//!   event or a field from a newer scx_ballot) is kept in the file and left
//!   out of the replay, with a warning;
//! - a damaged line in the middle is kept and skipped, with a warning;
//! - only damage at the very end is cut off, so the next append starts on a
//!   clean line: a torn last line (no newline, shaped like the start of a
//!   record) and records whose checksum does not match;
//! - a non-empty file with no record at all is refused untouched (it is
//!   something else, such as a candidates file given by mistake).
//!
//! The journal is opened without following a symbolic link, must be a
//! regular file, and is locked (`flock`, exclusive) for as long as it is
//! open: a second scx_ballot on the same journal is refused at start.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::ballot::Event;

/// The format's major version: a journal with a higher one is refused.
pub const FORMAT_MAJOR: u32 = 1;
/// The format's minor version: additions an older reader skips safely.
pub const FORMAT_MINOR: u32 = 0;
/// The header line starts with this, followed by `MAJOR.MINOR`.
const HEADER_PREFIX: &str = "scx_ballot votes journal v";

/// An open journal, positioned to append.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// An append failed: the file's length before it, which the file is cut
    /// back to (never below) before the next append.
    repair_to: Option<u64>,
}

/// What [`Journal::open`] found in the file.
#[derive(Debug, Default, PartialEq)]
pub struct Replay {
    /// Every good record, in order.
    pub events: Vec<Event>,
    /// One line per skipped record or repair.
    pub warnings: Vec<String>,
}

/// One line of the file, classified.
enum Line {
    Header { major: u32, minor: u32 },
    Event(Event),
    /// A whole record (its checksum matches) that this version cannot parse.
    Unreadable(String),
    /// Damage that may be cut off when it is at the end: a torn record or a
    /// record whose checksum does not match.
    Torn(String),
    /// A line that is not a record at all; never cut.
    Foreign(String),
}

fn refused(why: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, why)
}

impl Journal {
    /// Opens (creating it and its folder if missing), locks and replays the
    /// journal at `path`. A new or empty journal gets its header line.
    pub fn open(path: &Path) -> io::Result<(Journal, Replay)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => refused(format!(
                    "{} is a symbolic link; the votes journal is never opened through one \
                     (give the real path)",
                    path.display()
                )),
                _ => e,
            })?;
        if !file.metadata()?.is_file() {
            return Err(refused(format!("{} is not a regular file", path.display())));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(refused(format!(
                    "{} is in use by another scx_ballot (it holds the journal's lock); \
                     stop it first or give another --votes-file",
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
        let mut replay = Replay::default();
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        let mut first_line: Option<Vec<u8>> = None;
        let mut offset = 0u64;
        let mut line_no = 0usize;
        // Whole records (readable or not) and headers seen.
        let mut records = 0usize;
        let mut header = false;
        // Start of the damaged tail that may be cut, and its warnings.
        let mut cut_from: Option<(u64, Vec<String>)> = None;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let start = offset;
            offset += n as u64;
            if first_line.is_none() {
                first_line = Some(line.clone());
            }
            let at = |why: &str| format!("{}: line {line_no}: {why}", path.display());
            match classify(&line, line_no == 1) {
                Line::Header { major, minor } => {
                    if major > FORMAT_MAJOR {
                        return Err(refused(format!(
                            "{} was written by a newer scx_ballot (journal format v{major}.{minor}; \
                             this one reads v{FORMAT_MAJOR}.x); it is left as it is",
                            path.display()
                        )));
                    }
                    header = true;
                }
                Line::Event(event) => {
                    records += 1;
                    replay.events.push(event);
                }
                Line::Unreadable(why) => {
                    records += 1;
                    replay.warnings.push(at(&format!(
                        "a record this version cannot read ({why}); kept in the file, not replayed"
                    )));
                }
                Line::Foreign(why) => {
                    replay.warnings.push(at(&format!("{why}; skipped and kept")));
                }
                Line::Torn(why) => {
                    cut_from.get_or_insert_with(|| (start, Vec::new())).1.push(why);
                    continue;
                }
            }
            // Damage followed by something kept is in the middle: keep it.
            if let Some((_, whys)) = cut_from.take() {
                let first = line_no - whys.len();
                for (i, why) in whys.iter().enumerate() {
                    replay.warnings.push(format!(
                        "{}: line {}: {why}; skipped and kept",
                        path.display(),
                        first + i
                    ));
                }
            }
        }
        if records == 0 && !header && offset > 0 && cut_from.as_ref().is_none_or(|(at, _)| *at > 0)
        {
            let first = first_line.unwrap_or_default();
            return Err(refused(format!(
                "{} is not a scx_ballot votes journal: its {offset} bytes hold no journal record \
                 (it starts with {}, which looks like {}); it is left as it is. Give \
                 --votes-file a new file or an existing journal",
                path.display(),
                quote_start(&first),
                looks_like(&first)
            )));
        }
        if let Some((at, whys)) = cut_from {
            let first = line_no - whys.len() + 1;
            for (i, why) in whys.iter().enumerate() {
                replay.warnings.push(format!(
                    "{}: line {}: {why}; cut off (damage at the end of the journal)",
                    path.display(),
                    first + i
                ));
            }
            file.set_len(at)?;
            file.sync_all()?;
            offset = at;
        }
        let mut journal = Journal { file, path: path.to_owned(), repair_to: None };
        if offset == 0 {
            let header = format!("{HEADER_PREFIX}{FORMAT_MAJOR}.{FORMAT_MINOR}\n");
            journal.write_and_sync(header.as_bytes())?;
        }
        Ok((journal, replay))
    }

    /// Appends `event` as one record with one write, and syncs it to disk
    /// before returning: once this returns `Ok`, the change survives a crash
    /// or SIGKILL. On error the file is cut back to its length before this
    /// append (never shorter).
    pub fn append(&mut self, event: &Event) -> io::Result<()> {
        self.append_records(encode(event).as_bytes())
    }

    /// Appends whole records (each from [`encode`]) with one write and one
    /// sync: several changes share one flush. As [`Journal::append`].
    pub fn append_records(&mut self, lines: &[u8]) -> io::Result<()> {
        if let Some(len) = self.repair_to {
            self.repair(len)?;
        }
        let before = self.file.metadata()?.len();
        let result = self.write_and_sync(lines);
        if result.is_err() {
            self.repair_to = Some(before);
            // Best effort now; tried again before the next append.
            let _ = self.repair(before);
        }
        result
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_and_sync(&mut self, line: &[u8]) -> io::Result<()> {
        let written = loop {
            match self.file.write(line) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if written != line.len() {
            return Err(io::Error::new(
                ErrorKind::WriteZero,
                format!(
                    "short write to {} ({written} of {} bytes)",
                    self.path.display(),
                    line.len()
                ),
            ));
        }
        self.file.sync_data()
    }

    /// Cuts off what a failed append may have left after `len`; never cuts
    /// into what was on disk before it.
    fn repair(&mut self, len: u64) -> io::Result<()> {
        if self.file.metadata()?.len() > len {
            self.file.set_len(len)?;
            self.file.sync_data()?;
        }
        self.repair_to = None;
        Ok(())
    }

    /// A journal whose appends fail (its file is read-only), for tests of
    /// the error path.
    #[cfg(test)]
    pub(crate) fn failing_for_test(path: &Path) -> Journal {
        std::fs::write(path, "").expect("create the journal file");
        let file = File::open(path).expect("open read-only");
        Journal { file, path: path.to_owned(), repair_to: None }
    }
}

/// One record, newline included.
pub(crate) fn encode(event: &Event) -> String {
    let json = serde_json::to_string(event).expect("an Event always serializes");
    format!("{:08x} {json}\n", crc32(json.as_bytes()))
}

/// Whether `bytes` could be the start of a record: up to 8 hex digits, then
/// a space, then the JSON's `{`.
fn record_shaped(bytes: &[u8]) -> bool {
    bytes.iter().take(8).all(u8::is_ascii_hexdigit)
        && bytes.get(8).is_none_or(|&b| b == b' ')
        && bytes.get(9).is_none_or(|&b| b == b'{')
}

/// What one line of the file (with its newline, unless it is the torn last
/// one) is.
fn classify(line: &[u8], first: bool) -> Line {
    let Some(record) = line.strip_suffix(b"\n") else {
        if record_shaped(line) || (first && HEADER_PREFIX.as_bytes().starts_with(line)) {
            return Line::Torn("torn record (no newline)".to_owned());
        }
        return Line::Foreign("not a record (and no newline)".to_owned());
    };
    if first && let Some(version) = record.strip_prefix(HEADER_PREFIX.as_bytes()) {
        let version = std::str::from_utf8(version).unwrap_or("");
        if let Some((major, minor)) = version.split_once('.')
            && let (Ok(major), Ok(minor)) = (major.parse(), minor.parse())
        {
            return Line::Header { major, minor };
        }
        return Line::Foreign(format!("unreadable header version {version:?}"));
    }
    if record.len() < 10 || !record_shaped(record) {
        return Line::Foreign("not a record".to_owned());
    }
    let (hex, json) = (&record[..8], &record[9..]);
    let want = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .expect("record_shaped checked 8 hex digits");
    let got = crc32(json);
    if got != want {
        return Line::Torn(format!(
            "checksum mismatch (recorded {want:08x}, computed {got:08x})"
        ));
    }
    match serde_json::from_slice(json) {
        Ok(event) => Line::Event(event),
        Err(e) => Line::Unreadable(format!("{e}")),
    }
}

/// The first bytes of `line`, quoted for a message.
fn quote_start(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\n');
    let short: String = text.chars().take(40).collect();
    if short.len() < text.len() { format!("{short:?}...") } else { format!("{short:?}") }
}

/// A guess at what a file that is not a journal is, from its first line.
fn looks_like(line: &[u8]) -> &'static str {
    let Ok(text) = std::str::from_utf8(line) else {
        return "binary data";
    };
    let t = text.trim();
    if text.contains('\0') {
        "binary data"
    } else if t.starts_with('[') || t.starts_with('#') || t.contains(" = ") {
        "TOML or another configuration file"
    } else if t.starts_with('{') {
        "JSON"
    } else {
        "text"
    }
}

const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(!0u32, |crc, &b| CRC32_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8))
}

#[cfg(test)]
mod tests {
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
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{old}{}", encode(&vote("blue", "c"))));
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
        assert_eq!(std::fs::read_to_string(&path).expect("read"), before, "nothing was cut");
        journal.append(&vote("blue", "c")).expect("append");
        let after = std::fs::read_to_string(&path).expect("read");
        assert_eq!(after, format!("{before}{}", encode(&vote("blue", "c"))));
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
}
