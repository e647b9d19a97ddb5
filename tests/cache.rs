//! The cache (SPEC §10) on real sockets, against a real origin: hits with `Age` and
//! `Cache-Status`, variants, what is never stored, invalidation, coalescing,
//! stale-while-revalidate, stale-if-error, revalidation, purge, and flat memory.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::origin::{Origin, Reply, ReplyBody};
use support::{admin_post, request, status_json, Baton, BatonProcess};

fn config(origin: SocketAddr, cache: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[log]
access = "off"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "site"
upstream = "app"
cache = {{ {cache} }}
retry = {{ attempts = 1 }}

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "app"

[upstreams.app]
endpoints = ["{origin}"]
"#
    )
}

async fn get(addr: SocketAddr, path: &str) -> support::Response {
    request(addr, "GET", path, &[], b"").await
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> support::Response {
    request(addr, "GET", path, headers, b"").await
}

/// An origin that answers `v1`, `v2`, … (one more each request) with `headers`.
async fn counting(headers: &'static [(&'static str, &'static str)]) -> Origin {
    let count = Arc::new(AtomicUsize::new(0));
    Origin::start(move |_| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::ok(&format!("v{n}"), headers)
    })
    .await
}

fn cache_status(response: &support::Response) -> &str {
    response.header("cache-status").unwrap_or("")
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_age_and_cache_status() {
    let origin = counting(&[("cache-control", "max-age=60"), ("etag", "\"a\"")]).await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    let first = get(baton.addr, "/page").await;
    assert_eq!(first.text(), "v1");
    assert_eq!(
        cache_status(&first),
        "baton; fwd=miss; fwd-status=200; stored; ttl=60"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = get(baton.addr, "/page").await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.text(), "v1");
    let status = cache_status(&second);
    assert!(status.starts_with("baton; hit; ttl="), "{status}");
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!((1..=2).contains(&age), "age {age}");
    assert!(second.header("x-request-id").is_some());
    assert_ne!(second.header("x-request-id"), first.header("x-request-id"));
    // HEAD is answered from the stored GET; a conditional request gets 304.
    let head = request(baton.addr, "HEAD", "/page", &[], b"").await;
    assert_eq!(head.status(), 200);
    assert!(cache_status(&head).starts_with("baton; hit"));
    let not_modified = get_with(baton.addr, "/page", &[("if-none-match", "\"a\"")]).await;
    assert_eq!(not_modified.status(), 304);
    assert_eq!(origin.requests(), 1);
    // The query is part of the key; a route without a cache says nothing of one.
    assert_eq!(get(baton.addr, "/page?x=1").await.text(), "v2");
    let plain = get(baton.addr, "/plain").await;
    assert_eq!(plain.header("cache-status"), None);
    let status = status_json(&baton).await;
    let cache = &status["routes"][0]["cache"];
    assert_eq!(cache["objects"], 2, "{cache}");
    assert_eq!(cache["hits"], 3, "{cache}");
    assert!(status["routes"][1]["cache"].is_null());
    baton.stop().await;
}

#[tokio::test]
async fn variants_named_by_vary_are_kept_apart() {
    let origin = Origin::start(|parts| {
        let language = parts
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Reply::ok(
            &language,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    })
    .await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    for (language, expected) in [("en", "en"), ("de", "de"), ("en", "en"), ("de", "de")] {
        let response = get_with(baton.addr, "/", &[("accept-language", language)]).await;
        assert_eq!(response.text(), expected);
    }
    assert_eq!(get(baton.addr, "/").await.text(), "none");
    assert_eq!(origin.requests(), 3);
    baton.stop().await;
}

#[tokio::test]
async fn no_store_private_errors_and_cookies_are_never_stored() {
    let origin = Origin::start(|parts| match parts.uri.path() {
        "/no-store" => Reply::ok("x", &[("cache-control", "no-store, max-age=60")]),
        "/private" => Reply::ok("x", &[("cache-control", "private, max-age=60")]),
        "/cookie" => Reply::ok(
            "x",
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        ),
        "/vary-star" => Reply::ok("x", &[("cache-control", "max-age=60"), ("vary", "*")]),
        _ => Reply::status(500, "broken", &[]),
    })
    .await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    for path in ["/no-store", "/private", "/cookie", "/vary-star", "/error"] {
        for _ in 0..2 {
            let response = get(baton.addr, path).await;
            let status = cache_status(&response);
            assert!(status.starts_with("baton; fwd=miss"), "{path}: {status}");
            assert!(!status.contains("stored"), "{path}: {status}");
        }
    }
    assert_eq!(origin.requests(), 10);
    // A request with Authorization is not stored unless the response says it may be.
    let auth = [("authorization", "Bearer x")];
    get_with(baton.addr, "/auth", &auth).await;
    assert_eq!(origin.requests(), 11);
    baton.stop().await;
}

#[tokio::test]
async fn surrogate_control_speaks_to_baton_and_stays_with_it() {
    let origin = counting(&[
        ("cache-control", "no-store"),
        ("surrogate-control", "max-age=60;baton"),
    ])
    .await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    let first = get(baton.addr, "/edge").await;
    assert_eq!(first.header("surrogate-control"), None);
    assert_eq!(first.header("cache-control"), Some("no-store"));
    let second = get(baton.addr, "/edge").await;
    assert_eq!(second.text(), "v1");
    assert!(cache_status(&second).starts_with("baton; hit"));
    assert_eq!(second.header("surrogate-control"), None);
    let seen = origin.seen();
    assert_eq!(
        seen[0]
            .2
            .get("surrogate-capability")
            .map(|v| v.to_str().unwrap()),
        Some("baton=\"Surrogate/1.0\"")
    );
    baton.stop().await;
}

#[tokio::test]
async fn an_unsafe_request_invalidates_what_is_stored() {
    let origin = counting(&[("cache-control", "max-age=60")]).await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    assert_eq!(get(baton.addr, "/item").await.text(), "v1");
    assert_eq!(get(baton.addr, "/item").await.text(), "v1");
    let post = request(baton.addr, "POST", "/item", &[], b"change").await;
    assert_eq!(post.status(), 200);
    assert_eq!(cache_status(&post), "baton; fwd=method");
    assert_eq!(get(baton.addr, "/item").await.text(), "v3");
    assert_eq!(origin.requests(), 3);
    baton.stop().await;
}

#[tokio::test]
async fn concurrent_misses_become_one_upstream_request() {
    let origin = Origin::fixed(
        Reply::ok("shared", &[("cache-control", "max-age=60")]).after(Duration::from_millis(300)),
    )
    .await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    let requests: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get(baton.addr, "/hot")))
        .collect();
    let mut collapsed = 0;
    for handle in requests {
        let response = handle.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text(), "shared");
        collapsed += usize::from(cache_status(&response).contains("collapsed"));
    }
    assert_eq!(origin.requests(), 1);
    assert_eq!(collapsed, 19);
    baton.stop().await;
}

