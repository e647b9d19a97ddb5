//! Endpoints by host name, against a DNS server the test runs on loopback: records that
//! change are followed, a vanished address finishes its requests, a dead DNS server leaves
//! the last good addresses in use, and a name that never resolved is a 502.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use support::dns::DnsServer;
use support::{get, Baton, Upstream};
use tokio::net::TcpListener;

const TWO: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const THREE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A port free on both 127.0.0.2 and 127.0.0.3, so one name can point at either.
async fn shared_port() -> u16 {
    for _ in 0..20 {
        let first = TcpListener::bind((TWO, 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        if TcpListener::bind((THREE, port)).await.is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn config(dns: &DnsServer, endpoint: &str) -> String {
    config_with(dns, endpoint, "balance = \"round-robin\"")
}

fn config_with(dns: &DnsServer, endpoint: &str, balance: &str) -> String {
    support::simple_config(&[], "", &format!("{balance}\nslow_start = \"0s\""))
        .replace("endpoints = []", &format!("endpoints = [\"{endpoint}\"]"))
        + &format!("\n[dns]\nservers = [\"{}\"]\nmin_ttl = \"1s\"\n", dns.addr)
}

async fn wait_for(baton: &Baton, body: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if get(baton.addr, "/").await.text() == body {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no answer {body:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn changed_records_are_followed_and_a_dead_server_changes_nothing() {
    let dns = DnsServer::start().await;
    let port = shared_port().await;
    let two = Upstream::ok_on(SocketAddr::from((TWO, port)), "two").await;
    let three = Upstream::ok_on(SocketAddr::from((THREE, port)), "three").await;
    dns.set("app.test", &[TWO], 1);
    let baton = Baton::start(&config(&dns, &format!("app.test:{port}"))).await;
    assert_eq!(get(baton.addr, "/").await.text(), "two");

    dns.set("app.test", &[THREE], 1);
    let followed = wait_for(&baton, "three", Duration::from_secs(3)).await;
    eprintln!("the new record was followed after {followed:?}");
    assert!(
        followed <= Duration::from_millis(2500),
        "within TTL + 1 s: {followed:?}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&support::admin_get(&baton, "/status.json").await.body).unwrap();
    let endpoints = status["upstreams"][0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["host"], "app.test");
    assert_eq!(endpoints[0]["addr"], format!("127.0.0.3:{port}"));

    dns.stop();
    let before = two.requests();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let response = get(baton.addr, "/").await;
        assert_eq!(
            response.status(),
            200,
            "the last good address keeps serving"
        );
        assert_eq!(response.text(), "three");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(two.requests(), before);
    assert!(three.requests() > 0);
    baton.stop().await;
}

#[tokio::test]
async fn a_vanished_address_finishes_its_request() {
    let dns = DnsServer::start().await;
    let port = shared_port().await;
    let slow =
        Upstream::slow_head_on(SocketAddr::from((TWO, port)), Duration::from_millis(2500)).await;
    let _three = Upstream::ok_on(SocketAddr::from((THREE, port)), "three").await;
    dns.set("app.test", &[TWO], 1);
    let baton = Baton::start(&config(&dns, &format!("app.test:{port}"))).await;
    let addr = baton.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/").await });
    while slow.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dns.set("app.test", &[THREE], 1);
    // Watch the change happen without sending traffic to the old address meanwhile.
    let started = Instant::now();
    loop {
        let status: serde_json::Value =
            serde_json::from_slice(&support::admin_get(&baton, "/status.json").await.body).unwrap();
        let endpoints = status["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .clone();
        if endpoints.len() == 1 && endpoints[0]["addr"] == format!("127.0.0.3:{port}") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{endpoints:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the slow request is still in flight"
    );
    assert_eq!(get(baton.addr, "/").await.text(), "three");
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status(), 200);
    assert_eq!(finished.text(), "slow");
    assert_eq!(
        slow.requests(),
        1,
        "no new request went to the vanished address"
    );
    baton.stop().await;
}

/// Whatever the balancer: an empty endpoint set is no endpoint to pick, never a panic (the
/// power-of-two-choice balancers once took a remainder by zero here).
#[tokio::test]
async fn a_name_that_never_resolved_is_502_dns_failed_with_every_balancer() {
    let dns = DnsServer::start().await;
    let balancers = [
        "balance = \"round-robin\"",
        "balance = \"least-request\"",
        "balance = \"ewma\"",
        "balance = \"hash\"\nhash_key = \"path\"",
    ];
    for balance in balancers {
        let config = config_with(&dns, "nowhere.test:80", balance);
        let baton = Baton::start(&config).await;
        let response = get(baton.addr, "/").await;
        assert_eq!(response.status(), 502, "{balance}");
        assert_eq!(response.header("baton-error"), Some("upstream-dns-failed"));
        assert_eq!(response.header("baton-delivery"), Some("none"));
        assert!(
            !response.text().contains("nowhere.test"),
            "no host name in the body"
        );
        baton.stop().await;
    }
    assert!(dns.queries() > 0);
}
