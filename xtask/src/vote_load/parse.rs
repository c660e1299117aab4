//! Parsing answers: heads, chunked bodies, Server-Sent Events.

use anyhow::Result;

/// Where an answer's head ends (after its blank line), if it has.
pub(super) fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) status: u16,
    pub(super) reason: String,
    pub(super) content_length: Option<u64>,
    pub(super) chunked: bool,
    /// The server closes after this answer.
    pub(super) close: bool,
    pub(super) content_type: String,
}

/// An answer's head, its blank line included or not.
pub(super) fn parse_head(bytes: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let (Some(status), true) = (status, version.starts_with("HTTP/1.")) else {
        return Err(format!("status line {status_line:?}"));
    };
    let mut head = Head {
        status,
        reason: parts.next().unwrap_or_default().trim().to_string(),
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
        content_type: String::new(),
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {line:?}"));
        };
        let value = value.trim();
        let has = |token: &str| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let len = value
                    .parse()
                    .map_err(|_| format!("Content-Length {value:?}"))?;
                head.content_length = Some(len);
            }
            "transfer-encoding" => head.chunked = has("chunked"),
            "connection" if has("close") => head.close = true,
            "connection" if has("keep-alive") => head.close = false,
            "content-type" => head.content_type = value.to_string(),
            _ => {}
        }
    }
    Ok(head)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// After the last (empty) chunk, up to the blank line.
    Trailer,
    Done,
}

/// Decodes a `Transfer-Encoding: chunked` body as it arrives.
#[derive(Debug, Default)]
pub(super) struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
}

impl ChunkedDecoder {
    /// Feeds the next bytes; `out` gets the data. True once the body is
    /// complete (bytes after it are ignored).
    pub(super) fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(&[u8])) -> Result<bool, String> {
        while !data.is_empty() && self.state != ChunkState::Done {
            if let ChunkState::Data(left) = self.state {
                let take = left.min(data.len() as u64);
                out(&data[..take as usize]);
                data = &data[take as usize..];
                self.state = match left - take {
                    0 => ChunkState::DataEnd,
                    left => ChunkState::Data(left),
                };
                continue;
            }
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(data);
                if self.line.len() > 4096 {
                    return Err("a chunk line over 4 KiB".into());
                }
                break;
            };
            self.line.extend_from_slice(&data[..nl]);
            data = &data[nl + 1..];
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            self.state = match self.state {
                ChunkState::Size => {
                    let text = String::from_utf8_lossy(line);
                    let size = text.split(';').next().unwrap_or_default().trim();
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => ChunkState::Trailer,
                        Ok(n) => ChunkState::Data(n),
                        Err(_) => return Err(format!("chunk size {text:?}")),
                    }
                }
                ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                ChunkState::DataEnd => return Err("no line end after a chunk".into()),
                ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                state => state,
            };
        }
        Ok(self.state == ChunkState::Done)
    }
}

/// What a Server-Sent Events block (up to a blank line) dispatches.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SseItem {
    /// An event (a block with `data`), by its `event` name ("message" by
    /// default).
    Event(String),
    /// A block without data: comments (`: ...`), `retry:`, `id:` alone.
    Other,
}

/// The longest start of a line kept (enough for a field name and an event
/// name; data is only counted).
pub(super) const SSE_LINE_KEPT: usize = 128;

/// Splits a Server-Sent Events stream into its blocks, as it arrives. Lines
/// end with CRLF, LF or CR.
#[derive(Debug, Default)]
pub(super) struct SseSplitter {
    pub(super) line: Vec<u8>,
    line_len: usize,
    /// The last byte was a CR (a LF right after it ends no other line).
    after_cr: bool,
    has_data: bool,
    has_other: bool,
    name: Option<String>,
}

impl SseSplitter {
    pub(super) fn feed(&mut self, data: &[u8], on_item: &mut dyn FnMut(SseItem)) {
        for &b in data {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(on_item);
                }
                b'\n' => self.end_line(on_item),
                _ => {
                    if self.line.len() < SSE_LINE_KEPT {
                        self.line.push(b);
                    }
                    self.line_len += 1;
                }
            }
        }
    }

    fn end_line(&mut self, on_item: &mut dyn FnMut(SseItem)) {
        if self.line_len == 0 {
            if self.has_data {
                let name = self.name.take().unwrap_or_else(|| "message".into());
                on_item(SseItem::Event(name));
            } else if self.has_other {
                on_item(SseItem::Other);
            }
            self.name = None;
            self.has_data = false;
            self.has_other = false;
            return;
        }
        let line = String::from_utf8_lossy(&self.line);
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => self.has_data = true,
            "event" => {
                self.name = Some(value.to_string());
                self.has_other = true;
            }
            // A comment (empty field name), id, retry, unknown fields.
            _ => self.has_other = true,
        }
        self.line.clear();
        self.line_len = 0;
    }
}