#[tokio::test]
async fn waiters_for_an_uncacheable_answer_go_upstream_together() {
    let origin = Origin::fixed(
        Reply::ok("mine", &[("cache-control", "no-store")]).after(Duration::from_millis(400)),
    )
    .await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    let started = Instant::now();
    let requests: Vec<_> = (0..10)
        .map(|_| tokio::spawn(get(baton.addr, "/private")))
        .collect();
    for handle in requests {
        assert_eq!(handle.await.unwrap().text(), "mine");
    }
    assert_eq!(origin.requests(), 10);
    // One wait for the first answer, then the rest at once: not ten waits in a row.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    baton.stop().await;
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let origin = Origin::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = Reply::ok(
            &format!("v{n}"),
            &[("cache-control", "max-age=1, stale-while-revalidate=30")],
        );
        // The refresh is slow, so that an answer that waited for it would show.
        if n > 1 {
            reply.after(Duration::from_millis(500))
        } else {
            reply
        }
    })
    .await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    assert_eq!(get(baton.addr, "/news").await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let stale: Vec<_> = (0..5)
        .map(|_| tokio::spawn(get(baton.addr, "/news")))
        .collect();
    for handle in stale {
        let response = handle.await.unwrap();
        assert_eq!(response.text(), "v1");
        let status = cache_status(&response);
        assert!(status.contains("detail=stale-while-revalidate"), "{status}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(origin.requests(), 2, "exactly one background refresh");
    let fresh = get(baton.addr, "/news").await;
    assert_eq!(fresh.text(), "v2");
    assert!(cache_status(&fresh).starts_with("baton; hit"));
    baton.stop().await;
}

#[tokio::test]
async fn stale_if_error_answers_when_the_origin_is_gone_and_an_uncached_path_gets_its_502() {
    let mut origin = counting(&[("cache-control", "max-age=1, stale-if-error=60")]).await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    assert_eq!(get(baton.addr, "/page").await.text(), "v1");
    origin.kill();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get(baton.addr, "/page").await;
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.text(), "v1");
    let status = cache_status(&stale);
    assert!(
        status.starts_with("baton; hit") && status.ends_with("detail=stale-if-error"),
        "{status}"
    );
    let missing = get(baton.addr, "/never-seen").await;
    assert_eq!(missing.status(), 502);
    assert_eq!(
        missing.header("baton-error"),
        Some("upstream-connect-refused")
    );
    assert!(cache_status(&missing).starts_with("baton; fwd=miss"));
    let status = status_json(&baton).await;
    assert_eq!(status["routes"][0]["cache"]["stale_answers"], 1);
    baton.stop().await;
}

#[tokio::test]
async fn the_route_default_stale_if_error_covers_an_origin_answering_5xx() {
    let origin = Origin::fixed(Reply::ok("good", &[("cache-control", "max-age=1")])).await;
    let baton = Baton::start(&config(origin.addr, "stale_if_error = \"1m\"")).await;
    assert_eq!(get(baton.addr, "/").await.text(), "good");
    origin.set(|_| Reply::status(503, "down", &[]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get(baton.addr, "/").await;
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.text(), "good");
    assert!(cache_status(&stale).ends_with("detail=stale-if-error"));
    // must-revalidate forbids it: the origin's 503 goes through.
    origin.set(|_| Reply::ok("strict", &[("cache-control", "max-age=1, must-revalidate")]));
    assert_eq!(get(baton.addr, "/strict").await.text(), "strict");
    origin.set(|_| Reply::status(503, "down", &[]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(baton.addr, "/strict").await.status(), 503);
    baton.stop().await;
}

#[tokio::test]
async fn a_stale_response_is_revalidated_and_a_304_refreshes_it() {
    let origin = Origin::start(|parts| {
        if parts
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            Reply::status(
                304,
                "",
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"v1\""),
                    ("x-refreshed", "yes"),
                ],
            )
        } else {
            Reply::ok(
                "body",
                &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
            )
        }
    })
    .await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    assert_eq!(get(baton.addr, "/doc").await.text(), "body");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revalidated = get(baton.addr, "/doc").await;
    assert_eq!(revalidated.status(), 200);
    assert_eq!(revalidated.text(), "body");
    assert_eq!(revalidated.header("x-refreshed"), Some("yes"));
    let status = cache_status(&revalidated);
    assert!(
        status.starts_with("baton; fwd=stale; fwd-status=304"),
        "{status}"
    );
    let hit = get(baton.addr, "/doc").await;
    assert!(cache_status(&hit).starts_with("baton; hit"));
    assert_eq!(origin.requests(), 2);
    baton.stop().await;
}

