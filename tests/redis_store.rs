//! Idempotency keys in a real Redis: shared by two baton processes, refused (never
//! forwarded unguarded) while Redis is down, and back by themselves when it returns.

mod support;

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{request, Baton, BatonProcess, Upstream};

fn config(upstream: std::net::SocketAddr, redis: &RedisServer) -> String {
    support::simple_config(&[upstream], "idempotency = { ttl = \"1m\" }", "")
        + &format!(
            "\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        )
}

async fn post(addr: std::net::SocketAddr, key: &str) -> support::Response {
    request(
        addr,
        "POST",
        "/pay",
        &[("idempotency-key", key)],
        b"amount=5",
    )
    .await
}

/// Polls until `key` is replayed (the first answer is written to Redis just after it is
/// sent).
async fn replayed(addr: std::net::SocketAddr, key: &str) -> support::Response {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let response = post(addr, key).await;
        if response.header("baton-idempotent-replay") == Some("true") {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "no replay: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_baton_processes_share_keys() {
    let redis = RedisServer::start();
    let upstream = Upstream::slow_head(Duration::from_millis(300)).await;
    let a = BatonProcess::start(&config(upstream.addr, &redis));
    let b = BatonProcess::start(&config(upstream.addr, &redis));

    let (first, second) = tokio::join!(post(a.addr, "both"), post(b.addr, "both"));
    let statuses = [first.status(), second.status()];
    assert!(statuses.contains(&200), "{statuses:?}");
    assert_eq!(
        upstream.requests(),
        1,
        "the same key through two instances ran once"
    );

    assert_eq!(post(a.addr, "then").await.status(), 200);
    let replay = replayed(b.addr, "then").await;
    assert_eq!(replay.text(), "slow");
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_keyed_requests_are_refused_until_it_returns() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::sink().await;
    let baton = Baton::start(&config(upstream.addr, &redis)).await;
    assert_eq!(post(baton.addr, "before").await.status(), 200);
    let executed = upstream.requests();

    redis.stop();
    for i in 0..5 {
        let response = post(baton.addr, &format!("down-{i}")).await;
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.header("baton-error"),
            Some("idempotency-store-unavailable")
        );
        assert_eq!(response.header("baton-delivery"), Some("none"));
        assert!(response.header("retry-after").is_some());
    }
    assert_eq!(
        upstream.requests(),
        executed,
        "no keyed request went out unguarded"
    );
    let unkeyed = request(baton.addr, "POST", "/pay", &[], b"x").await;
    assert_eq!(unkeyed.status(), 200, "requests without a key still flow");

    let _redis = RedisServer::start_on(redis.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = post(baton.addr, "after").await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(
            Instant::now() < deadline,
            "keyed requests did not come back with Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    baton.stop().await;
}
