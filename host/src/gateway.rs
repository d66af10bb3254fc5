//! A running gateway: the current snapshot, the listeners, and the signals that drive them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config;
use crate::error::ConfigErrors;
use crate::server::{self, Listeners};
use crate::snapshot::{ListenerSettings, Snapshot};

pub struct Gateway {
    state: Arc<ArcSwap<Snapshot>>,
    listeners: Listeners,
    settings: ListenerSettings,
}

impl Gateway {
    /// Binds the listeners of `snapshot` and starts its background work.
    pub fn bind(snapshot: Snapshot) -> io::Result<Gateway> {
        let settings = snapshot.listeners.clone();
        let listeners = Listeners::bind(&settings)?;
        snapshot.start();
        Ok(Gateway {
            state: Arc::new(ArcSwap::from_pointee(snapshot)),
            listeners,
            settings,
        })
    }

    /// Plain and TLS addresses actually bound.
    pub fn addresses(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        self.listeners.addresses()
    }

    /// Handle to the current snapshot, for reloads.
    pub fn state(&self) -> Arc<ArcSwap<Snapshot>> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (plain, tls) = self.listeners.addresses();
        for addr in plain {
            tracing::info!("listening on http://{addr}");
        }
        for addr in tls {
            tracing::info!("listening on https://{addr}");
        }
        server::serve(self.listeners, self.state, &self.settings, shutdown).await;
    }
}

/// Re-reads the config file and swaps in a new snapshot; on any error nothing changes.
/// Requests in flight finish on the snapshot they started with. Listener changes need a restart.
pub fn reload(path: &std::path::Path, state: &ArcSwap<Snapshot>) -> Result<(), ConfigErrors> {
    let loaded = config::load_file(path).map_err(ConfigErrors)?;
    let snapshot = Snapshot::build(&loaded)?;
    let old = state.load();
    if snapshot.listeners.listen != old.listeners.listen
        || snapshot.listeners.tls_listen != old.listeners.tls_listen
    {
        tracing::warn!("listen addresses changed: the new addresses take effect after a restart");
    }
    snapshot.start();
    state.store(Arc::new(snapshot));
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!("cannot listen for SIGTERM: {err}");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Reloads the config on every SIGHUP.
pub fn spawn_reload_on_sighup(path: PathBuf, state: Arc<ArcSwap<Snapshot>>) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot listen for SIGHUP; reload by signal is off");
            return;
        };
        while hangup.recv().await.is_some() {
            // Building a snapshot compiles plugins and runs their init: keep that off the
            // threads that serve requests.
            let (path, state) = (path.clone(), state.clone());
            let result =
                tokio::task::spawn_blocking(move || reload(&path, &state).map(|()| path)).await;
            match result {
                Ok(Ok(path)) => tracing::info!(config = %path.display(), "reloaded"),
                Ok(Err(errors)) => {
                    for error in &errors.0 {
                        tracing::error!("reload failed, old config stays: {error}");
                    }
                }
                Err(err) => tracing::error!("reload failed, old config stays: {err}"),
            }
        }
    });
}
