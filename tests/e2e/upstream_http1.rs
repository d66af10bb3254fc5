//! The gateway's own HTTP/1.1 client (host/src/upstream/h1) against an upstream that writes
//! its answers byte by byte: every body framing, interim responses, broken framing, bodies cut
//! short, and pooled connections the upstream closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Method;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// What the scripted upstream does after reading a request.
#[derive(Clone, Copy)]
enum After {
    KeepOpen,
    /// Closes the connection right after answering, without saying so in the head.
    Close,
}

/// An upstream that answers each request with the bytes `script` returns for its path, on
/// real sockets. It counts connections and remembers the request heads (and bodies) it read.
struct ScriptedUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ScriptedUpstream {
    async fn start(script: fn(&str, &str) -> (Vec<u8>, After)) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (counted, seen) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script, seen.clone()));
            }
        });
        ScriptedUpstream {
            addr,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    script: fn(&str, &str) -> (Vec<u8>, After),
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        buf.drain(..head_end + length);
        let mut request_line = head.split_whitespace();
        let method = request_line.next().unwrap_or("").to_owned();
        let path = request_line.next().unwrap_or("").to_owned();
        seen.lock().push(format!("{head}{body}"));
        let (answer, after) = script(&method, &path);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if let After::Close = after {
            return;
        }
    }
}

fn gateway_for(upstream: &ScriptedUpstream) -> GatewayProcess {
    GatewayProcess::start(&format!(
        "{SERVER}{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"raw\"\n",
        upstream_table("raw", &[(upstream.addr, 1)], "")
    ))
}

