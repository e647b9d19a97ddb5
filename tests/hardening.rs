//! Hardening (SPEC §13): heads that must not reach an upstream, answers that must not reach
//! a client, and what a request costs when an endpoint hangs.

mod support;

use std::time::{Duration, Instant};

use baton::guard::Stage;
use support::{get, read_response, request, send_raw, Baton, Upstream};

#[tokio::test]
async fn an_invalid_host_is_400_and_never_forwarded() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    for host in [
        "a b",
        "a/b",
        "exa<mple",
        "user@example.test",
        "[::1",
        "a:8080x",
        "a:1:2",
    ] {
        let head = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
        let response = send_raw(baton.addr, head.as_bytes()).await;
        assert_eq!(response.status(), 400, "Host: {host}");
        assert_eq!(response.header("baton-error"), Some("bad-request"));
    }
    // An absolute-form target's authority is checked as well.
    let response = send_raw(
        baton.addr,
        b"GET http://exa%zzmple/ HTTP/1.1\r\nhost: example.test\r\n\r\n",
    )
    .await;
    assert_eq!(response.status(), 400, "an authority with a bad escape");
    assert_eq!(upstream.requests(), 0, "nothing was forwarded");
    for host in [
        "example.test:8080",
        "[::1]:80",
        "127.0.0.1",
        "xn--bcher-kva.example",
        "a_b",
    ] {
        let head = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let response = send_raw(baton.addr, head.as_bytes()).await;
        assert_eq!(response.status(), 200, "Host: {host}");
    }
    baton.stop().await;
}

/// An h2c upgrade through a proxy lets a client talk HTTP/2 straight to the back-end, past
/// the proxy's rules; baton drops it and forwards a plain request.
#[tokio::test]
async fn an_h2c_upgrade_is_never_forwarded() {
    let upstream = Upstream::ok("plain").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let heads = [
        "GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        // Settings not named by Connection, and h2c among other protocols.
        "GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket, H2C\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ];
    for head in heads {
        let response = send_raw(baton.addr, head.as_bytes()).await;
        assert_eq!(response.status(), 200, "{head:?}");
        assert_eq!(response.text(), "plain");
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for head in seen {
        assert_eq!(head.header("upgrade"), None, "{head:?}");
        assert_eq!(head.header("http2-settings"), None, "{head:?}");
        assert!(
            !head.header("connection").unwrap_or("").contains("pgrade"),
            "{head:?}"
        );
    }
    baton.stop().await;
}

#[tokio::test]
async fn a_status_outside_100_to_599_is_an_invalid_response() {
    for status in ["600", "999"] {
        let answer = format!("HTTP/1.1 {status} Odd\r\ncontent-length: 2\r\n\r\nhi");
        let upstream = Upstream::raw(answer.as_bytes()).await;
        let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
        let response = get(baton.addr, "/").await;
        assert_eq!(response.status(), 502, "status {status}");
        assert_eq!(
            response.header("baton-error"),
            Some("upstream-invalid-response")
        );
        baton.stop().await;
    }
}

/// SPEC §6: an endpoint that timed out for a request is never tried again for it, so the
/// client waits for one timeout, not one per attempt.
#[tokio::test]
async fn a_timed_out_endpoint_is_not_tried_again_for_the_request() {
    let hanging = Upstream::hang().await;
    let baton = Baton::in_front_of(
        &[hanging.addr],
        "timeouts = { response_header = \"400ms\" }",
        "",
    )
    .await;
    let started = Instant::now();
    let response = get(baton.addr, "/").await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 504);
    assert_eq!(
        response.header("baton-error"),
        Some("upstream-response-timeout")
    );
    assert_eq!(hanging.requests(), 1, "tried once");
    assert!(waited < Duration::from_millis(1100), "waited {waited:?}");
    // With two endpoints, the other one is tried, and only once each.
    let other = Upstream::hang().await;
    let baton2 = Baton::in_front_of(
        &[hanging.addr, other.addr],
        "timeouts = { response_header = \"400ms\" }",
        "balance = \"round-robin\"",
    )
    .await;
    let response = get(baton2.addr, "/").await;
    assert_eq!(response.status(), 504);
    assert_eq!((hanging.requests(), other.requests()), (2, 1));
    baton2.stop().await;
    baton.stop().await;
}

/// A bug that panics costs the request that met it a 500 `internal-error` with the delivery
/// known so far; the panic is counted, and every other connection goes on.
#[tokio::test]
async fn a_panic_costs_its_request_a_500_and_nothing_else() {
    let upstream = Upstream::ok("fine").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    baton::guard::trigger("/panic-before", Stage::BeforeUpstream);
    baton::guard::trigger("/panic-after", Stage::AfterUpstream);
    let keep_alive = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut other = baton.connect().await;
    other.write_all(keep_alive).await.unwrap();
    assert_eq!(read_response(&mut other, "GET").await.status(), 200);

    let json = [("accept", "application/json")];
    let response = request(baton.addr, "POST", "/panic-before", &json, b"pay").await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.header("baton-error"), Some("internal-error"));
    assert_eq!(response.header("baton-delivery"), Some("none"));
    assert!(response.header("x-request-id").is_some());
    let problem: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(problem["cause"], "internal-error");
    assert_eq!(upstream.requests(), 1, "nothing was sent for it");

    let response = request(baton.addr, "POST", "/panic-after", &json, b"pay").await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.header("baton-delivery"), Some("sent"));
    assert_eq!(upstream.requests(), 2, "the upstream had it");

    other.write_all(keep_alive).await.unwrap();
    let response = read_response(&mut other, "GET").await;
    assert_eq!(response.status(), 200, "the other connection went on");
    assert_eq!(response.text(), "fine");
    let metrics = support::admin_get(&baton, "/metrics").await.text();
    assert!(metrics.contains("baton_panics_total 2"), "{metrics}");
    assert!(
        metrics.contains("baton_requests_total{route=\"main\",code=\"500\"} 2"),
        "{metrics}"
    );
    baton.stop().await;
}

