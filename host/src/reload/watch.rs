//! Watches the config file and every file it names, and reloads when one changes.
//!
//! The folders are watched, not the files: editors save by writing a new file and renaming it
//! over the old one, which a watch on the old file's inode would miss. Events come in bursts
//! (a save is several of them), so they are gathered until the folder has been quiet for
//! [`QUIET`] before one reload runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::{Reloader, Trigger};

/// How long the files must be left alone before a reload.
const QUIET: Duration = Duration::from_millis(100);
/// A stream of changes that never pauses still reloads this often.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Starts the watcher thread. It runs reloads itself (it is not a runtime thread), inside
/// `runtime`'s context.
pub fn spawn_watcher(
    reloader: Arc<Reloader>,
    runtime: tokio::runtime::Handle,
) -> notify::Result<()> {
    let (events, changes) = mpsc::channel::<notify::Result<notify::Event>>();
    let watcher = notify::recommended_watcher(events)?;
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            let _runtime = runtime.enter();
            watch_loop(watcher, &changes, &reloader);
        })?;
    Ok(())
}

fn watch_loop(
    mut watcher: RecommendedWatcher,
    changes: &mpsc::Receiver<notify::Result<notify::Event>>,
    reloader: &Reloader,
) {
    let mut watched = Watched::default();
    watched.update(&mut watcher, &reloader.inputs());
    while let Ok(first) = changes.recv() {
        let mut relevant = watched.concerns(&first);
        let started = Instant::now();
        loop {
            match changes.recv_timeout(QUIET) {
                Ok(event) => relevant |= watched.concerns(&event),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if started.elapsed() >= MAX_DELAY {
                break;
            }
        }
        if relevant {
            reloader.reload(Trigger::FileChange);
            // A new config may name other files.
            watched.update(&mut watcher, &reloader.inputs());
        }
    }
}

/// The files that matter and the folders watched for them.
#[derive(Default)]
struct Watched {
    files: BTreeSet<PathBuf>,
    folders: BTreeSet<PathBuf>,
}

impl Watched {
    fn update(&mut self, watcher: &mut RecommendedWatcher, inputs: &[PathBuf]) {
        self.files = inputs.iter().filter_map(|path| watch_key(path)).collect();
        let folders: BTreeSet<PathBuf> = self
            .files
            .iter()
            .filter_map(|file| file.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.folders.difference(&folders) {
            let _ = watcher.unwatch(gone);
        }
        for folder in folders.difference(&self.folders) {
            if let Err(err) = watcher.watch(folder, RecursiveMode::NonRecursive) {
                tracing::warn!("cannot watch {} for changes: {err}", folder.display());
            }
        }
        self.folders = folders;
    }

    fn concerns(&self, event: &notify::Result<notify::Event>) -> bool {
        match event {
            Ok(event) if event.kind.is_access() => false,
            Ok(event) => event
                .paths
                .iter()
                .filter_map(|path| watch_key(path))
                .any(|path| self.files.contains(&path)),
            // The watcher lost events (an overflow): better to check everything.
            Err(_) => true,
        }
    }
}

/// A file's name in its folder's canonical path: stable while the file itself is being
/// replaced (and briefly missing), and the same whichever way the config spelled it.
fn watch_key(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(folder).ok()?.join(name))
}
