//! gRPC through baton (SPEC §3, §5) with a real gRPC client and server (Python's grpcio,
//! with raw-bytes messages): unary and streaming calls both ways, metadata and a status
//! with trailing metadata passed through, and a gRPC answer from baton itself — UNAVAILABLE
//! with the cause — when the upstream is down.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{simple_config, tls, Baton, TempDir, Upstream};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/calls.py");

/// The Python gRPC server, ended when dropped.
struct GrpcServer {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: TempDir,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn grpc_server() -> GrpcServer {
    let dir = TempDir::new();
    let port_file = dir.0.join("port");
    let child = Command::new("python3")
        .args([SCRIPT, "server", port_file.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 runs (the gRPC tests need it, with `pip install grpcio`)");
    let mut server = GrpcServer {
        child,
        addr: "127.0.0.1:0".parse().unwrap(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            if let Ok(port) = port.trim().parse::<u16>() {
                server.addr.set_port(port);
                return server;
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("the gRPC server exited ({status}); is grpcio installed? pip install grpcio");
        }
        assert!(Instant::now() < deadline, "the gRPC server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn python(mode: &str, addr: std::net::SocketAddr) -> serde_json::Value {
    let (code, out, err) = tls::run(
        "python3",
        vec![SCRIPT.into(), mode.into(), addr.to_string()],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|_| panic!("not JSON: {out}\n{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_kind_pass_through() {
    let server = grpc_server();
    let baton = Baton::start(&simple_config(&[server.addr], "", "protocol = \"h2c\"")).await;
    let results = python("client", baton.addr).await;
    assert_eq!(results["unary"], "echo:ping", "{results}");
    assert_eq!(results["initial"], "hello", "{results}");
    assert_eq!(results["trailer"], "bye", "{results}");
    assert_eq!(
        results["server_stream"],
        serde_json::json!(["part 0", "part 1", "part 2"])
    );
    assert_eq!(results["client_stream"], "6");
    assert_eq!(results["bidi"], serde_json::json!(["X", "YZ"]));
    assert_eq!(results["fail"]["code"], "NOT_FOUND", "{results}");
    assert_eq!(results["fail"]["details"], "thing 42 not found");
    assert_eq!(results["fail"]["why"], "no such thing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_upstream_is_unavailable_with_the_cause() {
    let down = Upstream::refusing().await;
    let baton = Baton::start(&simple_config(&[down.addr], "", "protocol = \"h2c\"")).await;
    let result = python("down", baton.addr).await;
    assert_eq!(result["code"], "UNAVAILABLE", "{result}");
    let details = result["details"].as_str().unwrap();
    assert!(
        details.starts_with("upstream-connect-refused: "),
        "{details}"
    );
    assert!(details.contains("(request "), "{details}");
}