fn framings(method: &str, path: &str) -> (Vec<u8>, After) {
    let keep = |bytes: &[u8]| (bytes.to_vec(), After::KeepOpen);
    match (method, path) {
        ("GET", "/length") => keep(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Kind: length\r\n\r\nlength"),
        ("GET", "/chunked") => keep(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
        ),
        ("GET", "/interim") => keep(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("HEAD", "/length") => keep(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"),
        ("GET", "/empty") => keep(b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("POST", "/echo") => keep(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npost"),
        ("GET", "/until-close") => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body ends with the connection".to_vec(),
            After::Close,
        ),
        ("GET", "/two-lengths") => keep(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ("GET", "/bad-chunk") => keep(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX"),
        ("GET", "/short") => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b".to_vec(),
            After::Close,
        ),
        ("GET", "/fields") => keep(
            b"HTTP/1.1 200 OK\r\nX-Mixed-Case: As Sent\r\nX-Request-Id: the-upstream-s\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 6\r\n\r\nfields",
        ),
        ("GET", "/not-http") => (b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), After::Close),
        _ => keep(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_body_framing_reaches_the_client_on_one_connection() {
    let upstream = ScriptedUpstream::start(framings).await;
    let gateway = gateway_for(&upstream);
    let client = HttpClient::http1();

    let reply = client.get(&gateway.url("/length")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "length")
    );
    assert_eq!(reply.headers["x-kind"], "length");
    let reply = client.get(&gateway.url("/chunked")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "hello, world")
    );
    let reply = client.get(&gateway.url("/interim")).await;
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (201, "ok"));
    let reply = client
        .send(Method::HEAD, &gateway.url("/length"), &[], "")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-length"], "6");
    assert!(reply.body.is_empty());
    let reply = client.get(&gateway.url("/empty")).await;
    assert_eq!(reply.status, 204);
    // Six exchanges one after the other: one pooled connection carried them all.
    assert_eq!(upstream.connections(), 1);
    // A body streamed from the client goes through hyper's client, on a connection of its own.
    let reply = client
        .send(Method::POST, &gateway.url("/echo"), &[], "payload")
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "post")
    );
    assert_eq!(upstream.connections(), 2);

    // A body that ends with the connection: complete, and the connection is not reused.
    let reply = client.get(&gateway.url("/until-close")).await;
    assert_eq!(reply.text(), "the body ends with the connection");
    let reply = client.get(&gateway.url("/length")).await;
    assert_eq!(reply.text(), "length");
    assert_eq!(upstream.connections(), 3);

    let requests = upstream.requests.lock().clone();
    assert!(
        requests[0].starts_with("GET /length HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0].contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(requests[0].contains("\r\nhost: "), "{}", requests[0]);
    let post = requests.iter().find(|r| r.starts_with("POST")).unwrap();
    assert!(post.contains("\r\ncontent-length: 7\r\n"), "{post}");
    assert!(post.ends_with("\r\n\r\npayload"), "{post}");
}

#[tokio::test(flavor = "multi_thread")]
async fn response_fields_pass_as_received_minus_hop_by_hop_and_the_gateway_s_own() {
    let upstream = ScriptedUpstream::start(framings).await;
    let gateway = gateway_for(&upstream);
    // HTTP/1.1: the upstream's fields go out as its bytes (names in its case, repeated fields
    // repeated), without the hop-by-hop ones, and the gateway's X-Request-Id instead of the
    // upstream's.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /fields HTTP/1.1\r\nHost: x\r\nX-Request-Id: the-client-s\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    while !received.ends_with(b"fields") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the response in time")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    for field in [
        "\r\nX-Mixed-Case: As Sent\r\n",
        "\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
        "\r\nContent-Length: 6\r\n",
        "\r\nx-request-id: the-client-s\r\n",
    ] {
        assert!(text.contains(field), "{field:?} in {text}");
    }
    for gone in ["the-upstream-s", "Keep-Alive", "Upgrade", "keep-alive"] {
        assert!(!text.contains(gone), "{gone:?} in {text}");
    }

    // HTTP/2: the same fields, through the header map.
    let reply = HttpClient::h2c()
        .send(
            Method::GET,
            &gateway.url("/fields"),
            &[("x-request-id", "the-client-s")],
            "",
        )
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "fields")
    );
    assert_eq!(reply.headers["x-mixed-case"], "As Sent");
    assert_eq!(reply.headers["x-request-id"], "the-client-s");
    let cookies: Vec<_> = reply.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert!(!reply.headers.contains_key("keep-alive"));
    assert!(!reply.headers.contains_key("upgrade"));
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_upstream_answers_are_502_or_cut_and_never_reused() {
    let upstream = ScriptedUpstream::start(framings).await;
    let gateway = gateway_for(&upstream);
    let client = HttpClient::http1();

    for path in ["/two-lengths", "/not-http"] {
        let reply = client.get(&gateway.url(path)).await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
    }
    // The head was fine, the body is not: the client must not see a complete response.
    for path in ["/bad-chunk", "/short"] {
        let result = client
            .try_send(Method::GET, &gateway.url(path), &[], "")
            .await;
        assert!(
            result.is_err(),
            "{path}: a broken body looked complete: {:?}",
            result.map(|reply| reply.text())
        );
    }
    let connections = upstream.connections();
    // None of those connections went back to the pool.
    let reply = client.get(&gateway.url("/length")).await;
    assert_eq!(reply.text(), "length");
    assert_eq!(upstream.connections(), connections + 1);
    let log = gateway.wait_access_log(5);
    assert_eq!(
        log.iter().filter(|e| e["complete"] == false).count(),
        2,
        "{log:?}"
    );
}

fn closes_after_each(_: &str, _: &str) -> (Vec<u8>, After) {
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        After::Close,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_the_upstream_closed_are_not_used() {
    // The upstream keeps no connection open but does not say so (no `Connection: close`): the
    // gateway pools each one and must notice, before or after sending, that it was closed.
    let upstream = ScriptedUpstream::start(closes_after_each).await;
    let gateway = gateway_for(&upstream);
    let client = HttpClient::http1();
    // Right after one another (the close may not have been seen yet: a GET is sent again on a
    // new connection) and with a pause (the close was seen: the connection is skipped).
    for i in 0..40 {
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::POST
        };
        if method == Method::POST {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reply = client
            .send(method.clone(), &gateway.url("/x"), &[], "")
            .await;
        assert_eq!(
            (reply.status.as_u16(), reply.text().as_str()),
            (200, "ok"),
            "request {i} ({method})"
        );
    }
    assert_eq!(upstream.connections(), 40);
}
