//! In-process upstream servers for the tests: real sockets, real hyper, and a behaviour the
//! test can switch at any time (answer, fail, hang, reset, die).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, std::io::Error>;

/// What the upstream does with the next requests.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with a JSON description of the request.
    Echo,
    /// This status, with the JSON description as body.
    Status(u16),
    /// Never answer.
    Hang,
    /// Answer after a pause.
    Delay(Duration),
    /// Read the whole request body, then drop the connection without answering.
    ResetAfterBody,
    /// A 200 whose body comes in `chunks` pieces, `pause` apart.
    Stream { chunks: usize, pause: Duration },
}

struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            behaviour: Arc::new(Mutex::new(Behaviour::Echo)),
            hits: Arc::new(AtomicUsize::new(0)),
            connections: Arc::new(AtomicUsize::new(0)),
            bodies: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

pub struct TestUpstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    h2_only: bool,
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// Request bodies in arrival order (as received in full).
    bodies: Arc<Mutex<Vec<Bytes>>>,
    stop: CancellationToken,
}

impl TestUpstream {
    pub async fn start(name: &'static str) -> TestUpstream {
        Self::start_with(name, false).await
    }

    /// An upstream speaking only HTTP/2 without TLS (h2c prior knowledge).
    pub async fn start_h2c(name: &'static str) -> TestUpstream {
        Self::start_with(name, true).await
    }

    async fn start_with(name: &'static str, h2_only: bool) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener, h2_only, Shared::default())
    }

    /// An upstream on a chosen address, e.g. one port on several loopback addresses (127.0.0.2,
    /// 127.0.0.3, ...) as the targets of one DNS name. Fails when the address is taken.
    pub async fn start_at(name: &'static str, addr: SocketAddr) -> std::io::Result<TestUpstream> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(name, listener, false, Shared::default()))
    }

    /// Starts again on the same address after [`TestUpstream::kill`], keeping behaviour and counters.
    pub async fn restart(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if tries < 100 => {
                    tries += 1;
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("cannot rebind {}: {err}", self.addr),
            }
        };
        let shared = Shared {
            behaviour: self.behaviour.clone(),
            hits: self.hits.clone(),
            connections: self.connections.clone(),
            bodies: self.bodies.clone(),
        };
        *self = Self::serve(self.name, listener, self.h2_only, shared);
    }

    fn serve(
        name: &'static str,
        listener: TcpListener,
        h2_only: bool,
        shared: Shared,
    ) -> TestUpstream {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stop_accepting = stop.clone();
        let Shared {
            behaviour,
            hits,
            connections,
            bodies,
        } = shared;
        let accepted = connections.clone();
        let for_server = (behaviour.clone(), hits.clone(), bodies.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                    _ = stop_accepting.cancelled() => return,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (behaviour, hits, bodies) = for_server.clone();
                let stop_conn = stop_accepting.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let behaviour = behaviour.lock().clone();
                        hits.fetch_add(1, Ordering::SeqCst);
                        let bodies = bodies.clone();
                        async move { respond(name, behaviour, request, bodies).await }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    if h2_only {
                        builder = builder.http2_only();
                    }
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    // Killing the upstream drops its connections mid-flight, as a crash would.
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.cancelled() => {}
                    }
                });
            }
        });
        TestUpstream {
            name,
            addr,
            h2_only,
            behaviour,
            hits,
            connections,
            bodies,
            stop,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock() = behaviour;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections the upstream has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().clone()
    }

    /// Stops listening and drops every open connection.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn respond(
    name: &'static str,
    behaviour: Behaviour,
    mut request: Request<Incoming>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
) -> Result<Response<Body>, std::io::Error> {
    if request.headers().contains_key(header::UPGRADE) {
        return Ok(websocket_echo(&mut request));
    }
    let description = describe(name, &request);
    let (parts, body) = request.into_parts();
    let body = match behaviour {
        // Hanging or streaming upstreams answer before reading the body.
        Behaviour::Hang => {
            std::future::pending::<()>().await;
            Bytes::new()
        }
        _ => body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default(),
    };
    bodies.lock().push(body.clone());
    let mut description = description;
    description["body_len"] = body.len().into();
    description["body"] = String::from_utf8_lossy(&body).into_owned().into();
    let _ = parts;
    let json = |status: StatusCode| {
        let mut response = Response::new(full(description.to_string()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
            .headers_mut()
            .insert("x-upstream", HeaderValue::from_static(name));
        response
    };
    match behaviour {
        Behaviour::Echo => Ok(json(StatusCode::OK)),
        Behaviour::Status(code) => Ok(json(StatusCode::from_u16(code).unwrap())),
        Behaviour::Delay(pause) => {
            tokio::time::sleep(pause).await;
            Ok(json(StatusCode::OK))
        }
        Behaviour::ResetAfterBody => Err(std::io::Error::other("reset on purpose")),
        Behaviour::Hang => unreachable!(),
        Behaviour::Stream { chunks, pause } => {
            let stream = futures_util::stream::unfold(0usize, move |i| async move {
                if i == chunks {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!("chunk-{i}\n")))),
                    i + 1,
                ))
            });
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            response
                .headers_mut()
                .insert("x-upstream", HeaderValue::from_static(name));
            Ok(response)
        }
    }
}

fn describe(name: &str, request: &Request<Incoming>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (key, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(key.as_str()) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(key.to_string(), value.into());
            }
        }
    }
    serde_json::json!({
        "upstream": name,
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "version": format!("{:?}", request.version()),
        "headers": headers,
    })
}

/// Answers a WebSocket handshake and echoes every message back.
fn websocket_echo(request: &mut Request<Incoming>) -> Response<Body> {
    let key = request
        .headers()
        .get("sec-websocket-key")
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() || message.is_binary() {
                if ws.send(message).await.is_err() {
                    return;
                }
            } else if message.is_close() {
                return;
            }
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert("sec-websocket-accept", HeaderValue::from_str(&key).unwrap());
    response
}
