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
//!
//! Space is reserved ahead of the records ([`RESERVE`] bytes at a time,
//! `fallocate`), so that an append writes into the file without changing
//! its length: the sync after it then flushes the records alone, not the
//! file's size and block map as well (on ext4 here: 106-162 us per sync
//! against 146-215 us for an append that grows the file). The reserved
//! space reads as NUL bytes, which no record holds; while scx_ballot runs
//! (or after it is killed) the file ends with them. Opening cuts them off
//! (a record cut short by a crash among them too: it was never
//! acknowledged), and a clean close gives the space back. Where the file
//! system cannot reserve space, appends grow the file as they write.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::ballot::Event;

/// The format's major version: a journal with a higher one is refused.
pub const FORMAT_MAJOR: u32 = 1;
/// The format's minor version: additions an older reader skips safely.
pub const FORMAT_MINOR: u32 = 0;
/// Why a line of NUL bytes before a kept record is skipped.
const RESERVED_IN_THE_MIDDLE: &str = "NUL bytes (space reserved ahead, or a hole a crash left)";
/// The header line starts with this, followed by `MAJOR.MINOR`.
const HEADER_PREFIX: &str = "scx_ballot votes journal v";
/// How much space is reserved ahead of the records at a time: about 50,000
/// votes, so the file's size changes (a slower sync) once per that many.
pub const RESERVE: u64 = 4 << 20;

/// An open journal, positioned to append.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// The end of the records: where the next append writes.
    end: u64,
    /// The file's length: `end` and the reserved space after it.
    len: u64,
    /// Whether space is reserved ahead (false once the file system said it
    /// cannot).
    reserve: bool,
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
    /// Damage that may be cut off when it is at the end: a torn record (in
    /// reserved space: a write cut short) or a record whose checksum does
    /// not match.
    Torn(String),
    /// Reserved space: NUL bytes alone. Cut off at the end, silently.
    Reserved,
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
            .write(true)
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
        // (Each line's warning; none for reserved space.)
        let mut cut_from: Option<(u64, Vec<Option<String>>)> = None;
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
                    cut_from.get_or_insert_with(|| (start, Vec::new())).1.push(Some(why));
                    continue;
                }
                Line::Reserved => {
                    cut_from.get_or_insert_with(|| (start, Vec::new())).1.push(None);
                    continue;
                }
            }
            // Damage followed by something kept is in the middle: keep it.
            if let Some((_, whys)) = cut_from.take() {
                let first = line_no - whys.len();
                for (i, why) in whys.iter().enumerate() {
                    let why = why.as_deref().unwrap_or(RESERVED_IN_THE_MIDDLE);
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
            // Reserved space at the end is no damage: no warning.
            for (i, why) in whys.iter().enumerate() {
                let Some(why) = why else { continue };
                replay.warnings.push(format!(
                    "{}: line {}: {why}; cut off (damage at the end of the journal)",
                    path.display(),
                    first + i
                ));
            }
            offset = at;
        }
        let len = file.metadata()?.len();
        if len > offset {
            file.set_len(offset)?;
            file.sync_all()?;
        }
        let mut journal = Journal {
            file,
            path: path.to_owned(),
            end: offset,
            len: offset,
            reserve: true,
            repair_to: None,
        };
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
        let before = self.end;
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

    /// Writes `bytes` at the end of the records (into reserved space when
    /// there is some) and syncs them.
    fn write_and_sync(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.end + bytes.len() as u64;
        if end > self.len && self.reserve {
            self.reserve_space(end);
        }
        self.file.write_all_at(bytes, self.end).map_err(|e| {
            io::Error::new(e.kind(), format!("writing to {}: {e}", self.path.display()))
        })?;
        self.len = self.len.max(end);
        self.file.sync_data()?;
        self.end = end;
        Ok(())
    }

    /// Reserves space up to at least `end` and [`RESERVE`] more. Where the
    /// file system cannot, appends grow the file from now on; any other
    /// failure (no space left) is left to the write to report.
    fn reserve_space(&mut self, end: u64) {
        let want = end + RESERVE;
        // SAFETY: fallocate on a file descriptor this Journal owns; mode 0
        // only allocates blocks and extends the length.
        let rc = unsafe {
            libc::fallocate(self.file.as_raw_fd(), 0, self.len as i64, (want - self.len) as i64)
        };
        if rc == 0 {
            self.len = want;
            return;
        }
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)) {
            self.reserve = false;
        }
    }

    /// Cuts off what a failed append may have left after `len` (and the
    /// reserved space with it); never cuts into what was on disk before it.
    fn repair(&mut self, len: u64) -> io::Result<()> {
        if self.file.metadata()?.len() > len {
            self.file.set_len(len)?;
            self.file.sync_data()?;
        }
        self.len = len;
        self.end = len;
        self.repair_to = None;
        Ok(())
    }

    /// A journal whose appends fail (its file is read-only), for tests of
    /// the error path.
    #[cfg(test)]
    pub(crate) fn failing_for_test(path: &Path) -> Journal {
        std::fs::write(path, "").expect("create the journal file");
        let file = File::open(path).expect("open read-only");
        Journal { file, path: path.to_owned(), end: 0, len: 0, reserve: true, repair_to: None }
    }
}

impl Drop for Journal {
    /// Gives the reserved space back, so that a journal closed cleanly ends
    /// with its last record.
    fn drop(&mut self) {
        if self.len > self.end && self.repair_to.is_none() && self.file.set_len(self.end).is_ok() {
            let _ = self.file.sync_all();
        }
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
    if let Some(nul) = line.iter().position(|&b| b == 0) {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let (before, after) = body.split_at(nul);
        if body.iter().all(|&b| b == 0) {
            return Line::Reserved;
        }
        // A record or header whose write was cut short, with reserved space
        // after it. The first line is the header, written on its own, so
        // anything else there is some other file's binary data.
        let torn = if first {
            !before.is_empty()
                && (record_shaped(before) || HEADER_PREFIX.as_bytes().starts_with(before))
                && after.iter().all(|&b| b == 0)
        } else {
            record_shaped(before)
        };
        if torn {
            return Line::Torn("a write cut short (never acknowledged)".to_owned());
        }
        return Line::Foreign("binary data (NUL bytes)".to_owned());
    }
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
mod tests;
