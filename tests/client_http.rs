//! How baton speaks HTTP/1.1 to clients: the framing of its answers, HTTP/1.0 clients,
//! request bodies arriving in pieces, and clients that go away mid-request.

mod support;

use std::time::Duration;

use support::{read_response, Baton, Upstream};
use tokio::io::AsyncReadExt;

/// An answer of unknown length goes to an HTTP/1.1 client chunked, and the connection
/// carries the next request.
#[tokio::test]
async fn an_answer_of_unknown_length_is_chunked_for_http11() {
    let upstream = Upstream::raw_then_close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        assert!(response.complete);
        assert_eq!(response.text(), "until the end");
    }
    baton.stop().await;
}

/// HTTP/1.0 clients: kept alive only when they ask, with a length; an answer of unknown
/// length is delimited by closing the connection.
#[tokio::test]
async fn http10_clients_get_framing_they_understand() {
    let upstream = Upstream::ok("known").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;

    let mut client = baton.connect().await;
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.text(), "known");
        assert_eq!(response.header("connection"), Some("keep-alive"));
        assert_eq!(response.header("content-length"), Some("5"));
    }

    let mut client = baton.connect().await;
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let response = read_response(&mut client, "GET").await;
    assert_eq!(response.text(), "known");
    assert_eq!(response.header("connection"), Some("close"));
    let mut rest = Vec::new();
    let mut stream = client.stream;
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "the connection closes after it");
    baton.stop().await;

    let upstream = Upstream::raw_then_close(b"HTTP/1.1 200 OK\r\n\r\nno length").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    client
        .write_all(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut client, "GET").await;
    assert_eq!(response.header("transfer-encoding"), None);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.text(), "no length");
    baton.stop().await;
}

/// A chunked request body sent a few bytes at a time arrives whole; the request after it
/// on the same connection is answered too.
#[tokio::test]
async fn a_request_body_in_small_pieces_arrives_whole() {
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    let request = b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
                    4\r\nabcd\r\n10;note=x\r\n0123456789abcdef\r\n0\r\nx-sum: 20\r\n\r\n\
                    GET /next HTTP/1.1\r\nhost: a\r\n\r\n";
    for piece in request.chunks(3) {
        client.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(read_response(&mut client, "POST").await.text(), "20");
    assert_eq!(read_response(&mut client, "GET").await.text(), "0");
    assert_eq!(upstream.body_bytes(), 20);
    baton.stop().await;
}

/// A client that closes in the middle of its body: the upstream never gets a complete
/// request, and baton keeps serving.
#[tokio::test]
async fn a_client_gone_mid_body_sends_no_complete_request() {
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = baton.connect().await;
    client
        .write_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nonly part")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        upstream.body_bytes(),
        0,
        "no request body was completed upstream"
    );
    let mut client = baton.connect().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut client, "GET").await.status(), 200);
    baton.stop().await;
}

