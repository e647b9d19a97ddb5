//! Overload protection (SPEC §9) on real sockets: `max_inflight` with its queue, and the
//! `"auto"` limit, in front of a back-end of limited capacity that queues inside itself.

mod support;

use std::time::{Duration, Instant};

use support::{get, Baton, Upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_four_sends_four_queues_eight_and_refuses_the_rest_in_time() {
    let (upstream, workers) = Upstream::workers(4, Duration::from_millis(150)).await;
    let baton = Baton::in_front_of(
        &[upstream.addr],
        "",
        "max_inflight = 4\nqueue = { size = 8, timeout = \"300ms\" }",
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        let addr = baton.addr;
        clients.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = get(addr, "/").await;
            (response, started.elapsed())
        }));
    }
    let (mut answered, mut refused) = (0, 0);
    for client in clients {
        let (response, took) = client.await.unwrap();
        match response.status() {
            200 => answered += 1,
            503 => {
                refused += 1;
                assert_eq!(response.header("baton-error"), Some("upstream-overloaded"));
                assert_eq!(response.header("baton-delivery"), Some("none"));
                assert_eq!(response.header("retry-after"), Some("1"));
                assert!(took < Duration::from_millis(600), "refused after {took:?}");
            }
            other => panic!("status {other}: {}", response.text()),
        }
    }
    assert!(
        workers.max_inside() <= 4,
        "the back-end had {} at once",
        workers.max_inside()
    );
    // Four at once, then those of the queue that got a place within its timeout.
    assert!((4..=12).contains(&answered), "{answered} answered");
    assert_eq!(answered + refused, 40);
    assert_eq!(upstream.requests(), answered, "nothing refused was sent");
    let metrics = support::admin_get(&baton, "/metrics").await.text();
    assert!(
        metrics.contains("baton_upstream_inflight_limit{upstream=\"app\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("baton_upstream_queue{upstream=\"app\"} 0"));
    assert!(metrics.contains("baton_upstream_queue_wait_seconds_count{upstream=\"app\"} 40"));
    baton.stop().await;
}

