//! The gateway's own HTTP/1.1 server: pipelined requests, request body framings, interim
//! responses, HTTP/1.0 clients, bodies left unread, clients that go away mid-body.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn config(upstream: &TestUpstream) -> String {
    format!(
        "{SERVER}max_body_bytes = \"1KiB\"\n{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    )
}

/// Reads from `stream` until `want` appears or the server closes the connection.
async fn read_until(stream: &mut TcpStream, want: &str) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 16384];
    while !String::from_utf8_lossy(&received).contains(want) {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "timed out waiting for {want:?}: {}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_with_every_body_framing_are_answered_in_order() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&config(&upstream));
    let requests = concat!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nchun\r\n4\r\nked!\r\n0\r\nX-T: 1\r\n\r\n",
        // Declared too large: refused unread, and the connection goes on after it.
        "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n",
    );
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(requests.as_bytes()).await.unwrap();
    stream.write_all(&[b'z'; 2000]).await.unwrap();
    stream
        .write_all(b"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_until(&mut stream, "\"/e\"").await;
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &response[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "413", "200"], "{response}");
    let order: Vec<usize> = ["\"/a\"", "\"/b\"", "\"/c\"", "\"/e\""]
        .iter()
        .map(|uri| {
            response
                .find(uri)
                .unwrap_or_else(|| panic!("{uri} missing: {response}"))
        })
        .collect();
    assert!(order.is_sorted(), "{response}");
    assert!(response.contains("\"body\":\"hello\""), "{response}");
    assert!(response.contains("\"body\":\"chunked!\""), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("date: "),
        "{response}"
    );
    // Connection: close on the last request: the gateway closes after answering it.
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_continue_http10_and_broken_bodies() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&config(&upstream));

    // 100 Continue once the proxy reads the body, then the response.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_until(&mut stream, "\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n\r\n"),
        "{interim}"
    );
    stream.write_all(b"data").await.unwrap();
    let response = read_until(&mut stream, "\"body\":\"data\"").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");

    // HTTP/1.0 without keep-alive: answered, then closed.
    let started = Instant::now();
    let response = raw_exchange(
        gateway.addr,
        b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("connection: close\r\n"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(2), "not closed");

    // Malformed chunk framing: 400 and closed.
    let response = raw_exchange(
        gateway.addr,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(raw_status(&response), Some(400), "{response}");
    // A malformed head: 400 from the connection itself.
    let response = raw_exchange(
        gateway.addr,
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(raw_status(&response), Some(400), "{response}");

    // A client that goes away in the middle of its body takes nothing else down.
    let hits = upstream.hits();
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..")
        .await
        .unwrap();
    drop(stream);
    let reply = HttpClient::http1().get(&gateway.url("/after")).await;
    assert_eq!(reply.status, 200);
    assert!(upstream.hits() > hits);
}