#[tokio::test]
async fn only_if_cached_gets_504_not_cached_on_a_miss() {
    let origin = counting(&[("cache-control", "max-age=60")]).await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    let only = [("cache-control", "only-if-cached")];
    let miss = get_with(baton.addr, "/x", &only).await;
    assert_eq!(miss.status(), 504);
    assert_eq!(miss.header("baton-error"), Some("not-cached"));
    assert_eq!(origin.requests(), 0);
    get(baton.addr, "/x").await;
    assert_eq!(get_with(baton.addr, "/x", &only).await.status(), 200);
    baton.stop().await;
}

#[tokio::test]
async fn the_admin_api_purges_a_path_or_a_prefix() {
    let origin = counting(&[("cache-control", "max-age=60")]).await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    for path in ["/a/1", "/a/2", "/b"] {
        get(baton.addr, path).await;
    }
    assert_eq!(origin.requests(), 3);
    let purged = admin_post(&baton, "/cache/purge?route=site&path=/a*", &[]).await;
    assert_eq!(purged.status(), 200, "{}", purged.text());
    let body: serde_json::Value = serde_json::from_slice(&purged.body).unwrap();
    assert_eq!(body["purged"], 2);
    assert!(cache_status(&get(baton.addr, "/a/1").await).starts_with("baton; fwd=miss"));
    assert!(cache_status(&get(baton.addr, "/b").await).starts_with("baton; hit"));
    let exact = admin_post(&baton, "/cache/purge?route=site&path=/b", &[]).await;
    assert_eq!(exact.status(), 200);
    assert!(cache_status(&get(baton.addr, "/b").await).starts_with("baton; fwd=miss"));
    assert_eq!(
        admin_post(&baton, "/cache/purge?route=plain&path=/b", &[])
            .await
            .status(),
        404
    );
    assert_eq!(
        admin_post(&baton, "/cache/purge?route=site", &[])
            .await
            .status(),
        400
    );
    baton.stop().await;
}

