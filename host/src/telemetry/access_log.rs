//! The access log: one JSON line per request, batched in memory and written by a background
//! thread, so a request costs a short formatting step and no system call.
//!
//! A request appends its line to a shared buffer; the writer thread sleeps until the buffer
//! stops being empty (one wake-up per batch, not per line), waits a moment for the batch to
//! grow, and writes it out. If the sink cannot keep up and the buffer passes
//! [`MAX_PENDING`], lines are dropped and counted rather than slowing requests down.
//!
//! Where the lines go is the config's `server.access_log` ([`Destination`]): stdout, a file
//! (appended to; reopened on SIGUSR1 for log rotation), or nowhere. A reload that names
//! another destination hands the writer a new sink; lines recorded before go to the old one.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};

/// How long the writer lets a batch grow after its first line.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Past this many unwritten bytes, new lines are dropped.
const MAX_PENDING: usize = 16 * 1024 * 1024;

type Sink = Box<dyn Write + Send>;

/// Where access-log lines go (`server.access_log`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Destination {
    #[default]
    Stdout,
    /// Appended to; created if missing.
    File(PathBuf),
    Off,
}

impl Destination {
    fn open(&self) -> std::io::Result<Sink> {
        Ok(match self {
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            Destination::Off => Box::new(std::io::sink()),
        })
    }
}

struct Pending {
    buffer: Vec<u8>,
    /// A sink to write to from the next batch on.
    replacement: Option<Sink>,
    dropped: u64,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    closed: bool,
}

pub struct AccessLog {
    /// Off: requests skip formatting their line.
    enabled: AtomicBool,
    destination: Mutex<Destination>,
    pending: Mutex<Pending>,
    wake: Condvar,
    flushed: Condvar,
}

static LOG: OnceLock<&'static AccessLog> = OnceLock::new();

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// Starts the writer thread, writing to stdout until [`AccessLog::direct`] says otherwise,
    /// and makes it the process's access log.
    pub fn install() {
        let log: &'static AccessLog = Box::leak(Box::new(AccessLog {
            enabled: AtomicBool::new(true),
            destination: Mutex::new(Destination::Stdout),
            pending: Mutex::new(Pending {
                buffer: Vec::with_capacity(64 * 1024),
                replacement: None,
                dropped: 0,
                writing: false,
                closed: false,
            }),
            wake: Condvar::new(),
            flushed: Condvar::new(),
        }));
        if LOG.set(log).is_ok() {
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || log.run(Box::new(std::io::stdout())));
            if let Err(err) = spawned {
                tracing::error!("cannot start the access-log writer, access log is off: {err}");
            }
        }
    }

    /// Sends the lines to `destination` from now on (nothing happens if they go there
    /// already). A file that cannot be opened leaves the old destination in place.
    pub fn direct(destination: &Destination) {
        if let Some(log) = LOG.get()
            && *log.destination.lock() != *destination
        {
            log.open(destination);
        }
    }

    /// Reopens the destination file (after log rotation moved it away).
    pub fn reopen() {
        if let Some(log) = LOG.get() {
            let destination = log.destination.lock().clone();
            if matches!(destination, Destination::File(_)) {
                log.open(&destination);
            }
        }
    }

    fn open(&self, destination: &Destination) {
        match destination.open() {
            Ok(sink) => {
                *self.destination.lock() = destination.clone();
                self.enabled
                    .store(*destination != Destination::Off, Ordering::Relaxed);
                self.pending.lock().replacement = Some(sink);
                self.wake.notify_one();
            }
            Err(err) => tracing::error!(
                ?destination,
                "cannot open the access log, it keeps going where it went: {err}"
            ),
        }
    }

    /// Appends one line, built by `write` into a reused per-thread buffer.
    pub fn record(write: impl FnOnce(&mut Vec<u8>)) {
        let Some(log) = LOG.get() else {
            return;
        };
        if !log.enabled.load(Ordering::Relaxed) {
            return;
        }
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            write(line);
            line.push(b'\n');
            let mut pending = log.pending.lock();
            if pending.buffer.len() + line.len() > MAX_PENDING {
                pending.dropped += 1;
                return;
            }
            let was_empty = pending.buffer.is_empty();
            pending.buffer.extend_from_slice(line);
            if was_empty {
                log.wake.notify_one();
            }
        });
    }

    /// Writes out everything recorded so far (at shutdown), waiting at most `timeout`.
    pub fn flush(timeout: Duration) {
        let Some(log) = LOG.get() else {
            return;
        };
        let mut pending = log.pending.lock();
        pending.closed = true;
        log.wake.notify_one();
        let _ = log.flushed.wait_while_for(
            &mut pending,
            |p| !p.buffer.is_empty() || p.writing,
            timeout,
        );
    }

    fn run(&self, mut sink: Sink) {
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            let (dropped, replacement) = {
                let mut pending = self.pending.lock();
                self.wake.wait_while(&mut pending, |p| {
                    p.buffer.is_empty() && !p.closed && p.replacement.is_none()
                });
                if pending.closed && pending.buffer.is_empty() {
                    return;
                }
                if !pending.closed && !pending.buffer.is_empty() {
                    // Let the batch grow; requests keep appending meanwhile.
                    drop(pending);
                    std::thread::sleep(BATCH_WINDOW);
                    pending = self.pending.lock();
                }
                std::mem::swap(&mut pending.buffer, &mut batch);
                pending.writing = true;
                (
                    std::mem::take(&mut pending.dropped),
                    pending.replacement.take(),
                )
            };
            if dropped > 0 {
                tracing::warn!(dropped, "access log cannot keep up; lines dropped");
            }
            if let Err(err) = sink.write_all(&batch).and_then(|()| sink.flush()) {
                eprintln!("access log write failed: {err}");
            }
            batch.clear();
            if let Some(replacement) = replacement {
                sink = replacement;
            }
            self.pending.lock().writing = false;
            self.flushed.notify_all();
        }
    }
}

