//! A minimal `log` backend: one line per record on stderr, prefixed with the
//! level. `--verbose` raises the level to debug.
//!
//! The scheduling loop must never wait for its own output: stderr may be a
//! pipe nobody reads, or a file on a slow filesystem (in the VM tests a
//! write to the shared folder blocked the loop for up to 14 ms, while the
//! tasks it had to dispatch waited and CPUs idled). A thread that calls
//! [`defer_writes`] hands its lines to a writer thread instead, through a
//! bounded queue; when the queue is full a line is dropped and counted, and
//! the writer says how many before its next line. Other threads write
//! directly.

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Lines a deferring thread may have waiting for the writer.
const QUEUE: usize = 1024;
/// How long [`DeferWrites`]'s drop waits for the writer to catch up.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

thread_local! {
    static DEFERRED: Cell<bool> = const { Cell::new(false) };
}

enum Message {
    Line(String),
    /// Answered once every line sent before it is written.
    Flush(SyncSender<()>),
}

/// A writer thread and the lines it dropped for want of room.
struct Writer {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the thread writing to `out`, with room for `room` lines.
    fn start(mut out: impl Write + Send + 'static, room: usize) -> Writer {
        let dropped = Arc::new(AtomicU64::new(0));
        let lost_lines = dropped.clone();
        let (queue, rx): (SyncSender<Message>, Receiver<Message>) = sync_channel(room);
        let spawned = std::thread::Builder::new().name("log-writer".into()).spawn(move || {
            for message in rx {
                match message {
                    Message::Line(line) => {
                        let lost = lost_lines.swap(0, Ordering::Relaxed);
                        if lost > 0 {
                            let _ = writeln!(out, "warning: {lost} log line(s) dropped: the output did not keep up");
                        }
                        let _ = writeln!(out, "{line}");
                    }
                    Message::Flush(done) => {
                        let _ = out.flush();
                        let _ = done.send(());
                    }
                }
            }
        });
        if spawned.is_err() {
            // No thread: every line is dropped and counted; nothing blocks.
            dropped.fetch_add(1, Ordering::Relaxed);
        }
        Writer { queue, dropped }
    }

    fn send(&self, line: String) {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most `wait`) until the lines sent so far are written.
    fn flush(&self, wait: Duration) -> bool {
        let (done, rx) = sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_err() {
            return false;
        }
        rx.recv_timeout(wait).is_ok()
    }
}

fn writer() -> &'static Writer {
    static WRITER: OnceLock<Writer> = OnceLock::new();
    WRITER.get_or_init(|| Writer::start(std::io::stderr(), QUEUE))
}

/// While alive, this thread's log lines go through the writer thread (see
/// the module's doc); dropping it writes out what is queued (waiting at
/// most 2 s) and this thread writes directly again.
#[must_use = "lines are deferred only while the guard lives"]
pub struct DeferWrites(());

/// Defers this thread's log lines to the writer thread until the returned
/// guard is dropped. For the scheduling loop.
pub fn defer_writes() -> DeferWrites {
    let _ = writer();
    DEFERRED.with(|d| d.set(true));
    DeferWrites(())
}

impl Drop for DeferWrites {
    fn drop(&mut self) {
        DEFERRED.with(|d| d.set(false));
        writer().flush(FLUSH_WAIT);
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        if DEFERRED.with(Cell::get) {
            writer().send(format!("{prefix}{}", record.args()));
            return;
        }
        eprintln!("{prefix}{}", record.args());
    }

    fn flush(&self) {}
}

pub fn init(verbose: bool) {
    // A second init (only possible in tests) keeps the first logger.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if verbose { LevelFilter::Debug } else { LevelFilter::Info });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A `Write` into shared memory, optionally slow.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>, Duration);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.1);
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn deferred_lines_are_written_in_order_by_the_flush() {
        let sink = Sink::default();
        let w = Writer::start(sink.clone(), QUEUE);
        for i in 0..10 {
            w.send(format!("line {i}"));
        }
        assert!(w.flush(Duration::from_secs(5)));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let want: String = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
    }

    #[test]
    fn a_slow_output_drops_lines_and_says_how_many_instead_of_blocking() {
        let sink = Sink(Arc::default(), Duration::from_millis(20));
        let w = Writer::start(sink.clone(), 8);
        let start = std::time::Instant::now();
        for i in 0..100 {
            w.send(format!("line {i}"));
        }
        // Sending never waited for the 20 ms writes (100 of them: 2 s).
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        assert!(w.dropped.load(Ordering::Relaxed) > 0);
        // Room again once the writer is through the queue.
        assert!(w.flush(Duration::from_secs(30)));
        w.send("last".into());
        assert!(w.flush(Duration::from_secs(30)));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("log line(s) dropped: the output did not keep up"), "{text}");
        assert!(text.ends_with("last\n"));
    }
}
