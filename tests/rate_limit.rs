//! Rate limits (SPEC §9) on real sockets: GCRA per client, per header and per route, the
//! RateLimit fields, and one limit shared by two instances through a real Redis.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{get, request, Baton, Upstream};

fn config(upstream: SocketAddr, rate_limit: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[log]
access = "off"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1/32"]

[[routes]]
name = "limited"
path_prefix = "/"
upstream = "app"
rate_limit = {rate_limit}

[[routes]]
name = "free"
path_prefix = "/free"
upstream = "app"

[upstreams.app]
endpoints = ["{upstream}"]
{extra}
"#
    )
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> support::Response {
    request(addr, "GET", path, headers, b"").await
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_with_retry_after_and_the_ratelimit_fields() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::start(&config(
        upstream.addr,
        "{ requests = 10, per = \"1s\", burst = 10 }",
        "",
    ))
    .await;
    let mut passed = 0;
    for i in 0..30 {
        let response = get(baton.addr, "/").await;
        assert_eq!(
            response.header("ratelimit-policy"),
            Some("\"default\";q=10;w=1")
        );
        match response.status() {
            200 => {
                passed += 1;
                if i == 0 {
                    assert_eq!(response.header("ratelimit"), Some("\"default\";r=9;t=1"));
                }
            }
            429 => {
                assert_eq!(response.header("baton-error"), Some("rate-limited"));
                assert_eq!(response.header("baton-delivery"), Some("none"));
                assert_eq!(response.header("retry-after"), Some("1"));
                let field = response.header("ratelimit").unwrap();
                assert!(field.starts_with("\"default\";r=0;t="), "{field}");
            }
            other => panic!("status {other}"),
        }
    }
    // The burst, and maybe one more that came back while the requests were made.
    assert!((10..=12).contains(&passed), "{passed} passed");
    assert_eq!(upstream.requests(), passed, "nothing refused was sent");
    // Other routes are not limited and carry no fields.
    let free = get(baton.addr, "/free").await;
    assert_eq!(free.status(), 200);
    assert_eq!(free.header("ratelimit-policy"), None);
    let metrics = support::admin_get(&baton, "/metrics").await.text();
    let refused = 30 - passed;
    assert!(
        metrics.contains(&format!(
            "baton_rate_limited_total{{route=\"limited\"}} {refused}"
        )),
        "{metrics}"
    );
    // A second later the burst has partly come back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(baton.addr, "/").await.status(), 200);
    baton.stop().await;
}

#[tokio::test]
async fn header_keys_are_independent_and_a_request_without_the_header_is_not_counted() {
    let upstream = Upstream::ok("hi").await;
    let baton = Baton::start(&config(
        upstream.addr,
        "{ requests = 1, per = \"1m\", burst = 2, key = \"header:X-User\" }",
        "",
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(
            get_with(baton.addr, "/", &[("x-user", "ann")])
                .await
                .status(),
            200
        );
    }
    let over = get_with(baton.addr, "/", &[("x-user", "ann")]).await;
    assert_eq!(over.status(), 429);
    // A minute for one request: Retry-After says when the next may go.
    let after: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&after), "retry-after {after}");
    assert_eq!(
        get_with(baton.addr, "/", &[("x-user", "bob")])
            .await
            .status(),
        200
    );
    let anonymous = get(baton.addr, "/").await;
    assert_eq!(anonymous.status(), 200);
    assert_eq!(
        anonymous.header("ratelimit-policy"),
        Some("\"default\";q=2;w=120")
    );
    assert_eq!(anonymous.header("ratelimit"), None, "not counted");
    baton.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let upstream = Upstream::ok("hi").await;
    // The test connects from 127.0.0.1, a trusted proxy in this config.
    let baton = Baton::start(&config(
        upstream.addr,
        "{ requests = 1, per = \"1m\", burst = 1 }",
        "",
    ))
    .await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(
        get_with(baton.addr, "/", &from("203.0.113.1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        get_with(baton.addr, "/", &from("203.0.113.1"))
            .await
            .status(),
        429
    );
    assert_eq!(
        get_with(baton.addr, "/", &from("203.0.113.2"))
            .await
            .status(),
        200
    );
    // A client cannot escape by prepending addresses: the hop the proxy added counts.
    let spoofed = [("x-forwarded-for", "198.51.100.7, 203.0.113.1")];
    assert_eq!(get_with(baton.addr, "/", &spoofed).await.status(), 429);
    baton.stop().await;
}

/// Sends requests through both instances as fast as they answer for `length`; returns
/// how many passed, through each, and the time from the first to the last request.
async fn hammer(a: SocketAddr, b: SocketAddr, length: Duration) -> (usize, usize, Duration) {
    let started = Instant::now();
    let run = |addr: SocketAddr| async move {
        let mut passed = 0;
        while started.elapsed() < length {
            match get(addr, "/").await.status() {
                200 => passed += 1,
                429 => {}
                other => panic!("status {other}"),
            }
        }
        passed
    };
    let (through_a, through_b) = tokio::join!(run(a), run(b));
    (through_a, through_b, started.elapsed())
}

fn store_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("baton_store_errors_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_a_limit_and_let_traffic_pass_while_it_is_down() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::ok("hi").await;
    let store = format!("[store]\nbackend = \"redis\"\nurl = \"{}\"\n", redis.url());
    let text = config(
        upstream.addr,
        "{ requests = 20, per = \"1s\", burst = 20, key = \"route\" }",
        &store,
    );
    let a = Baton::start(&text).await;
    let b = Baton::start(&text).await;

    let (through_a, through_b, took) = hammer(a.addr, b.addr, Duration::from_secs(3)).await;
    let passed = through_a + through_b;
    let expected = 20.0 + 20.0 * took.as_secs_f64();
    assert!(
        (passed as f64 - expected).abs() <= 0.1 * expected,
        "{passed} passed ({through_a} + {through_b}) in {took:?}; one shared limit allows {expected:.0}"
    );
    assert!(through_a > 0 && through_b > 0);

    redis.stop();
    for _ in 0..20 {
        assert_eq!(
            get(a.addr, "/").await.status(),
            200,
            "traffic passes without Redis"
        );
    }
    let metrics = support::admin_get(&a, "/metrics").await.text();
    assert!(store_errors(&metrics) >= 20, "{metrics}");

    let _redis = RedisServer::start_on(redis.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut limited = false;
    while !limited {
        assert!(
            Instant::now() < deadline,
            "the limit did not come back with Redis"
        );
        limited = get(a.addr, "/").await.status() == 429;
    }
    a.stop().await;
    b.stop().await;
}
