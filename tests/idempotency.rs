//! Idempotency keys (SPEC §8) on real sockets, each case run with both stores: memory, and
//! a real redis-server started for the case.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{request, Baton, Response, Upstream};

#[derive(Clone, Copy)]
enum Store {
    Memory,
    Redis,
}

/// Baton with `route_extra` on its one route, in front of `upstreams`, keeping keys in
/// `store`. The Redis server, if any, lives as long as the returned value.
async fn keyed_baton(
    store: Store,
    upstreams: &[SocketAddr],
    route_extra: &str,
) -> (Baton, Option<RedisServer>) {
    let mut config = support::simple_config(upstreams, route_extra, "");
    let redis = match store {
        Store::Memory => None,
        Store::Redis => {
            let redis = RedisServer::start();
            config += &format!(
                "\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n",
                redis.url()
            );
            Some(redis)
        }
    };
    (Baton::start(&config).await, redis)
}

const KEYED: &str = "idempotency = { ttl = \"1m\" }";

async fn post(baton: &Baton, path: &str, key: &str, body: &[u8]) -> Response {
    request(baton.addr, "POST", path, &[("idempotency-key", key)], body).await
}

/// Repeats a POST until `done` holds for the answer: the Redis store settles a key just
/// after the answer goes out, so a repeat right away may still find it in flight.
async fn post_until(
    baton: &Baton,
    path: &str,
    key: &str,
    body: &[u8],
    done: impl Fn(&Response) -> bool,
) -> Response {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let response = post(baton, path, key, body).await;
        if done(&response) {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting: {} {:?}",
            response.status(),
            response.header("baton-error")
        );
        assert_eq!(
            response.header("baton-error"),
            Some("idempotency-key-in-flight")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

macro_rules! with_both_stores {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$case(super::Store::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$case(super::Store::Redis).await
            }
        }
    )*};
}

with_both_stores!(
    fifty_concurrent_posts_with_one_key_reach_the_upstream_once,
    a_key_reused_for_another_request_is_422,
    an_unknown_outcome_is_rejected,
    an_unknown_outcome_is_forwarded_when_asked,
    a_key_is_released_when_nothing_was_sent,
    a_key_expires_after_its_ttl,
);

