//! Every cause in the gateway core's scope, produced by a real failing upstream or a real
//! bad request, with the status, headers, delivery and body a client sees.

mod support;

use std::time::{Duration, Instant};

use support::{get, request, send_raw, Baton, Response, TempDir, Upstream};

/// The headers every generated error carries (SPEC §5).
fn assert_generated(response: &Response, status: u16, cause: &str, delivery: &str) {
    assert_eq!(
        response.status(),
        status,
        "status of {cause}: {}",
        response.text()
    );
    assert_eq!(response.header("baton-error"), Some(cause));
    assert_eq!(response.header("baton-delivery"), Some(delivery));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let id = response.header("x-request-id").expect("x-request-id");
    assert!(!id.is_empty() && id.len() <= 128);
    assert_eq!(
        response.header("retry-after").is_some(),
        status == 503 || status == 429,
        "Retry-After on 503 and 429 only"
    );
}

/// The body must not reveal where the upstream is.
fn assert_no_address(response: &Response, upstream: &Upstream) {
    let text = response.text();
    assert!(!text.contains(&upstream.addr.to_string()), "{text}");
    assert!(!text.contains(&upstream.addr.port().to_string()), "{text}");
}

async fn json_get(baton: &Baton, path: &str) -> Response {
    request(
        baton.addr,
        "GET",
        path,
        &[("accept", "application/json")],
        b"",
    )
    .await
}

