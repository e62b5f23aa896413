//! The optional configuration file (`wasmhttpd --config FILE`): TOML whose
//! keys are the long flags, with the same values.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! root = "www"
//! route = ["/register=live/register.wasm"]
//! env = ["WASMHTTPD_CACHE_CONTROL=public, max-age=600"]
//! guest-timeout = 10
//! ```
//!
//! A flag given on the command line (or through its environment variable)
//! wins over the file; `route` and `env` lists from both are joined, the
//! file's first. Relative paths in the file are relative to the file's
//! directory. An unknown key is an error, so a typo is not silently
//! ignored. Each setting reads its own key (see [`super::setting`]); what
//! no setting took is reported by [`ConfigFile::finish`].

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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

/// A configuration file, read; each setting takes its key from it.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    table: toml::Table,
    /// The keys taken so far.
    taken: RefCell<BTreeSet<String>>,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<ConfigFile, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        ConfigFile::parse(&text, path).map_err(|message| FileError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses `text` as the file at `path`, which relative paths in it
    /// are resolved against.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, String> {
        Ok(ConfigFile {
            path: path.to_owned(),
            table: text
                .parse()
                .map_err(|err: toml::de::Error| err.to_string())?,
            taken: RefCell::default(),
        })
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key`, which is then taken.
    pub fn take(&self, key: &str) -> Option<&toml::Value> {
        let value = self.table.get(key)?;
        self.taken.borrow_mut().insert(key.to_owned());
        Some(value)
    }

    /// The strings of the list `key` (`route = [...]`), which is then taken.
    pub fn take_list(&self, key: &str) -> Result<Vec<String>, String> {
        let Some(value) = self.take(key) else {
            return Ok(Vec::new());
        };
        let invalid = || format!("{key} in {} takes a list of strings", self.path.display());
        value
            .as_array()
            .ok_or_else(invalid)?
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(invalid))
            .collect()
    }

    /// `path` resolved against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// Fails on a key that no setting took: a typo, or a flag that has no
    /// file key.
    pub fn finish(&self) -> Result<(), FileError> {
        let taken = self.taken.borrow();
        let unknown: Vec<&str> = self
            .table
            .keys()
            .map(String::as_str)
            .filter(|key| !taken.contains(*key))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(FileError::Invalid {
            path: self.path.clone(),
            message: format!(
                "unknown key {}: the keys are the long flags, as in `guest-timeout = 5`",
                unknown.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Limits, Startup};

    #[test]
    fn keys_are_the_long_flags_and_paths_follow_the_file() {
        let file = ConfigFile::parse(
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
            Path::new("/etc/wasmhttpd/wasmhttpd.toml"),
        )
        .unwrap();
        let mut startup = Startup::default();
        startup.read_file(&file).unwrap();
        let mut limits = Limits::default();
        limits.read_file(&file).unwrap();
        assert_eq!(startup.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(startup.root, PathBuf::from("/etc/wasmhttpd/site"));
        assert_eq!(startup.guest, Some(PathBuf::from("/abs/guest.wasm")));
        assert!(startup.no_watch);
        assert_eq!(
            file.take_list("route").unwrap(),
            ["/api=api.wasm", "/abs=/opt/abs.wasm"]
        );
        assert_eq!(file.take_list("env").unwrap(), ["WASMHTTPD_DOTFILES=on"]);
        assert_eq!(limits.guest_timeout, std::time::Duration::from_millis(2500));
        assert_eq!(limits.max_instances, 10);
        assert_eq!(limits.max_body, Limits::default().max_body);
        file.finish().unwrap();
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        let path = Path::new("/etc/w.toml");
        let typo = ConfigFile::parse("guest-timeut = 3", path).unwrap();
        Limits::default().read_file(&typo).unwrap();
        let typo = typo.finish().unwrap_err().to_string();
        assert!(typo.contains("guest-timeut"), "{typo}");
        let wrong = ConfigFile::parse("max-instances = \"many\"", path).unwrap();
        let wrong = Limits::default().read_file(&wrong).unwrap_err();
        assert!(
            wrong.contains("max-instances") && wrong.contains("/etc/w.toml"),
            "{wrong}"
        );
        let list = ConfigFile::parse("route = \"/a=a.wasm\"", path).unwrap();
        assert!(list.take_list("route").unwrap_err().contains("list"));
    }
}
