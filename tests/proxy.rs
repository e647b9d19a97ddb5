//! Proxying on real sockets: headers as the upstream and client see them, h2c, upgrades,
//! malformed requests, and the keep-alive race.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{get, read_response, request, send_raw, Baton, Upstream};
use tokio::net::TcpStream;

#[tokio::test]
async fn hop_by_hop_and_forwarding_headers() {
    let upstream = Upstream::ok_with_headers(
        "hi",
        &[
            ("connection", "x-upstream-secret"),
            ("x-upstream-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-app", "yes"),
        ],
    )
    .await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let response = request(
        baton.addr,
        "GET",
        "/path?q=1",
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, gzip"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4"),
            ("x-request-id", "req-42"),
        ],
        b"",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "hi");

    let seen = &upstream.seen()[0];
    assert_eq!(seen.path, "/path?q=1");
    for gone in ["x-secret", "keep-alive", "proxy-connection", "forwarded"] {
        assert_eq!(
            seen.header(gone),
            None,
            "{gone} must not reach the upstream"
        );
    }
    assert_ne!(seen.header("connection"), Some("x-secret"));
    assert_eq!(seen.header("te"), Some("trailers"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "untrusted: replaced"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("example.test"));
    assert_eq!(seen.header("host"), Some("example.test"));
    assert_eq!(seen.header("via"), Some("1.1 baton"));
    assert_eq!(seen.header("x-request-id"), Some("req-42"));

    assert_eq!(response.header("x-upstream-secret"), None);
    assert_eq!(response.header("keep-alive"), None);
    assert_eq!(response.header("x-app"), Some("yes"));
    assert_eq!(response.header("via"), Some("1.1 baton"));
    assert_eq!(response.header("x-request-id"), Some("req-42"));
    baton.stop().await;
}

/// A plain request's fields go upstream as they were read and in their order, less those
/// baton sets itself or does not trust an unknown client with; a request that names a
/// field hop-by-hop goes through a header map (`hop_by_hop_and_forwarding_headers`).
#[tokio::test]
async fn plain_request_fields_go_on_in_their_order_less_batons_own() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let head = b"POST /form HTTP/1.1\r\nUser-Agent: test/1\r\nHost: example.test\r\n\
        Connection: keep-alive\r\nX-Forwarded-Proto: https\r\nKeep-Alive: timeout=5\r\n\
        Accept: text/plain\r\nX-Forwarded-Host: evil.test\r\nContent-Length: 2\r\n\
        Forwarded: for=1.2.3.4\r\nX-Request-Id: req-7\r\nX-Forwarded-For: 1.2.3.4\r\n\
        X-Last: z\r\n\r\nab";
    let response = send_raw(baton.addr, head).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.header("x-request-id"), Some("req-7"));
    let seen = &upstream.seen()[0];
    let fields: Vec<(&str, &str)> = seen
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("host", "example.test"),
            ("user-agent", "test/1"),
            ("accept", "text/plain"),
            ("content-length", "2"),
            ("x-last", "z"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "example.test"),
            ("via", "1.1 baton"),
            ("x-request-id", "req-7"),
        ]
    );
    assert_eq!(upstream.body_bytes(), 2);
    baton.stop().await;
}

/// Heads are read at most 8 KiB at a time: longer ones, within the limit, arrive whole in
/// both directions.
#[tokio::test]
async fn heads_longer_than_one_read_pass_whole() {
    let long = "v".repeat(20_000);
    let upstream = Upstream::ok_with_headers("hi", &[("x-long-answer", &long)]).await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    for _ in 0..2 {
        let response = request(baton.addr, "GET", "/", &[("x-long", &long)], b"").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text(), "hi");
        assert_eq!(response.header("x-long-answer"), Some(long.as_str()));
    }
    for seen in upstream.seen() {
        assert_eq!(seen.header("x-long"), Some(long.as_str()));
    }
    assert_eq!(upstream.requests(), 2);
    baton.stop().await;
}

