//! `demo.v1.Items`: a small in-memory item catalogue served over gRPC (HTTP/2 cleartext), the
//! upstream of `wasmgate demo`'s `/v1/` route and of the grpc-transcode end-to-end tests.
//!
//! [`DESCRIPTORS`] is the service's `FileDescriptorSet` (with its imports), the bytes the
//! grpc-transcode plugin is configured with.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prost_types::{Duration, Timestamp};
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};

/// The generated messages and the server of `proto/demo/v1/items.proto`.
pub mod pb {
    tonic::include_proto!("demo.v1");
}

use pb::items_server::{Items, ItemsServer};
use pb::{
    CountReply, CountRequest, CreateItemRequest, Dimensions, FailReply, FailRequest,
    GetItemRequest, Item, Kind, ListItemsRequest, UpdateItemRequest,
};

/// The encoded `FileDescriptorSet` of `demo.v1` (imports included: google/api/*.proto and the
/// well-known types it uses).
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.pb"));

/// The catalogue, shared by every connection of one server. Cloning shares it.
#[derive(Clone)]
pub struct DemoItems {
    state: Arc<State>,
}

struct State {
    items: Mutex<BTreeMap<i64, Item>>,
    /// gRPC calls received, whatever their outcome (tests check the upstream was not called).
    calls: AtomicUsize,
}

impl Default for DemoItems {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoItems {
    /// A catalogue with three items (ids 1 to 3).
    pub fn new() -> Self {
        let seed = [
            (1, "Hammer", Kind::Tool, &["steel"][..], 1999),
            (
                2,
                "Rust in Action",
                Kind::Book,
                &["rust", "systems"][..],
                3950,
            ),
            (3, "Rustproof Wrench", Kind::Tool, &[][..], 1250),
        ];
        let items = seed
            .into_iter()
            .map(|(id, name, kind, tags, price_cents)| {
                let item = Item {
                    id,
                    name: name.to_owned(),
                    kind: kind as i32,
                    // 2026-01-0N 12:00:00 UTC
                    created_at: Some(Timestamp {
                        seconds: 1_767_268_800 + id * 86_400,
                        nanos: 0,
                    }),
                    dimensions: Some(Dimensions {
                        width_mm: 100 * id as i32,
                        height_mm: 30,
                    }),
                    tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                    price_cents,
                    warranty: (kind == Kind::Tool).then_some(Duration {
                        seconds: 365 * 86_400,
                        nanos: 0,
                    }),
                };
                (id, item)
            })
            .collect();
        DemoItems {
            state: Arc::new(State {
                items: Mutex::new(items),
                calls: AtomicUsize::new(0),
            }),
        }
    }

    /// How many gRPC calls this catalogue has answered.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn count_call(&self) {
        self.state.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn items(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Item>> {
        self.state.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves gRPC (HTTP/2 with prior knowledge) on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let service = TowerToHyperService::new(ItemsServer::new(self.clone()));
            tokio::spawn(async move {
                // A client that goes away mid-call is not the server's problem.
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// Serves a fresh catalogue on `listener`.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    DemoItems::new().serve(listener).await
}

type ItemStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Item, Status>> + Send>>;

#[tonic::async_trait]
impl Items for DemoItems {
    async fn get_item(&self, request: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        self.count_call();
        let id = request.into_inner().id;
        match self.items().get(&id) {
            Some(item) => Ok(Response::new(item.clone())),
            None => Err(Status::not_found(format!("item {id} does not exist"))),
        }
    }

    type ListItemsStream = ItemStream;

    async fn list_items(
        &self,
        request: Request<ListItemsRequest>,
    ) -> Result<Response<ItemStream>, Status> {
        self.count_call();
        let request = request.into_inner();
        if request.limit < 0 {
            return Err(Status::invalid_argument("limit must not be negative"));
        }
        let prefix = request.filter.map(|f| f.name_prefix).unwrap_or_default();
        let limit = if request.limit == 0 {
            usize::MAX
        } else {
            request.limit as usize
        };
        let items: Vec<Result<Item, Status>> = self
            .items()
            .values()
            .filter(|item| request.kind == 0 || item.kind == request.kind)
            .filter(|item| item.name.starts_with(&prefix))
            .take(limit)
            .cloned()
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn create_item(
        &self,
        request: Request<CreateItemRequest>,
    ) -> Result<Response<Item>, Status> {
        self.count_call();
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        let mut items = self.items();
        if items.values().any(|item| item.name == request.name) {
            return Err(Status::already_exists(format!(
                "an item named {:?} exists",
                request.name
            )));
        }
        let id = items.keys().next_back().copied().unwrap_or(0) + 1;
        let item = Item {
            id,
            name: request.name,
            kind: request.kind,
            created_at: Some(now()),
            dimensions: request.dimensions,
            tags: request.tags,
            price_cents: request.price_cents,
            warranty: request.warranty,
        };
        items.insert(id, item.clone());
        Ok(Response::new(item))
    }

    async fn update_item(
        &self,
        request: Request<UpdateItemRequest>,
    ) -> Result<Response<Item>, Status> {
        self.count_call();
        let Some(update) = request.into_inner().item else {
            return Err(Status::invalid_argument("item is required"));
        };
        let mut items = self.items();
        let Some(item) = items.get_mut(&update.id) else {
            return Err(Status::not_found(format!(
                "item {} does not exist",
                update.id
            )));
        };
        *item = Item {
            created_at: item.created_at,
            ..update
        };
        Ok(Response::new(item.clone()))
    }

    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<FailReply>, Status> {
        self.count_call();
        let request = request.into_inner();
        let code = Code::from_i32(request.code);
        if code == Code::Ok {
            return Ok(Response::new(FailReply {}));
        }
        let message = if request.message.is_empty() {
            code.description().to_owned()
        } else {
            request.message
        };
        Err(Status::new(code, message))
    }

    async fn count(&self, _: Request<CountRequest>) -> Result<Response<CountReply>, Status> {
        self.count_call();
        Ok(Response::new(CountReply {
            items: self.items().len() as i64,
        }))
    }
}

fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}
