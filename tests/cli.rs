//! The command line: `check` on every example and on broken files, `explain`, `--version`.

mod support;

use std::process::Command;

use support::TempDir;

fn baton(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .output()
        .expect("baton runs")
}

/// The certificate files the examples name, made for the test (none is committed).
const EXAMPLE_CERTS: [&str; 3] = ["site", "api", "wild"];

/// The golden test: every config under examples/ is valid. A config that names
/// certificate files is checked from a scratch copy of the directory where they were made.
#[test]
fn every_example_config_is_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let scratch = TempDir::new();
    let ca = support::tls::TestCa::new("examples");
    for stem in EXAMPLE_CERTS {
        ca.leaf(&scratch, stem, &["localhost", "127.0.0.1"]);
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let mut path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains(".pem\"") {
                path = scratch.file(path.file_name().unwrap().to_str().unwrap(), &text);
            }
            let loaded = baton::config::load(&path);
            assert!(loaded.is_ok(), "{}: {:?}", path.display(), loaded.err());
            let output = baton(&["check", "-c", path.to_str().unwrap()]);
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no example configs found");
}

fn check(config: &str) -> (i32, String) {
    let dir = TempDir::new();
    let path = dir.file("baton.toml", config);
    let output = baton(&["check", "-c", path.to_str().unwrap()]);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_key_is_named_with_its_line_and_column() {
    let (code, stderr) = check(
        "[[listeners]]\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\nupstream = \"app\"\n  retry_on = \"5xx\"\n\n[upstreams.app]\nendpoints = [\"127.0.0.1:3000\"]\n",
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("baton.toml:6:3:"), "{stderr}");
    assert!(stderr.contains("unknown field `retry_on`"), "{stderr}");
}

#[test]
fn every_problem_is_listed_with_its_location() {
    let (code, stderr) = check(
        r#"[[listeners]]
listen = "127.0.0.1:8080"

[[routes]]
upstream = "missing"
cache = { max_bytes = "1MiB", max_object_bytes = "2MiB" }

[upstreams.app]
endpoints = ["bad host:3000", "not an address"]
protocol = "h2"
"#,
    );
    assert_eq!(code, 1);
    for expected in [
        "baton.toml:5:12: upstream \"missing\" is not defined",
        "baton.toml:6:50: `cache.max_object_bytes` must be at most `cache.max_bytes`",
        "baton.toml:9:14: endpoint \"bad host:3000\" must be an IP address and port",
        "baton.toml:9:31: endpoint \"not an address\" must be an IP address and port",
        "baton.toml:10:12: protocol \"h2\" is HTTP/2 over TLS: add `tls",
        "5 errors",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
}

#[test]
fn unusable_certificates_are_located() {
    let dir = TempDir::new();
    let ca = support::tls::TestCa::new("test ca");
    ca.leaf(&dir, "one", &["one.test"]);
    ca.leaf(&dir, "two", &["two.test"]);
    dir.file("empty.pem", "");
    let config = r#"[[listeners]]
listen = "127.0.0.1:8443"
tls = { cert = "missing.pem", key = "one.key" }

[[listeners]]
listen = "127.0.0.1:8444"
tls = { cert = "one.pem", key = "two.key" }

[[listeners]]
listen = "127.0.0.1:8445"
tls = { cert = "empty.pem", key = "one.key" }
[[listeners.certs]]
sni = "bad name"
cert = "two.pem"
key = "two.key"

[[listeners]]
listen = "127.0.0.1:8446"
[[listeners.certs]]
sni = "a.test"
cert = "two.pem"
key = "two.key"
"#;
    let path = dir.file("baton.toml", config);
    let output = baton(&["check", "-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for expected in [
        "baton.toml:3:16: `tls.cert`: cannot read ",
        "missing.pem: No such file or directory",
        "baton.toml:7:33: `tls.key`: ",
        "two.key is not the key of the certificate in ",
        "baton.toml:11:16: `tls.cert`: ",
        "empty.pem holds no certificate",
        "baton.toml:13:7: `sni` must be a host name",
        "baton.toml:19:1: `listeners.certs` adds certificates to a TLS listener",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
}

#[test]
fn bad_values_are_located() {
    let (code, stderr) =
        check("[[listeners]]\nlisten = \"127.0.0.1:8080\"\nheader_read_timeout = \"10 parsecs\"\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("baton.toml:3:23:"), "{stderr}");
    assert!(stderr.contains("unknown duration unit"), "{stderr}");
}

#[test]
fn a_missing_file_is_an_error() {
    let output = baton(&["check", "-c", "/nonexistent/baton.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the config file"));
}

#[test]
fn explain_lists_and_explains_every_cause() {
    let list = baton(&["explain"]);
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    for cause in baton::cause::Cause::ALL {
        assert!(
            text.contains(cause.code()),
            "{} missing from the list",
            cause.code()
        );
        let one = baton(&["explain", cause.code()]);
        assert!(one.status.success());
        let page = String::from_utf8_lossy(&one.stdout).into_owned();
        for section in [
            "What it means",
            "Likely causes",
            "How to fix it",
            "May the client retry?",
        ] {
            assert!(page.contains(section), "{}: no {section}", cause.code());
        }
    }
    let unknown = baton(&["explain", "upstream-on-fire"]);
    assert_eq!(unknown.status.code(), Some(1));
}

#[test]
fn version_help_and_usage_errors() {
    let version = baton(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    let help = baton(&["--help"]);
    assert!(help.status.success());
    for command in ["run", "check", "explain"] {
        assert!(String::from_utf8_lossy(&help.stdout).contains(command));
    }
    assert_eq!(baton(&["frobnicate"]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probe_names_the_dead_endpoint_and_exits_1() {
    let (live, _) = support::Upstream::with_health("hi").await;
    let dead = support::Upstream::refusing().await;
    let config = format!(
        r#"
[[listeners]]
listen = "127.0.0.1:0"

[[routes]]
upstream = "app"

[upstreams.app]
endpoints = ["{live}"]
health = {{ path = "/healthz" }}

[upstreams.billing]
endpoints = ["{dead}"]
"#,
        live = live.addr,
        dead = dead.addr
    );
    let dir = TempDir::new();
    let path = dir.file("baton.toml", &config);
    let run = |path: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            baton(&["check", "--probe", "-c", path.to_str().unwrap()])
        })
    };
    let output = run(path.clone()).await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("upstream app: 1 of 1 endpoints reachable"),
        "{text}"
    );
    assert!(text.contains("200 on /healthz"), "{text}");
    assert!(
        text.contains("upstream billing: NO reachable endpoint"),
        "{text}"
    );
    assert!(
        text.contains(&format!("unreachable: {}: refused", dead.addr)),
        "{text}"
    );

    // Without the dead upstream, every upstream is reachable.
    let billing = config.find("[upstreams.billing]").unwrap();
    let path = dir.file("ok.toml", &config[..billing]);
    let output = run(path).await.unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
