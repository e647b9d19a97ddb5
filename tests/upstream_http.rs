//! How baton speaks HTTP/1.1 to upstreams: response framing, interim answers, early
//! answers, and when an upstream connection may carry the next request.

mod support;

use std::time::Duration;

use support::h2;
use support::{get, request, Baton, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_arrives_whole_and_the_connection_is_reused() {
    let upstream = Upstream::raw(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
    )
    .await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    for _ in 0..3 {
        let response = get(baton.addr, "/").await;
        assert_eq!(response.status(), 200);
        assert!(response.complete);
        assert_eq!(response.text(), "hello world");
    }
    assert_eq!(
        upstream.connections(),
        1,
        "one upstream connection for all three"
    );
    baton.stop().await;
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let upstream = Upstream::raw(
        b"HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let response = get(baton.addr, "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "ok");
    baton.stop().await;
}

#[tokio::test]
async fn a_head_answer_has_no_body_whatever_its_length_says() {
    let upstream = Upstream::raw(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    for _ in 0..2 {
        let response = request(baton.addr, "HEAD", "/", &[], b"").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.header("content-length"), Some("1000"));
        assert!(response.body.is_empty());
    }
    assert_eq!(upstream.connections(), 1);
    baton.stop().await;
}

#[tokio::test]
async fn a_body_delimited_by_close_is_passed_on_and_its_connection_not_reused() {
    let upstream = Upstream::raw_then_close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    for _ in 0..2 {
        let response = get(baton.addr, "/").await;
        assert_eq!(response.status(), 200);
        assert!(response.complete);
        assert_eq!(response.text(), "until the end");
    }
    assert_eq!(upstream.connections(), 2);
    baton.stop().await;
}

#[tokio::test]
async fn bytes_after_a_response_keep_its_connection_out_of_the_pool() {
    let upstream = Upstream::raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA").await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    for _ in 0..2 {
        let response = get(baton.addr, "/").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text(), "ok");
    }
    assert_eq!(upstream.connections(), 2);
    baton.stop().await;
}

#[tokio::test]
async fn ambiguous_framing_is_an_invalid_response() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
    ] {
        let upstream = Upstream::raw(raw).await;
        let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
        let response = get(baton.addr, "/").await;
        assert_eq!(response.status(), 502, "{}", String::from_utf8_lossy(raw));
        assert_eq!(
            response.header("baton-error"),
            Some("upstream-invalid-response")
        );
        baton.stop().await;
    }
}

#[tokio::test]
async fn a_broken_chunk_cuts_the_response() {
    let upstream =
        Upstream::raw(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
            .await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let response = get(baton.addr, "/").await;
    assert_eq!(response.status(), 200);
    assert!(
        !response.complete,
        "the client can tell the body is incomplete"
    );
    assert_eq!(response.text(), "hello");
    baton.stop().await;
}

/// Baton in front of `upstream`, reading ahead only 16 KiB of a body: a larger body
/// streams while the upstream may already answer.
async fn streaming_baton(upstream: &Upstream) -> Baton {
    Baton::in_front_of(
        &[upstream.addr],
        r#"retry = { buffer_bytes = "16KiB" }"#,
        "",
    )
    .await
}

/// POSTs `size` bytes (the whole body, then the read), within 10 s.
async fn upload(baton: &Baton, size: usize) -> support::Response {
    let body = vec![b'x'; size];
    tokio::time::timeout(
        Duration::from_secs(10),
        request(baton.addr, "POST", "/upload", &[], &body),
    )
    .await
    .expect("an answer, not a hang")
}

#[tokio::test]
async fn an_answer_before_the_body_is_read_is_passed_on() {
    let upstream = Upstream::early_answer().await;
    let baton = streaming_baton(&upstream).await;
    // The client sends its body while it reads: the answer may come first.
    let stream = TcpStream::connect(baton.addr).await.unwrap();
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
            4 << 20
        );
        let _ = write_half.write_all(head.as_bytes()).await;
        let _ = write_half.write_all(&vec![b'x'; 4 << 20]).await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !answer.ends_with(b"big!") {
            match read_half.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "an answer, not a hang");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.ends_with("big!"), "{answer}");
    writer.abort();
    baton.stop().await;
}

#[tokio::test]
async fn an_unasked_100_continue_does_not_stop_the_body() {
    let upstream = Upstream::continue_first().await;
    let baton = streaming_baton(&upstream).await;
    let response = upload(&baton, 1 << 20).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), (1 << 20).to_string());
    baton.stop().await;
}

