//! A scriptable origin server on a real socket (hyper's HTTP/1.1 server): each request is
//! answered by a function of its head, which a test can change while it runs, and every
//! request head is kept for the test to look at.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One answer of the origin.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Waited before the head is sent.
    pub delay: Duration,
}

#[derive(Clone, Debug)]
pub enum ReplyBody {
    Bytes(Vec<u8>),
    /// `size` bytes of `x`, made as they are sent, with `Content-Length` when `sized`
    /// (chunked otherwise).
    Generated {
        size: u64,
        sized: bool,
    },
    /// `size` bytes of `x` with `Content-Length`, 16 KiB every `every`.
    Paced {
        size: u64,
        every: Duration,
    },
}

impl Reply {
    pub fn ok(body: &str, headers: &[(&str, &str)]) -> Reply {
        Reply::status(200, body, headers)
    }

    pub fn status(status: u16, body: &str, headers: &[(&str, &str)]) -> Reply {
        Reply {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: ReplyBody::Bytes(body.as_bytes().to_vec()),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Script = Arc<dyn Fn(&Parts) -> Reply + Send + Sync>;

/// The origin: answers with its script until dropped (or [`Origin::kill`]ed).
pub struct Origin {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Vec<Parts>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Origin {
    pub async fn start(script: impl Fn(&Parts) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Arc::new(script)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (task_script, task_seen) = (script.clone(), seen.clone());
        let task = tokio::spawn(async move {
            // Dropping the set when the task is aborted closes every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (script, seen) = (task_script.clone(), task_seen.clone());
                connections.spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let (script, seen) = (script.clone(), seen.clone());
                            async move {
                                let (parts, _) = request.into_parts();
                                let reply = {
                                    let script = script.lock().unwrap().clone();
                                    script(&parts)
                                };
                                seen.lock().unwrap().push(parts);
                                tokio::time::sleep(reply.delay).await;
                                Ok::<_, Infallible>(respond(reply))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Origin {
            addr,
            script,
            seen,
            task: Some(task),
        }
    }

    /// Answers every request with `reply`.
    pub async fn fixed(reply: Reply) -> Origin {
        Origin::start(move |_| reply.clone()).await
    }

    /// Answers from now on with `script`.
    pub fn set(&self, script: impl Fn(&Parts) -> Reply + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    /// Stops listening and closes every connection: connections are refused after this.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The request heads that arrived, oldest first.
    pub fn seen(&self) -> Vec<(http::Method, String, http::HeaderMap)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.method.clone(), p.uri.to_string(), p.headers.clone()))
            .collect()
    }
}

fn respond(reply: Reply) -> http::Response<Generated> {
    let body = match reply.body {
        ReplyBody::Bytes(bytes) => Generated {
            left: bytes.len() as u64,
            sized: true,
            fixed: Some(Bytes::from(bytes)),
            pace: None,
        },
        ReplyBody::Generated { size, sized } => Generated {
            left: size,
            sized,
            fixed: None,
            pace: None,
        },
        ReplyBody::Paced { size, every } => Generated {
            left: size,
            sized: true,
            fixed: None,
            pace: Some((every, Box::pin(tokio::time::sleep(every)))),
        },
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(reply.status).unwrap();
    for (name, value) in &reply.headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    response
}

const CHUNK: usize = 64 * 1024;

/// A body given whole, or made 64 KiB at a time (16 KiB at a pace, when paced).
pub struct Generated {
    left: u64,
    sized: bool,
    fixed: Option<Bytes>,
    pace: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

const PACED_CHUNK: usize = 16 * 1024;

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(bytes) = self.fixed.take() {
            self.left = 0;
            return Poll::Ready((!bytes.is_empty()).then(|| Ok(Frame::data(bytes))));
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let mut size = CHUNK;
        if let Some((every, sleep)) = self.pace.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = tokio::time::Instant::now() + *every;
            sleep.as_mut().reset(next);
            size = PACED_CHUNK;
        }
        let take = self.left.min(size as u64) as usize;
        self.left -= take as u64;
        static FILL: [u8; CHUNK] = [b'x'; CHUNK];
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..take])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.fixed.as_ref().is_none_or(|b| b.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}
