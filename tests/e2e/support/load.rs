//! Steady client load through the gateway while a test changes something underneath (targets
//! come and go, a discovery source dies): every request is checked, answers are counted by the
//! test upstream that gave them, and [`Load::finish`] fails the test if any request failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::{GatewayProcess, HttpClient};

/// Pause between one client's requests: steady traffic rather than flat out, leaving the two
/// cores room for the gateway, the source (etcd, dnsmasq) and the test itself.
const PAUSE: Duration = Duration::from_millis(2);

pub struct Load {
    stop: Arc<AtomicBool>,
    /// Successful answers by the `upstream` name in their body.
    hits: Arc<Mutex<HashMap<String, usize>>>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` clients sending `GET path` through `gateway` until [`Load::finish`].
    pub fn start(gateway: &GatewayProcess, path: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|_| {
                let (stop, hits, failures) = (stop.clone(), hits.clone(), failures.clone());
                let (client, url) = (HttpClient::http1(), gateway.url(path));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match client.try_send(Method::GET, &url, &[], "").await {
                            Ok(reply) if reply.status == 200 => {
                                *hits.lock().entry(reply.upstream()).or_default() += 1;
                            }
                            Ok(reply) => {
                                failures
                                    .lock()
                                    .push(format!("{}: {}", reply.status, reply.text()))
                            }
                            Err(error) => failures.lock().push(error),
                        }
                        tokio::time::sleep(PAUSE).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            hits,
            failures,
            clients,
        }
    }

    /// Successful answers from the test upstream named `upstream` so far.
    pub fn hits(&self, upstream: &str) -> usize {
        self.hits.lock().get(upstream).copied().unwrap_or(0)
    }

    /// Successful answers so far.
    pub fn ok(&self) -> usize {
        self.hits.lock().values().sum()
    }

    /// Waits until `upstream` has answered `more` requests than now; how long that took.
    pub async fn wait_for_traffic(&self, upstream: &str, more: usize) -> Duration {
        let (start, before) = (Instant::now(), self.hits(upstream));
        while self.hits(upstream) < before + more {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{upstream} got no traffic: {:?}",
                self.hits.lock()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    /// Stops the clients and fails the test if any request failed; the successful ones.
    pub async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        let failures = self.failures.lock();
        let ok: usize = self.hits.lock().values().sum();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed, the first ones: {:?}",
            failures.len(),
            ok + failures.len(),
            &failures[..failures.len().min(5)]
        );
        ok
    }
}
