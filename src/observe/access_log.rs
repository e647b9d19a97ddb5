//! The access log: one JSON object a line (SPEC §11), written by a dedicated thread so that
//! a slow disk or a blocked stdout never stalls a request.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use serde::Serialize;

use crate::config::AccessLogTarget;

#[derive(Debug, Serialize)]
pub struct AccessRecord {
    pub ts: String,
    pub request_id: String,
    pub client: IpAddr,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub cause: Option<&'static str>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    pub attempts: u32,
    /// The attempts that failed before the last one, in order.
    pub failed_attempts: Vec<FailedAttempt>,
    pub delivery: &'static str,
    pub cache: Option<&'static str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub connect_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
}

/// Lines that may wait for the writer. Beyond this the log is falling behind (a blocked
/// stdout, a full disk): new records are dropped and counted rather than queued without
/// bound.
const QUEUE_LINES: usize = 64 * 1024;
/// Warn on the first dropped record and then once per this many.
const DROP_WARNING_EVERY: u64 = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct FailedAttempt {
    pub endpoint: Arc<str>,
    pub cause: &'static str,
    pub delivery: &'static str,
}

/// Where access records go: a bounded channel to one writer thread. An empty line tells
/// the writer to flush and stop.
pub struct AccessLog {
    sender: mpsc::SyncSender<Message>,
    /// False while the target is `off`: records are not even formatted.
    enabled: AtomicBool,
    dropped: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the writer thread is asked to do.
enum Message {
    Line(String),
    /// Write to this from now on (a reload, or a log file rotated away).
    Switch(Option<Box<dyn Write + Send>>),
    /// Flush everything and stop.
    Close,
}

/// Opens what records are written to; `None` for `off`.
fn open_target(target: &AccessLogTarget) -> std::io::Result<Option<Box<dyn Write + Send>>> {
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

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out = open_target(target)?;
        let enabled = AtomicBool::new(out.is_some());
        let (sender, receiver) = mpsc::sync_channel::<Message>(QUEUE_LINES);
        let writer = std::thread::Builder::new()
            .name("baton-access-log".into())
            .spawn(move || write_lines(out, receiver))?;
        Ok(AccessLog {
            sender,
            enabled,
            dropped: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Writes to `target` from now on: a file is opened anew, so a reload also picks up a
    /// log that was rotated away. Records already queued go to the old target.
    pub fn reopen(&self, target: &AccessLogTarget) -> std::io::Result<()> {
        let out = open_target(target)?;
        let enabled = out.is_some();
        // Blocks while the queue is full: the switch must not be dropped.
        let _ = self.sender.send(Message::Switch(out));
        self.enabled.store(enabled, Ordering::Relaxed);
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Queues one record; when the writer is too far behind, counts it as dropped instead
    /// of making the request wait.
    pub fn write(&self, record: &AccessRecord) {
        if !self.enabled() {
            return;
        }
        if let Ok(mut line) = serde_json::to_string(record) {
            line.push('\n');
            if let Err(mpsc::TrySendError::Full(_)) = self.sender.try_send(Message::Line(line)) {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_multiple_of(DROP_WARNING_EVERY) {
                    tracing::warn!(
                        dropped = dropped + 1,
                        "the access log cannot keep up; records are being dropped"
                    );
                }
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Flushes every record logged so far and stops the writer.
    pub fn close(&self) {
        // Blocks until the writer has room: everything before it gets written.
        let _ = self.sender.send(Message::Close);
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

fn write_lines(out: Option<Box<dyn Write + Send>>, receiver: mpsc::Receiver<Message>) {
    let mut out = out.map(std::io::BufWriter::new);
    let mut closing = false;
    while !closing {
        let Ok(first) = receiver.recv() else { break };
        let mut result = Ok(());
        // Batch whatever else is already queued, then flush once.
        for message in std::iter::once(first).chain(std::iter::from_fn(|| receiver.try_recv().ok()))
        {
            match message {
                Message::Line(line) => {
                    if let Some(out) = &mut out {
                        result = result.and_then(|()| out.write_all(line.as_bytes()));
                    }
                }
                Message::Switch(next) => {
                    if let Some(out) = &mut out {
                        result = result.and_then(|()| out.flush());
                    }
                    out = next.map(std::io::BufWriter::new);
                }
                Message::Close => {
                    closing = true;
                    break;
                }
            }
        }
        if let Some(out) = &mut out {
            if result.and_then(|()| out.flush()).is_err() {
                tracing::warn!("cannot write the access log; records are being dropped");
            }
        }
    }
}
