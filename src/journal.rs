//! The votes journal: every acknowledged change to the ballot, appended and
//! synced to disk before the acknowledgement, replayed at start-up.
//!
//! One record per line: the CRC-32 of the JSON (IEEE, as zlib's `crc32`, 8
//! lowercase hex digits), a space, and the JSON of an [`Event`]:
//!
//! ```text
//! 1478d423 {"event":"vote","candidate":"blue","voter":"ana"}
//! ```
//!
//! Replay never refuses to start because of the content: a damaged record is
//! skipped with a warning. Damage at the end (a record torn by a crash, a bad
//! checksum, bad JSON) is also cut off, so the next append starts on a clean
//! line. Only I/O errors fail.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::ballot::Event;

/// An open journal, positioned to append.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// End of the last good record: where the file is cut back to if an
    /// append fails half-way.
    len: u64,
    /// An append failed and the file may end in a partial record.
    needs_repair: bool,
}

/// What [`Journal::open`] found in the file.
#[derive(Debug, Default, PartialEq)]
pub struct Replay {
    /// Every good record, in order.
    pub events: Vec<Event>,
    /// One line per skipped record or repair.
    pub warnings: Vec<String>,
}

impl Journal {
    /// Opens (creating it and its folder if missing) and replays the journal
    /// at `path`.
    pub fn open(path: &Path) -> io::Result<(Journal, Replay)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut replay = Replay::default();
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        let mut offset = 0u64;
        let mut good_end = 0u64;
        let mut line_no = 0usize;
        // A bad record is reported once we know whether it was the last.
        let mut bad: Option<(usize, String)> = None;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            offset += n as u64;
            if let Some((at, why)) = bad.take() {
                replay.warnings.push(format!("{}: line {at}: {why}; skipped", path.display()));
            }
            match decode(&line) {
                Ok(event) => {
                    replay.events.push(event);
                    good_end = offset;
                }
                Err(why) => bad = Some((line_no, why)),
            }
        }
        if let Some((at, why)) = bad {
            replay.warnings.push(format!(
                "{}: line {at}: {why}; cut off after the last good record",
                path.display()
            ));
        }
        if offset != good_end {
            file.set_len(good_end)?;
            file.sync_all()?;
        }
        Ok((Journal { file, path: path.to_owned(), len: good_end, needs_repair: false }, replay))
    }

    /// Appends `event` as one record with one write, and syncs it to disk
    /// before returning: once this returns `Ok`, the change survives a crash
    /// or SIGKILL. On error the file is cut back to the last good record.
    pub fn append(&mut self, event: &Event) -> io::Result<()> {
        if self.needs_repair {
            self.repair()?;
        }
        let line = encode(event);
        let result = self.write_and_sync(line.as_bytes());
        if result.is_err() {
            self.needs_repair = true;
            // Best effort now; tried again before the next append.
            let _ = self.repair();
        } else {
            self.len += line.len() as u64;
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

    fn repair(&mut self) -> io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_data()?;
        self.needs_repair = false;
        Ok(())
    }

    /// A journal whose appends fail (its file is read-only), for tests of
    /// the error path.
    #[cfg(test)]
    pub(crate) fn failing_for_test(path: &Path) -> Journal {
        std::fs::write(path, "").expect("create the journal file");
        let file = File::open(path).expect("open read-only");
        Journal { file, path: path.to_owned(), len: 0, needs_repair: false }
    }
}

/// One record, newline included.
fn encode(event: &Event) -> String {
    let json = serde_json::to_string(event).expect("an Event always serializes");
    format!("{:08x} {json}\n", crc32(json.as_bytes()))
}

