//! The admin server: health, readiness, metrics and status after real traffic.

mod support;

use support::{admin_get, get, request, Baton, Upstream};

#[tokio::test]
async fn health_readiness_metrics_and_status() {
    let ok = Upstream::ok("hi").await;
    let refusing = Upstream::refusing().await;
    let baton =
        Baton::in_front_of(&[ok.addr, refusing.addr], "", r#"balance = "round-robin""#).await;

    assert_eq!(admin_get(&baton, "/healthz").await.status(), 200);
    assert_eq!(admin_get(&baton, "/readyz").await.status(), 200);

    for _ in 0..4 {
        assert_eq!(get(baton.addr, "/").await.status(), 200);
    }
    let bad = request(
        baton.addr,
        "GET",
        "/",
        &[("content-length", "1"), ("transfer-encoding", "chunked")],
        b"",
    )
    .await;
    assert_eq!(bad.status(), 400);

    let metrics = admin_get(&baton, "/metrics").await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text();
    for expected in [
        "baton_requests_total{route=\"main\",code=\"200\"} 4",
        "baton_errors_total{route=\"\",upstream=\"\",cause=\"bad-request\"} 1",
        "baton_request_duration_seconds_count{route=\"main\"} 4",
        "baton_connections_open{listener=\"public\"}",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    let ok_attempts = format!(
        "baton_upstream_attempts_total{{upstream=\"app\",endpoint=\"{}\",outcome=\"ok\"}} 4",
        ok.addr
    );
    assert!(text.contains(&ok_attempts), "{text}");
    let refused = format!(
        "baton_upstream_attempts_total{{upstream=\"app\",endpoint=\"{}\",outcome=\"upstream-connect-refused\"}}",
        refusing.addr
    );
    assert!(text.contains(&refused), "{text}");

    let status = admin_get(&baton, "/status.json").await;
    assert_eq!(status.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(json["routes"][0]["name"], "main");
    assert_eq!(json["access_log_dropped"], 0);
    assert_eq!(json["routes"][0]["requests"], 4);
    let endpoints = json["upstreams"][0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[0]["addr"], ok.addr.to_string());
    assert_eq!(endpoints[0]["attempts_ok"], 4);
    assert_eq!(endpoints[0]["state"], "healthy");
    assert!(endpoints[1]["attempts_failed"].as_u64().unwrap() >= 1);

    assert_eq!(admin_get(&baton, "/nope").await.status(), 404);
    baton.stop().await;
}

#[tokio::test]
async fn the_access_log_has_a_json_line_per_request() {
    let ok = Upstream::ok("hi").await;
    let truncating = Upstream::truncate_body().await;
    let dir = support::TempDir::new();
    let log = dir.0.join("access.log");
    let config = support::simple_config(&[ok.addr], "", "")
        .replace("access = \"off\"", &format!("access = {:?}", log.to_str().unwrap()))
        + &format!(
            "\n[[routes]]\nname = \"cut\"\npath_prefix = \"/cut\"\nupstream = \"cut\"\n\n[upstreams.cut]\nendpoints = [\"{}\"]\n",
            truncating.addr
        );
    let baton = Baton::start_in(dir, &config).await;
    assert_eq!(
        request(
            baton.addr,
            "POST",
            "/ok?x=1",
            &[("x-request-id", "log-1")],
            b"abc"
        )
        .await
        .status(),
        200
    );
    assert_eq!(get(baton.addr, "/cut").await.status(), 200);
    let _dir = baton.stop().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first = &lines[0];
    for field in [
        "ts",
        "request_id",
        "client",
        "method",
        "host",
        "path",
        "status",
        "cause",
        "route",
        "upstream",
        "endpoint",
        "attempts",
        "delivery",
        "cache",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "connect_ms",
        "ttfb_ms",
    ] {
        assert!(first.get(field).is_some(), "missing {field} in {first}");
    }
    assert_eq!(first["request_id"], "log-1");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/ok");
    assert_eq!(first["status"], 200);
    assert_eq!(first["cause"], serde_json::Value::Null);
    assert_eq!(first["route"], "main");
    assert_eq!(first["endpoint"], ok.addr.to_string());
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["delivery"], "sent");
    assert_eq!(first["bytes_in"], 3);
    assert_eq!(first["bytes_out"], 2);
    let cut = &lines[1];
    assert_eq!(cut["status"], 200);
    assert_eq!(cut["cause"], "upstream-body-truncated");
    assert_eq!(cut["bytes_out"], 10);
}
