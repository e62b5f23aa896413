//! Compiled components cached on disk, so a restart, or a swap back to a
//! component seen before, skips compilation.
//!
//! An entry is named by the component's SHA-256 and the engine's
//! compatibility hash (wasmtime version, target, configuration), so a
//! component compiled by another build or with other settings is a miss,
//! never a wrong hit. The file holds a magic line, the SHA-256 of the
//! compiled bytes, and the bytes. Before wasmtime sees them (it checks its
//! own header too) the checksum must match, so a truncated, corrupted or
//! foreign file is ignored, reported, and replaced by a fresh compilation.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tracing::warn;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The start of every entry.
const MAGIC: &[u8] = b"wasmhttpd compiled component v1\n";

/// A component's SHA-256, which names it in logs and in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Where a component's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the cache.
    Cache,
    /// Compiled now.
    Compiled,
}

impl Origin {
    /// A word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Cache => "cache",
            Origin::Compiled => "compiled",
        }
    }
}

/// A directory of compiled components; `None` compiles every time.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: Option<PathBuf>,
}

impl CompiledCache {
    /// A cache in `dir` (created when first written), or no cache.
    pub fn new(dir: Option<PathBuf>) -> Self {
        CompiledCache { dir }
    }

    /// The user's cache directory for wasmhttpd: `$XDG_CACHE_HOME/wasmhttpd`
    /// or `~/.cache/wasmhttpd`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
        Some(base.join("wasmhttpd"))
    }

    /// The component for `bytes` (whose digest is `digest`): from the cache
    /// when a valid entry exists, else compiled (and stored).
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &Digest,
    ) -> wasmtime::Result<(Component, Origin)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes)?, Origin::Compiled));
        };
        let entry = entry_path(dir, engine, digest);
        match read_entry(engine, &entry) {
            Ok(Some(component)) => return Ok((component, Origin::Cache)),
            Ok(None) => {}
            Err(why) => {
                warn!(entry = %entry.display(), cause = why, "ignoring a bad cache entry");
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(err) = write_entry(dir, &entry, &component) {
            warn!(entry = %entry.display(), cause = %err, "could not write a cache entry");
        }
        Ok((component, Origin::Compiled))
    }

    /// Whether the cache holds an entry for the component `digest` compiled
    /// by `engine` (it is checked when read, not here).
    pub fn has(&self, engine: &Engine, digest: &Digest) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|dir| entry_path(dir, engine, digest).is_file())
    }
}

/// Where the entry for the component `digest` compiled by `engine` lives.
fn entry_path(dir: &Path, engine: &Engine, digest: &Digest) -> PathBuf {
    dir.join(format!("{}-{}.cwasm", hex(&digest.0), engine_key(engine)))
}

/// The engine's compatibility hash, as 16 hex digits.
fn engine_key(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads an entry: `Ok(None)` when there is none, `Err` (why) when there
/// is one that cannot be used.
#[allow(unsafe_code)]
fn read_entry(engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a wasmhttpd cache entry")?;
    if rest.len() < 32 {
        return Err("truncated".to_owned());
    }
    let (checksum, code) = rest.split_at(32);
    if Sha256::digest(code).as_slice() != checksum {
        return Err("checksum mismatch".to_owned());
    }
    // SAFETY: `code` is exactly what `Component::serialize` produced for an
    // engine with this compatibility hash (the file name carries it, and
    // wasmtime checks its own header against the engine again): the
    // checksum above rules out a truncated or altered file.
    unsafe { Component::deserialize(engine, code) }
        .map(Some)
        .map_err(|err| format!("{err:#}"))
}

/// Writes an entry atomically: a temporary file in the same directory,
/// renamed over the entry.
fn write_entry(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    let code = component.serialize()?;
    std::fs::create_dir_all(dir)?;
    let (temp, mut file) = tempfile_in(dir)?;
    let written = file
        .write_all(MAGIC)
        .and_then(|()| file.write_all(&Sha256::digest(&code)))
        .and_then(|()| file.write_all(&code))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    Ok(written?)
}

/// A new file in `dir` with a name no other writer uses.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_print_as_sha256_hex() {
        assert_eq!(
            Digest::of(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
