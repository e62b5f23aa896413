//! Live reload: a route's guest can be replaced while the server runs.
//!
//! A [`GuestSlot`] holds the running version behind an `Arc`. A reload
//! reads and compiles the new component on a blocking thread, off the
//! request path, and swaps the `Arc` only once it linked: requests and
//! WebSocket sessions already running keep the version they started with,
//! new ones get the new version. A file that is half-written, not a
//! component, or does not link is reported and the running version stays.
//!
//! [`crate::watch`] turns a guest file's changes into its slot's reload.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{debug, error, info};

use super::cache::{Digest, Origin};
use super::guest::{Guest, LoadError};
use super::inspect::Wasi;
use super::instance::GuestContext;
use crate::config::GuestSource;
use crate::metrics::RouteCounters;
use crate::watch::Reload;

/// One route's guest: the version that runs now, and where new ones come from.
pub struct GuestSlot {
    ctx: Arc<GuestContext>,
    source: GuestSource,
    /// The route's count of host calls per request, for every version.
    counters: RouteCounters,
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
        /// Which `wasi:http` it exports.
        wasi: Wasi,
        /// Whether its code came from the cache.
        origin: Origin,
        /// Time to compile (or read) and link it.
        elapsed: Duration,
    },
    /// The file holds the version that already runs.
    Unchanged(Digest),
}

impl GuestSlot {
    /// Loads the first version from `source`, for the route at `prefix`.
    pub fn load(
        ctx: Arc<GuestContext>,
        prefix: &str,
        source: GuestSource,
    ) -> Result<GuestSlot, LoadError> {
        let (name, bytes) = source.read()?;
        let counters = ctx.metrics.route(prefix);
        let loaded = Guest::load(&ctx, &name, &bytes, counters.clone())?;
        info!(
            guest = %name,
            digest = %loaded.guest.digest,
            wasi = loaded.guest.wasi().as_str(),
            code = loaded.origin.as_str(),
            ms = loaded.elapsed.as_secs_f64() * 1e3,
            "loaded guest"
        );
        Ok(GuestSlot {
            ctx,
            source,
            counters,
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
        let counters = self.counters.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let (name, bytes) = source.read()?;
            if Digest::of(&bytes) == running {
                return Ok(None);
            }
            Guest::load(&ctx, &name, &bytes, counters).map(Some)
        })
        .await
        .map_err(|err| LoadError::Invalid {
            name: self.name(),
            source: wasmtime::Error::msg(err.to_string()),
        })??;
        let Some(loaded) = loaded else {
            return Ok(Reloaded::Unchanged(running));
        };
        let (digest, wasi) = (loaded.guest.digest, loaded.guest.wasi());
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded.guest);
        Ok(Reloaded::Swapped {
            digest,
            wasi,
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
                wasi,
                origin,
                elapsed,
            }) => info!(
                %guest,
                %digest,
                wasi = wasi.as_str(),
                code = origin.as_str(),
                ms = elapsed.as_secs_f64() * 1e3,
                "swapped in a new guest"
            ),
            Ok(Reloaded::Unchanged(digest)) => debug!(%guest, %digest, "guest unchanged"),
            Err(err) => error!(%guest, cause = %err, "kept the running guest"),
        }
    }

    fn name(&self) -> String {
        self.source.name()
    }
}

impl Reload for GuestSlot {
    fn files(&self) -> Vec<PathBuf> {
        match &self.source {
            GuestSource::File(path) => vec![path.clone()],
            GuestSource::Default | GuestSource::Accounts => Vec::new(),
        }
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.reload_and_log())
    }
}
