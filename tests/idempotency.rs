//! Idempotency keys (SPEC §8) with the memory store, on real sockets.

mod support;

use std::time::Duration;

use support::{request, Baton, Upstream};

const KEYED: &str = "idempotency = { ttl = \"1m\" }";

async fn post(baton: &Baton, path: &str, key: &str, body: &[u8]) -> support::Response {
    request(baton.addr, "POST", path, &[("idempotency-key", key)], body).await
}

#[tokio::test]
async fn fifty_concurrent_posts_with_one_key_reach_the_upstream_once() {
    let upstream = Upstream::slow_head(Duration::from_millis(300)).await;
    let baton = Baton::in_front_of(&[upstream.addr], KEYED, "").await;
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

    let replay = post(&baton, "/pay", "order-1", b"amount=5").await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.text(), "slow");
    assert_eq!(replay.header("baton-idempotent-replay"), Some("true"));
    assert_eq!(
        upstream.requests(),
        1,
        "a replay does not reach the upstream"
    );
    baton.stop().await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_422() {
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], KEYED, "").await;
    assert_eq!(post(&baton, "/pay", "k", b"amount=5").await.text(), "8");
    let other_body = post(&baton, "/pay", "k", b"amount=6").await;
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

#[tokio::test]
async fn an_unknown_outcome_is_rejected_or_forwarded_as_configured() {
    let resetting = Upstream::reset_before_head().await;
    let baton = Baton::in_front_of(&[resetting.addr], KEYED, "").await;
    let first = post(&baton, "/pay", "u1", b"x").await;
    assert_eq!(first.status(), 502);
    assert_eq!(first.header("baton-delivery"), Some("sent"));
    let repeat = post(&baton, "/pay", "u1", b"x").await;
    assert_eq!(repeat.status(), 409);
    assert_eq!(
        repeat.header("baton-error"),
        Some("idempotency-outcome-unknown")
    );
    assert_eq!(resetting.requests(), 1);
    baton.stop().await;

    let resetting = Upstream::reset_before_head().await;
    let baton = Baton::in_front_of(
        &[resetting.addr],
        "idempotency = { on_unknown = \"forward\" }",
        "",
    )
    .await;
    assert_eq!(post(&baton, "/pay", "u2", b"x").await.status(), 502);
    assert_eq!(post(&baton, "/pay", "u2", b"x").await.status(), 502);
    assert_eq!(
        resetting.requests(),
        2,
        "forwarded again for an upstream that deduplicates"
    );
    baton.stop().await;
}

#[tokio::test]
async fn a_key_is_released_when_nothing_was_sent() {
    let refusing = Upstream::refusing().await;
    let baton = Baton::in_front_of(&[refusing.addr], KEYED, "").await;
    let first = post(&baton, "/pay", "r1", b"x").await;
    assert_eq!(
        first.header("baton-error"),
        Some("upstream-connect-refused")
    );
    assert_eq!(first.header("baton-delivery"), Some("none"));
    let repeat = post(&baton, "/pay", "r1", b"x").await;
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
