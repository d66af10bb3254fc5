//! The admin API, on its own listener (`server.admin`, never the public one):
//! `GET /healthz`, `GET /metrics` (Prometheus), `GET /upstreams` (targets with health and
//! ejection state), `GET /config` (the active config's hash, when it was loaded, the last
//! reload attempt) and `POST /reload`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::reload::{Outcome, Reloader, Trigger};
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::{TargetState, metrics};
use crate::upstream::clock_ms;

/// What the admin endpoints act on.
pub struct Admin {
    pub state: Arc<ArcSwap<Snapshot>>,
    /// `None` when the gateway runs without a config file (the demo): nothing to reload.
    pub reloader: Option<Arc<Reloader>>,
}

/// Serves the admin API until `stop` is cancelled. Admin connections are not drained: an
/// operator's request is cheap to repeat.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!("admin listener: {err}");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(admin: &Admin, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        (&Method::GET, "/metrics") => {
            let targets = target_states(&admin.state.load());
            let mut response = Response::new(Full::new(Bytes::from(metrics().encode(targets))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::GET, "/upstreams") => {
            json_response(StatusCode::OK, &upstreams(&admin.state.load()))
        }
        (&Method::GET, "/config") => match &admin.reloader {
            Some(reloader) => json_response(StatusCode::OK, &config_status(reloader)),
            None => json_response(
                StatusCode::OK,
                &json!({ "config": null, "note": "running without a config file" }),
            ),
        },
        (&Method::POST, "/reload") => match &admin.reloader {
            Some(reloader) => {
                let outcome = reloader.reload_in_background(Trigger::Admin).await;
                let status = match outcome {
                    Outcome::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    Outcome::Applied | Outcome::Unchanged => StatusCode::OK,
                };
                json_response(status, &outcome_json(&outcome))
            }
            None => json_response(
                StatusCode::CONFLICT,
                &json!({ "error": "no_config_file", "message": "running without a config file: nothing to reload" }),
            ),
        },
        (_, "/healthz" | "/metrics" | "/upstreams" | "/config" | "/reload") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": "method_not_allowed", "message": "see docs/operations.md for the admin API" }),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": "not_found", "message": "admin endpoints: GET /healthz, GET /metrics, GET /upstreams, GET /config, POST /reload" }),
        ),
    }
}

/// Every upstream's targets with what is known about them now.
fn upstreams(snapshot: &Snapshot) -> Value {
    let now = clock_ms();
    let upstreams: serde_json::Map<String, Value> = snapshot
        .upstreams
        .iter()
        .map(|(name, upstream)| {
            let targets: Vec<Value> = upstream
                .targets()
                .targets
                .iter()
                .map(|target| {
                    let ejected = target.is_ejected(now);
                    json!({
                        "addr": &*target.addr,
                        "weight": target.weight(),
                        "healthy": target.is_healthy(),
                        "ejected": ejected,
                        "ejected_for_ms": if ejected { target.ejected_until().saturating_sub(now) } else { 0 },
                        "available": target.is_available(now),
                        "in_flight": target.in_flight(),
                    })
                })
                .collect();
            let source = match &upstream.source {
                Some(source) => source.to_json(),
                None => json!({ "kind": "static" }),
            };
            (name.clone(), json!({ "source": source, "targets": targets }))
        })
        .collect();
    json!({ "upstreams": upstreams })
}

/// The active snapshot's targets, for the metrics' health and ejection gauges.
fn target_states(snapshot: &Snapshot) -> Vec<TargetState> {
    let now = clock_ms();
    let mut rows = Vec::new();
    for upstream in snapshot.upstreams.values() {
        for target in &upstream.targets().targets {
            rows.push(TargetState {
                upstream: upstream.name.clone(),
                target: target.addr.clone(),
                healthy: target.is_healthy(),
                ejected: target.is_ejected(now),
            });
        }
    }
    rows
}

fn config_status(reloader: &Reloader) -> Value {
    let status = reloader.status();
    json!({
        "config": reloader.config_path().display().to_string(),
        "hash": status.active_hash,
        "loaded_at": rfc3339(status.loaded_at),
        "reloads": { "applied": status.applied, "failed": status.failed },
        "last_attempt": status.last_attempt.map(|attempt| {
            let mut value = outcome_json(&attempt.outcome);
            value["at"] = json!(rfc3339(attempt.at));
            value["trigger"] = json!(attempt.trigger.as_str());
            value
        }),
    })
}

fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Applied => json!({ "result": "applied" }),
        Outcome::Unchanged => json!({ "result": "unchanged" }),
        Outcome::Failed(errors) => json!({ "result": "failed", "errors": errors }),
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