#[tokio::test]
async fn a_fill_goes_on_when_the_client_that_started_it_leaves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::fixed(Reply {
        status: 200,
        headers: vec![("cache-control".into(), "max-age=60".into())],
        body: ReplyBody::Paced {
            size: 256 << 10,
            every: Duration::from_millis(20),
        },
        delay: Duration::ZERO,
    })
    .await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    // The first client takes the head and a little of the body, and leaves.
    let mut first = tokio::net::TcpStream::connect(baton.addr).await.unwrap();
    first
        .write_all(b"GET /slow HTTP/1.1\r\nhost: example.test\r\n\r\n")
        .await
        .unwrap();
    let mut some = [0u8; 4096];
    let read = first.read(&mut some).await.unwrap();
    assert!(String::from_utf8_lossy(&some[..read]).starts_with("HTTP/1.1 200"));
    // A second asks while the body is still coming: it waits for the same fill.
    let second = tokio::spawn(get(baton.addr, "/slow"));
    tokio::time::sleep(Duration::from_millis(60)).await;
    drop(first);
    let second = second.await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(second.complete);
    assert_eq!(second.body.len(), 256 << 10);
    assert!(
        cache_status(&second).contains("collapsed"),
        "{}",
        cache_status(&second)
    );
    // The fill was read to its end and stored.
    let third = get(baton.addr, "/slow").await;
    assert!(
        cache_status(&third).starts_with("baton; hit"),
        "{}",
        cache_status(&third)
    );
    assert_eq!(third.body.len(), 256 << 10);
    assert_eq!(origin.requests(), 1);
    baton.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_what_is_stored_unless_the_bounds_change() {
    let origin = counting(&[("cache-control", "max-age=60")]).await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    assert_eq!(get(baton.addr, "/kept").await.text(), "v1");
    baton.write_config(&config(origin.addr, "stale_if_error = \"5m\""));
    assert_eq!(admin_post(&baton, "/reload", &[]).await.status(), 200);
    let kept = get(baton.addr, "/kept").await;
    assert_eq!(kept.text(), "v1");
    assert!(cache_status(&kept).starts_with("baton; hit"));
    baton.write_config(&config(
        origin.addr,
        "max_bytes = \"1MiB\", max_object_bytes = \"64KiB\"",
    ));
    assert_eq!(admin_post(&baton, "/reload", &[]).await.status(), 200);
    assert_eq!(get(baton.addr, "/kept").await.text(), "v2");
    baton.stop().await;
}

#[tokio::test]
async fn http2_clients_get_hits_too() {
    let origin = counting(&[("cache-control", "max-age=60")]).await;
    let baton = Baton::start(&config(origin.addr, "")).await;
    let url = format!("http://{}/h2", baton.addr);
    let fetch = move || {
        let out = std::process::Command::new("curl")
            .args(["-s", "-i", "--http2-prior-knowledge", &url])
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let first = tokio::task::spawn_blocking(fetch.clone()).await.unwrap();
    assert!(first.starts_with("http/2 200"), "{first}");
    assert!(first.contains("cache-status: baton; fwd=miss"), "{first}");
    let second = tokio::task::spawn_blocking(fetch).await.unwrap();
    assert!(second.contains("cache-status: baton; hit"), "{second}");
    assert!(second.ends_with("v1"), "{second}");
    assert_eq!(origin.requests(), 1);
    baton.stop().await;
}

/// GETs `path` and reads the answer to its end without keeping it: the head, and how
/// many body bytes came (chunk framing included when chunked).
async fn download(addr: SocketAddr, path: &str) -> (String, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ask = format!("GET {path} HTTP/1.1\r\nhost: example.test\r\nconnection: close\r\n\r\n");
    stream.write_all(ask.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 256 << 10];
    let mut head = Vec::new();
    let mut body = 0u64;
    loop {
        let n = stream.read(&mut buffer).await.unwrap();
        if n == 0 {
            break;
        }
        let mut data = &buffer[..n];
        if body == 0 && !head.ends_with(b"\r\n\r\n") {
            let before = head.len();
            head.extend_from_slice(data);
            match head.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    data = &data[end + 4 - before..];
                    head.truncate(end + 4);
                }
                None => continue,
            }
        }
        body += data.len() as u64;
    }
    (String::from_utf8_lossy(&head).to_lowercase(), body)
}

/// The peak resident memory of a baton process that streamed a 1 GiB response through a
/// route with a 64 MiB cache.
fn peak_after_a_large_response(sized: bool) -> u64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let origin = Origin::fixed(Reply {
            status: 200,
            headers: vec![("cache-control".into(), "max-age=60".into())],
            body: ReplyBody::Generated {
                size: 1 << 30,
                sized,
            },
            delay: Duration::ZERO,
        })
        .await;
        let mut baton = BatonProcess::start(&config(
            origin.addr,
            "max_bytes = \"64MiB\", max_object_bytes = \"8MiB\"",
        ));
        let (head, body) = download(baton.addr, "/big").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("cache-status: baton; fwd=miss"), "{head}");
        if sized {
            assert_eq!(body, 1 << 30);
        } else {
            assert!(body > 1 << 30, "{body}");
        }
        let peak = baton.peak_rss();
        baton.signal("TERM");
        baton.wait(Duration::from_secs(10));
        peak
    })
}

#[test]
fn a_response_larger_than_the_cache_streams_through_in_flat_memory() {
    for sized in [true, false] {
        let peak = peak_after_a_large_response(sized);
        println!("peak RSS {} MiB (Content-Length: {sized})", peak >> 20);
        assert!(
            peak < 100 << 20,
            "peak RSS {} MiB (sized {sized})",
            peak >> 20
        );
    }
}
