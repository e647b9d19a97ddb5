//! The access log: one JSON object a line (SPEC §11), written by a dedicated thread so that
//! a slow disk or a blocked stdout never stalls a request.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
    sender: Option<mpsc::SyncSender<String>>,
    dropped: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// Opens the target; a file is appended to.
    pub fn open(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => {
                return Ok(AccessLog {
                    sender: None,
                    dropped: AtomicU64::new(0),
                    writer: Mutex::new(None),
                })
            }
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (sender, receiver) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let writer = std::thread::Builder::new()
            .name("baton-access-log".into())
            .spawn(move || write_lines(out, receiver))?;
        Ok(AccessLog {
            sender: Some(sender),
            dropped: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    pub fn write(&self, record: &AccessRecord) {
        let Some(sender) = &self.sender else { return };
        if let Ok(mut line) = serde_json::to_string(record) {
            line.push('\n');
            if let Err(mpsc::TrySendError::Full(_)) = sender.try_send(line) {
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

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Flushes every record logged so far and stops the writer.
    pub fn close(&self) {
        if let Some(sender) = &self.sender {
            // Blocks until the writer has room: everything before it gets written.
            let _ = sender.send(String::new());
        }
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

fn write_lines(out: Box<dyn Write + Send>, receiver: mpsc::Receiver<String>) {
    let mut out = std::io::BufWriter::new(out);
    let mut closing = false;
    while !closing {
        let Ok(line) = receiver.recv() else { break };
        closing = line.is_empty();
        let mut result = out.write_all(line.as_bytes());
        // Batch whatever else is already queued, then flush once.
        while let Ok(line) = receiver.try_recv() {
            closing |= line.is_empty();
            result = result.and_then(|()| out.write_all(line.as_bytes()));
        }
        if result.and_then(|()| out.flush()).is_err() {
            tracing::warn!("cannot write the access log; records are being dropped");
        }
    }
    let _ = out.flush();
}
