//! Consul: the passing instances of a service, followed with blocking queries.
//!
//! `GET /v1/health/service/NAME?passing=true[&tag=T][&dc=D]` lists the instances whose checks
//! all pass. The response's `X-Consul-Index` goes back as `index` with `wait` on the next
//! query, which Consul holds open until the list changes or `wait` passes; so a change arrives
//! as soon as Consul knows it, and an idle service costs one request per `wait`. The index rules
//! are Consul's documented ones: an index that goes backwards (a Consul restore or a new
//! leader) starts over from 0, and one that is not positive is treated as 1.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Endpoint, Feed, Provider};
use crate::config::{ConsulDiscoveryConfig, Spanned};

/// A health listing larger than this is refused (a misaddressed query, not a service).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Pause after a failed query, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Least time between two queries, so that a Consul answering at once with the same index
/// (which it may) does not get a request loop.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

pub struct Consul {
    /// `http://host:port`, as given.
    base: String,
    service: String,
    tag: Option<String>,
    datacenter: Option<String>,
    wait: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Consul {
    pub fn from_config(
        config: &Spanned<ConsulDiscoveryConfig>,
    ) -> Result<Consul, (std::ops::Range<usize>, String)> {
        let config = config.get_ref();
        let addr = config.addr.get_ref();
        let base = if addr.starts_with("http://") {
            addr.trim_end_matches('/').to_owned()
        } else {
            format!("http://{addr}")
        };
        let valid = base
            .parse::<Uri>()
            .ok()
            .and_then(|uri| uri.authority().map(|a| a.port_u16().is_some()))
            .unwrap_or(false);
        if !valid || addr.starts_with("https://") {
            return Err((
                config.addr.span(),
                format!("discovery.consul.addr: `{addr}` is not `host:port` (or http://host:port)"),
            ));
        }
        let service = config.service.get_ref();
        if service.is_empty() || !service.chars().all(is_name_char) {
            return Err((
                config.service.span(),
                format!("discovery.consul.service: `{service}` is not a service name"),
            ));
        }
        for field in [&config.tag, &config.datacenter].into_iter().flatten() {
            if field.get_ref().is_empty() || !field.get_ref().chars().all(is_name_char) {
                return Err((
                    field.span(),
                    format!(
                        "discovery.consul: `{}` is not a valid name",
                        field.get_ref()
                    ),
                ));
            }
        }
        let wait = config.wait.get();
        if wait < Duration::from_secs(1) || wait > Duration::from_secs(600) {
            return Err((
                config.service.span(),
                "discovery.consul.wait: between 1s and 10m (Consul's limit)".into(),
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Ok(Consul {
            base,
            service: service.clone(),
            tag: config.tag.as_ref().map(|t| t.get_ref().clone()),
            datacenter: config.datacenter.as_ref().map(|d| d.get_ref().clone()),
            wait,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    fn query_uri(&self, index: u64) -> String {
        let mut uri = format!(
            "{}/v1/health/service/{}?passing=true",
            self.base, self.service
        );
        if let Some(tag) = &self.tag {
            uri.push_str("&tag=");
            uri.push_str(tag);
        }
        if let Some(dc) = &self.datacenter {
            uri.push_str("&dc=");
            uri.push_str(dc);
        }
        if index > 0 {
            uri.push_str(&format!("&index={index}&wait={}s", self.wait.as_secs()));
        }
        uri
    }

    /// One (blocking) query: the instances and the new index.
    async fn query(&self, index: u64) -> Result<(Vec<Endpoint>, u64), String> {
        let uri: Uri = self
            .query_uri(index)
            .parse()
            .map_err(|err| format!("bad query URI: {err}"))?;
        let request = Request::get(uri)
            .body(Empty::new())
            .map_err(|err| err.to_string())?;
        // Consul adds up to wait/16 of jitter to a blocking query; past that, the connection
        // is considered lost.
        let limit = self.wait + self.wait / 16 + Duration::from_secs(5);
        let response = tokio::time::timeout(limit, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {}s", limit.as_secs()))?
            .map_err(|err| format!("{}: {err}", self.base))?;
        let status = response.status();
        let new_index = response
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|err| format!("reading the answer: {err}"))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("status {status}: {}", text.trim()));
        }
        let new_index = new_index.ok_or("the answer has no X-Consul-Index")?;
        Ok((endpoints(&body)?, new_index))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// The index for the next query, by Consul's rules for blocking queries.
fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0 // went backwards: start over
    } else {
        returned.max(1)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    meta: Option<std::collections::HashMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
}

/// The endpoints of a `/v1/health/service` answer. An instance's address is its service
/// address, or its node's when that is empty (Consul's own rule); its weight is the `weight`
/// in its service metadata, else its `Weights.Passing`, else 1.
fn endpoints(body: &[u8]) -> Result<Vec<Endpoint>, String> {
    let entries: Vec<Entry> =
        serde_json::from_slice(body).map_err(|err| format!("not a health listing: {err}"))?;
    let mut list = Vec::with_capacity(entries.len());
    for entry in entries {
        let host = if entry.service.address.is_empty() {
            entry.node.address
        } else {
            entry.service.address
        };
        if host.is_empty() {
            continue;
        }
        let weight = entry
            .service
            .meta
            .as_ref()
            .and_then(|meta| meta.get("weight"))
            .and_then(|w| w.parse::<u32>().ok())
            .or(entry.service.weights.map(|w| w.passing))
            .unwrap_or(1)
            .max(1);
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", entry.service.port)
        } else {
            format!("{host}:{}", entry.service.port)
        };
        list.push(Endpoint::new(addr, weight));
    }
    Ok(list)
}

impl Provider for Consul {
    fn describe(&self) -> Value {
        json!({
            "kind": "consul",
            "addr": self.base,
            "service": self.service,
            "tag": self.tag,
            "datacenter": self.datacenter,
        })
    }

    fn run(self: Arc<Self>, feed: Feed) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut index = 0;
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = tokio::time::Instant::now();
                let result = tokio::select! {
                    result = self.query(index) => result,
                    () = feed.stopped() => return,
                };
                let pause = match result {
                    Ok((list, returned)) => {
                        backoff = FIRST_BACKOFF;
                        // The whole list every time, also when the wait ran out with nothing
                        // new: an unchanged list changes nothing, and it says the source is
                        // readable (after a failure, too).
                        if !feed.update(list) {
                            return;
                        }
                        index = next_index(index, returned);
                        MIN_INTERVAL.saturating_sub(started.elapsed())
                    }
                    Err(error) => {
                        if !feed.failed(format!("consul: {error}")) {
                            return;
                        }
                        // The index is kept: the next good answer resumes where we were.
                        let pause = jittered(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        pause
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = feed.stopped() => return,
                }
            }
        })
    }
}

/// `base` ± 20 %, so that many gateways do not retry in step.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_take_the_service_or_node_address_and_a_weight() {
        let body = br#"[
          {"Node": {"Address": "10.0.0.1"}, "Service": {"Address": "", "Port": 9001}},
          {"Node": {"Address": "10.0.0.2"}, "Service": {"Address": "10.0.1.2", "Port": 9002,
             "Weights": {"Passing": 3, "Warning": 1}}},
          {"Node": {"Address": "10.0.0.3"}, "Service": {"Address": "10.0.1.3", "Port": 9003,
             "Meta": {"weight": "7", "version": "2"}, "Weights": {"Passing": 3, "Warning": 1}}},
          {"Node": {"Address": "fd00::4"}, "Service": {"Address": "", "Port": 9004,
             "Meta": {"weight": "lots"}}}
        ]"#;
        assert_eq!(
            endpoints(body).unwrap(),
            vec![
                Endpoint::new("10.0.0.1:9001", 1),
                Endpoint::new("10.0.1.2:9002", 3),
                Endpoint::new("10.0.1.3:9003", 7),
                Endpoint::new("[fd00::4]:9004", 1),
            ]
        );
        assert!(endpoints(b"{\"error\": 1}").is_err());
    }

    #[test]
    fn the_index_follows_consuls_rules() {
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 7), 0, "backwards: start over");
        assert_eq!(next_index(0, 0), 1, "never zero once a query answered");
    }
}
