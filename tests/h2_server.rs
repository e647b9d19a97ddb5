//! The HTTP/2 server's limits (SPEC §2): the first request within `header_read_timeout`,
//! idle connections closed after `idle_timeout`, `max_concurrent_streams` and the header
//! list size announced and enforced, and clients that abuse the protocol — rapid reset
//! (CVE-2023-44487), CONTINUATION floods — cut off while other clients are served.
//! Frames are written by hand (h2c with prior knowledge); curl checks the answers a real
//! client reads.

mod support;

use std::time::{Duration, Instant};

use support::h2::{self, Client};
use support::{get, tls, Baton, Upstream};

/// SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2).
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// GOAWAY's ENHANCE_YOUR_CALM (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

async fn baton_with(upstream: &Upstream, listener: &str) -> Baton {
    let config = support::simple_config(&[upstream.addr], "", "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[routes]]",
        &format!("listen = \"127.0.0.1:0\"\n{listener}\n\n[[routes]]"),
    );
    Baton::start(&config).await
}

#[tokio::test]
async fn the_stream_limit_is_announced_and_the_header_list_limit_answered_by_baton() {
    let upstream = Upstream::ok("hello").await;
    let baton = baton_with(
        &upstream,
        "max_concurrent_streams = 7\nmax_header_bytes = \"16KiB\"",
    )
    .await;
    let client = Client::connect(baton.addr).await;
    assert!(
        client.settings.contains(&(MAX_CONCURRENT_STREAMS, 7)),
        "{:?}",
        client.settings
    );

    let big = format!("x-big: {}", "a".repeat(20_000));
    let url = format!("http://{}/", baton.addr);
    let args = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "-sS",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(url.clone());
        args
    };
    let (code, head, err) = tls::run("curl", args(&["-H", &big])).await;
    assert_eq!(code, 0, "{err}");
    assert!(head.starts_with("HTTP/2 431"), "{head}");
    assert!(head.contains("baton-error: headers-too-large"), "{head}");
    let (code, head, err) = tls::run("curl", args(&[])).await;
    assert_eq!(code, 0, "{err}");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_after_header_read_timeout() {
    let upstream = Upstream::ok("hello").await;
    let baton = baton_with(&upstream, "header_read_timeout = \"300ms\"").await;
    let mut client = Client::connect(baton.addr).await;
    let started = Instant::now();
    let (goaway, closed) = client.until_closed(Duration::from_secs(5)).await;
    assert!(closed, "still open after 5 s");
    assert!(goaway.is_some(), "closed without GOAWAY");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn idle_connections_close_after_idle_timeout_and_busy_ones_stay() {
    let upstream = Upstream::slow_head(Duration::from_millis(1200)).await;
    let baton = baton_with(&upstream, "idle_timeout = \"400ms\"").await;
    let mut client = Client::connect(baton.addr).await;
    // A stream waiting 1.2 s for its answer keeps the connection in use past idle_timeout.
    client.send(&h2::get(1)).await.unwrap();
    let answer = client.read_answer(1, Duration::from_secs(5)).await;
    assert!(
        answer
            .iter()
            .any(|f| f.stream == 1 && f.kind == h2::HEADERS),
        "{answer:?}"
    );
    let idle_from = Instant::now();
    let (goaway, closed) = client.until_closed(Duration::from_secs(5)).await;
    assert!(closed && goaway.is_some(), "{goaway:?} {closed}");
    assert!(idle_from.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_burst_of_reset_streams_is_cut_off_while_others_are_served() {
    let upstream = Upstream::ok("hello").await;
    let baton = baton_with(&upstream, "").await;
    let mut attacker = Client::connect(baton.addr).await;
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        burst.extend(h2::get(stream));
        burst.extend(h2::reset(stream));
    }
    // The server may close before it has read everything.
    let _ = attacker.send(&burst).await;
    let (goaway, closed) = attacker.until_closed(Duration::from_secs(5)).await;
    assert!(closed, "the connection stayed open");
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    assert!(
        upstream.requests() < 1_000,
        "{} upstream requests",
        upstream.requests()
    );
    assert_eq!(get(baton.addr, "/").await.text(), "hello");
}

#[tokio::test]
async fn streams_cancelled_while_they_wait_are_cut_off_while_others_are_served() {
    // Each stream is taken up and waits for its answer before the client cancels it: h2
    // alone would not notice, baton counts them.
    let upstream = Upstream::slow_head(Duration::from_secs(5)).await;
    let fast = Upstream::ok("fast").await;
    let config = support::simple_config(&[upstream.addr], "", "").replace(
        "[[routes]]\nname = \"main\"",
        "[[routes]]\nname = \"fast\"\npath_prefix = \"/fast\"\nupstream = \"fast\"\n\n[[routes]]\nname = \"main\"",
    ) + &format!("\n[upstreams.fast]\nendpoints = [\"{}\"]\n", fast.addr);
    let baton = Baton::start(&config).await;
    let mut attacker = Client::connect(baton.addr).await;
    let mut next = 1u32;
    let started = Instant::now();
    let mut cut_off = false;
    'rounds: for _ in 0..10 {
        let first = next;
        let mut opening = Vec::new();
        for _ in 0..100 {
            opening.extend(h2::get(next));
            next += 2;
        }
        if attacker.send(&opening).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut cancelling = Vec::new();
        for stream in (first..next).step_by(2) {
            cancelling.extend(h2::reset(stream));
        }
        if attacker.send(&cancelling).await.is_err() {
            cut_off = true;
            break;
        }
        while let Some(frame) = attacker.read_frame(Duration::from_millis(50)).await {
            if frame.kind == h2::GOAWAY {
                cut_off = true;
                break 'rounds;
            }
        }
    }
    if !cut_off {
        let (goaway, closed) = attacker.until_closed(Duration::from_secs(3)).await;
        cut_off = closed && goaway.is_some();
    }
    assert!(
        cut_off,
        "the client cancelled {} streams and was not cut off",
        next / 2
    );
    assert!(next / 2 <= 400, "cut off only after {} streams", next / 2);
    assert!(started.elapsed() < Duration::from_secs(5));
    let response = get(baton.addr, "/fast").await;
    assert_eq!(response.text(), "fast");
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_while_others_are_served() {
    let upstream = Upstream::ok("hello").await;
    let baton = baton_with(&upstream, "").await;
    let mut attacker = Client::connect(baton.addr).await;
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    // frames without it, each carrying more of a header value.
    let mut block = h2::get_block("h2.test");
    block.extend_from_slice(&[0x00, 0x05]);
    block.extend_from_slice(b"x-pad");
    block.push(0x7f); // a literal value with a length that takes more bytes than are sent
    attacker
        .send(&h2::frame(h2::HEADERS, h2::END_STREAM, 1, &block))
        .await
        .unwrap();
    let filler = h2::frame(h2::CONTINUATION, 0, 1, &[b'a'; 1024]);
    let mut sent = 0usize;
    let flood_started = Instant::now();
    while flood_started.elapsed() < Duration::from_secs(5) && sent < 100_000 {
        if attacker.send(&filler.repeat(16)).await.is_err() {
            break;
        }
        sent += 16;
    }
    let (_, closed) = attacker.until_closed(Duration::from_secs(5)).await;
    assert!(closed, "still open after {sent} CONTINUATION frames");
    assert!(sent < 100_000, "all {sent} frames were taken");
    assert_eq!(get(baton.addr, "/").await.text(), "hello");
    assert_eq!(upstream.requests(), 1);
}
