//! The access log: one JSON object a line (SPEC §11). Requests append their line to a
//! shared buffer; a dedicated thread writes the buffer out every [`FLUSH_INTERVAL`], or
//! sooner once [`FLUSH_BYTES`] are waiting, so that a request costs no system call and a
//! slow disk or a blocked stdout never stalls one.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::AccessLogTarget;

/// One line of the access log, borrowing what it can from the exchange.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// When the request head arrived.
    pub ts: SystemTime,
    pub request_id: &'a str,
    /// The client's address, as text.
    pub client: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub cause: Option<&'static str>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub attempts: u32,
    /// The attempts that failed before the last one, in order.
    pub failed_attempts: &'a [FailedAttempt],
    pub delivery: &'static str,
    pub cache: Option<&'static str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Logged in milliseconds with microsecond precision, as `duration_ms` and so on.
    pub duration: Duration,
    pub connect: Option<Duration>,
    pub ttfb: Option<Duration>,
    /// How long the request waited for admission to its upstream; `None` when the
    /// upstream has no `max_inflight`.
    pub queue: Option<Duration>,
}

impl AccessRecord<'_> {
    /// Appends the record as one JSON object. Written by hand rather than through serde:
    /// the keys are fixed and nearly every value needs no escaping, and this runs for
    /// every request (serde_json's escaping of every key and value cost 6,400
    /// instructions a record).
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":\"");
        write_timestamp(out, self.ts);
        out.extend_from_slice(b"\",\"request_id\":");
        write_str(out, self.request_id);
        out.extend_from_slice(b",\"client\":");
        write_str(out, self.client);
        out.extend_from_slice(b",\"method\":");
        write_str(out, self.method);
        out.extend_from_slice(b",\"host\":");
        write_str(out, self.host);
        out.extend_from_slice(b",\"path\":");
        write_str(out, self.path);
        out.extend_from_slice(b",\"status\":");
        write_int(out, self.status);
        out.extend_from_slice(b",\"cause\":");
        write_opt_str(out, self.cause);
        out.extend_from_slice(b",\"route\":");
        write_opt_str(out, self.route);
        out.extend_from_slice(b",\"upstream\":");
        write_opt_str(out, self.upstream);
        out.extend_from_slice(b",\"endpoint\":");
        write_opt_str(out, self.endpoint);
        out.extend_from_slice(b",\"attempts\":");
        write_int(out, self.attempts);
        out.extend_from_slice(b",\"failed_attempts\":[");
        for (i, failed) in self.failed_attempts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"endpoint\":");
            write_str(out, &failed.endpoint);
            out.extend_from_slice(b",\"cause\":");
            write_str(out, failed.cause);
            out.extend_from_slice(b",\"delivery\":");
            write_str(out, failed.delivery);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"delivery\":");
        write_str(out, self.delivery);
        out.extend_from_slice(b",\"cache\":");
        write_opt_str(out, self.cache);
        out.extend_from_slice(b",\"bytes_in\":");
        write_int(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        write_int(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        write_millis(out, Some(self.duration));
        out.extend_from_slice(b",\"connect_ms\":");
        write_millis(out, self.connect);
        out.extend_from_slice(b",\"ttfb_ms\":");
        write_millis(out, self.ttfb);
        out.extend_from_slice(b",\"queue_ms\":");
        write_millis(out, self.queue);
        out.push(b'}');
    }
}

/// A JSON string: quoted, with `"`, `\\` and control characters escaped.
fn write_str(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if needs_escape(bytes) {
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                _ => out.push(b),
            }
        }
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
}

/// Whether a JSON string needs escapes. Looks at every byte without stopping at the first
/// one that does, so that the compiler can check many bytes an instruction: values almost
/// never need escaping, and this runs for nine values of every record.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

fn write_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_int(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A duration as a number of milliseconds to the nearest microsecond: `12.5`, `3.0`,
/// `0.042`.
fn write_millis(out: &mut Vec<u8>, value: Option<Duration>) {
    let Some(value) = value else {
        out.extend_from_slice(b"null");
        return;
    };
    // In u64, not the u128 of `as_nanos`: its division is a call of its own. A u64 holds
    // 584,000 years of microseconds.
    let micros = value
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from((value.subsec_nanos() + 500) / 1000));
    write_int(out, micros / 1000);
    let fraction = (micros % 1000) as u16;
    let digits = [
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    let kept = match (digits[1], digits[2]) {
        (b'0', b'0') => 1,
        (_, b'0') => 2,
        _ => 3,
    };
    out.push(b'.');
    out.extend_from_slice(&digits[..kept]);
}

thread_local! {
    /// The RFC 3339 text of the last whole second formatted, without its `Z`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// `ts` as RFC 3339 with milliseconds (`2026-11-22T11:45:12.345Z`); the date and time of
/// day are formatted once a second.
fn write_timestamp(out: &mut Vec<u8>, ts: SystemTime) {
    let since_epoch = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second));
            let whole = whole.to_string();
            if let Some(prefix) = whole.as_bytes().get(..19) {
                text.copy_from_slice(prefix);
                *cached = second;
            }
        }
        out.extend_from_slice(text);
    });
    let millis = since_epoch.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// How long a line may wait in the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Waiting bytes that wake the writer before the interval is up.
const FLUSH_BYTES: usize = 256 << 10;
/// Bytes that may wait for the writer. Beyond this the log is falling behind (a blocked
/// stdout, a full disk): new records are dropped and counted rather than kept without
/// bound.
const MAX_PENDING: usize = 16 << 20;
/// Warn on the first dropped record and then once per this many.
const DROP_WARNING_EVERY: u64 = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct FailedAttempt {
    pub endpoint: Arc<str>,
    pub cause: &'static str,
    pub delivery: &'static str,
}

