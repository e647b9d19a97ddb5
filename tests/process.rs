//! Baton as a process: flat memory for huge bodies, and a graceful exit on SIGTERM.

mod support;

use std::time::{Duration, Instant};

use support::{get, read_response, request, BatonProcess, Reader, Upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BODY_BYTES: u64 = 300 * 1000 * 1000;
const RSS_LIMIT: u64 = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_download_and_upload_keep_memory_flat() {
    let download = Upstream::download(BODY_BYTES).await;
    let sink = Upstream::sink().await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[log]
access = "off"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/down"
upstream = "down"
[[routes]]
path_prefix = "/up"
upstream = "up"
max_body_bytes = "1GiB"
[upstreams.down]
endpoints = ["{}"]
[upstreams.up]
endpoints = ["{}"]
"#,
        download.addr, sink.addr
    );
    let baton = BatonProcess::start(&config);

    let started = Instant::now();
    let response = request(baton.addr, "GET", "/down", &[], b"").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.body.len() as u64, BODY_BYTES);
    assert!(response.complete);
    eprintln!("300 MB download in {:?}", started.elapsed());

    let started = Instant::now();
    let stream = TcpStream::connect(baton.addr).await.unwrap();
    let mut client = Reader::new(stream);
    client
        .write_all(b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'u'; 64 * 1024];
    let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
    frame.extend_from_slice(&chunk);
    frame.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    while sent < BODY_BYTES {
        client.stream.write_all(&frame).await.unwrap();
        sent += chunk.len() as u64;
    }
    client.write_all(b"0\r\n\r\n").await.unwrap();
    let response = read_response(&mut client, "POST").await;
    assert_eq!(response.status(), 200, "{}", response.text());
    assert_eq!(response.text(), sent.to_string());
    eprintln!("{sent} byte chunked upload in {:?}", started.elapsed());

    let peak = baton.peak_rss();
    eprintln!("baton peak RSS: {:.1} MiB", peak as f64 / (1 << 20) as f64);
    assert!(peak < RSS_LIMIT, "peak RSS {peak} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let upstream = Upstream::slow_head(Duration::from_secs(2)).await;
    let config = support::simple_config(&[upstream.addr], "", "");
    let mut baton = BatonProcess::start(&config);
    let addr = baton.addr;
    let slow = tokio::spawn(async move { request(addr, "GET", "/", &[], b"").await });
    // Let the request reach the upstream before the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.requests() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.requests(), 1);
    baton.signal("TERM");
    // New connections are refused once the listener is closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections after SIGTERM"
    );

    let response = slow.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "slow");
    let code = tokio::task::spawn_blocking(move || baton.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let first = Upstream::ok("first").await;
    let second = Upstream::ok("second").await;
    let config = support::simple_config(&[first.addr], "", "");
    let baton = BatonProcess::start(&config);
    assert_eq!(get(baton.addr, "/").await.text(), "first");

    baton.dir.file(
        "baton.toml",
        &config.replace(&first.addr.to_string(), &second.addr.to_string()),
    );
    baton.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut body = String::new();
    while Instant::now() < deadline {
        body = get(baton.addr, "/").await.text();
        if body == "second" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(body, "second", "the reload never took effect");
    // The reload is logged once it took effect, and stderr is read by another thread.
    logged(&baton, "config reloaded").await;

    // A broken file is refused; the process keeps serving the last good config.
    baton.dir.file("baton.toml", "[[listeners]\n");
    baton.signal("HUP");
    logged(&baton, "reload refused").await;
    assert_eq!(get(baton.addr, "/").await.text(), "second");
}

/// Waits up to 5 s for a line of baton's stderr that contains `text`.
async fn logged(baton: &BatonProcess, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !baton.stderr().iter().any(|l| l.contains(text)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        baton.stderr().iter().any(|l| l.contains(text)),
        "no {text:?} in {:?}",
        baton.stderr()
    );
}
