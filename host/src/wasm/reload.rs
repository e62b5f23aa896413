//! Live reload: a route's guest can be replaced while the server runs.
//!
//! A [`GuestSlot`] holds the running version behind an `Arc`. A reload
//! reads and compiles the new component on a blocking thread, off the
//! request path, and swaps the `Arc` only once it linked: requests and
//! WebSocket sessions already running keep the version they started with,
//! new ones get the new version. A file that is half-written, not a
//! component, or does not link is reported and the running version stays.
//!
//! [`watch`] turns file events into reloads: it watches each guest file's
//! directory (so an editor's rename-over and a symlink switch are seen as
//! well as a write in place) and lets a burst of events settle for
//! [`DEBOUNCE`] before reloading once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::cache::{Digest, Origin};
use super::guest::{Guest, GuestContext, LoadError};
use crate::config::GuestSource;

/// Quiet time after a file event before the guest is reloaded: a copy or
/// an editor's save emits several events, and a half-written file would
/// fail to compile anyway.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// One route's guest: the version that runs now, and where new ones come from.
pub struct GuestSlot {
    ctx: Arc<GuestContext>,
    source: GuestSource,
    current: RwLock<Arc<Guest>>,
    /// One reload at a time per slot.
    reloading: tokio::sync::Mutex<()>,
    /// Reloads that swapped a new version in.
    swaps: AtomicU64,
    /// Reloads that kept the running version because the new one failed.
    failures: AtomicU64,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// A new version runs now.
    Swapped {
        /// Its digest.
        digest: Digest,
        /// Whether its code came from the cache.
        origin: Origin,
        /// Time to compile (or read) and link it.
        elapsed: Duration,
    },
    /// The file holds the version that already runs.
    Unchanged(Digest),
}

impl GuestSlot {
    /// Loads the first version from `source`.
    pub fn load(ctx: Arc<GuestContext>, source: GuestSource) -> Result<GuestSlot, LoadError> {
        let (name, bytes) = source.read()?;
        let loaded = Guest::load(&ctx, &name, &bytes)?;
        info!(
            guest = %name,
            digest = %loaded.guest.digest,
            code = loaded.origin.as_str(),
            ms = loaded.elapsed.as_secs_f64() * 1e3,
            "loaded guest"
        );
        Ok(GuestSlot {
            ctx,
            source,
            current: RwLock::new(Arc::new(loaded.guest)),
            reloading: tokio::sync::Mutex::new(()),
            swaps: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The version that takes new requests.
    pub fn current(&self) -> Arc<Guest> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// What this route's instances share: limits, pool admission.
    pub fn context(&self) -> &GuestContext {
        &self.ctx
    }

    /// Where versions come from.
    pub fn source(&self) -> &GuestSource {
        &self.source
    }

    /// Reloads so far that swapped in a new version, and that failed.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.swaps.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// Reads the source again and, if it changed, swaps the new version in.
    pub async fn reload(&self) -> Result<Reloaded, LoadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let reloaded = self.load_again().await;
        let counter = match reloaded {
            Ok(Reloaded::Swapped { .. }) => &self.swaps,
            Ok(Reloaded::Unchanged(_)) => return reloaded,
            Err(_) => &self.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.ctx.metrics.reload(reloaded.is_ok());
        reloaded
    }

    async fn load_again(&self) -> Result<Reloaded, LoadError> {
        let running = self.current().digest;
        let (ctx, source) = (self.ctx.clone(), self.source.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let (name, bytes) = source.read()?;
            if Digest::of(&bytes) == running {
                return Ok(None);
            }
            Guest::load(&ctx, &name, &bytes).map(Some)
        })
        .await
        .map_err(|err| LoadError::Invalid {
            name: self.name(),
            source: wasmtime::Error::msg(err.to_string()),
        })??;
        let Some(loaded) = loaded else {
            return Ok(Reloaded::Unchanged(running));
        };
        let digest = loaded.guest.digest;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded.guest);
        Ok(Reloaded::Swapped {
            digest,
            origin: loaded.origin,
            elapsed: loaded.elapsed,
        })
    }

    /// Reloads, and logs the outcome: one line per swap (file, digest,
    /// compile time), an error when the running version is kept.
    pub async fn reload_and_log(&self) {
        let guest = self.name();
        match self.reload().await {
            Ok(Reloaded::Swapped {
                digest,
                origin,
                elapsed,
            }) => info!(
                %guest,
                %digest,
                code = origin.as_str(),
                ms = elapsed.as_secs_f64() * 1e3,
                "swapped in a new guest"
            ),
            Ok(Reloaded::Unchanged(digest)) => debug!(%guest, %digest, "guest unchanged"),
            Err(err) => error!(%guest, cause = %err, "kept the running guest"),
        }
    }

    fn name(&self) -> String {
        match &self.source {
            GuestSource::Default => "default guest".to_owned(),
            GuestSource::File(path) => path.display().to_string(),
        }
    }
}

/// Guest files being watched from the moment [`watch`] returns; their
/// events wait in a queue until [`Watching::reload_on_change`] runs.
pub struct Watching {
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<usize>,
    slots: Vec<Arc<GuestSlot>>,
}

impl Watching {
    /// Reloads each slot once its file has settled after a change, until
    /// the returned future is dropped (which also stops the watching).
    pub async fn reload_on_change(self) {
        let Watching {
            _watcher,
            events,
            slots,
        } = self;
        debounce(events, slots).await;
    }
}

/// Starts watching the files behind `slots`. A change made as soon as this
/// returns is seen, even before [`Watching::reload_on_change`] runs.
pub fn watch(slots: Vec<Arc<GuestSlot>>) -> notify::Result<Watching> {
    // (directory, file name) → slot, for the guest file and, when it is a
    // symlink, the file it points to.
    let mut watched: HashMap<(PathBuf, std::ffi::OsString), usize> = HashMap::new();
    for (index, slot) in slots.iter().enumerate() {
        let GuestSource::File(path) = slot.source() else {
            continue;
        };
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
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
        slots,
    })
}

/// Reloads each slot named on `events` once its events have stopped
/// coming for [`DEBOUNCE`].
async fn debounce(mut events: mpsc::UnboundedReceiver<usize>, slots: Vec<Arc<GuestSlot>>) {
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
            slots[index].reload_and_log().await;
        }
    }
}
