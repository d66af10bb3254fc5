//! A running gateway: the current snapshot, the listeners (public and admin), and what
//! reloads it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin};
use crate::reload::{self, Reloader};
use crate::server::{self, Listeners};
use crate::snapshot::{AdminListen, ListenerSettings, Snapshot};

pub struct Gateway {
    state: Arc<ArcSwap<Snapshot>>,
    listeners: Listeners,
    admin: Option<TcpListener>,
    settings: ListenerSettings,
    reloader: Option<Arc<Reloader>>,
}

impl Gateway {
    /// Binds the listeners (the admin API's too) of `snapshot` and starts its background work.
    pub async fn bind(snapshot: Snapshot) -> io::Result<Gateway> {
        let settings = snapshot.listeners.clone();
        let listeners = Listeners::bind(&settings)?;
        let admin = match settings.admin {
            Some(AdminListen { addr, written }) => match TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(err) if written => {
                    return Err(io::Error::new(
                        err.kind(),
                        format!("cannot listen on {addr} (admin): {err}"),
                    ));
                }
                Err(err) => {
                    tracing::warn!(
                        "no admin API: cannot listen on {addr}, its default address ({err}); \
                         set server.admin to another address, or to \"off\""
                    );
                    None
                }
            },
            None => None,
        };
        snapshot.start();
        Ok(Gateway {
            state: Arc::new(ArcSwap::from_pointee(snapshot)),
            listeners,
            admin,
            settings,
            reloader: None,
        })
    }

    /// Reloads from `path` whenever it or a file it names changes, on SIGHUP, and on the
    /// admin API's `POST /reload`.
    pub fn reload_from(&mut self, path: PathBuf) {
        let reloader = Reloader::new(path, self.state.clone());
        reload::reload_on_sighup(reloader.clone());
        if let Err(err) = reload::spawn_watcher(reloader.clone(), tokio::runtime::Handle::current())
        {
            tracing::error!(
                "cannot watch the config for changes (SIGHUP and POST /reload still reload): {err}"
            );
        }
        self.reloader = Some(reloader);
    }

    /// Plain and TLS addresses actually bound.
    pub fn addresses(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        self.listeners.addresses()
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
        crate::telemetry::reopen_access_log_on_sigusr1();
        let stop_admin = CancellationToken::new();
        if let Some(listener) = self.admin {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("admin API on http://{addr}");
            }
            let admin = Arc::new(Admin {
                state: self.state.clone(),
                reloader: self.reloader.clone(),
            });
            tokio::spawn(admin::serve(listener, admin, stop_admin.clone()));
        }
        server::serve(self.listeners, self.state, &self.settings, shutdown).await;
        stop_admin.cancel();
    }
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
