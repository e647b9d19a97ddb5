//! The access log: one JSON object a line (SPEC §11). Requests append their line to a
//! shared buffer; a dedicated thread writes the buffer out every [`FLUSH_INTERVAL`], or
//! sooner once [`FLUSH_BYTES`] are waiting, so that a request costs no system call and a
//! slow disk or a blocked stdout never stalls one.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::config::AccessLogTarget;

/// One line of the access log, borrowing what it can from the exchange.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    #[serde(serialize_with = "display")]
    pub ts: humantime::Rfc3339Timestamp,
    pub request_id: &'a str,
    pub client: IpAddr,
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
    pub duration_ms: f64,
    pub connect_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
}

fn display<S: Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
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
            if serde_json::to_writer(&mut *line, record).is_err() {
                return;
            }
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