#[tokio::test]
async fn an_early_answer_reaches_a_client_that_sends_its_whole_body_first() {
    // What curl and most clients do: write the whole request, then read. Baton must not
    // close with the body unread (a reset would destroy the answer), but drain it.
    let upstream = Upstream::early_answer().await;
    let baton = streaming_baton(&upstream).await;
    let response = upload(&baton, 8 << 20).await;
    assert_eq!(response.status(), 413);
    assert_eq!(response.text(), "big!");
    baton.stop().await;
}

/// The head and body baton writes for `answer` from an upstream, asked for over HTTP/1.1
/// with the client's `X-Request-Id`.
async fn written_for(answer: &[u8]) -> (String, String) {
    let upstream = Upstream::raw(answer).await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = TcpStream::connect(baton.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nx-request-id: client-1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut written = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut written))
        .await
        .expect("the answer, then the close")
        .unwrap();
    baton.stop().await;
    let written = String::from_utf8(written).unwrap();
    let (head, body) = written.split_once("\r\n\r\n").expect("a whole head");
    (format!("{head}\r\n"), body.to_owned())
}

#[tokio::test]
async fn answer_fields_go_on_as_they_came_less_the_hop_by_hop_ones() {
    let (head, body) = written_for(
        b"HTTP/1.1 200 OK\r\nServer: Up\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
          X-Request-Id: upstream-made\r\nSet-Cookie: a=1\r\nVary: accept\r\nSet-Cookie: b=2\r\n\
          Via: 1.1 inner\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    assert_eq!(body, "ok");
    // The upstream's fields in their order and case; baton's own after them.
    let expected_start = "HTTP/1.1 200 OK\r\nServer: Up\r\nSet-Cookie: a=1\r\nVary: accept\r\n\
                          Set-Cookie: b=2\r\nVia: 1.1 inner\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
                          Content-Length: 2\r\n";
    assert!(head.starts_with(expected_start), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nvia: 1.1 baton\r\n"), "{head}");
    assert_eq!(lower.matches("x-request-id:").count(), 1, "{head}");
    assert!(lower.contains("\r\nx-request-id: client-1\r\n"), "{head}");
    assert_eq!(
        lower.matches("date:").count(),
        1,
        "the upstream's Date only: {head}"
    );
    assert_eq!(lower.matches("content-length:").count(), 1, "{head}");
    assert!(!lower.contains("keep-alive"), "{head}");
    assert!(
        lower.contains("\r\nconnection: close\r\n"),
        "for the client's close: {head}"
    );

    // Fields that `Connection` names go too (the head goes through a header map then).
    let (head, body) = written_for(
        b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n\
          Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(body, "2\r\nok\r\n0\r\n\r\n");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-kept: 2\r\n"), "{head}");
    assert!(!lower.contains("x-secret"), "{head}");
    assert!(
        lower.contains("\r\ndate: "),
        "baton's Date when the upstream sent none: {head}"
    );
}

/// An HTTP/2 client asks for `/` and cancels the stream while the upstream, which answers
/// after `delay`, is still working on it; once that answer is due, the next request comes.
/// Returns the upstream connections that took.
async fn connections_after_a_cancelled_stream(delay: Duration) -> usize {
    let upstream = Upstream::slow_head(delay).await;
    let baton = Baton::in_front_of(&[upstream.addr], "", "").await;
    let mut client = h2::Client::connect(baton.addr).await;
    client.send(&h2::get(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(upstream.requests(), 1, "the request reached the upstream");
    client.send(&h2::reset(1)).await.unwrap();
    tokio::time::sleep(delay + Duration::from_millis(300)).await;
    let response = get(baton.addr, "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "slow");
    drop(client);
    baton.stop().await;
    upstream.connections()
}

#[tokio::test]
async fn a_connection_whose_client_left_is_kept_when_its_answer_comes_soon() {
    assert_eq!(
        connections_after_a_cancelled_stream(Duration::from_millis(300)).await,
        1,
        "the answer no one waited for was read, and its connection reused"
    );
}

#[tokio::test]
async fn a_connection_whose_client_left_is_closed_when_its_answer_is_late() {
    assert_eq!(
        connections_after_a_cancelled_stream(Duration::from_millis(1500)).await,
        2,
        "an answer later than a second is not waited for"
    );
}
