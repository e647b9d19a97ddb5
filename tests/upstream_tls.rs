//! TLS to upstreams (SPEC §2 upstream `tls`, §4 `upstream-tls-failed`): certificates
//! verified against `ca` with the name from `sni` or the endpoint, pooled connections
//! reused, client certificates (mTLS), and every handshake failure a 502 that reached no
//! upstream and is retried elsewhere.

mod support;

use std::net::SocketAddr;

use support::tls::TestCa;
use support::{request, simple_config, Baton, TempDir, Upstream};

async fn baton_with(dir: TempDir, endpoints: &[SocketAddr], tls: &str) -> Baton {
    let config = simple_config(endpoints, "", &format!("tls = {{ {tls} }}"));
    Baton::start_in(dir, &config).await
}

#[tokio::test]
async fn a_verified_upstream_answers_over_one_pooled_connection() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend ca");
    ca.write(&dir, "ca.pem");
    let leaf = ca.leaf(&dir, "backend", &["backend.test"]);
    let upstream = Upstream::ok_tls("secure", &leaf, None).await;
    let baton = baton_with(
        dir,
        &[upstream.addr],
        r#"sni = "backend.test", ca = "ca.pem""#,
    )
    .await;
    for _ in 0..5 {
        let response = support::get(baton.addr, "/").await;
        assert_eq!(response.status(), 200, "{}", response.text());
        assert_eq!(response.text(), "secure");
    }
    assert_eq!(upstream.requests(), 5);
    assert_eq!(upstream.connections(), 1, "a handshake per request");
}

#[tokio::test]
async fn an_address_endpoint_is_verified_by_its_address() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend ca");
    ca.write(&dir, "ca.pem");
    let leaf = ca.leaf(&dir, "backend", &["127.0.0.1"]);
    let upstream = Upstream::ok_tls("secure", &leaf, None).await;
    let baton = baton_with(dir, &[upstream.addr], r#"ca = "ca.pem""#).await;
    assert_eq!(support::get(baton.addr, "/").await.text(), "secure");
}

#[tokio::test]
async fn a_wrong_name_or_an_unknown_ca_is_502_tls_failed_with_nothing_sent() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend ca");
    let stranger = TestCa::new("someone else");
    ca.write(&dir, "ca.pem");
    stranger.write(&dir, "stranger.pem");
    let leaf = ca.leaf(&dir, "backend", &["other.test"]);
    let upstream = Upstream::ok_tls("secure", &leaf, None).await;
    let cases = [
        r#"sni = "backend.test", ca = "ca.pem""#,
        r#"sni = "other.test", ca = "stranger.pem""#,
    ];
    for tls in cases {
        let config = simple_config(&[upstream.addr], "", &format!("tls = {{ {tls} }}"));
        dir.file("baton.toml", &config);
        let baton = Baton::start(
            &config
                .replace("\"ca.pem\"", &format!("{:?}", dir.0.join("ca.pem")))
                .replace(
                    "\"stranger.pem\"",
                    &format!("{:?}", dir.0.join("stranger.pem")),
                ),
        )
        .await;
        let response = request(baton.addr, "POST", "/", &[], b"order").await;
        assert_eq!(response.status(), 502, "{tls}");
        assert_eq!(
            response.header("baton-error"),
            Some("upstream-tls-failed"),
            "{tls}"
        );
        assert_eq!(response.header("baton-delivery"), Some("none"), "{tls}");
        // Why is for the operator: on the status page, not in the answer.
        let status = support::status_json(&baton).await;
        let detail = status["recent_errors"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(detail.contains("certificate"), "{tls}: {status}");
        assert!(!response.text().contains(&detail), "{tls}");
    }
    assert_eq!(upstream.requests(), 0);

    // verify = false takes any certificate.
    let config = simple_config(&[upstream.addr], "", "tls = { verify = false }");
    let baton = Baton::start(&config).await;
    assert_eq!(support::get(baton.addr, "/").await.text(), "secure");
}

#[tokio::test]
async fn a_failed_handshake_is_retried_on_another_endpoint_even_for_a_post() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend ca");
    ca.write(&dir, "ca.pem");
    let wrong = ca.leaf(&dir, "wrong", &["wrong.test"]);
    let right = ca.leaf(&dir, "right", &["backend.test"]);
    let bad = Upstream::ok_tls("bad", &wrong, None).await;
    let good = Upstream::ok_tls("good", &right, None).await;
    let baton = baton_with(
        dir,
        &[bad.addr, good.addr],
        r#"sni = "backend.test", ca = "ca.pem""#,
    )
    .await;
    for _ in 0..4 {
        let response = request(baton.addr, "POST", "/", &[], b"order").await;
        assert_eq!(response.text(), "good");
    }
    assert_eq!(bad.requests(), 0);
    assert_eq!(good.requests(), 4);
}

#[tokio::test]
async fn a_client_certificate_is_shown_when_configured() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend ca");
    let clients = TestCa::new("client ca");
    ca.write(&dir, "ca.pem");
    let leaf = ca.leaf(&dir, "backend", &["backend.test"]);
    clients.leaf(&dir, "client", &["baton.test"]);
    let upstream = Upstream::ok_tls("secure", &leaf, Some(&clients)).await;
    let with_cert =
        r#"sni = "backend.test", ca = "ca.pem", cert = "client.pem", key = "client.key""#;
    let baton = baton_with(dir, &[upstream.addr], with_cert).await;
    assert_eq!(support::get(baton.addr, "/").await.text(), "secure");

    // Without it the upstream refuses the handshake.
    let without = simple_config(
        &[upstream.addr],
        "",
        &format!(
            "tls = {{ sni = \"backend.test\", ca = {:?} }}",
            baton.dir.0.join("ca.pem")
        ),
    );
    let bare = Baton::start(&without).await;
    let response = support::get(bare.addr, "/").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.header("baton-error"), Some("upstream-tls-failed"));
    assert_eq!(response.header("baton-delivery"), Some("none"));
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_probes_connect_as_requests_do() {
    let dir = TempDir::new();
    let ca = TestCa::new("backend ca");
    let stranger = TestCa::new("someone else");
    ca.write(&dir, "ca.pem");
    stranger.write(&dir, "stranger.pem");
    let leaf = ca.leaf(&dir, "backend", &["backend.test"]);
    let upstream = Upstream::ok_tls("secure", &leaf, None).await;
    let probe = |ca_file: &str| {
        let config = format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nupstream = \"app\"\n\n[upstreams.app]\nendpoints = [\"{}\"]\nhealth = {{ path = \"/healthz\" }}\ntls = {{ sni = \"backend.test\", ca = \"{ca_file}\" }}\n",
            upstream.addr
        );
        let path = dir.file("probe.toml", &config);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
                .args(["check", "--probe", "-c", path.to_str().unwrap()])
                .output()
                .unwrap()
        })
    };
    let output = probe("ca.pem").await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("200 on /healthz"), "{text}");
    let output = probe("stranger.pem").await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("failed: TLS handshake"), "{text}");

    // The running gateway's health checks go over TLS too: the endpoint stays healthy.
    let baton = baton_with(
        dir,
        &[upstream.addr],
        r#"sni = "backend.test", ca = "ca.pem" }
health = { path = "/healthz", interval = "100ms", healthy = 1, unhealthy = 1"#,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let checks = upstream
        .seen()
        .iter()
        .filter(|head| head.path == "/healthz")
        .count();
    assert!(checks >= 2, "{checks} health checks arrived");
    assert_eq!(support::get(baton.addr, "/").await.text(), "secure");
}