#[tokio::test]
async fn connect_refused_is_502_none_in_html_and_json() {
    let upstream = Upstream::refusing().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;

    let html = get(baton.addr, "/").await;
    assert_generated(&html, 502, "upstream-connect-refused", "none");
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let page = html.text();
    assert!(page.contains("safe to try again"), "{page}");
    assert!(page.contains(html.header("x-request-id").unwrap()));
    assert!(page.contains("location.reload"), "a GET reloads itself");
    assert_no_address(&html, &upstream);

    let json = json_get(&baton, "/").await;
    assert_generated(&json, 502, "upstream-connect-refused", "none");
    assert_eq!(
        json.header("content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(problem["type"], "urn:baton:error:upstream-connect-refused");
    assert_eq!(problem["status"], 502);
    assert_eq!(problem["cause"], "upstream-connect-refused");
    assert_eq!(problem["delivery"], "none");
    assert_eq!(problem["request_id"], json.header("x-request-id").unwrap());
    assert!(problem["title"].is_string() && problem["detail"].is_string());
    assert_no_address(&json, &upstream);
    baton.stop().await;
}

#[tokio::test]
async fn a_refused_connect_moves_to_the_next_endpoint_even_for_post() {
    let refusing = Upstream::refusing().await;
    let ok = Upstream::ok("from b").await;
    let baton = Baton::in_front_of(&[refusing.addr, ok.addr], "", "").await;
    for _ in 0..4 {
        let response = request(baton.addr, "POST", "/pay", &[], b"amount=1").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text(), "from b");
    }
    assert_eq!(ok.requests(), 4);
    baton.stop().await;
}

#[tokio::test]
async fn connect_timeout_is_504_none() {
    let upstream = Upstream::full_backlog().await;
    let baton =
        Baton::in_front_of(&[upstream.addr], r#"timeouts = { connect = "300ms" }"#, "").await;
    let started = Instant::now();
    let response = get(baton.addr, "/").await;
    assert_generated(&response, 504, "upstream-connect-timeout", "none");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_no_address(&response, &upstream);
    baton.stop().await;
}

#[tokio::test]
async fn post_reset_after_send_is_502_sent_and_sent_once() {
    let upstream = Upstream::reset_before_head().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let response = request(baton.addr, "POST", "/pay", &[], b"amount=100").await;
    assert_generated(&response, 502, "upstream-reset", "sent");
    assert!(response.text().contains("may have been processed"));
    assert!(
        !response.text().contains("location.reload"),
        "a POST never reloads"
    );
    assert_no_address(&response, &upstream);
    assert_eq!(
        upstream.requests(),
        1,
        "the POST reached the upstream exactly once"
    );
    baton.stop().await;
}

#[tokio::test]
async fn garbage_is_502_invalid_response() {
    let upstream = Upstream::garbage().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let response = json_get(&baton, "/").await;
    assert_generated(&response, 502, "upstream-invalid-response", "sent");
    assert_no_address(&response, &upstream);
    assert_eq!(
        upstream.requests(),
        3,
        "a GET is tried retry.attempts times"
    );
    baton.stop().await;
}

#[tokio::test]
async fn no_head_in_time_is_504_response_timeout() {
    let upstream = Upstream::hang().await;
    let baton = Baton::in_front_of(
        &[upstream.addr],
        "timeouts = { response_header = \"300ms\" }\nretry = { attempts = 1 }",
        "",
    )
    .await;
    let started = Instant::now();
    let response = json_get(&baton, "/").await;
    assert_generated(&response, 504, "upstream-response-timeout", "sent");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(upstream.requests(), 1);
    baton.stop().await;
}

/// Each answer has its own `response_header` limit from when its request was sent, on a
/// pooled connection too: answers that each come in time are never cut by the limit of
/// the request before them.
#[tokio::test]
async fn each_answer_on_a_pooled_connection_has_its_own_head_timeout() {
    let upstream = Upstream::slow_head(Duration::from_millis(200)).await;
    let baton = Baton::in_front_of(
        &[upstream.addr],
        "timeouts = { response_header = \"500ms\" }\nretry = { attempts = 1 }",
        "",
    )
    .await;
    let started = Instant::now();
    for _ in 0..6 {
        assert_eq!(get(baton.addr, "/").await.text(), "slow");
    }
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert_eq!(
        upstream.connections(),
        1,
        "one pooled connection carried them all"
    );
    baton.stop().await;
}

#[tokio::test]
async fn total_timeout_bounds_a_slow_head() {
    let upstream = Upstream::slow_head(Duration::from_secs(3)).await;
    let baton = Baton::in_front_of(&[upstream.addr], r#"timeouts = { total = "300ms" }"#, "").await;
    let started = Instant::now();
    let response = get(baton.addr, "/").await;
    assert_generated(&response, 504, "upstream-response-timeout", "sent");
    assert!(started.elapsed() < Duration::from_secs(2));
    baton.stop().await;
}

#[tokio::test]
async fn a_truncated_body_aborts_the_response() {
    let upstream = Upstream::truncate_body().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let response = get(baton.addr, "/").await;
    assert_eq!(response.status(), 200);
    assert!(
        !response.complete,
        "the client can tell the body is incomplete"
    );
    assert_eq!(response.body, b"0123456789");
    baton.stop().await;
}

/// Gets an answer whose upstream stalls mid-body through baton with the route settings
/// `route`; the client sees a 200 cut short. Returns how long that took.
async fn cut_stalled_body(route: &str) -> Duration {
    let upstream = Upstream::stall_body().await;
    let baton = Baton::in_front_of(&[upstream.addr], route, "").await;
    let started = Instant::now();
    let response = get(baton.addr, "/").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(!response.complete);
    baton.stop().await;
    elapsed
}

#[tokio::test]
async fn a_stalled_body_is_cut_after_the_idle_timeout() {
    let elapsed = cut_stalled_body(r#"timeouts = { idle = "300ms" }"#).await;
    assert!(elapsed < Duration::from_secs(3));
}

#[tokio::test]
async fn the_total_timeout_cuts_a_stalled_body() {
    let elapsed = cut_stalled_body(r#"timeouts = { total = "300ms" }"#).await;
    assert!(elapsed >= Duration::from_millis(300));
    assert!(elapsed < Duration::from_secs(3));
}

#[tokio::test]
async fn no_route_is_404() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::in_front_of(&[upstream.addr], r#"path_prefix = "/api""#, "").await;
    let response = get(baton.addr, "/elsewhere").await;
    assert_generated(&response, 404, "no-route", "none");
    assert_eq!(get(baton.addr, "/api/x").await.status(), 200);
    assert_eq!(upstream.requests(), 1);
    baton.stop().await;
}

#[tokio::test]
async fn maintenance_is_503_with_retry_after_and_sends_nothing() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::in_front_of(
        &[upstream.addr],
        "maintenance = true\nmaintenance_retry_after = \"10m\"",
        "",
    )
    .await;
    let response = json_get(&baton, "/").await;
    assert_generated(&response, 503, "maintenance", "none");
    assert_eq!(response.header("retry-after"), Some("600"));
    let problem: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(problem["retry_after"], 600);
    assert_eq!(upstream.requests(), 0);
    baton.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_never_forwarded() {
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], r#"max_body_bytes = "1KiB""#, "").await;
    let declared = request(baton.addr, "POST", "/", &[], &[b'x'; 2048]).await;
    assert_generated(&declared, 413, "request-too-large", "none");

    let chunk = "x".repeat(1500);
    let chunked = format!(
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let response = send_raw(baton.addr, chunked.as_bytes()).await;
    assert_generated(&response, 413, "request-too-large", "none");
    assert_eq!(upstream.requests(), 0);
    let fits = request(baton.addr, "POST", "/", &[], &[b'x'; 1000]).await;
    assert_eq!(fits.text(), "1000");
    baton.stop().await;
}

#[tokio::test]
async fn oversized_heads_are_431() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::start(&support::simple_config(&[upstream.addr], "", "").replace(
        "name = \"public\"",
        "name = \"public\"\nmax_header_bytes = \"8KiB\"",
    ))
    .await;
    let big = "y".repeat(10_000);
    let response = request(baton.addr, "GET", "/", &[("x-big", &big)], b"").await;
    assert_generated(&response, 431, "headers-too-large", "none");
    assert_eq!(upstream.requests(), 0);
    baton.stop().await;
}

#[tokio::test]
async fn a_slow_head_is_408() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::start(&support::simple_config(&[upstream.addr], "", "").replace(
        "name = \"public\"",
        "name = \"public\"\nheader_read_timeout = \"300ms\"",
    ))
    .await;
    let started = Instant::now();
    let response = send_raw(baton.addr, b"GET / HTTP/1.1\r\nhost: a\r\n").await;
    assert_generated(&response, 408, "client-timeout", "none");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(upstream.requests(), 0);
    baton.stop().await;
}

#[tokio::test]
async fn error_page_templates_by_cause_and_status() {
    let upstream = Upstream::refusing().await;
    let dir = TempDir::new();
    dir.file(
        "refused.html",
        "<p>refused {{request_id}} {{status}} {{delivery}}</p>",
    );
    dir.file("503.html", "<p>later: {{retry_after}}s, {{cause}}</p>");
    let config = support::simple_config(&[upstream.addr], "", "")
        + "\n[error_pages]\n\"upstream-connect-refused\" = \"refused.html\"\n\"503\" = \"503.html\"\n"
        + "\n[[routes]]\nname = \"down\"\npath_prefix = \"/down\"\nupstream = \"app\"\nmaintenance = true\nmaintenance_retry_after = \"30s\"\n";
    let baton = Baton::start_in(dir, &config).await;
    let refused = get(baton.addr, "/").await;
    let id = refused.header("x-request-id").unwrap().to_owned();
    assert_eq!(refused.text(), format!("<p>refused {id} 502 none</p>"));
    let down = get(baton.addr, "/down").await;
    assert_eq!(down.text(), "<p>later: 30s, maintenance</p>");
    baton.stop().await;
}

#[tokio::test]
async fn a_client_request_id_is_kept_and_a_bad_one_replaced() {
    let upstream = Upstream::refusing().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let kept = request(baton.addr, "GET", "/", &[("x-request-id", "abc-123")], b"").await;
    assert_eq!(kept.header("x-request-id"), Some("abc-123"));
    let replaced = request(baton.addr, "GET", "/", &[("x-request-id", "a b")], b"").await;
    assert_ne!(replaced.header("x-request-id"), Some("a b"));
    baton.stop().await;
}

/// TCP to a multicast address fails in the kernel (ENETUNREACH) before any packet leaves.
#[tokio::test]
async fn an_unroutable_endpoint_is_502_unreachable() {
    let config = support::simple_config(&[], "", "")
        .replace("endpoints = []", "endpoints = [\"[ff02::1]:80\"]");
    let baton = Baton::start(&config).await;
    let response = get(baton.addr, "/").await;
    assert_generated(&response, 502, "upstream-unreachable", "none");
    assert!(!response.text().contains("ff02"));
    baton.stop().await;
}

#[tokio::test]
async fn an_h2_stream_is_reset_when_the_upstream_body_breaks() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let upstream = Upstream::truncate_body().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let stream = tokio::net::TcpStream::connect(baton.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("http://a/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "the client must see the body fail, not end");
    baton.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_408() {
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], r#"timeouts = { idle = "300ms" }"#, "").await;
    let started = Instant::now();
    let response = send_raw(
        baton.addr,
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nonly ten b",
    )
    .await;
    assert_generated(&response, 408, "client-timeout", "none");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(upstream.requests(), 0, "nothing was forwarded");
    baton.stop().await;
}
