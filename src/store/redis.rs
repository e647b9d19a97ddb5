//! The Redis shared by several baton instances: one multiplexed connection, made on first
//! use and made again by itself after Redis went away. Keys are namespaced under `baton:`
//! so that baton can share a Redis with other users.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a command may take at most, whatever its caller allows.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Redis could not be reached, or failed the command.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RedisError(pub String);

pub struct Redis {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    /// `baton_store_errors_total`: commands that failed, and requests whose check was
    /// skipped because Redis had just failed.
    pub errors: Counter,
}

impl Redis {
    pub fn new(url: &str, errors: Counter) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|err| err.to_string())?;
        Ok(Redis {
            client,
            connection: Mutex::new(None),
            errors,
        })
    }

    /// The shared connection, made on first use; it reconnects by itself afterwards.
    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT + RESPONSE_TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| RedisError("connecting to Redis timed out".into()))?
        .map_err(|err| RedisError(err.to_string()))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `command`, failing if it takes longer than `timeout`.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T, RedisError> {
        let result = async {
            let mut connection = self.connection().await?;
            tokio::time::timeout(timeout, command.query_async(&mut connection))
                .await
                .map_err(|_| RedisError("a Redis command timed out".into()))?
                .map_err(|err| RedisError(err.to_string()))
        }
        .await;
        self.count(result)
    }

    fn count<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if result.is_err() {
            self.errors.inc();
        }
        result
    }

    /// Runs a Lua script by its digest, loading it first when Redis does not know it
    /// (one round trip once loaded).
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T, RedisError> {
        let result = async {
            let mut connection = self.connection().await?;
            tokio::time::timeout(timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| RedisError("a Redis script timed out".into()))?
                .map_err(|err| RedisError(err.to_string()))
        }
        .await;
        self.count(result)
    }
}