/// RFC 9112 §3.2: a gateway serves origin-form and absolute-form targets (and `*` for
/// OPTIONS); a bare authority or another scheme is refused before anything is forwarded,
/// and so is CONNECT, which asks for a tunnel baton does not give.
#[tokio::test]
async fn only_targets_a_gateway_serves_are_forwarded() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    for line in [
        "GET example.test HTTP/1.1",
        "GET example.test:80 HTTP/1.1",
        "GET * HTTP/1.1",
        "GET ftp://example.test/ HTTP/1.1",
        "CONNECT example.test:443 HTTP/1.1",
    ] {
        let head = format!("{line}\r\nhost: example.test\r\n\r\n");
        let response = send_raw(baton.addr, head.as_bytes()).await;
        assert_eq!(response.status(), 400, "{line}");
    }
    assert_eq!(upstream.requests(), 0);
    for line in [
        "GET /a?b HTTP/1.1",
        "GET http://example.test/a HTTP/1.1",
        "OPTIONS * HTTP/1.1",
    ] {
        let head = format!("{line}\r\nhost: example.test\r\nconnection: close\r\n\r\n");
        let response = send_raw(baton.addr, head.as_bytes()).await;
        assert_eq!(response.status(), 200, "{line}");
    }
    let paths: Vec<String> = upstream.seen().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, ["/a?b", "/a", "*"]);
    baton.stop().await;
}

/// Over HTTP/2 too: the stream that met the panic gets its 500, and the other streams of
/// the same connection go on.
#[tokio::test]
async fn a_panic_on_an_h2c_stream_leaves_the_connection_serving() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let upstream = Upstream::ok("fine").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    baton::guard::trigger("/panic-h2", Stage::BeforeUpstream);
    let stream = tokio::net::TcpStream::connect(baton.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let get = |path: &str| {
        http::Request::get(format!("http://a{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let response = sender.send_request(get("/panic-h2")).await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["baton-error"], "internal-error");
    let response = sender.send_request(get("/")).await.unwrap();
    assert_eq!(response.status(), 200, "the connection goes on");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"fine");
    baton.stop().await;
}
