//! Balancers on real sockets: exact weighted round robin, least-request and ewma steering
//! away from a slow endpoint, and consistent hashing.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{get, request, Baton, Upstream};

fn weighted(addrs: &[(std::net::SocketAddr, u32)]) -> String {
    let endpoints: Vec<String> = addrs
        .iter()
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!("endpoints = [{}]", endpoints.join(", "))
}

#[tokio::test]
async fn weighted_round_robin_gives_exact_proportions() {
    let a = Upstream::ok("a").await;
    let b = Upstream::ok("b").await;
    let c = Upstream::ok("c").await;
    let config = support::simple_config(&[], "", "balance = \"round-robin\"").replace(
        "endpoints = []",
        &weighted(&[(a.addr, 1), (b.addr, 2), (c.addr, 3)]),
    );
    let baton = Baton::start(&config).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        *counts.entry(get(baton.addr, "/").await.text()).or_default() += 1;
    }
    assert_eq!(counts["a"], 10);
    assert_eq!(counts["b"], 20);
    assert_eq!(counts["c"], 30);
    baton.stop().await;
}

/// Sends `clients` × `each` requests concurrently; the share that reached `slow`.
async fn share_to_slow(balance: &str) -> f64 {
    let fast1 = Upstream::ok("fast").await;
    let fast2 = Upstream::ok("fast").await;
    let slow = Upstream::slow_head(Duration::from_millis(50)).await;
    let baton = Baton::in_front_of(
        &[fast1.addr, slow.addr, fast2.addr],
        "",
        &format!("balance = \"{balance}\""),
    )
    .await;
    let (clients, each) = (6, 40);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let addr = baton.addr;
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                assert_eq!(get(addr, "/").await.status(), 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = fast1.requests() + fast2.requests() + slow.requests();
    assert_eq!(total, clients * each);
    baton.stop().await;
    slow.requests() as f64 / total as f64
}

#[tokio::test]
async fn least_request_and_ewma_avoid_a_slow_endpoint() {
    for balance in ["least-request", "ewma"] {
        let share = share_to_slow(balance).await;
        eprintln!(
            "{balance}: {:.1}% of requests to the endpoint 50 ms slower",
            share * 100.0
        );
        assert!(
            share < 0.20,
            "{balance} sent {:.1}% to the slow endpoint",
            share * 100.0
        );
    }
}

#[tokio::test]
async fn hash_keeps_keys_and_moves_only_the_leavers() {
    let upstreams = [
        Upstream::ok("0").await,
        Upstream::ok("1").await,
        Upstream::ok("2").await,
        Upstream::ok("3").await,
    ];
    let addrs: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let baton = Baton::in_front_of(
        &addrs,
        "",
        "balance = \"hash\"\nhash_key = \"header:x-user\"",
    )
    .await;
    let owner = |user: usize| {
        let addr = baton.addr;
        async move {
            let user = format!("user-{user}");
            request(addr, "GET", "/", &[("x-user", &user)], b"")
                .await
                .text()
        }
    };
    let users = 200;
    let mut before = Vec::new();
    for user in 0..users {
        before.push(owner(user).await);
    }
    for (user, first) in before.iter().enumerate() {
        assert_eq!(&owner(user).await, first, "a key stays on its endpoint");
    }
    let on_zero = before.iter().filter(|o| *o == "0").count();
    assert!(
        on_zero > users / 10,
        "the ring spreads keys ({on_zero} of {users} on one)"
    );

    let drain = format!("/upstreams/app/endpoints/{}/drain", upstreams[0].addr);
    assert_eq!(
        request(baton.admin, "POST", &drain, &[], b"")
            .await
            .status(),
        200
    );
    let mut moved = 0;
    for (user, first) in before.iter().enumerate() {
        if &owner(user).await != first {
            assert_eq!(first, "0", "only keys of the endpoint that left move");
            moved += 1;
        }
    }
    assert_eq!(moved, on_zero);
    eprintln!("draining 1 of 4 endpoints moved {moved} of {users} keys");
    baton.stop().await;
}
