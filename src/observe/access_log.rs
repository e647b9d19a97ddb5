//! The access log: one JSON object a line (SPEC §11), written by a dedicated thread so that
//! a slow disk or a blocked stdout never stalls a request.

use std::io::Write;
use std::net::IpAddr;
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
    pub delivery: &'static str,
    pub cache: Option<&'static str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub connect_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
}

/// Where access records go: a channel to one writer thread. An empty line tells the
/// writer to flush and stop.
pub struct AccessLog {
    sender: Option<mpsc::Sender<String>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// Opens the target; a file is appended to.
    pub fn open(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => {
                return Ok(AccessLog {
                    sender: None,
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
        let (sender, receiver) = mpsc::channel::<String>();
        let writer = std::thread::Builder::new()
            .name("baton-access-log".into())
            .spawn(move || write_lines(out, receiver))?;
        Ok(AccessLog {
            sender: Some(sender),
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
            // The writer only goes away at shutdown; a record logged after it is dropped.
            let _ = sender.send(line);
        }
    }

    /// Flushes every record logged so far and stops the writer.
    pub fn close(&self) {
        if let Some(sender) = &self.sender {
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