async fn a_key_expires_after_its_ttl(store: Store) {
    let upstream = Upstream::sink().await;
    let (baton, _redis) =
        keyed_baton(store, &[upstream.addr], "idempotency = { ttl = \"500ms\" }").await;
    assert_eq!(post(&baton, "/pay", "t", b"x").await.status(), 200);
    let replay = post_until(&baton, "/pay", "t", b"x", |r| r.status() != 409).await;
    assert_eq!(replay.header("baton-idempotent-replay"), Some("true"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = post(&baton, "/pay", "t", b"x").await;
    assert_eq!(after.status(), 200);
    assert_eq!(
        after.header("baton-idempotent-replay"),
        None,
        "forgotten after the TTL"
    );
    assert_eq!(upstream.requests(), 2);
    baton.stop().await;
}

async fn fifty_concurrent_posts_with_one_key_reach_the_upstream_once(store: Store) {
    let upstream = Upstream::slow_head(Duration::from_millis(300)).await;
    let (baton, _redis) = keyed_baton(store, &[upstream.addr], KEYED).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let addr = baton.addr;
        clients.push(tokio::spawn(async move {
            request(
                addr,
                "POST",
                "/pay",
                &[("idempotency-key", "order-1")],
                b"amount=5",
            )
            .await
        }));
    }
    let (mut ok, mut in_flight) = (0, 0);
    for client in clients {
        let response = client.await.unwrap();
        match response.status() {
            200 => {
                assert_eq!(response.text(), "slow");
                ok += 1;
            }
            409 => {
                assert_eq!(
                    response.header("baton-error"),
                    Some("idempotency-key-in-flight")
                );
                assert_eq!(response.header("baton-delivery"), Some("none"));
                in_flight += 1;
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    assert_eq!(upstream.requests(), 1, "one execution for one key");
    assert_eq!(ok + in_flight, 50);
    assert!(ok >= 1);

    let replay = post_until(&baton, "/pay", "order-1", b"amount=5", |r| {
        r.header("baton-idempotent-replay") == Some("true")
    })
    .await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.text(), "slow");
    assert_eq!(
        upstream.requests(),
        1,
        "a replay does not reach the upstream"
    );
    baton.stop().await;
}

async fn a_key_reused_for_another_request_is_422(store: Store) {
    let upstream = Upstream::sink().await;
    let (baton, _redis) = keyed_baton(store, &[upstream.addr], KEYED).await;
    assert_eq!(post(&baton, "/pay", "k", b"amount=5").await.text(), "8");
    let other_body = post_until(&baton, "/pay", "k", b"amount=6", |r| r.status() != 409).await;
    assert_eq!(other_body.status(), 422);
    assert_eq!(
        other_body.header("baton-error"),
        Some("idempotency-key-reused")
    );
    let other_path = post(&baton, "/refund", "k", b"amount=5").await;
    assert_eq!(other_path.status(), 422);
    let same = post(&baton, "/pay", "k", b"amount=5").await;
    assert_eq!(same.header("baton-idempotent-replay"), Some("true"));
    assert_eq!(upstream.requests(), 1);
    let unkeyed = request(baton.addr, "POST", "/pay", &[], b"amount=5").await;
    assert_eq!(unkeyed.status(), 200);
    assert_eq!(
        upstream.requests(),
        2,
        "requests without a key are not keyed"
    );
    baton.stop().await;
}

async fn an_unknown_outcome_is_rejected(store: Store) {
    let resetting = Upstream::reset_before_head().await;
    let (baton, _redis) = keyed_baton(store, &[resetting.addr], KEYED).await;
    let first = post(&baton, "/pay", "u1", b"x").await;
    assert_eq!(first.status(), 502);
    assert_eq!(first.header("baton-delivery"), Some("sent"));
    let repeat = post_until(&baton, "/pay", "u1", b"x", |r| {
        r.status() != 409 || r.header("baton-error") != Some("idempotency-key-in-flight")
    })
    .await;
    assert_eq!(repeat.status(), 409);
    assert_eq!(
        repeat.header("baton-error"),
        Some("idempotency-outcome-unknown")
    );
    assert_eq!(resetting.requests(), 1);
    baton.stop().await;
}

async fn an_unknown_outcome_is_forwarded_when_asked(store: Store) {
    let resetting = Upstream::reset_before_head().await;
    let (baton, _redis) = keyed_baton(
        store,
        &[resetting.addr],
        "idempotency = { on_unknown = \"forward\" }",
    )
    .await;
    assert_eq!(post(&baton, "/pay", "u2", b"x").await.status(), 502);
    let repeat = post_until(&baton, "/pay", "u2", b"x", |r| r.status() != 409).await;
    assert_eq!(repeat.status(), 502);
    assert_eq!(
        resetting.requests(),
        2,
        "forwarded again for an upstream that deduplicates"
    );
    baton.stop().await;
}

async fn a_key_is_released_when_nothing_was_sent(store: Store) {
    let refusing = Upstream::refusing().await;
    let (baton, _redis) = keyed_baton(store, &[refusing.addr], KEYED).await;
    let first = post(&baton, "/pay", "r1", b"x").await;
    assert_eq!(
        first.header("baton-error"),
        Some("upstream-connect-refused")
    );
    assert_eq!(first.header("baton-delivery"), Some("none"));
    let repeat = post_until(&baton, "/pay", "r1", b"x", |r| r.status() != 409).await;
    assert_eq!(
        repeat.header("baton-error"),
        Some("upstream-connect-refused"),
        "tried again, not 409: the key was released"
    );
    let metrics = support::admin_get(&baton, "/metrics").await.text();
    assert!(
        metrics.contains("baton_idempotency_total{route=\"main\",result=\"released\"} 2"),
        "{metrics}"
    );
    baton.stop().await;
}
