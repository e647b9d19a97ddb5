//! Endpoint health on real sockets: passive ejection, its limits, draining by hand, and the
//! answer when no endpoint is left.

mod support;

use std::time::{Duration, Instant};

use support::{admin_get, get, request, Baton, Upstream};

async fn status(baton: &Baton) -> serde_json::Value {
    serde_json::from_slice(&admin_get(baton, "/status.json").await.body).unwrap()
}

fn states(status: &serde_json::Value) -> Vec<String> {
    status["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_resetting_endpoint_is_ejected_then_returns() {
    let resetting = Upstream::reset_before_head().await;
    let ok = Upstream::ok("fine").await;
    let baton = Baton::in_front_of(
        &[resetting.addr, ok.addr],
        "",
        "balance = \"round-robin\"\nslow_start = \"0s\"\noutlier = { consecutive_failures = 3, base_ejection = \"1s\" }",
    )
    .await;
    let mut errors = 0;
    while resetting.requests() < 3 {
        if get(baton.addr, "/").await.status() != 200 {
            errors += 1;
        }
    }
    assert_eq!(
        errors, 0,
        "a GET that failed was retried on the healthy endpoint"
    );
    let status_now = status(&baton).await;
    assert_eq!(states(&status_now), ["ejected", "healthy"]);
    let ejection = &status_now["upstreams"][0]["endpoints"][0]["ejection"];
    assert_eq!(ejection["cause"], "upstream-reset");
    assert_eq!(ejection["times"], 1);
    assert!(ejection["until"].is_string());

    let ejected_at = Instant::now();
    for _ in 0..10 {
        assert_eq!(get(baton.addr, "/").await.status(), 200);
    }
    assert!(
        ejected_at.elapsed() < Duration::from_millis(900),
        "the test outran the ejection"
    );
    assert_eq!(
        resetting.requests(),
        3,
        "nothing reaches an ejected endpoint"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(states(&status(&baton).await), ["healthy", "healthy"]);
    for _ in 0..4 {
        get(baton.addr, "/").await;
    }
    assert!(
        resetting.requests() > 3,
        "the endpoint is back after its ejection"
    );

    let metrics = admin_get(&baton, "/metrics").await.text();
    let up = format!(
        "baton_endpoint_up{{upstream=\"app\",endpoint=\"{}\"}} 1",
        ok.addr
    );
    assert!(metrics.contains(&up), "{metrics}");
    baton.stop().await;
}

#[tokio::test]
async fn max_ejected_percent_holds() {
    let mut upstreams = Vec::new();
    for _ in 0..4 {
        upstreams.push(Upstream::reset_before_head().await);
    }
    let addrs: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let baton = Baton::in_front_of(
        &addrs,
        "",
        r#"outlier = { consecutive_failures = 1, base_ejection = "30s", max_ejected_percent = 50 }"#,
    )
    .await;
    for _ in 0..12 {
        assert_eq!(get(baton.addr, "/").await.status(), 502);
    }
    let states = states(&status(&baton).await);
    assert_eq!(
        states.iter().filter(|s| *s == "ejected").count(),
        2,
        "{states:?}"
    );
    baton.stop().await;
}

#[tokio::test]
async fn with_every_endpoint_out_the_answer_is_503_at_once() {
    let a = Upstream::full_backlog().await;
    let b = Upstream::full_backlog().await;
    let baton = Baton::in_front_of(
        &[a.addr, b.addr],
        r#"timeouts = { connect = "300ms" }"#,
        r#"outlier = { consecutive_failures = 1, base_ejection = "20s", max_ejected_percent = 100 }"#,
    )
    .await;
    let first = get(baton.addr, "/").await;
    assert_eq!(first.status(), 504, "both endpoints were tried");
    assert_eq!(
        first.header("baton-error"),
        Some("upstream-connect-timeout")
    );

    let started = Instant::now();
    let response = request(
        baton.addr,
        "GET",
        "/",
        &[("accept", "application/json")],
        b"",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "no connect timeout waited on"
    );
    assert_eq!(response.status(), 503);
    assert_eq!(response.header("baton-error"), Some("no-healthy-upstream"));
    assert_eq!(response.header("baton-delivery"), Some("none"));
    let retry_after: u64 = response.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (15..=20).contains(&retry_after),
        "Retry-After {retry_after} is when an ejection ends"
    );
    baton.stop().await;
}

#[tokio::test]
async fn drain_lets_in_flight_finish_and_sends_nothing_new() {
    let slow = Upstream::slow_head(Duration::from_millis(800)).await;
    let ok = Upstream::ok("fine").await;
    let baton = Baton::in_front_of(&[slow.addr, ok.addr], "", r#"balance = "round-robin""#).await;
    let addr = baton.addr;
    // Round robin sends the first request to the first endpoint.
    let in_flight = tokio::spawn(async move { get(addr, "/").await });
    while slow.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = format!("/upstreams/app/endpoints/{}/drain", slow.addr);
    let drained = request(baton.admin, "POST", &drain, &[], b"").await;
    assert_eq!(drained.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&drained.body).unwrap();
    assert_eq!(body["state"], "draining");
    assert_eq!(body["inflight"], 1);

    for _ in 0..6 {
        assert_eq!(get(baton.addr, "/").await.text(), "fine");
    }
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status(), 200);
    assert_eq!(finished.text(), "slow");
    assert_eq!(
        slow.requests(),
        1,
        "nothing new reaches a draining endpoint"
    );
    assert_eq!(states(&status(&baton).await), ["draining", "healthy"]);

    let undrain = format!("/upstreams/app/endpoints/{}/undrain", slow.addr);
    assert_eq!(
        request(baton.admin, "POST", &undrain, &[], b"")
            .await
            .status(),
        200
    );
    for _ in 0..4 {
        get(baton.addr, "/").await;
    }
    assert!(slow.requests() > 1, "undrain restores traffic");
    let unknown = request(
        baton.admin,
        "POST",
        "/upstreams/app/endpoints/10.9.9.9:1/drain",
        &[],
        b"",
    )
    .await;
    assert_eq!(unknown.status(), 404);
    baton.stop().await;
}

/// Share of `n` requests that went to the endpoint answering `name`.
async fn share(baton: &Baton, name: &str, n: usize) -> f64 {
    let mut hits = 0;
    for _ in 0..n {
        if get(baton.addr, "/").await.text() == name {
            hits += 1;
        }
    }
    hits as f64 / n as f64
}

#[tokio::test]
async fn failing_health_checks_take_an_endpoint_out_and_it_ramps_back() {
    let (a, a_healthy) = Upstream::with_health("a").await;
    let (b, _) = Upstream::with_health("b").await;
    let baton = Baton::in_front_of(
        &[a.addr, b.addr],
        "",
        "balance = \"round-robin\"\nslow_start = \"3s\"\n\
         health = { path = \"/healthz\", interval = \"200ms\", timeout = \"500ms\", healthy = 2, unhealthy = 2 }",
    )
    .await;
    assert!((share(&baton, "a", 20).await - 0.5).abs() < 0.01);

    a_healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    let turned = Instant::now();
    while states(&status(&baton).await)[0] != "unhealthy" {
        assert!(
            turned.elapsed() < Duration::from_millis(200 * 2 + 500),
            "unhealthy within interval x unhealthy (plus jitter)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = a.app_requests();
    assert_eq!(share(&baton, "a", 20).await, 0.0);
    assert_eq!(
        a.app_requests(),
        before,
        "an unhealthy endpoint gets no traffic"
    );

    a_healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    while states(&status(&baton).await)[0] != "healthy" {
        assert!(
            turned.elapsed() < Duration::from_secs(5),
            "healthy again after 2 passes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramping = share(&baton, "a", 40).await;
    assert!(
        ramping < 0.35,
        "a recovered endpoint starts with a small share ({ramping})"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ramped = share(&baton, "a", 40).await;
    assert!(
        (ramped - 0.5).abs() < 0.05,
        "and has its full share after slow_start ({ramped})"
    );
    eprintln!(
        "share of the recovered endpoint: {ramping:.2} at first, {ramped:.2} after slow start"
    );
    baton.stop().await;
}

/// SPEC §7: an endpoint that fails one request in ten never fails five in a row, but its
/// failure rate ejects it; the status page says why.
#[tokio::test]
async fn a_partly_broken_endpoint_is_ejected_by_its_failure_rate() {
    let good = Upstream::ok("ok").await;
    let broken = Upstream::garbage_every(10).await;
    let baton = Baton::in_front_of(
        &[good.addr, broken.addr],
        "",
        "balance = \"round-robin\"\nslow_start = \"0s\"",
    )
    .await;
    for i in 0..100 {
        let response = get(baton.addr, "/").await;
        assert_eq!(response.status(), 200, "request {i}: GETs are retried");
    }
    let status = status(&baton).await;
    assert_eq!(states(&status), ["healthy", "ejected"]);
    let ejection = &status["upstreams"][0]["endpoints"][1]["ejection"];
    assert_eq!(ejection["cause"], "upstream-invalid-response");
    let failed = ejection["failed_percent"].as_f64().unwrap();
    assert!((5.0..=15.0).contains(&failed), "{ejection}");
    assert!(
        broken.requests() < 40,
        "out after about 20: {}",
        broken.requests()
    );
    baton.stop().await;
}

/// The last usable endpoint is not ejected while it answers most requests: it is degraded
/// and keeps its traffic, where an ejection would have turned every request into a 503.
#[tokio::test]
async fn a_lone_partly_broken_endpoint_is_degraded_not_ejected() {
    let broken = Upstream::garbage_every(5).await;
    let baton = Baton::in_front_of(&[broken.addr], "", "slow_start = \"0s\"").await;
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(request(baton.addr, "POST", "/", &[], b"x").await.status());
    }
    assert!(!statuses.contains(&503), "{statuses:?}");
    assert!(statuses.iter().filter(|&&s| s == 200).count() >= 45);
    let status = status(&baton).await;
    assert_eq!(states(&status), ["degraded"]);
    let rate = &status["upstreams"][0]["endpoints"][0]["failure_rate"];
    assert!(rate["percent"].as_f64().unwrap() >= 15.0, "{rate}");
    assert_eq!(broken.requests(), 60);
    baton.stop().await;
}
