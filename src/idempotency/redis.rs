//! The Redis store: keys shared by several baton instances. A key is claimed with
//! `SET NX PX`, so two instances can never both forward it; records are short binary
//! strings. When Redis cannot be reached, keyed requests are refused (503), and service
//! comes back by itself with Redis.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::store::Unavailable;
use super::{Record, StoredResponse};
use crate::store::redis::Redis;

/// How long one command may take before the store counts as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Keys are namespaced so that baton can share a Redis with other users.
const PREFIX: &str = "baton:idempotency:";

pub struct RedisStore {
    redis: Arc<Redis>,
}

impl RedisStore {
    pub fn new(redis: Arc<Redis>) -> RedisStore {
        RedisStore { redis }
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Unavailable> {
        self.redis
            .run(command, COMMAND_TIMEOUT)
            .await
            .map_err(|err| Unavailable(err.0))
    }

    pub async fn claim(
        &self,
        key: &str,
        fingerprint: u64,
        ttl: Duration,
    ) -> Result<Option<Record>, Unavailable> {
        let key = format!("{PREFIX}{key}");
        let ttl_ms = ttl.as_millis().max(1) as u64;
        // A record can expire between SET and GET; then claim again.
        for _ in 0..2 {
            let claimed: Option<String> = self
                .run(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(encode(&Record::InFlight { fingerprint }))
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms),
                )
                .await?;
            if claimed.is_some() {
                return Ok(None);
            }
            let existing: Option<Vec<u8>> = self.run(redis::cmd("GET").arg(&key)).await?;
            if let Some(bytes) = existing {
                return decode(&bytes)
                    .map(Some)
                    .ok_or_else(|| Unavailable(format!("an unreadable record under {key}")));
            }
        }
        Err(Unavailable(
            "a key kept changing while it was claimed".into(),
        ))
    }

    pub async fn put(&self, key: &str, record: &Record, ttl: Duration) -> Result<(), Unavailable> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.run::<()>(
            redis::cmd("SET")
                .arg(format!("{PREFIX}{key}"))
                .arg(encode(record))
                .arg("PX")
                .arg(ttl_ms),
        )
        .await
    }

    pub async fn release(&self, key: &str) -> Result<(), Unavailable> {
        self.run::<()>(redis::cmd("DEL").arg(format!("{PREFIX}{key}")))
            .await
    }
}

/// A record as bytes: a kind byte, the fingerprint, then for a stored answer the body
/// hash, the status, the headers and the body, each length-prefixed.
fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    match record {
        Record::InFlight { fingerprint } => {
            out.push(b'I');
            out.extend_from_slice(&fingerprint.to_be_bytes());
        }
        Record::Unknown { fingerprint } => {
            out.push(b'U');
            out.extend_from_slice(&fingerprint.to_be_bytes());
        }
        Record::Done {
            fingerprint,
            body_hash,
            response,
        } => {
            out.push(b'D');
            out.extend_from_slice(&fingerprint.to_be_bytes());
            out.push(u8::from(body_hash.is_some()));
            out.extend_from_slice(&body_hash.unwrap_or(0).to_be_bytes());
            out.push(u8::from(response.is_some()));
            if let Some(response) = response {
                out.extend_from_slice(&response.status.as_u16().to_be_bytes());
                out.extend_from_slice(&(response.headers.len() as u32).to_be_bytes());
                for (name, value) in &response.headers {
                    for part in [name.as_str().as_bytes(), value.as_bytes()] {
                        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                        out.extend_from_slice(part);
                    }
                }
                out.extend_from_slice(&response.body);
            }
        }
    }
    out
}

/// Reads what [`encode`] wrote; `None` for anything else (never a panic).
fn decode(bytes: &[u8]) -> Option<Record> {
    let mut reader = Reader(bytes);
    let kind = reader.take(1)?[0];
    let fingerprint = u64::from_be_bytes(reader.take(8)?.try_into().ok()?);
    match kind {
        b'I' => Some(Record::InFlight { fingerprint }),
        b'U' => Some(Record::Unknown { fingerprint }),
        b'D' => {
            let has_hash = reader.take(1)?[0] == 1;
            let hash = u64::from_be_bytes(reader.take(8)?.try_into().ok()?);
            let has_response = reader.take(1)?[0] == 1;
            let response = if has_response {
                let status = u16::from_be_bytes(reader.take(2)?.try_into().ok()?);
                let count = reader.u32()?;
                let mut headers = HeaderMap::new();
                for _ in 0..count {
                    let name = reader.take_len()?;
                    let value = reader.take_len()?;
                    headers.append(
                        HeaderName::from_bytes(name).ok()?,
                        HeaderValue::from_bytes(value).ok()?,
                    );
                }
                Some(StoredResponse {
                    status: StatusCode::from_u16(status).ok()?,
                    headers,
                    body: Bytes::copy_from_slice(reader.0),
                })
            } else {
                None
            };
            Some(Record::Done {
                fingerprint,
                body_hash: has_hash.then_some(hash),
                response,
            })
        }
        _ => None,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn take_len(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let done = Record::Done {
            fingerprint: 7,
            body_hash: Some(9),
            response: Some(StoredResponse {
                status: StatusCode::CREATED,
                headers,
                body: Bytes::from_static(b"made"),
            }),
        };
        match decode(&encode(&done)) {
            Some(Record::Done {
                fingerprint: 7,
                body_hash: Some(9),
                response: Some(response),
            }) => {
                assert_eq!(response.status, StatusCode::CREATED);
                assert_eq!(response.headers.get_all("x-a").iter().count(), 2);
                assert_eq!(response.body, "made");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(&encode(&Record::Unknown { fingerprint: 3 })),
            Some(Record::Unknown { fingerprint: 3 })
        ));
        let full = encode(&done);
        for cut in 0..full.len() - 4 {
            let _ = decode(&full[..cut]);
        }
        assert!(decode(b"").is_none());
        assert!(decode(b"Zxxxxxxxx").is_none());
    }
}
