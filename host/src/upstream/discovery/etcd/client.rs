//! One HTTP/2 connection to one etcd member, speaking the two gRPC calls discovery needs.
//!
//! tonic's generic client ([`Grpc`]) does the gRPC framing over a plain hyper HTTP/2
//! connection: the gateway already builds both, while tonic's own transport (channels, load
//! balancing, axum) would add a second HTTP stack to the build for one connection. Failover
//! between members is the caller's: it opens a new [`Connection`] to the next endpoint.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tonic::client::Grpc;
use tonic::codec::Streaming;
use tonic_prost::ProstCodec;

use super::proto::{RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest, WatchResponse};

/// How often an idle-looking connection is pinged, so that a member that vanished without
/// closing the connection (a dead host, a partition) ends the watch instead of leaving it
/// waiting forever. Above etcd's default `--grpc-keepalive-min-time` (5 s), below which etcd
/// would close the connection for pinging too often.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A whole prefix comes back in one Range response; tonic's default cap (4 MiB) is smaller
/// than what a large service registry can return.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

pub struct Connection {
    grpc: Grpc<SendRequest>,
    /// For connecting, each unary call and waiting for a watch to be created.
    timeout: Duration,
}

impl Connection {
    /// Connects to `endpoint` (`host:port`) within `timeout`.
    pub async fn open(endpoint: &str, timeout: Duration) -> Result<Connection, String> {
        let origin: Uri = format!("http://{endpoint}")
            .parse()
            .map_err(|err| format!("not a valid address: {err}"))?;
        let sender = tokio::time::timeout(timeout, handshake(endpoint))
            .await
            .map_err(|_| format!("no connection within {timeout:?}"))??;
        let grpc =
            Grpc::with_origin(SendRequest(sender), origin).max_decoding_message_size(MAX_MESSAGE);
        Ok(Connection { grpc, timeout })
    }

    /// All keys in `[key, range_end)` at the current revision.
    pub async fn range(&mut self, key: &[u8], range_end: &[u8]) -> Result<RangeResponse, String> {
        let request = RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        };
        let timeout = self.timeout;
        let call = async {
            self.ready().await?;
            self.grpc
                .unary(
                    tonic::Request::new(request),
                    PathAndQuery::from_static("/etcdserverpb.KV/Range"),
                    ProstCodec::default(),
                )
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| format!("range: {}", describe(&status)))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("range: no answer within {timeout:?}"))?
    }

    /// Opens a watch of `[key, range_end)` from `start_revision` on; returns once etcd has
    /// created it (or refused it: the first response then says canceled).
    pub async fn watch(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<Watch, String> {
        let create = WatchRequest {
            create_request: Some(WatchCreateRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                start_revision,
            }),
        };
        // The request stream stays open after the create request: closing it would tell etcd
        // the client is done with the stream.
        let requests = stream::once(async { create }).chain(stream::pending());
        let mut request = tonic::Request::new(requests);
        // Without a leader, a member cannot know of new changes: with this header it ends the
        // watch then (and the caller moves to another member) instead of going quiet.
        request.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let timeout = self.timeout;
        let call = async {
            self.ready().await?;
            let mut responses = self
                .grpc
                .streaming(
                    request,
                    PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                    ProstCodec::default(),
                )
                .await
                .map_err(|status| format!("watch: {}", describe(&status)))?
                .into_inner();
            let first = next(&mut responses).await?;
            Ok(Watch {
                responses,
                first: Some(first),
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("watch: not created within {timeout:?}"))?
    }

    async fn ready(&mut self) -> Result<(), String> {
        self.grpc
            .ready()
            .await
            .map_err(|err| format!("connection closed: {err}"))
    }
}

/// An open watch: its responses in order, beginning with the one that answered the create
/// request.
pub struct Watch {
    responses: Streaming<WatchResponse>,
    first: Option<WatchResponse>,
}

impl Watch {
    /// The next response; an error when the stream broke or ended (etcd never ends a watch
    /// stream by itself without an error).
    pub async fn next(&mut self) -> Result<WatchResponse, String> {
        match self.first.take() {
            Some(first) => Ok(first),
            None => next(&mut self.responses).await,
        }
    }
}

async fn next(responses: &mut Streaming<WatchResponse>) -> Result<WatchResponse, String> {
    match responses.message().await {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err("watch: etcd ended the stream".into()),
        Err(status) => Err(format!("watch: {}", describe(&status))),
    }
}

async fn handshake(endpoint: &str) -> Result<http2::SendRequest<tonic::body::Body>, String> {
    let tcp = TcpStream::connect(endpoint)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_INTERVAL)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|err| format!("HTTP/2 handshake: {err}"))?;
    // Ends when the sender and every stream on it are dropped, or when the connection breaks
    // (the watch then sees the error).
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!("etcd connection ended: {err}");
        }
    });
    Ok(sender)
}

/// A gRPC status as etcd's error text (`etcdserver: no leader`), or the transport error
/// behind an `Unknown`/`Unavailable` status.
fn describe(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    }
}

/// hyper's HTTP/2 sender as the service [`Grpc`] sends through.
#[derive(Clone)]
struct SendRequest(http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<Request<tonic::body::Body>> for SendRequest {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}
