//! The admin status page in a real browser (headless Chromium): it loads during traffic and
//! shows an endpoint's ejection by itself, without being reloaded.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::browser::Browser;
use support::{get, Baton, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_an_ejection_as_it_happens() {
    let steady = Upstream::ok("steady").await;
    let (flaky, broken) = Upstream::breakable("flaky").await;
    let api = Upstream::ok("api").await;
    let gone = Upstream::refusing().await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[log]
access = "off"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "api"
cache = {{ default_ttl = "1m" }}

[[routes]]
name = "legacy"
path_prefix = "/legacy"
upstream = "legacy"

[[routes]]
name = "web"
upstream = "web"

[upstreams.web]
endpoints = ["{}", "{}"]
balance = "round-robin"
outlier = {{ consecutive_failures = 3, base_ejection = "60s" }}

[upstreams.api]
endpoints = ["{}"]
max_inflight = 100

[upstreams.legacy]
endpoints = ["{}"]
"#,
        steady.addr, flaky.addr, api.addr, gone.addr
    );
    let baton = Baton::start(&config).await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, addr) = (stop.clone(), baton.addr);
        tokio::spawn(async move {
            let mut errors = 0;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let path = match i % 10 {
                    0 => "/legacy/report",
                    1..=3 => "/api/items",
                    _ => "/",
                };
                let status = get(addr, path).await.status();
                if status != 200 && path != "/legacy/report" {
                    errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            errors
        })
    };

    let page = format!("http://{}/", baton.admin);
    let flaky_addr = flaky.addr.to_string();
    let screenshot = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(1280, 900);
        browser.navigate(&page);
        let row = format!("document.querySelector('tr[data-endpoint=\"{flaky_addr}\"]')");
        assert!(
            browser.wait_for(
                &format!("{row} !== null && {row}.dataset.state === 'healthy'"),
                Duration::from_secs(10)
            ),
            "the page never showed the endpoint healthy"
        );
        // A mark that a reload of the page would wipe out.
        browser.eval("window.batonTestMark = 42");
        let updates_before = browser.eval("Number(document.body.dataset.updates)");

        broken.store(true, Ordering::SeqCst);
        assert!(
            browser.wait_for(
                &format!("{row}.dataset.state === 'ejected'"),
                Duration::from_secs(15)
            ),
            "the page never showed the ejection"
        );
        assert_eq!(
            browser.eval("window.batonTestMark"),
            42,
            "the page was reloaded"
        );
        let updates_after = browser.eval("Number(document.body.dataset.updates)");
        assert!(updates_after.as_u64() > updates_before.as_u64());
        let why = browser.eval(&format!("{row}.querySelector('.why').textContent"));
        assert!(
            why.as_str()
                .unwrap_or("")
                .contains("upstream-invalid-response"),
            "{why}"
        );
        // Sub-millisecond latency shows in microseconds, not as "0.0 ms".
        assert!(
            browser.wait_for("document.body.textContent.includes(' µs')", Duration::from_secs(5)),
            "no latency in µs"
        );
        let limit = browser.eval("document.querySelector('[data-admission=\"api\"]').textContent");
        assert!(limit.as_str().unwrap_or("").contains("limit 100"), "{limit}");
        // The charts: every completed 5-second slot is a point.
        let points = "Number(document.querySelector('[data-upstream=\"web\"] [data-chart=\"req/s\"]').dataset.points)";
        assert!(
            browser.wait_for(&format!("{points} >= 1"), Duration::from_secs(12)),
            "no chart points"
        );
        // The cached route's figures: hits (the back-end's answers carry no freshness,
        // so the route's default_ttl keeps them), objects and bytes.
        let cache = "document.querySelector('tr[data-cache=\"api\"]')";
        assert!(
            browser.wait_for(&format!("{cache} !== null && {cache}.textContent.includes('MiB')"), Duration::from_secs(5)),
            "no cache row"
        );
        let row = browser.eval(&format!("{cache}.textContent"));
        assert!(row.as_str().unwrap_or("").contains("%"), "{row}");
        assert!(row.as_str().unwrap_or("").contains("of 256.0 MiB"), "{row}");
        let lines = browser.eval("document.querySelectorAll('[data-upstream=\"api\"] svg polyline').length");
        assert!(lines.as_u64() >= Some(4), "req/s, errors, p99 and queued: {lines}");
        // Let the generated errors and figures fill in for the picture.
        std::thread::sleep(Duration::from_millis(2500));
        browser.screenshot()
    })
    .await
    .expect("the browser check");

    stop.store(true, Ordering::Relaxed);
    let client_errors = traffic.await.unwrap();
    assert_eq!(
        client_errors, 0,
        "clients saw errors while an endpoint broke"
    );
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&path, &screenshot).unwrap();
    println!("screenshot: {}", path.display());
    assert!(screenshot.starts_with(b"\x89PNG"));
    baton.stop().await;
}
