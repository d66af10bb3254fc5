//! An in-test stand-in for Consul's health API: no Consul server can be installed on these
//! machines (it is not in Debian), so the discovery tests talk to this instead.
//!
//! It follows Consul's documented behaviour for what the gateway uses:
//! `GET /v1/health/service/NAME` with `passing`, `tag` and `dc`; the answer's
//! `X-Consul-Index`; and blocking queries: with `index=N&wait=D`, an answer is held until the
//! service's index passes N or D runs out (then the same index comes back). The body is the
//! documented list of `{Node, Service, Checks}` entries. Each change of any service's
//! instances raises the index, as Consul's raft index does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One registered instance of a service.
#[derive(Clone, Debug)]
pub struct Instance {
    pub addr: SocketAddr,
    pub tags: Vec<&'static str>,
    /// All checks passing (otherwise one is critical).
    pub passing: bool,
    /// `Meta.weight`, when set.
    pub meta_weight: Option<u32>,
}

impl Instance {
    pub fn new(addr: SocketAddr) -> Instance {
        Instance {
            addr,
            tags: Vec::new(),
            passing: true,
            meta_weight: None,
        }
    }

    pub fn tagged(mut self, tag: &'static str) -> Instance {
        self.tags.push(tag);
        self
    }

    pub fn weight(mut self, weight: u32) -> Instance {
        self.meta_weight = Some(weight);
        self
    }

    pub fn critical(mut self) -> Instance {
        self.passing = false;
        self
    }
}

struct Catalog {
    index: u64,
    services: HashMap<String, Vec<Instance>>,
}

pub struct FakeConsul {
    pub addr: SocketAddr,
    catalog: Arc<Mutex<Catalog>>,
    changed: Arc<Notify>,
    /// Queries answered, and those that carried an `index` (blocking ones).
    queries: Arc<AtomicUsize>,
    blocking_queries: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl FakeConsul {
    pub async fn start() -> FakeConsul {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let catalog = Arc::new(Mutex::new(Catalog {
            // Consul's indexes start well above zero.
            index: 100,
            services: HashMap::new(),
        }));
        Self::serve(listener, catalog)
    }

    fn serve(listener: TcpListener, catalog: Arc<Mutex<Catalog>>) -> FakeConsul {
        let addr = listener.local_addr().unwrap();
        let changed = Arc::new(Notify::new());
        let queries = Arc::new(AtomicUsize::new(0));
        let blocking_queries = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let server = Server {
            catalog: catalog.clone(),
            changed: changed.clone(),
            queries: queries.clone(),
            blocking_queries: blocking_queries.clone(),
        };
        let stop_accepting = stop.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                    () = stop_accepting.cancelled() => return,
                };
                let server = server.clone();
                let stop_conn = stop_accepting.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(request).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    // Stopping drops open (blocked) queries, as a crashed agent would.
                    tokio::select! {
                        _ = conn => {}
                        () = stop_conn.cancelled() => {}
                    }
                });
            }
        });
        FakeConsul {
            addr,
            catalog,
            changed,
            queries,
            blocking_queries,
            stop,
        }
    }

    /// Registers `instances` as the whole of `service` (raising the index).
    pub fn set(&self, service: &str, instances: Vec<Instance>) {
        let mut catalog = self.catalog.lock();
        catalog.index += 1;
        catalog.services.insert(service.to_owned(), instances);
        drop(catalog);
        self.changed.notify_waiters();
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    pub fn blocking_queries(&self) -> usize {
        self.blocking_queries.load(Ordering::SeqCst)
    }

    /// Stops answering and closes every connection, as a crashed agent would.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Starts again on the same address with the same catalog.
    pub async fn restart(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) => {
                    tries += 1;
                    assert!(tries < 100, "cannot rebind {}: {err}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        *self = Self::serve(listener, self.catalog.clone());
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Server {
    catalog: Arc<Mutex<Catalog>>,
    changed: Arc<Notify>,
    queries: Arc<AtomicUsize>,
    blocking_queries: Arc<AtomicUsize>,
}

impl Server {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(service) = request.uri().path().strip_prefix("/v1/health/service/") else {
            return status(StatusCode::NOT_FOUND, "unknown endpoint");
        };
        let service = service.to_owned();
        let params: HashMap<String, String> = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.queries.fetch_add(1, Ordering::SeqCst);
        if let Some(index) = params.get("index") {
            let Ok(index) = index.parse::<u64>() else {
                return status(StatusCode::BAD_REQUEST, "bad index");
            };
            let Some(wait) = params.get("wait").map(|w| parse_wait(w)) else {
                return status(StatusCode::BAD_REQUEST, "index without wait");
            };
            self.blocking_queries.fetch_add(1, Ordering::SeqCst);
            // Held until the index passes the client's, or the wait runs out.
            let deadline = tokio::time::Instant::now() + wait.unwrap_or(Duration::from_secs(300));
            loop {
                let changed = self.changed.notified();
                if self.catalog.lock().index > index {
                    break;
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    break;
                }
            }
        }
        let catalog = self.catalog.lock();
        let tag = params.get("tag");
        let passing_only = params.get("passing").is_some_and(|p| p != "false");
        let entries: Vec<serde_json::Value> = catalog
            .services
            .get(&service)
            .into_iter()
            .flatten()
            .filter(|instance| !passing_only || instance.passing)
            .filter(|instance| tag.is_none_or(|tag| instance.tags.contains(&tag.as_str())))
            .map(|instance| entry(&service, instance))
            .collect();
        let mut response = Response::new(Full::new(Bytes::from(
            serde_json::to_vec(&entries).unwrap(),
        )));
        response
            .headers_mut()
            .insert("x-consul-index", catalog.index.to_string().parse().unwrap());
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    }
}

/// Consul's wait syntax as the gateway sends it (`10s`, `5m`, `300ms`).
fn parse_wait(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number * 60)),
        _ => None,
    }
}

fn entry(service: &str, instance: &Instance) -> serde_json::Value {
    let mut meta = serde_json::Map::new();
    if let Some(weight) = instance.meta_weight {
        meta.insert("weight".into(), json!(weight.to_string()));
    }
    let check_status = if instance.passing {
        "passing"
    } else {
        "critical"
    };
    json!({
        "Node": { "Node": "node-1", "Address": "127.0.0.1", "Datacenter": "dc1" },
        "Service": {
            "ID": format!("{service}-{}", instance.addr.port()),
            "Service": service,
            "Tags": instance.tags,
            "Address": service_address(instance),
            "Port": instance.addr.port(),
            "Meta": meta,
            "Weights": { "Passing": 1, "Warning": 1 },
        },
        "Checks": [
            { "CheckID": "serfHealth", "Status": "passing" },
            { "CheckID": format!("service:{service}"), "Status": check_status },
        ],
    })
}

/// Empty for an instance on the node's own address (127.0.0.1): the gateway must then take
/// the node's address, as Consul documents.
fn service_address(instance: &Instance) -> String {
    if instance.addr.ip() == std::net::IpAddr::from([127, 0, 0, 1]) {
        String::new()
    } else {
        instance.addr.ip().to_string()
    }
}

fn status(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_owned())));
    *response.status_mut() = status;
    response
}
