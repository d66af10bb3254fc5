//! Limits on what clients may send, and request smuggling attempts.

use std::time::{Duration, Instant};

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn limited_config(upstream: &TestUpstream, server_extra: &str) -> String {
    format!(
        "{SERVER}{server_extra}\n{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_get_431_and_bodies_413() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&limited_config(
        &upstream,
        "max_header_bytes = \"8KiB\"\nmax_body_bytes = \"1KiB\"",
    ));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let response = raw_exchange(gateway.addr, big_header.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(raw_status(&response), Some(431), "{response}");

    let client = HttpClient::http1();
    // Declared too large: refused before anything is read or sent upstream.
    let reply = client
        .send(Method::POST, &gateway.url("/up"), &[], vec![b'x'; 4096])
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"], "body_too_large");
    assert_eq!(upstream.hits(), 0);
    // Chunked, growing past the limit while it streams.
    let chunked = format!(
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n800\r\n{}\r\n0\r\n\r\n",
        "a".repeat(0x800),
        "b".repeat(0x800)
    );
    let response = raw_exchange(gateway.addr, chunked.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(raw_status(&response), Some(413), "{response}");
    // Within limits all is well.
    let reply = client
        .send(Method::POST, &gateway.url("/up"), &[], vec![b'x'; 1000])
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_attempts_are_rejected() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&limited_config(&upstream, ""));
    let attempts = [
        // CL.TE: the classic desync; the "body" hides a second request.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        // Duplicate Content-Length, equal values.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        // Duplicate Content-Length, different values.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
        // Obfuscated Transfer-Encoding.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\nhello",
        // Two hosts: which one routes, which one the upstream reads?
        "GET / HTTP/1.1\r\nHost: public.example\r\nHost: internal.example\r\n\r\n",
        // HTTP/1.1 without a host (RFC 9112 §3.2).
        "GET / HTTP/1.1\r\n\r\n",
    ];
    for attempt in attempts {
        let response = raw_exchange(gateway.addr, attempt.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(
            raw_status(&response),
            Some(400),
            "accepted:\n{attempt}\n---\n{response}"
        );
        assert_eq!(
            response.matches("HTTP/1.1").count(),
            1,
            "a second response leaked: {response}"
        );
    }
    assert_eq!(
        upstream.hits(),
        0,
        "a smuggling attempt reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&limited_config(
        &upstream,
        "header_read_timeout = \"500ms\"",
    ));
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    // Trickle a header byte every 100ms, as a slowloris client does.
    for _ in 0..40 {
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(!text.contains("200 OK"), "{text}");
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the slow client was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&limited_config(
        &upstream,
        "idle_timeout = \"400ms\"\nheader_read_timeout = \"10s\"",
    ));
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .expect("idle connection stays open")
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_makes_new_clients_wait() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&limited_config(
        &upstream,
        "max_connections = 2\nheader_read_timeout = \"10s\"\nidle_timeout = \"10s\"",
    ));
    let first = TcpStream::connect(gateway.addr).await.unwrap();
    let _second = TcpStream::connect(gateway.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(gateway.addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection was served past max_connections = 2"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