/// At shutdown an idle keep-alive connection is closed at once, and one whose request is
/// still being answered gets its answer, marked as the last, and then closes.
#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_busy_ones() {
    let upstream = Upstream::slow_head(Duration::from_millis(600)).await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut idle = baton.connect().await;
    idle.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle, "GET").await.status(), 200);
    let mut busy = baton.connect().await;
    busy.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(baton.stop());

    let mut rest = Vec::new();
    let mut idle = idle.stream;
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "the idle connection is closed");
    let response = read_response(&mut busy, "GET").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.header("connection"), Some("close"));
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown ends once the busy connection is done")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A xorshift generator: the same cases on every run, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// Pipelined requests of every framing in one byte stream, and the body length of each.
fn random_requests(rng: &mut Rng) -> (Vec<u8>, Vec<usize>) {
    let (mut stream, mut lengths) = (Vec::new(), Vec::new());
    for i in 0..rng.below(5) + 1 {
        match rng.below(3) {
            0 => {
                stream
                    .extend_from_slice(format!("GET /{i} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes());
                lengths.push(0);
            }
            1 => {
                let body = vec![b'c'; rng.below(3000)];
                let head = format!(
                    "POST /{i} HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                stream.extend_from_slice(head.as_bytes());
                stream.extend_from_slice(&body);
                lengths.push(body.len());
            }
            _ => {
                let head =
                    format!("POST /{i} HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n");
                stream.extend_from_slice(head.as_bytes());
                let mut length = 0;
                for _ in 0..rng.below(4) {
                    let size = rng.below(500) + 1;
                    let ext = if rng.below(2) == 0 { ";x=y" } else { "" };
                    stream.extend_from_slice(format!("{size:X}{ext}\r\n").as_bytes());
                    stream.extend_from_slice(&vec![b'k'; size]);
                    stream.extend_from_slice(b"\r\n");
                    length += size;
                }
                let trailer = if rng.below(2) == 0 {
                    "x-trailer: 1\r\n"
                } else {
                    ""
                };
                stream.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
                lengths.push(length);
            }
        }
    }
    (stream, lengths)
}

/// However a stream of pipelined requests is cut into writes, every request is answered, in
/// order, with its whole body seen upstream; a smuggling attempt after them is still caught
/// at its head (400) and never reaches the upstream.
#[tokio::test]
async fn pipelined_requests_of_every_framing_survive_any_split() {
    const SMUGGLED: &[u8] =
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n";
    let upstream = Upstream::sink().await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut requests = 0;
    for _ in 0..30 {
        let (mut input, lengths) = random_requests(&mut rng);
        input.extend_from_slice(SMUGGLED);
        let mut cuts: Vec<usize> = (0..rng.below(8))
            .map(|_| rng.below(input.len() as u64))
            .collect();
        cuts.sort_unstable();
        let mut client = baton.connect().await;
        let mut start = 0;
        for cut in cuts.into_iter().chain([input.len()]) {
            client
                .write_all(&input[start..cut.max(start)])
                .await
                .unwrap();
            start = cut.max(start);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for length in &lengths {
            let response = read_response(&mut client, "POST").await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.text(), length.to_string());
        }
        assert_eq!(read_response(&mut client, "POST").await.status(), 400);
        requests += lengths.len();
    }
    assert_eq!(
        upstream.requests(),
        requests,
        "nothing smuggled got through"
    );
    baton.stop().await;
}

/// A keep-alive connection with no request in flight is closed after the listener's
/// `idle_timeout`; one that sends again in time stays.
#[tokio::test]
async fn an_idle_keep_alive_connection_closes_after_idle_timeout() {
    let upstream = Upstream::ok("hi").await;
    let config = support::simple_config(&[upstream.addr], "", "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[routes]]",
        "listen = \"127.0.0.1:0\"\nidle_timeout = \"400ms\"\n\n[[routes]]",
    );
    let baton = Baton::start(&config).await;
    let mut client = baton.connect().await;
    for _ in 0..3 {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut client, "GET").await.text(), "hi");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let mut stream = client.stream;
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "still open: {closed:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    baton.stop().await;
}

/// A later request on a keep-alive connection may wait `idle_timeout` to begin, but once
/// begun its head must be whole within `header_read_timeout`: the shorter limit takes over
/// from the longer one.
#[tokio::test]
async fn a_slow_head_after_a_kept_alive_request_is_408_after_header_read_timeout() {
    let upstream = Upstream::ok("hi").await;
    let config = support::simple_config(&[upstream.addr], "", "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[routes]]",
        "listen = \"127.0.0.1:0\"\nidle_timeout = \"30s\"\nheader_read_timeout = \"300ms\"\n\n[[routes]]",
    );
    let baton = Baton::start(&config).await;
    let mut client = baton.connect().await;
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut client, "GET").await.text(), "hi");
    }
    // Idle for longer than the head's limit: only `idle_timeout` applies until it begins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.write_all(b"GET / HTTP/1.1\r\nhost").await.unwrap();
    let started = std::time::Instant::now();
    let response = read_response(&mut client, "GET").await;
    assert_eq!(response.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(upstream.requests(), 2);
    baton.stop().await;
}
