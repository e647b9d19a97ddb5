//! Reload (SPEC §12): the config swapped whole while traffic flows, endpoint health kept,
//! listeners added and removed, and an invalid file refused with the old config serving.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::http::Reader;
use support::{
    admin_get, admin_post, get, read_response, simple_config, status_json, Baton, Upstream,
};
use tokio::net::TcpStream;

/// One route to upstream `app`, round robin, an endpoint out for a minute after a failure.
fn config(main: &[std::net::SocketAddr]) -> String {
    simple_config(
        main,
        "",
        "balance = \"round-robin\"\noutlier = { consecutive_failures = 1, base_ejection = \"60s\" }",
    )
}

fn endpoint_state(status: &serde_json::Value, addr: std::net::SocketAddr) -> String {
    status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|u| u["endpoints"].as_array().unwrap())
        .find(|e| e["addr"] == addr.to_string())
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn reload_swaps_routes_and_listeners_keeps_health_and_refuses_bad_files() {
    let ok = Upstream::ok("main").await;
    let refusing = Upstream::refusing().await;
    let other = Upstream::ok("other").await;
    let v1 = config(&[ok.addr, refusing.addr]);
    let baton = Baton::start(&v1).await;
    for _ in 0..4 {
        assert_eq!(get(baton.addr, "/").await.status(), 200);
    }
    assert_eq!(
        endpoint_state(&status_json(&baton).await, refusing.addr),
        "ejected"
    );

    // A new route, upstream and listener; the ejected endpoint stays ejected.
    let v2 = v1.replace(
        "[[routes]]\nname = \"main\"",
        "[[listeners]]\nname = \"extra\"\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"two\"\npath_prefix = \"/two\"\nupstream = \"other\"\n\n[[routes]]\nname = \"main\"",
    ) + &format!("\n[upstreams.other]\nendpoints = [\"{}\"]\n", other.addr);
    baton.write_config(&v2);
    let reloaded = admin_post(&baton, "/reload", &[]).await;
    assert_eq!(reloaded.status(), 200, "{}", reloaded.text());
    let text = reloaded.text();
    assert!(text.contains("listener extra on 127.0.0.1:"), "{text}");
    assert!(text.contains("upstream other added"), "{text}");
    let status = status_json(&baton).await;
    assert_eq!(endpoint_state(&status, refusing.addr), "ejected");
    assert_eq!(status["last_reload"]["ok"], true);
    assert_eq!(get(baton.addr, "/two").await.text(), "other");
    assert_eq!(get(baton.addr, "/").await.text(), "main");
    let extra = baton
        .gateway()
        .listener_addrs()
        .into_iter()
        .find(|(name, _)| name == "extra")
        .expect("the extra listener runs")
        .1;
    assert_eq!(get(extra, "/two").await.text(), "other");

    // An invalid file: refused with its errors; the old config keeps serving.
    baton.write_config(&v2.replace(
        "balance = \"round-robin\"",
        "balance = \"fastest\"\ncolour = 1",
    ));
    let refused = admin_post(&baton, "/reload", &[]).await;
    assert_eq!(refused.status(), 400);
    let errors: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    let errors = errors["errors"].to_string();
    assert!(errors.contains("baton.toml:"), "{errors}");
    assert!(errors.contains("colour"), "{errors}");
    assert_eq!(get(baton.addr, "/two").await.text(), "other");
    let status = status_json(&baton).await;
    assert_eq!(status["last_reload"]["ok"], false);
    assert!(status["last_reload"]["messages"]
        .to_string()
        .contains("colour"));
    let metrics = admin_get(&baton, "/metrics").await.text();
    assert!(
        metrics.contains("baton_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );

    // Back to the first file: the extra listener closes, /two goes to the main route.
    baton.write_config(&v1);
    assert_eq!(admin_post(&baton, "/reload", &[]).await.status(), 200);
    assert_eq!(get(baton.addr, "/two").await.text(), "main");
    let mut closed = false;
    for _ in 0..50 {
        if TcpStream::connect(extra).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the removed listener still accepts");
    assert_eq!(
        endpoint_state(&status_json(&baton).await, refusing.addr),
        "ejected"
    );

    // What only a restart can change is refused.
    baton.write_config(&v1.replace("[log]\n", "[log]\nlevel = \"debug\"\n"));
    let refused = admin_post(&baton, "/reload", &[]).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().contains("log.level"), "{}", refused.text());
    baton.stop().await;
}

/// Keep-alive clients that count every answer that is not a 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|client| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(stream) = TcpStream::connect(addr).await else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let mut reader = Reader::new(stream);
                        // Some clients keep their connection for long, some for a few requests.
                        let requests = if client % 2 == 0 { 200 } else { 3 };
                        for _ in 0..requests {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let sent = reader
                                .write_all(b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n")
                                .await;
                            let response = match sent {
                                Ok(()) => read_response(&mut reader, "GET").await,
                                Err(_) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            };
                            if response.status() == 200 && response.complete {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load client panicked");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let a = Upstream::ok("a").await;
    let b = Upstream::ok("b").await;
    let c = Upstream::ok("c").await;
    let first = config(&[a.addr, b.addr]);
    // Another endpoint list and weights, retries and a second route.
    let second = config(&[a.addr, b.addr, c.addr])
        .replace(
            &format!("\"{}\"", b.addr),
            &format!("{{ addr = \"{}\", weight = 3 }}", b.addr),
        )
        .replace(
            "upstream = \"app\"",
            "upstream = \"app\"\nretry = { attempts = 2 }\n\n[[routes]]\nname = \"spare\"\npath_prefix = \"/spare\"\nupstream = \"app\"",
        );
    let invalid = first.replace("[[routes]]", "[[routes]]\nmax_body_bytes = \"lots\"");
    let baton = Baton::start(&first).await;
    let load = Load::start(baton.addr, 6);
    let mut applied = 0;
    let mut refused = 0;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (text, expected) = match i % 3 {
            0 => (&second, 200),
            1 => (&first, 200),
            _ => (&invalid, 400),
        };
        baton.write_config(text);
        let response = admin_post(&baton, "/reload", &[]).await;
        assert_eq!(
            response.status(),
            expected,
            "reload {i}: {}",
            response.text()
        );
        if expected == 200 {
            applied += 1;
        } else {
            assert!(
                response.text().contains("baton.toml:13:18"),
                "{}",
                response.text()
            );
            refused += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ok, failed) = load.finish().await;
    println!("20 reloads ({applied} applied, {refused} refused) under load: {ok} requests answered 200, {failed} failed");
    assert_eq!(failed, 0, "requests failed during reloads");
    assert!(ok > 200, "too little load to mean anything: {ok}");
    baton.stop().await;
}