/// Writes `value` as a JSON string (quotes included).
pub fn json_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    // Paths, ids and names almost never need escaping: copy them in one go.
    // (A fold rather than `any`: without the early exit the compiler can vectorise it.)
    let needs_escape = bytes.iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{b:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Writes `value`, which needs no escaping by construction (an IP address, a method token,
/// hex digits), as a JSON string: the escape scan is most of `json_str`'s cost per field.
pub fn json_plain(out: &mut Vec<u8>, value: &[u8]) {
    debug_assert!(
        !value
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80)
    );
    out.push(b'"');
    out.extend_from_slice(value);
    out.push(b'"');
}

/// Writes an integer.
pub fn json_int(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

thread_local! {
    /// `YYYY-MM-DDTHH:MM:SS` of the last second formatted on this thread.
    static SECOND: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// RFC 3339 UTC with microseconds, as a JSON string. The date and time of day are formatted
/// once per second per thread.
pub fn json_time(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    out.push(b'"');
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != seconds {
            *cached = seconds;
            text.clear();
            let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(whole));
            text.pop(); // the trailing `Z`
        }
        out.extend_from_slice(text);
    });
    let micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 7];
    digits[0] = b'.';
    let mut rest = micros;
    for slot in digits[1..].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.extend_from_slice(b"Z\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ips() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_000_000_123_456);
        let mut out = Vec::new();
        json_time(&mut out, time);
        json_time(&mut out, time + Duration::from_micros(1));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""2026-11-30T00:53:20.123456Z""2026-11-30T00:53:20.123457Z""#
        );
        let ip = |text: &str| crate::proxy::headers::ip_header_value(text.parse().unwrap());
        assert_eq!(ip("10.0.200.7"), "10.0.200.7");
        assert_eq!(ip("::1"), "::1");
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(String::from_utf8(out).unwrap(), r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(r#""a\"b\\c\nd\u0001é""#).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn plain_values_are_quoted_as_they_are() {
        let mut out = Vec::new();
        json_plain(&mut out, b"2001:db8::1");
        assert_eq!(out, b"\"2001:db8::1\"");
    }
}
