//! HTTPS listeners (SPEC §2, §12): HTTP/2 by ALPN and HTTP/1.1, certificates by SNI, TLS 1.2
//! and 1.3 only, session resumption, certificates read again on reload, plain HTTP on a TLS
//! port told to use https. Checked with curl, openssl and a rustls client.

mod support;

use std::net::SocketAddr;

use support::tls::{self, TestCa};
use support::{
    admin_get, admin_post, read_response, send_raw, Baton, BatonProcess, TempDir, Upstream,
};

/// A TLS listener with the certificate in `site.pem` / `site.key`, more certificates in
/// `certs`, and one route to `upstream`.
fn https_config(upstream: SocketAddr, certs: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[log]
access = "off"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"
tls = {{ cert = "site.pem", key = "site.key" }}
{certs}

[[routes]]
upstream = "app"

[upstreams.app]
endpoints = ["{upstream}"]
"#
    )
}

/// curl to `https://NAME:PORT/` trusting the test CA, with `extra` arguments; returns its
/// exit code and what it printed.
async fn curl(
    baton: &Baton,
    ca: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let port = baton.addr.port();
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("{name}:{port}:127.0.0.1"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(format!("https://{name}:{port}/"));
    tls::run("curl", args).await
}

#[tokio::test]
async fn https_speaks_http2_by_alpn_and_http11_when_asked() {
    let upstream = Upstream::ok("hello").await;
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let ca_file = ca.write(&dir, "ca.pem");
    ca.leaf(&dir, "site", &["site.test"]);
    let baton = Baton::start_in(dir, &https_config(upstream.addr, "")).await;

    let (code, out, err) = curl(&baton, &ca_file, "site.test", &["-w", "\n%{http_version}"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello\n2");
    let (code, out, err) = curl(
        &baton,
        &ca_file,
        "site.test",
        &["--http1.1", "-w", "\n%{http_version}"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello\n1.1");
    for seen in upstream.seen() {
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{seen:?}");
    }
    assert_eq!(upstream.requests(), 2);

    // Plain HTTP on the TLS port: a short 400 that says what to do, not a hang.
    let plain = send_raw(baton.addr, b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n").await;
    assert_eq!(plain.status(), 400);
    assert_eq!(plain.header("baton-error"), Some("bad-request"));
    assert!(plain.text().contains("https://"), "{}", plain.text());

    // A second connection of the same client resumes its session.
    let connector = tls::client(&ca, &[b"http/1.1"]);
    let first = tls::connect(&connector, baton.addr, "site.test")
        .await
        .unwrap();
    // The session ticket comes after the handshake; a response read takes it in.
    let mut first = support::http::Reader::new(first);
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut first, "GET").await.text(), "hello");
    drop(first);
    let second = tls::connect(&connector, baton.addr, "site.test")
        .await
        .unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    drop(second);

    let metrics = admin_get(&baton, "/metrics").await.text();
    for result in ["ok", "resumed", "plaintext"] {
        let line = format!("baton_tls_handshakes_total{{listener=\"public\",result=\"{result}\"}}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni() {
    let upstream = Upstream::ok("hello").await;
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let ca_file = ca.write(&dir, "ca.pem");
    ca.leaf(&dir, "site", &["site.test"]);
    ca.leaf(&dir, "a", &["a.test"]);
    ca.leaf(&dir, "wild", &["*.wild.test"]);
    let certs = r#"
[[listeners.certs]]
sni = "a.test"
cert = "a.pem"
key = "a.key"

[[listeners.certs]]
sni = "*.wild.test"
cert = "wild.pem"
key = "wild.key"
"#;
    let baton = Baton::start_in(dir, &https_config(upstream.addr, certs)).await;

    // Each name verifies only if the certificate made for it was served.
    for name in ["site.test", "a.test", "x.wild.test", "A.TEST"] {
        let (code, out, err) = curl(&baton, &ca_file, name, &[]).await;
        assert_eq!((code, out.as_str()), (0, "hello"), "{name}: {err}");
    }
    // Names nothing was made for get the default certificate, which curl refuses for
    // them (60: the peer's certificate does not match the name). A wildcard covers one
    // label only.
    for name in ["other.test", "deep.x.wild.test"] {
        let (code, _, err) = curl(&baton, &ca_file, name, &[]).await;
        assert_eq!(code, 60, "{name}: {err}");
    }
}

#[tokio::test]
async fn tls_below_1_2_is_refused() {
    let upstream = Upstream::ok("hello").await;
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    ca.leaf(&dir, "site", &["site.test"]);
    let baton = Baton::start_in(dir, &https_config(upstream.addr, "")).await;
    let s_client = |version: &str| {
        vec![
            "s_client".to_string(),
            "-connect".into(),
            baton.addr.to_string(),
            "-servername".into(),
            "site.test".into(),
            version.into(),
            // Let the client offer old versions at all; the refusal must be baton's.
            "-cipher".into(),
            "DEFAULT@SECLEVEL=0".into(),
        ]
    };
    for version in ["-tls1_2", "-tls1_3"] {
        let (code, out, err) = tls::run("openssl", s_client(version)).await;
        assert_eq!(code, 0, "{version}: {out}\n{err}");
        let expected = if version == "-tls1_2" {
            "TLSv1.2"
        } else {
            "TLSv1.3"
        };
        assert!(out.contains(expected), "{version}: {out}");
    }
    for version in ["-tls1_1", "-tls1"] {
        let (code, out, err) = tls::run("openssl", s_client(version)).await;
        assert_ne!(code, 0, "{version} was accepted: {out}");
        assert!(
            err.contains("protocol version") || err.contains("alert"),
            "{version}: {err}"
        );
    }
    let metrics = admin_get(&baton, "/metrics").await.text();
    assert!(
        metrics.contains("baton_tls_handshakes_total{listener=\"public\",result=\"failed\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_reload_while_older_connections_go_on() {
    let upstream = Upstream::ok("hello").await;
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let old = ca.leaf(&dir, "site", &["site.test"]);
    let old_der = tls::leaf_der(&old.cert);
    let baton = Baton::start_in(dir, &https_config(upstream.addr, "")).await;

    let request = b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n";
    let before = tls::connect(&tls::client(&ca, &[b"http/1.1"]), baton.addr, "site.test")
        .await
        .unwrap();
    assert_eq!(tls::peer_leaf(&before), old_der);
    let mut before = support::http::Reader::new(before);
    before.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut before, "GET").await.text(), "hello");

    // Renewed in place (a new key too), then reloaded.
    let renewed = ca.leaf(&baton.dir, "site", &["site.test"]);
    let renewed_der = tls::leaf_der(&renewed.cert);
    assert_ne!(renewed_der, old_der);
    let reloaded = admin_post(&baton, "/reload", &[]).await;
    assert_eq!(reloaded.status(), 200, "{}", reloaded.text());

    let after = tls::connect(&tls::client(&ca, &[b"http/1.1"]), baton.addr, "site.test")
        .await
        .unwrap();
    assert_eq!(tls::peer_leaf(&after), renewed_der);
    // The connection opened before the reload goes on.
    before.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut before, "GET").await.text(), "hello");

    // A certificate file that fails to load refuses the reload; the renewed one stays.
    baton.dir.file("site.pem", "not a certificate");
    let refused = admin_post(&baton, "/reload", &[]).await;
    assert_eq!(refused.status(), 400, "{}", refused.text());
    assert!(refused.text().contains("tls.cert"), "{}", refused.text());
    let later = tls::connect(&tls::client(&ca, &[b"http/1.1"]), baton.addr, "site.test")
        .await
        .unwrap();
    assert_eq!(tls::peer_leaf(&later), renewed_der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_sighup() {
    let upstream = Upstream::ok("hello").await;
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let old = ca.leaf(&dir, "site", &["site.test"]);
    let old_der = tls::leaf_der(&old.cert);
    let baton = BatonProcess::start_in(dir, &https_config(upstream.addr, ""));
    let connector = || tls::client(&ca, &[b"http/1.1"]);
    let request = b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n";
    let before = tls::connect(&connector(), baton.addr, "site.test")
        .await
        .unwrap();
    assert_eq!(tls::peer_leaf(&before), old_der);
    let mut before = support::http::Reader::new(before);

    let renewed = ca.leaf(&baton.dir, "site", &["site.test"]);
    let renewed_der = tls::leaf_der(&renewed.cert);
    baton.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = tls::connect(&connector(), baton.addr, "site.test")
            .await
            .unwrap();
        if tls::peer_leaf(&now) == renewed_der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The connection opened before the reload still answers.
    before.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut before, "GET").await.text(), "hello");
}

#[tokio::test]
async fn a_websocket_upgrade_over_https_is_tunnelled() {
    let upstream = Upstream::upgrade_echo().await;
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    ca.leaf(&dir, "site", &["site.test"]);
    let baton = Baton::start_in(dir, &https_config(upstream.addr, "")).await;
    let stream = tls::connect(&tls::client(&ca, &[b"http/1.1"]), baton.addr, "site.test")
        .await
        .unwrap();
    let mut reader = support::http::Reader::new(stream);
    reader
        .write_all(
            b"GET /chat HTTP/1.1\r\nhost: site.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = reader.read_response_head().await.unwrap().unwrap();
    assert_eq!(head.status, 101);
    let mut stream = reader.stream;
    support::assert_websocket_echo(&mut stream).await;
}