#[tokio::test]
async fn trusted_proxies_keep_the_chain_and_host_can_be_rewritten() {
    let upstream = Upstream::ok("hi").await;
    let config = support::simple_config(&[upstream.addr], "preserve_host = false", "").replace(
        "name = \"public\"",
        "name = \"public\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let baton = Baton::start(&config).await;
    let response = request(
        baton.addr,
        "GET",
        "/",
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ],
        b"",
    )
    .await;
    assert_eq!(response.status(), 200);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.header("x-forwarded-for"), Some("1.2.3.4, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string().as_str())
    );
    assert_eq!(seen.header("x-forwarded-host"), Some("example.test"));
    baton.stop().await;
}

/// An HTTP/1.0 client may leave out `Host`; the upstream, spoken to in HTTP/1.1, still
/// gets one: the endpoint's, since there is no client host to preserve.
#[tokio::test]
async fn a_request_without_host_gets_the_endpoints() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let response = send_raw(baton.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(response.status(), 200);
    let seen = &upstream.seen()[0];
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string().as_str())
    );
    assert_eq!(seen.header("x-forwarded-host"), None);
    assert_eq!(seen.header("via"), Some("1.0 baton"));
    baton.stop().await;
}

#[tokio::test]
async fn h2c_get_with_prior_knowledge() {
    let upstream = Upstream::ok("over h2").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let stream = TcpStream::connect(baton.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let request = http::Request::get("http://h2.example/x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert!(response.headers().contains_key("x-request-id"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"over h2");
    }
    let seen = &upstream.seen()[0];
    assert_eq!(seen.header("host"), Some("h2.example"));
    assert_eq!(seen.header("via"), Some("2 baton"));
    assert_eq!(upstream.requests(), 3);
    baton.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let upstream = Upstream::upgrade_echo().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut reader = baton.connect().await;
    reader
        .write_all(
            b"GET /chat HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = reader.read_response_head().await.unwrap().unwrap();
    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert!(head
        .header("connection")
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    let seen = &upstream.seen()[0];
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    let mut stream = reader.stream;
    support::assert_websocket_echo(&mut stream).await;
    baton.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_the_upstream() {
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let cases: [(&str, &[u8]); 6] = [
        (
            "content-length with transfer-encoding",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "differing content-lengths",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bare CR in a header",
            b"GET / HTTP/1.1\r\nhost: a\r\nx-a: 1\rx-b: 2\r\n\r\n",
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nhost: a\r\nx-folded: one\r\n  two\r\n\r\n",
        ),
        (
            "two hosts",
            b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        ),
    ];
    for (name, bytes) in cases {
        let response = send_raw(baton.addr, bytes).await;
        assert_eq!(response.status(), 400, "{name}");
        assert_eq!(
            response.header("baton-error"),
            Some("bad-request"),
            "{name}"
        );
        assert_eq!(response.header("baton-delivery"), Some("none"), "{name}");
        assert_eq!(response.header("connection"), Some("close"), "{name}");
    }
    assert_eq!(upstream.requests(), 0, "nothing malformed was forwarded");
    baton.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut reader = baton.connect().await;
    reader
        .write_all(
            b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc\
              POST /b HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
              GET /c HTTP/1.1\r\nhost: a\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(read_response(&mut reader, "POST").await.text(), "3");
    assert_eq!(read_response(&mut reader, "POST").await.text(), "5");
    assert_eq!(read_response(&mut reader, "GET").await.text(), "0");
    let paths: Vec<String> = upstream.seen().iter().map(|h| h.path.clone()).collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    baton.stop().await;
}

/// The upstream closes connections idle for 1 s and says so; requests paced around that
/// boundary, on reused connections, must all succeed.
#[tokio::test]
async fn the_keep_alive_race_gives_no_errors() {
    let upstream = Upstream::keep_alive_timeout(Duration::from_secs(1)).await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let pauses_ms = [
        700, 950, 1000, 1050, 600, 990, 1010, 1100, 800, 1000, 500, 1020,
    ];
    let mut client = baton.connect().await;
    for (i, pause) in pauses_ms.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*pause)).await;
        let (method, body) = if i % 2 == 0 {
            ("GET", "")
        } else {
            ("POST", "x=1")
        };
        let text = format!(
            "{method} /{i} HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        client.write_all(text.as_bytes()).await.unwrap();
        let response = read_response(&mut client, method).await;
        assert_eq!(
            response.status(),
            200,
            "request {i} after {pause} ms: {}",
            response.text()
        );
    }
    assert_eq!(
        upstream.requests(),
        pauses_ms.len(),
        "each request reached the upstream once"
    );
    assert!(
        upstream.connections() < pauses_ms.len(),
        "pooled connections were reused ({} connections)",
        upstream.connections()
    );
    baton.stop().await;
}

#[tokio::test]
async fn head_and_keep_alive_on_the_client_side() {
    let upstream = Upstream::ok("body").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    for _ in 0..3 {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut client, "GET").await.text(), "body");
    }
    let head = request(baton.addr, "HEAD", "/", &[], b"").await;
    assert_eq!(head.status(), 200);
    assert!(head.body.is_empty());
    assert_eq!(get(baton.addr, "/").await.text(), "body");
    baton.stop().await;
}

#[tokio::test]
async fn the_client_gets_its_own_protocol_version() {
    let upstream = Upstream::http10("old").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.head.version, 1, "HTTP/1.1 to an HTTP/1.1 client");
        assert_eq!(response.text(), "old");
    }
    assert_eq!(upstream.requests(), 2);
    baton.stop().await;
}

