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
    a_replay_carries_its_own_request_id,
);

async fn a_replay_carries_its_own_request_id(store: Store) {
    let upstream = Upstream::sink().await;
    let (baton, _redis) = keyed_baton(store, &[upstream.addr], KEYED).await;
    let first = post(&baton, "/pay", "id", b"x").await;
    assert_eq!(first.status(), 200);
    let first_id = first.header("x-request-id").expect("an ID").to_owned();
    let replay = post_until(&baton, "/pay", "id", b"x", |r| r.status() != 409).await;
    assert_eq!(replay.header("baton-idempotent-replay"), Some("true"));
    let ids = replay.head.header_all("x-request-id");
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(
        ids[0], first_id,
        "the replay's own request, not the stored one's"
    );
    assert_eq!(upstream.requests(), 1);
    baton.stop().await;
}

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

/// SPEC §8: the memory store holds at most `[store] max_bytes`, however many keys clients
/// invent; the oldest settled records go first, and are counted.
#[tokio::test]
async fn fresh_keys_evict_the_oldest_settled_records_within_max_bytes() {
    let upstream = Upstream::ok("paid").await;
    let config =
        support::simple_config(&[upstream.addr], KEYED, "") + "\n[store]\nmax_bytes = \"64KiB\"\n";
    let baton = Baton::start(&config).await;
    let keys = 1_000;
    for i in 0..keys {
        let response = post(
            &baton,
            "/pay",
            &format!("key-{i:04}-{}", "k".repeat(100)),
            b"1",
        )
        .await;
        assert_eq!(response.status(), 200, "key {i}");
    }
    let metrics = support::admin_get(&baton, "/metrics").await.text();
    let evictions: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("baton_store_evictions_total "))
        .and_then(|n| n.parse().ok())
        .expect("the evictions counter");
    assert!(evictions > 500, "{evictions} of {keys} records evicted");
    let store = &support::status_json(&baton).await["store"];
    assert_eq!(store["max_bytes"], 65536);
    assert!(store["bytes"].as_u64().unwrap() <= 65536, "{store}");
    assert!(store["records"].as_u64().unwrap() < 500, "{store}");
    // The newest answer is still replayed; the oldest was given up.
    let newest = format!("key-{:04}-{}", keys - 1, "k".repeat(100));
    let replay = post(&baton, "/pay", &newest, b"1").await;
    assert_eq!(replay.header("baton-idempotent-replay"), Some("true"));
    assert_eq!(upstream.requests(), keys);
    baton.stop().await;
}

/// When keys still in flight fill the store, a new keyed request is refused at once with
/// 503 `idempotency-store-unavailable`, and nothing of it is sent.
#[tokio::test]
async fn keys_in_flight_that_fill_the_store_refuse_new_ones() {
    let slow = Upstream::slow_head(Duration::from_millis(1500)).await;
    let config =
        support::simple_config(&[slow.addr], KEYED, "") + "\n[store]\nmax_bytes = \"64KiB\"\n";
    let baton = Baton::start(&config).await;
    let addr = baton.addr;
    let tasks: Vec<_> = (0..160)
        .map(|i| {
            tokio::spawn(async move {
                let key = format!("{i:03}{}", "k".repeat(240));
                let started = Instant::now();
                let response =
                    request(addr, "POST", "/pay", &[("idempotency-key", &key)], b"1").await;
                (response, started.elapsed())
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (response, took) = task.await.unwrap();
        match response.status() {
            200 => ok += 1,
            503 => {
                assert_eq!(
                    response.header("baton-error"),
                    Some("idempotency-store-unavailable")
                );
                assert_eq!(response.header("baton-delivery"), Some("none"));
                assert!(
                    took < Duration::from_millis(1000),
                    "refused at once: {took:?}"
                );
                refused += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} answered, {refused} refused");
    assert_eq!(slow.requests(), ok, "nothing of a refused request was sent");
    baton.stop().await;
}
