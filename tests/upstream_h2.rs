//! HTTP/2 to upstreams (SPEC §2 `protocol`, §6): h2c by prior knowledge and h2 over TLS by
//! ALPN, many requests multiplexed on one connection, a second connection when the
//! upstream's stream limit is reached, and refused streams and graceful GOAWAYs retried
//! with nothing processed twice.

mod support;

use std::time::Duration;

use support::h2::{H2Upstream, RawH2Upstream, RawScenario};
use support::tls::{self, TestCa};
use support::{get, request, simple_config, Baton, TempDir};

async fn baton_h2c(addrs: &[std::net::SocketAddr], extra: &str) -> Baton {
    Baton::start(&simple_config(
        addrs,
        "",
        &format!("protocol = \"h2c\"\n{extra}"),
    ))
    .await
}

/// `count` GETs at once over HTTP/1.1, each on its own connection; their bodies.
async fn concurrent_gets(baton: &Baton, count: usize) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let addr = baton.addr;
        tasks.spawn(async move { get(addr, "/").await.text() });
    }
    let mut bodies = Vec::new();
    while let Some(body) = tasks.join_next().await {
        bodies.push(body.unwrap());
    }
    bodies
}

#[tokio::test]
async fn h2c_requests_share_one_connection() {
    let upstream = H2Upstream::start(Duration::from_millis(200), 100, None).await;
    let baton = baton_h2c(&[upstream.addr], "").await;
    let bodies = concurrent_gets(&baton, 20).await;
    assert!(bodies.iter().all(|b| b == "h2 ok"), "{bodies:?}");
    assert_eq!(upstream.requests(), 20);
    assert_eq!(upstream.connections(), 1);
    assert!(
        upstream
            .most_streams
            .load(std::sync::atomic::Ordering::SeqCst)
            > 1
    );
    let seen = upstream.requests.lock().unwrap()[0].clone();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(seen.headers.contains_key("x-request-id"));
    assert_eq!(seen.headers["via"], "1.1 baton");
}

#[tokio::test]
async fn a_second_connection_opens_at_the_upstreams_stream_limit() {
    let upstream = H2Upstream::start(Duration::from_millis(300), 5, None).await;
    let baton = baton_h2c(&[upstream.addr], "").await;
    let bodies = concurrent_gets(&baton, 20).await;
    assert!(bodies.iter().all(|b| b == "h2 ok"), "{bodies:?}");
    assert!(
        upstream
            .most_streams
            .load(std::sync::atomic::Ordering::SeqCst)
            <= 5
    );
    assert!(
        upstream.connections() >= 4,
        "{} connections",
        upstream.connections()
    );
}

#[tokio::test]
async fn h2_over_tls_by_alpn() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend ca");
    ca.write(&dir, "ca.pem");
    let leaf = ca.leaf(&dir, "backend", &["backend.test"]);
    let server = tls::server_config(&leaf, None, &[b"h2"]);
    let upstream = H2Upstream::start(Duration::ZERO, 100, Some(server)).await;
    let config = simple_config(
        &[upstream.addr],
        "",
        "protocol = \"h2\"\ntls = { sni = \"backend.test\", ca = \"ca.pem\" }",
    );
    let baton = Baton::start_in(dir, &config).await;
    for _ in 0..3 {
        assert_eq!(get(baton.addr, "/").await.text(), "h2 ok");
    }
    assert_eq!(upstream.connections(), 1);
    let seen = upstream.requests.lock().unwrap()[0].clone();
    assert_eq!(seen.uri.scheme_str(), Some("https"));

    // An upstream that does not speak h2 by ALPN is a TLS failure, nothing sent.
    let dir = TempDir::new();
    ca.write(&dir, "ca.pem");
    let leaf = ca.leaf(&dir, "backend", &["backend.test"]);
    let http1_only = support::Upstream::ok_tls("h1", &leaf, None).await;
    let config = simple_config(
        &[http1_only.addr],
        "",
        "protocol = \"h2\"\ntls = { sni = \"backend.test\", ca = \"ca.pem\" }",
    );
    let baton = Baton::start_in(dir, &config).await;
    let response = get(baton.addr, "/").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.header("baton-error"), Some("upstream-tls-failed"));
    assert_eq!(http1_only.requests(), 0);
}

#[tokio::test]
async fn a_refused_stream_is_retried_and_answered_once() {
    let upstream = RawH2Upstream::start(RawScenario::RefuseFirst).await;
    let baton = baton_h2c(&[upstream.addr], "").await;
    // A POST is not idempotent: only a refusal that guarantees nothing was processed
    // lets it go again.
    let response = request(baton.addr, "POST", "/", &[], b"").await;
    assert_eq!(response.status(), 200, "{}", response.text());
    assert_eq!(response.text(), "raw ok");
    assert_eq!(upstream.turned_away(), 1);
    assert_eq!(upstream.answered(), 1);
}

#[tokio::test]
async fn streams_past_a_graceful_goaway_are_retried_and_answered_once() {
    let upstream = RawH2Upstream::start(RawScenario::GoawayAfter(1)).await;
    let baton = baton_h2c(&[upstream.addr], "").await;
    for _ in 0..3 {
        let response = request(baton.addr, "POST", "/", &[], b"").await;
        assert_eq!(response.status(), 200, "{}", response.text());
    }
    assert_eq!(upstream.answered(), 3);
    assert!(
        upstream.turned_away() >= 1,
        "the GOAWAY never came into play"
    );
}

#[tokio::test]
async fn an_h2_client_reaches_an_h2_upstream() {
    let upstream = H2Upstream::start(Duration::ZERO, 100, None).await;
    let baton = baton_h2c(&[upstream.addr], "").await;
    let (code, out, err) = tls::run(
        "curl",
        vec![
            "-sS".into(),
            "--http2-prior-knowledge".into(),
            format!("http://{}/x?y=1", baton.addr),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "h2 ok");
    let seen = upstream.requests.lock().unwrap()[0].clone();
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/x?y=1");
    assert_eq!(seen.headers["via"], "2 baton");
}

#[tokio::test]
async fn an_upgrade_request_goes_to_an_h2_upstream_as_a_plain_request() {
    let upstream = H2Upstream::start(Duration::ZERO, 100, None).await;
    let baton = baton_h2c(&[upstream.addr], "").await;
    let response = support::send_raw(
        baton.addr,
        b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "h2 ok");
    let seen = upstream.requests.lock().unwrap()[0].clone();
    assert!(!seen.headers.contains_key("upgrade"), "{:?}", seen.headers);
    assert!(
        !seen.headers.contains_key("connection"),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn requests_do_not_queue_behind_a_connect_that_hangs() {
    // Connects to this upstream never complete: its listen backlog is full.
    let hanging = support::Upstream::full_backlog().await;
    let config = simple_config(
        &[hanging.addr],
        "timeouts = { connect = \"300ms\" }",
        "protocol = \"h2c\"",
    );
    let baton = Baton::start(&config).await;
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let addr = baton.addr;
        tasks.spawn(async move { get(addr, "/").await });
    }
    while let Some(response) = tasks.join_next().await {
        let response = response.unwrap();
        assert_eq!(response.status(), 504);
        assert_eq!(
            response.header("baton-error"),
            Some("upstream-connect-timeout")
        );
    }
    // One after another they would take 10 × 300 ms.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