/// An upgrade the upstream declines is answered as it is, and the connection then ends.
#[tokio::test]
async fn a_declined_upgrade_ends_the_connection() {
    let upstream = Upstream::ok("no upgrade here").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    client
        .write_all(
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let declined = read_response(&mut client, "GET").await;
    assert_eq!(declined.status(), 200);
    assert_eq!(declined.text(), "no upgrade here");
    assert_eq!(declined.header("connection"), Some("close"));
    assert!(
        client.read_response_head().await.unwrap().is_none(),
        "then EOF"
    );
    baton.stop().await;
}

/// A malformed request pipelined behind a good one: the good one is answered, then the
/// malformed one gets its 400, and only the good one reached the upstream.
#[tokio::test]
async fn a_malformed_pipelined_request_does_not_cost_the_one_before_it() {
    let upstream = Upstream::slow_head(Duration::from_millis(300)).await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    client
        .write_all(
            b"GET /good HTTP/1.1\r\nhost: a\r\n\r\n\
              POST /bad HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let good = read_response(&mut client, "GET").await;
    assert_eq!(good.status(), 200);
    assert_eq!(good.text(), "slow");
    let bad = read_response(&mut client, "POST").await;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.header("baton-error"), Some("bad-request"));
    assert_eq!(upstream.requests(), 1);
    baton.stop().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_baton() {
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    client
        .write_all(
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = client.read_response_head().await.unwrap().unwrap();
    assert_eq!(interim.status, 100);
    client.write_all(b"hello").await.unwrap();
    let response = read_response(&mut client, "POST").await;
    assert_eq!(response.text(), "5");
    assert_eq!(upstream.seen()[0].header("expect"), None);
    baton.stop().await;
}

#[tokio::test]
async fn idle_upstream_connections_close_after_keepalive_idle() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", r#"keepalive = { idle = "300ms" }"#).await;
    assert_eq!(get(baton.addr, "/").await.status(), 200);
    assert_eq!(upstream.connections(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while upstream.closed() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.closed(), 1, "baton closed its idle connection");
    baton.stop().await;
}

/// An answer given before the body arrived (here 404) leaves the connection usable: the
/// body is read and discarded, not left to break the client's next write.
#[tokio::test]
async fn an_early_answer_keeps_the_connection_for_the_next_request() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::in_front_of(&[upstream.addr], r#"path_prefix = "/app""#, "").await;
    let mut client = baton.connect().await;
    client
        .write_all(b"POST /elsewhere HTTP/1.1\r\nhost: a\r\ncontent-length: 8\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.write_all(b"amount=5").await.unwrap();
    let early = read_response(&mut client, "POST").await;
    assert_eq!(early.status(), 404);
    assert_eq!(early.header("connection"), None, "kept alive");
    client
        .write_all(b"GET /app HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut client, "GET").await.text(), "hi");
    baton.stop().await;
}
