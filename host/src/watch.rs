//! Files the server watches while it runs: each guest's component and the
//! TLS certificate and key. A change to one reloads what it belongs to.
//!
//! [`watch`] watches each file's directory, so an editor's rename-over and
//! a symlink switch are seen as well as a write in place (for a symlink,
//! the file it points to is watched too), and lets a burst of events
//! settle for [`DEBOUNCE`] before reloading once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// Quiet time after a file event before the reload: a copy or an editor's
/// save emits several events, and a half-written file would fail to load
/// anyway.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Something loaded from files, which reloads itself when they change.
pub trait Reload: Send + Sync + 'static {
    /// The files whose change reloads it.
    fn files(&self) -> Vec<PathBuf>;

    /// Reloads it from its files, and logs the outcome.
    fn reload(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Files being watched from the moment [`watch`] returns; their events
/// wait in a queue until [`Watching::reload_on_change`] runs.
pub struct Watching {
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<usize>,
    targets: Vec<Arc<dyn Reload>>,
}

impl Watching {
    /// Reloads each target once its files have settled after a change,
    /// until the returned future is dropped (which also stops the
    /// watching).
    pub async fn reload_on_change(self) {
        let Watching {
            _watcher,
            events,
            targets,
        } = self;
        debounce(events, targets).await;
    }
}

/// Starts watching the files of `targets`. A change made as soon as this
/// returns is seen, even before [`Watching::reload_on_change`] runs.
pub fn watch(targets: Vec<Arc<dyn Reload>>) -> notify::Result<Watching> {
    // (directory, file name) → target, for each file and, when it is a
    // symlink, the file it points to.
    let mut watched: HashMap<(PathBuf, std::ffi::OsString), usize> = HashMap::new();
    for (index, target) in targets.iter().enumerate() {
        for path in target.files() {
            let absolute = std::path::absolute(&path).unwrap_or(path);
            for file in [
                Some(absolute.clone()),
                std::fs::canonicalize(&absolute).ok(),
            ]
            .into_iter()
            .flatten()
            {
                if let (Some(dir), Some(name)) = (file.parent(), file.file_name()) {
                    watched.insert((dir.to_owned(), name.to_owned()), index);
                }
            }
        }
    }
    let (sender, receiver) = mpsc::unbounded_channel();
    let keys: Vec<_> = watched.keys().cloned().collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let event = match event {
            Ok(event) => event,
            Err(err) => return warn!(cause = %err, "file watcher error"),
        };
        // Reading a file (the reload itself does) must not trigger a reload.
        if let EventKind::Access(kind) = event.kind
            && kind != AccessKind::Close(AccessMode::Write)
        {
            return;
        }
        for path in &event.paths {
            if let (Some(dir), Some(name)) = (path.parent(), path.file_name())
                && let Some(index) = watched.get(&(dir.to_owned(), name.to_owned()))
            {
                let _ = sender.send(*index);
            }
        }
    })?;
    let mut dirs: Vec<&Path> = keys.iter().map(|(dir, _)| dir.as_path()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(Watching {
        _watcher: watcher,
        events: receiver,
        targets,
    })
}

/// Reloads each target named on `events` once its events have stopped
/// coming for [`DEBOUNCE`].
async fn debounce(mut events: mpsc::UnboundedReceiver<usize>, targets: Vec<Arc<dyn Reload>>) {
    while let Some(first) = events.recv().await {
        let mut pending = vec![first];
        loop {
            match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                Ok(Some(index)) => pending.push(index),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        pending.sort_unstable();
        pending.dedup();
        for index in pending {
            targets[index].reload().await;
        }
    }
}
