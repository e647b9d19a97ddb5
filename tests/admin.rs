//! The admin server: health, readiness, metrics and status after real traffic.

mod support;

use support::{admin_get, admin_post, get, request, status_json, Baton, Upstream};

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

#[tokio::test]
async fn admin_posts_need_the_token_and_maintenance_toggles() {
    let ok = Upstream::ok("hi").await;
    let config = support::simple_config(&[ok.addr], "", "")
        .replace("[admin]\n", "[admin]\ntoken = \"s3cret\"\n");
    let baton = Baton::start(&config).await;
    // Reading on loopback needs no token; writing does.
    assert_eq!(admin_get(&baton, "/status.json").await.status(), 200);
    let path = "/routes/main/maintenance?on=true";
    let refused = admin_post(&baton, path, &[]).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.header("www-authenticate").is_some());
    let wrong = admin_post(&baton, path, &[("authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status(), 401);
    let bearer = [("authorization", "Bearer s3cret")];
    // A web page of another site cannot use an operator's browser to act.
    let cross_site = admin_post(
        &baton,
        path,
        &[
            ("authorization", "Bearer s3cret"),
            ("origin", "http://evil.test"),
        ],
    )
    .await;
    assert_eq!(cross_site.status(), 403);

    assert_eq!(get(baton.addr, "/").await.status(), 200);
    let on = admin_post(&baton, path, &bearer).await;
    assert_eq!(on.status(), 200, "{}", on.text());
    let answer = get(baton.addr, "/").await;
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.header("baton-error"), Some("maintenance"));
    let status = status_json(&baton).await;
    assert_eq!(status["routes"][0]["maintenance"], true);
    assert_eq!(status["routes"][0]["maintenance_set_by"], "admin");
    assert_eq!(status["routes"][0]["health"], "maintenance");

    // The toggle holds across a reload that leaves the route's `maintenance` alone...
    assert_eq!(admin_post(&baton, "/reload", &bearer).await.status(), 200);
    assert_eq!(get(baton.addr, "/").await.status(), 503);
    let off = admin_post(&baton, "/routes/main/maintenance?on=false", &bearer).await;
    assert_eq!(off.status(), 200);
    assert_eq!(get(baton.addr, "/").await.status(), 200);

    let unknown = admin_post(&baton, "/routes/nope/maintenance?on=true", &bearer).await;
    assert_eq!(unknown.status(), 404);
    let unclear = admin_post(&baton, "/routes/main/maintenance?on=yes", &bearer).await;
    assert_eq!(unclear.status(), 400);
    baton.stop().await;
}

#[tokio::test]
async fn off_loopback_the_admin_server_needs_a_token_to_start() {
    let config = support::simple_config(&["127.0.0.1:1".parse().unwrap()], "", "").replace(
        "listen = \"127.0.0.1:0\"\n\n[log]",
        "listen = \"0.0.0.0:0\"\n\n[log]",
    );
    let errors = baton::config::parse(&config, "test.toml", std::path::Path::new("."))
        .expect_err("an open admin server without a token is refused");
    assert!(
        errors[0].to_string().contains("admin.token"),
        "{}",
        errors[0]
    );
}

#[tokio::test]
async fn the_status_page_and_its_data_cover_the_last_minute() {
    let ok = Upstream::ok("hi").await;
    let refusing = Upstream::refusing().await;
    let baton = Baton::in_front_of(
        &[ok.addr, refusing.addr],
        "",
        "balance = \"round-robin\"\noutlier = { consecutive_failures = 1 }",
    )
    .await;
    for _ in 0..10 {
        assert_eq!(get(baton.addr, "/").await.status(), 200);
    }
    let page = admin_get(&baton, "/").await;
    assert_eq!(page.status(), 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    // No external assets: the SVG namespace is a name, never fetched.
    let html = page.text().replace("\"http://www.w3.org/2000/svg\"", "");
    assert!(
        html.contains("status.json") && !html.contains("http://") && !html.contains("https://")
    );

    let status = status_json(&baton).await;
    let route = &status["routes"][0];
    assert_eq!(route["recent"]["requests"], 10);
    assert_eq!(route["health"], "degraded");
    assert!(route["recent"]["p50_ms"].as_f64().unwrap() > 0.0);
    let endpoints = status["upstreams"][0]["endpoints"].as_array().unwrap();
    let refused = endpoints
        .iter()
        .find(|e| e["addr"] == refusing.addr.to_string())
        .unwrap();
    assert_eq!(refused["state"], "ejected");
    assert_eq!(refused["ejection"]["cause"], "upstream-connect-refused");
    assert_eq!(
        refused["recent"]["causes"]["upstream-connect-refused"], 1,
        "{refused}"
    );
    assert_eq!(status["window_seconds"], 60);
    assert_eq!(status["upstreams"][0]["usable"], 1);

    // Generated errors are listed, newest first.
    assert_eq!(get(baton.addr, "/").await.status(), 200);
    let bad = request(baton.addr, "GET", "/", &[("content-length", "x")], b"").await;
    assert_eq!(bad.status(), 400);
    let status = status_json(&baton).await;
    assert_eq!(status["recent_errors"][0]["cause"], "bad-request");
    assert_eq!(status["recent_errors"][0]["status"], 400);
    baton.stop().await;
}

#[tokio::test]
async fn the_public_status_page_tells_users_how_each_route_is() {
    let ok = Upstream::ok("hi").await;
    let refusing = Upstream::refusing().await;
    let config = support::simple_config(&[ok.addr], "", "")
        + &format!(
            "\n[[routes]]\nname = \"billing\"\npath_prefix = \"/billing\"\nupstream = \"billing\"\n\n[upstreams.billing]\nendpoints = [\"{}\"]\noutlier = {{ consecutive_failures = 1 }}\n\n[status_page]\npath = \"/.status\"\n",
            refusing.addr
        );
    let baton = Baton::start(&config).await;
    assert_eq!(get(baton.addr, "/billing/pay").await.status(), 502);

    let page = get(baton.addr, "/.status").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.text();
    assert!(html.contains("billing") && html.contains("down"), "{html}");
    assert!(
        html.contains("main") && html.contains("operational"),
        "{html}"
    );
    for secret in [
        ok.addr.to_string(),
        refusing.addr.to_string(),
        ok.addr.port().to_string(),
    ] {
        assert!(!html.contains(&secret), "the public page shows {secret}");
    }
    let json = request(
        baton.addr,
        "GET",
        "/.status",
        &[("accept", "application/json")],
        b"",
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    let billing = json["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "billing")
        .unwrap();
    assert_eq!(billing["status"], "down");
    baton.stop().await;
}
