//! Retries (SPEC §6) on real sockets: what is retried, what is not, and the budget.

mod support;

use std::time::{Duration, Instant};

use support::{get, request, Baton, Upstream};

const ROUND_ROBIN: &str = "balance = \"round-robin\"";

#[tokio::test]
async fn a_get_reset_after_send_succeeds_on_another_endpoint() {
    let resetting = Upstream::reset_before_head().await;
    let ok = Upstream::ok("from b").await;
    let baton = Baton::in_front_of(&[resetting.addr, ok.addr], "", ROUND_ROBIN).await;
    let response = get(baton.addr, "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "from b");
    assert_eq!((resetting.requests(), ok.requests()), (1, 1));
    let metrics = support::admin_get(&baton, "/metrics").await.text();
    assert!(
        metrics.contains("baton_retries_total{route=\"main\"} 1"),
        "{metrics}"
    );
    baton.stop().await;
}

#[tokio::test]
async fn a_get_with_a_body_that_timed_out_is_sent_whole_to_another_endpoint() {
    let slow = Upstream::slow_head(Duration::from_secs(5)).await;
    let ok = Upstream::sink().await;
    let baton = Baton::in_front_of(
        &[slow.addr, ok.addr],
        "timeouts = { response_header = \"300ms\" }",
        ROUND_ROBIN,
    )
    .await;
    let response = request(
        baton.addr,
        "GET",
        "/",
        &[("x-trace", "t1")],
        b"twelve bytes",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "12", "the body went again, whole");
    let seen = ok.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("x-trace"),
        Some("t1"),
        "the head went again, whole"
    );
    assert_eq!(slow.requests(), 1);
    baton.stop().await;
}

#[tokio::test]
async fn a_post_reset_after_send_is_not_retried() {
    let resetting = Upstream::reset_before_head().await;
    let ok = Upstream::ok("from b").await;
    let baton = Baton::in_front_of(&[resetting.addr, ok.addr], "", ROUND_ROBIN).await;
    let response = request(baton.addr, "POST", "/pay", &[], b"amount=1").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.header("baton-error"), Some("upstream-reset"));
    assert_eq!(response.header("baton-delivery"), Some("sent"));
    assert_eq!(
        (resetting.requests(), ok.requests()),
        (1, 0),
        "sent once, never again"
    );
    baton.stop().await;
}

#[tokio::test]
async fn non_idempotent_retries_post_when_asked_to() {
    let resetting = Upstream::reset_before_head().await;
    let ok = Upstream::sink().await;
    let baton = Baton::in_front_of(
        &[resetting.addr, ok.addr],
        "retry = { non_idempotent = true }",
        ROUND_ROBIN,
    )
    .await;
    let response = request(baton.addr, "POST", "/", &[], b"12345").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "5", "the whole body was sent again");
    baton.stop().await;
}

#[tokio::test]
async fn a_body_larger_than_buffer_bytes_is_not_retried_after_send() {
    let resetting = Upstream::reset_before_head().await;
    let ok = Upstream::sink().await;
    let baton = Baton::in_front_of(
        &[resetting.addr, ok.addr],
        "retry = { buffer_bytes = \"1KiB\" }",
        ROUND_ROBIN,
    )
    .await;
    let response = request(baton.addr, "PUT", "/file", &[], &[b'x'; 4096]).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.header("baton-delivery"), Some("sent"));
    assert_eq!(ok.requests(), 0, "a streamed body cannot be sent twice");
    let small = request(baton.addr, "PUT", "/file", &[], &[b'x'; 512]).await;
    assert_eq!(
        small.status(),
        200,
        "a body that fits the buffer is retried"
    );
    baton.stop().await;
}

#[tokio::test]
async fn the_last_cause_and_the_strongest_delivery_are_reported() {
    let refusing = Upstream::refusing().await;
    let resetting = Upstream::reset_before_head().await;
    let baton = Baton::in_front_of(
        &[resetting.addr, refusing.addr],
        "retry = { attempts = 2 }",
        ROUND_ROBIN,
    )
    .await;
    let response = get(baton.addr, "/").await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.header("baton-error"),
        Some("upstream-connect-refused")
    );
    assert_eq!(
        response.header("baton-delivery"),
        Some("sent"),
        "one try was sent"
    );
    baton.stop().await;
}

/// Every endpoint fails after send; the attempts stay within the requests plus the budget
/// (20% of them, plus 3 a second over the budget's 10-second window). The run is kept under
/// 9 s so that it spans at most 10 whole seconds: none of its retries leave the window, and
/// the bound is exact.
#[tokio::test]
async fn retries_stay_within_the_budget() {
    let a = Upstream::reset_before_head().await;
    let b = Upstream::reset_before_head().await;
    let baton = Baton::in_front_of(
        &[a.addr, b.addr],
        "",
        "balance = \"round-robin\"\noutlier = { consecutive_failures = 0 }",
    )
    .await;
    let started = Instant::now();
    let mut requests = 0u64;
    while started.elapsed() < Duration::from_secs(8) {
        let response = get(baton.addr, "/").await;
        assert_eq!(response.status(), 502);
        requests += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = (a.requests() + b.requests()) as u64;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the run outlasted the window"
    );
    let budget = requests * 20 / 100 + 3 * 10;
    eprintln!("{requests} requests, {attempts} attempts, budget {budget} retries");
    assert!(attempts > requests, "some retries were made");
    assert!(
        attempts <= requests + budget,
        "{attempts} attempts for {requests} requests exceed the budget of {budget}"
    );
    assert!(
        attempts < requests * 3,
        "without a budget, every request would try 3 times"
    );
    baton.stop().await;
}