/// A back-end of one worker behind `max_inflight = 1`, its place taken by a request for
/// `/first` (600 ms): the next request waits.
async fn one_place_taken() -> (Upstream, Baton, JoinHandle<support::Response>) {
    let (upstream, _workers) = Upstream::workers(1, Duration::from_millis(600)).await;
    let baton = Baton::in_front_of(
        &[upstream.addr],
        "",
        "max_inflight = 1\nqueue = { size = 8, timeout = \"5s\" }",
    )
    .await;
    let addr = baton.addr;
    let first = tokio::spawn(async move { get(addr, "/first").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    (upstream, baton, first)
}

async fn queued(baton: &Baton) -> serde_json::Value {
    support::status_json(baton).await["upstreams"][0]["admission"]["queued"].clone()
}

/// Once `/first` was answered, nothing but it reached the back-end.
async fn only_first_was_sent(upstream: &Upstream, first: JoinHandle<support::Response>) {
    assert_eq!(first.await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paths: Vec<String> = upstream.seen().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, ["/first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_whose_client_went_away_is_never_sent() {
    let (upstream, baton, first) = one_place_taken().await;
    let mut leaving = TcpStream::connect(baton.addr).await.unwrap();
    leaving
        .write_all(b"GET /gone HTTP/1.1\r\nhost: example.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(queued(&baton).await, 1);
    drop(leaving);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(queued(&baton).await, 0);
    only_first_was_sent(&upstream, first).await;
    baton.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_http2_stream_that_is_cancelled_is_never_sent() {
    let (upstream, baton, first) = one_place_taken().await;
    let mut client = support::h2::Client::connect(baton.addr).await;
    client.send(&support::h2::get(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(queued(&baton).await, 1);
    client.send(&support::h2::reset(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(queued(&baton).await, 0);
    only_first_was_sent(&upstream, first).await;
    // A raw client does not answer the PING of a graceful GOAWAY: close it first, or
    // shutdown waits its whole grace.
    drop(client);
    baton.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_finds_a_limit_near_the_back_ends_capacity_and_keeps_latency_near_unloaded() {
    const CAPACITY: usize = 4;
    const SERVICE: Duration = Duration::from_millis(50);
    let (upstream, workers) = Upstream::workers(CAPACITY, SERVICE).await;
    // No queue in baton: what the limit does not admit is refused at once, so the latency
    // of an answer is the back-end's own.
    let baton = Baton::in_front_of(
        &[upstream.addr],
        "",
        "max_inflight = \"auto\"\nqueue = { size = 0 }",
    )
    .await;
    let until = Instant::now() + Duration::from_secs(8);
    let mut clients = Vec::new();
    for _ in 0..32 {
        let addr = baton.addr;
        clients.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let response = get(addr, "/").await;
                match response.status() {
                    200 => answered.push((started, started.elapsed())),
                    503 => tokio::time::sleep(Duration::from_millis(20)).await,
                    other => panic!("status {other}"),
                }
            }
            answered
        }));
    }
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    // The second half of the run, once the limit settled.
    let settled = until - Duration::from_secs(4);
    let mut latencies: Vec<Duration> = answered
        .iter()
        .filter(|(at, _)| *at >= settled)
        .map(|&(_, took)| took)
        .collect();
    latencies.sort_unstable();
    let arrivals = workers.arrivals();
    let mut inside = arrivals[arrivals.len() / 2..].to_vec();
    inside.sort_unstable();
    let median_inside = inside[inside.len() / 2];
    let median_latency = latencies[latencies.len() / 2];
    let status = support::status_json(&baton).await;
    let limit = &status["upstreams"][0]["admission"]["limit"];
    assert!(
        median_inside <= 3 * CAPACITY,
        "the back-end held {median_inside} at once (limit {limit})"
    );
    assert!(
        median_latency <= SERVICE * 2,
        "median answer {median_latency:?}, unloaded {SERVICE:?} (limit {limit})"
    );
    // It served about as much as the back-end can: not starved by a limit set too low.
    let throughput = latencies.len() as f64 / 4.0;
    let capacity = CAPACITY as f64 / SERVICE.as_secs_f64();
    assert!(
        throughput >= 0.6 * capacity,
        "{throughput:.0}/s of {capacity:.0}/s (limit {limit})"
    );
    baton.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_requests_in_flight_counted_and_applies_a_new_limit() {
    let (upstream, workers) = Upstream::workers(8, Duration::from_millis(800)).await;
    let limited = |limit: u32, weight: u32| {
        support::simple_config(
            &[],
            "",
            &format!("max_inflight = {limit}\nqueue = {{ size = 0 }}"),
        )
        .replace(
            "endpoints = []",
            &format!(
                "endpoints = [{{ addr = \"{}\", weight = {weight} }}]",
                upstream.addr
            ),
        )
    };
    let baton = Baton::start(&limited(2, 1)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let addr = baton.addr;
        held.push(tokio::spawn(async move { get(addr, "/").await.status() }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The upstream changes (its weight), its admission does not: the two in flight count.
    baton.write_config(&limited(2, 3));
    let reloaded = support::admin_post(&baton, "/reload", &[]).await;
    assert_eq!(reloaded.status(), 200, "{}", reloaded.text());
    assert!(
        reloaded.text().contains("upstream app changed"),
        "{}",
        reloaded.text()
    );
    assert_eq!(
        get(baton.addr, "/").await.status(),
        503,
        "a fresh limit would have let it in"
    );
    // A higher limit applies at once, to the same count.
    baton.write_config(&limited(3, 3));
    assert_eq!(
        support::admin_post(&baton, "/reload", &[]).await.status(),
        200
    );
    assert_eq!(get(baton.addr, "/").await.status(), 200);
    for request in held {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert!(workers.max_inside() <= 3);
    baton.stop().await;
}