/// The event of one record (with its newline), or why it is not one.
fn decode(line: &[u8]) -> Result<Event, String> {
    let Some(record) = line.strip_suffix(b"\n") else {
        return Err("torn record (no newline)".to_owned());
    };
    let (Some(hex), Some(b' '), Some(json)) = (record.get(..8), record.get(8), record.get(9..))
    else {
        return Err("not a record".to_owned());
    };
    let want = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| "bad checksum field".to_owned())?;
    let got = crc32(json);
    if got != want {
        return Err(format!("checksum mismatch (recorded {want:08x}, computed {got:08x})"));
    }
    serde_json::from_slice(json).map_err(|e| format!("bad event: {e}"))
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
        assert_eq!(text.lines().count(), 4, "one line per record: {text}");
        let (_, replay) = Journal::open(&path).expect("reopen");
        assert_eq!(replay.events, some_events());
        assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_appends_continue() {
        let dir = TempDir::new("journal-torn");
        let path = dir.path().join("votes.journal");
        let (mut journal, _) = Journal::open(&path).expect("open");
        journal.append(&vote("blue", "a")).expect("append");
        journal.append(&vote("blue", "b")).expect("append");
        drop(journal);
        let full = std::fs::read(&path).expect("read");
        let first_end = full.iter().position(|&b| b == b'\n').expect("a newline") + 1;
        // A crash in the middle of the second record.
        std::fs::write(&path, &full[..first_end + 20]).expect("truncate mid-line");

        let (mut journal, replay) = Journal::open(&path).expect("reopen");
        assert_eq!(replay.events, vec![vote("blue", "a")]);
        assert_eq!(replay.warnings.len(), 1, "{:?}", replay.warnings);
        assert!(replay.warnings[0].contains("line 2: torn record"), "{:?}", replay.warnings);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), first_end as u64);
        journal.append(&vote("blue", "c")).expect("append after repair");
        drop(journal);
        let (_, replay) = Journal::open(&path).expect("reopen again");
        assert_eq!(replay.events, vec![vote("blue", "a"), vote("blue", "c")]);
        assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
    }

    #[test]
    fn a_bad_record_in_the_middle_is_skipped_and_kept() {
        let dir = TempDir::new("journal-middle");
        let path = dir.path().join("votes.journal");
        let (mut journal, _) = Journal::open(&path).expect("open");
        for v in ["a", "b", "c"] {
            journal.append(&vote("blue", v)).expect("append");
        }
        drop(journal);
        let text = std::fs::read_to_string(&path).expect("read");
        let damaged = text.replacen("\"voter\":\"b\"", "\"voter\":\"x\"", 1);
        assert_ne!(damaged, text);
        std::fs::write(&path, &damaged).expect("write");

        let (_, replay) = Journal::open(&path).expect("reopen");
        assert_eq!(replay.events, vec![vote("blue", "a"), vote("blue", "c")]);
        assert_eq!(replay.warnings.len(), 1, "{:?}", replay.warnings);
        assert!(replay.warnings[0].contains("line 2: checksum mismatch"), "{:?}", replay.warnings);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), damaged, "middle records stay");
    }

    #[test]
    fn bad_records_at_the_end_are_cut_back_to_the_last_good_one() {
        let dir = TempDir::new("journal-bad-tail");
        let path = dir.path().join("votes.journal");
        let (mut journal, _) = Journal::open(&path).expect("open");
        journal.append(&vote("blue", "a")).expect("append");
        drop(journal);
        let good = std::fs::read_to_string(&path).expect("read");
        let json = r#"{"event":"vote","candidate":"blue"}"#;
        let bad_json = format!("{:08x} {json}\n", crc32(json.as_bytes()));
        std::fs::write(&path, format!("{good}garbage\n{bad_json}")).expect("write");

        let (_, replay) = Journal::open(&path).expect("reopen");
        assert_eq!(replay.events, vec![vote("blue", "a")]);
        assert_eq!(replay.warnings.len(), 2, "{:?}", replay.warnings);
        assert!(replay.warnings[0].contains("line 2: not a record"), "{:?}", replay.warnings);
        assert!(replay.warnings[1].contains("line 3: bad event"), "{:?}", replay.warnings);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), good);
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
    fn only_io_errors_fail_open() {
        let dir = TempDir::new("journal-io");
        let err = Journal::open(dir.path()).expect_err("a folder is not a journal");
        assert!(err.kind() != ErrorKind::NotFound, "{err}");
    }
}
