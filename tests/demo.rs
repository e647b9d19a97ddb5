//! `baton demo --for`: clients see no errors while `flaky` and `broken` misbehave, and
//! news pages come stale from the cache while `flaky` is down.

use std::process::Command;

#[test]
fn the_demo_absorbs_a_flaky_and_a_broken_backend() {
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "demo",
            "--for",
            "20s",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .expect("baton runs");
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figure = |label: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in\n{text}"));
        line.trim_start()[label.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number in {line:?}"))
    };
    assert!(figure("requests") > 1000, "{text}");
    assert_eq!(figure("errors seen by clients"), 0, "{text}");
    assert!(figure("retries") > 0, "{text}");
    assert!(
        figure("ejections") + figure("marked unhealthy") > 0,
        "{text}"
    );
    assert!(text.contains("flaky went down"), "{text}");
    assert!(figure("served stale") > 0, "{text}");
    assert!(!text.contains("broken sent 0 malformed"), "{text}");
    assert!(text.contains("http://127.0.0.1:"), "{text}");
}
