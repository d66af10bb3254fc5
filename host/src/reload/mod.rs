//! Reloads: the config file (or a file it names) changed, SIGHUP arrived, or `POST /reload`
//! was asked. Every trigger goes through one [`Reloader`], one reload at a time: read, validate,
//! compile, build the whole new snapshot, then one atomic swap. Requests in flight keep the
//! snapshot they started with; a failed reload changes nothing and is reported.

mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::config;
use crate::error::ConfigErrors;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::{ReloadResult, metrics};

pub use watch::spawn_watcher;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed. Skipped when no input's content changed.
    FileChange,
    Signal,
    Admin,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file_change",
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
        }
    }
}

/// How a reload ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The new snapshot serves.
    Applied,
    /// Nothing the config reads changed (file-change triggers only): nothing was rebuilt.
    Unchanged,
    /// Nothing changed; these are the errors, as `file:line:col: message`.
    Failed(Vec<String>),
}

/// The last reload attempt, for `GET /config`.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: SystemTime,
    pub trigger: Trigger,
    pub outcome: Outcome,
}

/// What `GET /config` reports.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// SHA-256 over the config file and every file it names, as they were when the active
    /// snapshot was built.
    pub active_hash: String,
    pub loaded_at: SystemTime,
    pub last_attempt: Option<Attempt>,
    pub applied: u64,
    pub failed: u64,
}

pub struct Reloader {
    path: PathBuf,
    state: Arc<ArcSwap<Snapshot>>,
    /// Held for a whole reload, so triggers that arrive meanwhile wait their turn.
    running: Mutex<()>,
    status: Mutex<ReloadStatus>,
}

impl Reloader {
    pub fn new(path: PathBuf, state: Arc<ArcSwap<Snapshot>>) -> Arc<Reloader> {
        let active_hash = inputs_hash(&state.load().inputs);
        Arc::new(Reloader {
            path,
            state,
            running: Mutex::new(()),
            status: Mutex::new(ReloadStatus {
                active_hash,
                loaded_at: SystemTime::now(),
                last_attempt: None,
                applied: 0,
                failed: 0,
            }),
        })
    }

    pub fn config_path(&self) -> &Path {
        &self.path
    }

    /// The inputs of the active snapshot (what the watcher watches).
    pub fn inputs(&self) -> Vec<PathBuf> {
        self.state.load().inputs.clone()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Reloads now, on this thread: it reads files, compiles plugins and runs their `init`,
    /// so call it off the async runtime (see [`Reloader::reload_in_background`]), inside the
    /// runtime's context (the new snapshot starts its health checks there).
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let _one_at_a_time = self.running.lock();
        let previous = self.state.load_full();
        if trigger == Trigger::FileChange
            && inputs_hash(&previous.inputs) == self.status.lock().active_hash
        {
            return Outcome::Unchanged;
        }
        let outcome = match self.build(&previous) {
            Ok(snapshot) => {
                let hash = inputs_hash(&snapshot.inputs);
                warn_about_listener_changes(&previous, &snapshot);
                snapshot.start();
                self.state.store(Arc::new(snapshot));
                let mut status = self.status.lock();
                status.active_hash = hash;
                status.loaded_at = SystemTime::now();
                status.applied += 1;
                metrics().reload(ReloadResult::applied);
                tracing::info!(config = %self.path.display(), trigger = trigger.as_str(), "reloaded");
                Outcome::Applied
            }
            Err(errors) => {
                let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                for line in &lines {
                    tracing::error!(
                        trigger = trigger.as_str(),
                        "reload failed, the old config stays: {line}"
                    );
                }
                self.status.lock().failed += 1;
                metrics().reload(ReloadResult::failed);
                Outcome::Failed(lines)
            }
        };
        self.status.lock().last_attempt = Some(Attempt {
            at: SystemTime::now(),
            trigger,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// [`Reloader::reload`] on a blocking thread, keeping the serving threads free.
    pub async fn reload_in_background(self: &Arc<Self>, trigger: Trigger) -> Outcome {
        let reloader = self.clone();
        tokio::task::spawn_blocking(move || reloader.reload(trigger))
            .await
            .unwrap_or_else(|err| Outcome::Failed(vec![format!("the reload panicked: {err}")]))
    }

    fn build(&self, previous: &Snapshot) -> Result<Snapshot, ConfigErrors> {
        let loaded = config::load_file(&self.path).map_err(ConfigErrors)?;
        Snapshot::build(&loaded, Some(previous))
    }
}

/// Listeners are bound, and their connection settings fixed, once at start (the TLS
/// certificate is the exception: each handshake reads the current snapshot's).
fn warn_about_listener_changes(previous: &Snapshot, next: &Snapshot) {
    let (old, new) = (&previous.listeners, &next.listeners);
    if old.listen != new.listen || old.tls_listen != new.tls_listen || old.admin != new.admin {
        tracing::warn!(
            "listen addresses changed: the gateway keeps its current listeners; \
             the new addresses take effect after a restart"
        );
    }
    let settings = |s: &crate::snapshot::ListenerSettings| {
        (
            s.max_header_bytes,
            s.header_read_timeout,
            s.idle_timeout,
            s.max_connections,
            s.workers,
            s.drain_timeout,
        )
    };
    if settings(old) != settings(new) {
        tracing::warn!(
            "server connection settings changed (max_header_bytes, timeouts, max_connections, \
             workers or drain_timeout): they take effect after a restart"
        );
    }
}

/// SHA-256 over every input's path and content (a missing file hashes as missing).
pub fn inputs_hash(inputs: &[PathBuf]) -> String {
    let mut hash = Sha256::new();
    for path in inputs {
        hash.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                hash.update(b"\x01");
                hash.update((bytes.len() as u64).to_le_bytes());
                hash.update(&bytes);
            }
            Err(_) => hash.update(b"\x00"),
        }
    }
    let digest = hash.finalize();
    crate::hex::hex(&digest)
}

/// Reloads on every SIGHUP.
pub fn reload_on_sighup(reloader: Arc<Reloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot listen for SIGHUP; reload by signal is off");
            return;
        };
        while hangup.recv().await.is_some() {
            reloader.reload_in_background(Trigger::Signal).await;
        }
    });
}