type Output = Box<dyn Write + Send>;

/// What requests hand the writer.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Write to this from now on (a reload, or a log file rotated away).
    switch: Option<Option<Output>>,
    closing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

pub struct AccessLog {
    shared: Arc<Shared>,
    /// False while the target is `off`: records are not even formatted.
    enabled: AtomicBool,
    dropped: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Opens what records are written to; `None` for `off`.
fn open_target(target: &AccessLogTarget) -> std::io::Result<Option<Output>> {
    Ok(match target {
        AccessLogTarget::Off => None,
        AccessLogTarget::Stdout => Some(Box::new(std::io::stdout())),
        AccessLogTarget::File(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|err| {
                    std::io::Error::new(
                        err.kind(),
                        format!("cannot open the access log {}: {err}", path.display()),
                    )
                })?,
        )),
    })
}

thread_local! {
    /// Where a record is formatted before it joins the shared buffer.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out = open_target(target)?;
        let enabled = AtomicBool::new(out.is_some());
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("baton-access-log".into())
            .spawn(move || write_lines(out, &writer_shared))?;
        Ok(AccessLog {
            shared,
            enabled,
            dropped: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Writes to `target` from now on: a file is opened anew, so a reload also picks up a
    /// log that was rotated away. Lines already waiting go to the old target.
    pub fn reopen(&self, target: &AccessLogTarget) -> std::io::Result<()> {
        let out = open_target(target)?;
        let enabled = out.is_some();
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.switch = Some(out);
        }
        self.shared.wake.notify_one();
        self.enabled.store(enabled, Ordering::Relaxed);
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Adds one record; when the writer is too far behind, counts it as dropped instead of
    /// making the request wait.
    pub fn write(&self, record: &AccessRecord) {
        if !self.enabled() {
            return;
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            record.write_json(line);
            line.push(b'\n');
            let Ok(mut pending) = self.shared.pending.lock() else {
                return;
            };
            if pending.lines.len() + line.len() > MAX_PENDING {
                drop(pending);
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_multiple_of(DROP_WARNING_EVERY) {
                    tracing::warn!(
                        dropped = dropped + 1,
                        "the access log cannot keep up; records are being dropped"
                    );
                }
                return;
            }
            let before = pending.lines.len();
            pending.lines.extend_from_slice(line);
            let crossed = before < FLUSH_BYTES && pending.lines.len() >= FLUSH_BYTES;
            drop(pending);
            if crossed {
                self.shared.wake.notify_one();
            }
        });
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Flushes every record logged so far and stops the writer.
    pub fn close(&self) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.closing = true;
        }
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

/// The writer thread: takes what waits, writes it out, until closed.
fn write_lines(out: Option<Output>, shared: &Shared) {
    let mut out = out.map(std::io::BufWriter::new);
    let mut batch = Vec::new();
    loop {
        let (switch, closing) = {
            let Ok(mut pending) = shared.pending.lock() else {
                return;
            };
            // Let lines gather for the interval, unless there are many or news.
            let deadline = Instant::now() + FLUSH_INTERVAL;
            while pending.lines.len() < FLUSH_BYTES && pending.switch.is_none() && !pending.closing
            {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                pending = match shared.wake.wait_timeout(pending, left) {
                    Ok((pending, _)) => pending,
                    Err(_) => return,
                };
            }
            std::mem::swap(&mut batch, &mut pending.lines);
            (pending.switch.take(), pending.closing)
        };
        if let Some(out) = &mut out {
            if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                tracing::warn!("cannot write the access log; records are being lost");
            }
        }
        batch.clear();
        if let Some(next) = switch {
            out = next.map(std::io::BufWriter::new);
        }
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_with_every_field_and_escapes() {
        let failed = [FailedAttempt {
            endpoint: Arc::from("10.0.0.1:80"),
            cause: "upstream-reset",
            delivery: "sent",
        }];
        let record = AccessRecord {
            ts: UNIX_EPOCH + Duration::from_millis(1_763_811_912_045),
            request_id: "abc",
            client: "::1",
            method: "GET",
            host: "example.com",
            path: "/a \"quoted\" \\ path\n\u{1}é",
            status: 502,
            cause: Some("upstream-reset"),
            route: Some("main"),
            upstream: None,
            endpoint: Some("10.0.0.2:80"),
            attempts: 2,
            failed_attempts: &failed,
            delivery: "sent",
            cache: None,
            bytes_in: 0,
            bytes_out: 1234,
            duration: Duration::from_micros(12_500),
            connect: None,
            ttfb: Some(Duration::from_millis(3)),
            queue: Some(Duration::from_micros(250)),
        };
        let mut line = Vec::new();
        record.write_json(&mut line);
        let json: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(json["ts"], "2025-11-22T11:45:12.045Z");
        assert_eq!(json["path"], "/a \"quoted\" \\ path\n\u{1}é");
        assert_eq!(json["status"], 502);
        assert_eq!(json["upstream"], serde_json::Value::Null);
        assert_eq!(json["failed_attempts"][0]["cause"], "upstream-reset");
        assert_eq!(json["duration_ms"], 12.5);
        assert_eq!(json["ttfb_ms"], 3.0);
        assert_eq!(json["connect_ms"], serde_json::Value::Null);
        assert_eq!(json["queue_ms"], 0.25);
        for (micros, text) in [(0, "0.0"), (42, "0.042"), (1_500, "1.5"), (12_340, "12.34")] {
            let mut out = Vec::new();
            write_millis(&mut out, Some(Duration::from_micros(micros)));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 21, "{keys:?}");
    }
}
