//! The optional configuration file (`wasmhttpd --config FILE`): TOML whose
//! keys are the long flags, with the same values.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! root = "www"
//! route = ["/register=deploy/register.wasm"]
//! env = ["WASMHTTPD_CACHE_CONTROL=public, max-age=600"]
//! guest-timeout = 10
//! ```
//!
//! A flag given on the command line (or through its environment variable)
//! wins over the file; `route` and `env` lists from both are joined, the
//! file's first. Relative paths in the file are relative to the file's
//! directory. An unknown key is an error, so a typo is not silently
//! ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The keys of a configuration file; each is the long flag of the same name.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub root: Option<PathBuf>,
    pub guest: Option<PathBuf>,
    #[serde(default)]
    pub route: Vec<String>,
    pub no_default_guest: Option<bool>,
    pub no_watch: Option<bool>,
    pub cache_dir: Option<PathBuf>,
    pub no_cache: Option<bool>,
    #[serde(default)]
    pub env: Vec<String>,
    pub guest_timeout: Option<f64>,
    pub guest_memory: Option<usize>,
    pub max_body: Option<u64>,
    pub keep_alive_timeout: Option<f64>,
    pub header_timeout: Option<f64>,
    pub body_timeout: Option<f64>,
    pub write_timeout: Option<f64>,
    pub max_connections: Option<usize>,
    pub max_instances: Option<u32>,
    pub ws_max_message: Option<usize>,
    pub ws_idle_timeout: Option<f64>,
    pub max_websockets: Option<u32>,
    pub reuse: Option<usize>,
    pub shutdown_grace: Option<f64>,
    pub queue_timeout: Option<f64>,
    pub max_requests_per_connection: Option<u64>,
}

/// The file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML, or has a key or value the flags do not take.
    #[error("invalid configuration file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

impl FileConfig {
    /// Reads and parses `path`; relative paths in it are resolved against
    /// its directory.
    pub fn load(path: &Path) -> Result<FileConfig, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        FileConfig::parse(&text, base).map_err(|message| FileError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses `text`, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<FileConfig, String> {
        let mut file: FileConfig = toml::from_str(text).map_err(|err| err.to_string())?;
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        file.root.as_mut().map(resolve);
        file.guest.as_mut().map(resolve);
        file.cache_dir.as_mut().map(resolve);
        for route in &mut file.route {
            if let Some((prefix, guest)) = route.split_once('=')
                && Path::new(guest).is_relative()
            {
                *route = format!("{prefix}={}", base.join(guest).display());
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_long_flags_and_paths_follow_the_file() {
        let file = FileConfig::parse(
            r#"
            listen = "0.0.0.0:9000"
            root = "site"
            guest = "/abs/guest.wasm"
            route = ["/api=api.wasm", "/abs=/opt/abs.wasm"]
            env = ["WASMHTTPD_DOTFILES=on"]
            guest-timeout = 2.5
            max-instances = 10
            no-watch = true
            "#,
            Path::new("/etc/wasmhttpd"),
        )
        .unwrap();
        assert_eq!(file.listen, Some("0.0.0.0:9000".parse().unwrap()));
        assert_eq!(file.root, Some(PathBuf::from("/etc/wasmhttpd/site")));
        assert_eq!(file.guest, Some(PathBuf::from("/abs/guest.wasm")));
        assert_eq!(
            file.route,
            ["/api=/etc/wasmhttpd/api.wasm", "/abs=/opt/abs.wasm"]
        );
        assert_eq!(file.env, ["WASMHTTPD_DOTFILES=on"]);
        assert_eq!(file.guest_timeout, Some(2.5));
        assert_eq!(file.max_instances, Some(10));
        assert_eq!(file.no_watch, Some(true));
        assert_eq!(file.max_body, None);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        let typo = FileConfig::parse("guest-timeut = 3", Path::new(".")).unwrap_err();
        assert!(typo.contains("guest-timeut"), "{typo}");
        let wrong = FileConfig::parse("max-instances = \"many\"", Path::new(".")).unwrap_err();
        assert!(wrong.contains("max-instances"), "{wrong}");
    }
}
