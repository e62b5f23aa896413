//! Guests' state: the key-value stores an operator declares
//! (`--kv-store NAME=BACKEND`), each granted to routes by name
//! (`--allow-kv NAME`, deny by default), served to guests through
//! `wasi:keyvalue` in both versions in use ([`keyvalue`]); and the values
//! an operator gives a route's guests through `wasi:config/store`
//! (`--config-var KEY=VALUE`), never the host's own environment.
//!
//! Backends: SQLite ([`sqlite`], the default: a store named `default` in
//! `--data-dir`, with no set-up), Redis ([`redis`], for replicas that
//! share state) and in-memory ([`memory`]). A store's keys are its own:
//! each SQLite store is a database file of its own, each Redis store a
//! key prefix of its own, each memory store a map of its own.
//!
//! Bucket names: `""` opens the route's first granted store (what
//! guests written for `wasmtime serve` and wasmCloud open), any other name
//! the store of that name (Spin guests open `"default"`). A declared name
//! the route is not granted is `access-denied`, an unknown one
//! `no-such-store`; both are logged and counted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{Instrument, info};

use crate::config::file::ConfigFile;
use crate::config::setting::{Unit, list_arg, strings};
use crate::metrics::{KvCounted, Metrics};
use crate::telemetry;
use futures_util::FutureExt;

pub mod backend;
pub mod keyvalue;
pub mod memory;
pub mod redis;
pub mod sqlite;

use backend::{Backend, KvError, KvResult};

/// The store `cargo run --release` has without set-up: SQLite, in the
/// data directory, unless a `--kv-store default=...` says otherwise.
pub const DEFAULT_STORE: &str = "default";

/// A declared store: its name and where its data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// The name guests open and routes are granted.
    pub name: String,
    /// The backend.
    pub backend: BackendSpec,
}

/// Where a store's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// A SQLite database: this file, or `NAME.sqlite3` in the data
    /// directory.
    Sqlite(Option<PathBuf>),
    /// A map in the server's memory, gone when it stops.
    Memory,
    /// Keys under the store's prefix on the Redis server at this URL
    /// (`redis://[USER:PASSWORD@]HOST[:PORT][/DB]`).
    Redis(String),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<StoreSpec, String> {
        let (name, backend) = text.split_once('=').ok_or_else(|| {
            format!(
                "expected NAME=BACKEND (sqlite, sqlite:FILE, redis://HOST[:PORT][/DB] or \
                 memory), not {text:?}"
            )
        })?;
        check_name(name)?;
        let backend = match backend {
            "sqlite" => BackendSpec::Sqlite(None),
            "memory" => BackendSpec::Memory,
            url if url.starts_with("redis://") => BackendSpec::Redis(url.to_owned()),
            other => match other.strip_prefix("sqlite:") {
                Some("") | None => {
                    return Err(format!(
                        "store {name:?}: unknown backend {other:?}: expected sqlite, \
                         sqlite:FILE, redis://HOST[:PORT][/DB] or memory"
                    ));
                }
                Some(path) => BackendSpec::Sqlite(Some(PathBuf::from(path))),
            },
        };
        Ok(StoreSpec {
            name: name.to_owned(),
            backend,
        })
    }
}

/// A store name: letters, digits, `_`, `-` and `.`, up to 64 of them.
fn check_name(name: &str) -> Result<(), String> {
    let fits = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if fits {
        Ok(())
    } else {
        Err(format!(
            "store name {name:?}: use 1 to 64 letters, digits, `_`, `-` or `.`"
        ))
    }
}

/// The `--kv-store` setting: declarations, repeated; an array of strings
/// in the configuration file, where a `sqlite:FILE` is relative to it.
pub struct StoreList;

impl Unit for StoreList {
    type Value = Vec<StoreSpec>;
    const VALUE_NAME: &'static str = "NAME=BACKEND";

    fn parse(text: &str) -> Result<Vec<StoreSpec>, String> {
        text.split_whitespace().map(str::parse).collect()
    }

    fn from_file(value: &toml::Value, file: &ConfigFile) -> Result<Vec<StoreSpec>, String> {
        strings(value, "store declarations")?
            .iter()
            .map(|text| {
                let mut spec: StoreSpec = text.parse()?;
                if let BackendSpec::Sqlite(Some(path)) = &spec.backend {
                    spec.backend = BackendSpec::Sqlite(Some(file.resolve(path)));
                }
                Ok(spec)
            })
            .collect()
    }

    fn show(_: &Vec<StoreSpec>) -> Option<String> {
        Some(format!("{DEFAULT_STORE}=sqlite"))
    }

    fn arg(arg: clap::Arg) -> clap::Arg {
        list_arg(arg, Self::VALUE_NAME, Self::parse)
    }

    fn given(matches: &clap::ArgMatches, id: &str) -> Option<Vec<StoreSpec>> {
        matches
            .get_many::<Vec<StoreSpec>>(id)?
            .cloned()
            .reduce(Self::combine)
    }

    fn combine(mut earlier: Vec<StoreSpec>, later: Vec<StoreSpec>) -> Vec<StoreSpec> {
        earlier.extend(later);
        earlier
    }
}

/// The names of the stores a route's guests may open, in order: the first
/// is the one `""` opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(pub Vec<String>);

/// The `--allow-kv` setting: store names, repeated or separated by spaces.
pub struct StoreNames;

impl Unit for StoreNames {
    type Value = Grants;
    const VALUE_NAME: &'static str = "STORE";

    fn parse(text: &str) -> Result<Grants, String> {
        let names: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        names.iter().try_for_each(|name| check_name(name))?;
        Ok(Grants(names))
    }

    fn from_file(value: &toml::Value, _: &ConfigFile) -> Result<Grants, String> {
        Self::parse(&strings(value, "store names")?.join(" "))
    }

    fn show(grants: &Grants) -> Option<String> {
        (!grants.0.is_empty()).then(|| grants.0.join(" "))
    }

    fn arg(arg: clap::Arg) -> clap::Arg {
        list_arg(arg, Self::VALUE_NAME, Self::parse)
    }

    fn given(matches: &clap::ArgMatches, id: &str) -> Option<Grants> {
        matches
            .get_many::<Grants>(id)?
            .cloned()
            .reduce(Self::combine)
    }

    fn combine(mut earlier: Grants, later: Grants) -> Grants {
        earlier.0.extend(later.0);
        earlier
    }
}

/// Values a route's guests read through `wasi:config/store`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigValues(pub Vec<(String, String)>);

/// The `--config-var` setting: `KEY=VALUE`, repeated; in the file, an
/// array of such strings or a table.
pub struct ConfigVars;

impl Unit for ConfigVars {
    type Value = ConfigValues;
    const VALUE_NAME: &'static str = "KEY=VALUE";

    fn parse(text: &str) -> Result<ConfigValues, String> {
        match text.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                Ok(ConfigValues(vec![(key.to_owned(), value.to_owned())]))
            }
            _ => Err(format!("expected KEY=VALUE, not {text:?}")),
        }
    }

    fn from_file(value: &toml::Value, _: &ConfigFile) -> Result<ConfigValues, String> {
        match value {
            toml::Value::Table(table) => table
                .iter()
                .map(|(key, value)| match value {
                    toml::Value::String(text) => Ok((key.clone(), text.clone())),
                    other => Ok((key.clone(), other.to_string())),
                })
                .collect::<Result<Vec<_>, String>>()
                .map(ConfigValues),
            other => strings(other, "KEY=VALUE strings")?
                .iter()
                .map(|text| Self::parse(text))
                .collect::<Result<Vec<_>, String>>()
                .map(|lists| ConfigValues(lists.into_iter().flat_map(|list| list.0).collect())),
        }
    }

    fn show(_: &ConfigValues) -> Option<String> {
        None
    }

    fn arg(arg: clap::Arg) -> clap::Arg {
        list_arg(arg, Self::VALUE_NAME, Self::parse)
    }

    fn given(matches: &clap::ArgMatches, id: &str) -> Option<ConfigValues> {
        matches
            .get_many::<ConfigValues>(id)?
            .cloned()
            .reduce(Self::combine)
    }

    fn combine(mut earlier: ConfigValues, later: ConfigValues) -> ConfigValues {
        earlier.0.extend(later.0);
        earlier
    }
}

/// The limits every store's operations are held to.
#[derive(Debug, Clone)]
pub struct KvLimits {
    /// Longest key, in bytes.
    pub max_key: usize,
    /// Largest value, in bytes.
    pub max_value: usize,
    /// Keys one store may hold.
    pub max_keys: u64,
    /// Keys one `list-keys` call gives at most.
    pub page: usize,
    /// Time one operation may take.
    pub timeout: Duration,
}

/// Why the stores could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The data directory could not be made.
    #[error(
        "cannot create the data directory {}: {source}; give --data-dir a directory this user \
         can write",
        dir.display()
    )]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A store's database could not be opened.
    #[error(
        "cannot open key-value store {name} at {}: {source}; give --data-dir (or the store's \
         sqlite:FILE) a place this user can write",
        path.display()
    )]
    Open {
        /// The store.
        name: String,
        /// Its file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A Redis store's server did not answer at start.
    #[error(
        "cannot reach Redis at {url} for key-value store {name}: {source}; start Redis there, \
         or give --kv-store {name}=redis://HOST:PORT where it runs"
    )]
    Redis {
        /// The store.
        name: String,
        /// Its URL, without a password.
        url: String,
        /// What the client said.
        source: ::redis::RedisError,
    },
    /// A grant names a store nobody declared.
    #[error(
        "--allow-kv grants store {name:?}, which no --kv-store declares (declared: {declared})"
    )]
    UnknownGrant {
        /// The name granted.
        name: String,
        /// The declared names.
        declared: String,
    },
    /// Two declarations have one name.
    #[error("two --kv-store declarations name the store {0:?}")]
    Duplicate(String),
}

/// A key-value operation, as the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `get`.
    Get,
    /// `set`.
    Set,
    /// `delete`.
    Delete,
    /// `exists`.
    Exists,
    /// `list-keys`.
    ListKeys,
    /// `increment`.
    Increment,
    /// compare-and-swap's `swap`.
    Swap,
    /// `get-many`.
    GetMany,
    /// `set-many`.
    SetMany,
    /// `delete-many`.
    DeleteMany,
}

impl Op {
    /// Every operation, in the order of [`Op`]'s values.
    pub const ALL: [Op; 10] = [
        Op::Get,
        Op::Set,
        Op::Delete,
        Op::Exists,
        Op::ListKeys,
        Op::Increment,
        Op::Swap,
        Op::GetMany,
        Op::SetMany,
        Op::DeleteMany,
    ];

    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Exists => "exists",
            Op::ListKeys => "list-keys",
            Op::Increment => "increment",
            Op::Swap => "swap",
            Op::GetMany => "get-many",
            Op::SetMany => "set-many",
            Op::DeleteMany => "delete-many",
        }
    }
}

/// How an operation ended, as the metrics count it.
const RESULTS: [&str; 4] = ["ok", "limit", "unavailable", "invalid"];

/// The index in [`RESULTS`] of how `done` ended.
fn result<T>(done: &KvResult<T>) -> usize {
    match done {
        Ok(_) => 0,
        Err(KvError::Limit(_)) => 1,
        Err(KvError::Unavailable(_)) => 2,
        Err(KvError::Invalid(_)) => 3,
    }
}

/// An open store.
pub struct Store {
    /// Its name, for logs and metrics.
    pub name: String,
    /// Its backend's kind, for traces: `sqlite`, `memory`, `redis`.
    system: &'static str,
    backend: Box<dyn Backend>,
    /// Whether its last operation found the backend unavailable: an
    /// outage is logged when it begins and when it ends, not at every
    /// operation it fails.
    down: AtomicBool,
    /// Its operations' counters and latencies, made once.
    counted: KvCounted,
}

/// `url` with its password, if any, left out, for logs and errors.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() => {
            let host = &url[at + 1..];
            let user = rest.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// Every declared store, and those a route or the server grants, opened.
pub struct Stores {
    declared: Arc<HashSet<String>>,
    open: HashMap<String, Arc<Store>>,
    limits: Arc<KvLimits>,
    metrics: Arc<Metrics>,
}

impl Stores {
    /// Opens the stores `specs` declares (with `default`, SQLite, unless
    /// declared otherwise) that one of `grants` names; SQLite files go in
    /// `data_dir` (or the user's data directory).
    pub fn open<'a>(
        specs: &[StoreSpec],
        grants: impl IntoIterator<Item = &'a Grants>,
        data_dir: Option<&Path>,
        limits: KvLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Stores, StateError> {
        let mut specs = specs.to_vec();
        if !specs.iter().any(|spec| spec.name == DEFAULT_STORE) {
            specs.push(StoreSpec {
                name: DEFAULT_STORE.to_owned(),
                backend: BackendSpec::Sqlite(None),
            });
        }
        let mut declared = HashSet::new();
        for spec in &specs {
            if !declared.insert(spec.name.clone()) {
                return Err(StateError::Duplicate(spec.name.clone()));
            }
        }
        let mut wanted = HashSet::new();
        for grants in grants {
            for name in &grants.0 {
                if !declared.contains(name) {
                    let mut names: Vec<&str> = declared.iter().map(String::as_str).collect();
                    names.sort_unstable();
                    return Err(StateError::UnknownGrant {
                        name: name.clone(),
                        declared: names.join(", "),
                    });
                }
                wanted.insert(name.clone());
            }
        }
        let mut open = HashMap::new();
        for spec in specs.iter().filter(|spec| wanted.contains(&spec.name)) {
            let backend: Box<dyn Backend> = match &spec.backend {
                BackendSpec::Memory => Box::new(memory::Memory::new(limits.max_keys)),
                BackendSpec::Redis(url) => {
                    let store =
                        redis::Redis::open(&spec.name, url, limits.max_keys).map_err(|source| {
                            StateError::Redis {
                                name: spec.name.clone(),
                                url: without_password(url),
                                source,
                            }
                        })?;
                    info!(store = %spec.name, url = %without_password(url), "opened key-value store (redis)");
                    Box::new(store)
                }
                BackendSpec::Sqlite(file) => {
                    let path = match file {
                        Some(path) => path.clone(),
                        None => {
                            let dir = data_dir
                                .map(Path::to_owned)
                                .unwrap_or_else(default_data_dir);
                            std::fs::create_dir_all(&dir).map_err(|source| {
                                StateError::DataDir {
                                    dir: dir.clone(),
                                    source,
                                }
                            })?;
                            dir.join(format!("{}.sqlite3", spec.name))
                        }
                    };
                    let store = sqlite::Sqlite::open(&path, limits.max_keys).map_err(|source| {
                        StateError::Open {
                            name: spec.name.clone(),
                            path: path.clone(),
                            source,
                        }
                    })?;
                    info!(store = %spec.name, path = %path.display(), "opened key-value store (sqlite)");
                    Box::new(store)
                }
            };
            open.insert(
                spec.name.clone(),
                Arc::new(Store {
                    name: spec.name.clone(),
                    system: match spec.backend {
                        BackendSpec::Sqlite(_) => "sqlite",
                        BackendSpec::Memory => "memory",
                        BackendSpec::Redis(_) => "redis",
                    },
                    backend,
                    down: AtomicBool::new(false),
                    counted: metrics.kv_counted(&spec.name, Op::ALL.map(Op::name), RESULTS),
                }),
            );
        }
        Ok(Stores {
            declared: Arc::new(declared),
            open,
            limits: Arc::new(limits),
            metrics,
        })
    }

    /// No store open: every grant is empty (for `wasmhttpd compile`).
    pub fn closed(metrics: Arc<Metrics>) -> Stores {
        Stores {
            declared: Arc::new(HashSet::new()),
            open: HashMap::new(),
            limits: Arc::new(crate::config::Limits::default().kv()),
            metrics,
        }
    }

    /// The server's metrics, which count the stores' operations.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What a route's guests may open under `grants`.
    pub fn granted(&self, grants: &Grants) -> Arc<Granted> {
        Arc::new(Granted {
            stores: grants
                .0
                .iter()
                .filter_map(|name| self.open.get(name).cloned())
                .collect(),
            declared: self.declared.clone(),
            limits: self.limits.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

/// The user's data directory for wasmhttpd: `$XDG_DATA_HOME/wasmhttpd`,
/// `~/.local/share/wasmhttpd`, or `./data` without a home.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| Path::new(&home).join(".local/share"))
        })
        .map(|dir| dir.join("wasmhttpd"))
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// The stores one route's guests may open.
pub struct Granted {
    stores: Vec<Arc<Store>>,
    declared: Arc<HashSet<String>>,
    limits: Arc<KvLimits>,
    metrics: Arc<Metrics>,
}

/// Why a bucket could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The store exists and the route is not granted it (or `""` was
    /// opened with nothing granted).
    AccessDenied,
    /// No store has that name.
    NoSuchStore,
}

impl Granted {
    /// The store `identifier` names for this route, or why not; a refusal
    /// is logged with the request `id` and counted.
    pub fn open(&self, identifier: &str, id: u64) -> Result<Arc<Store>, Refusal> {
        let found = if identifier.is_empty() {
            self.stores.first().ok_or(Refusal::AccessDenied)
        } else {
            self.stores
                .iter()
                .find(|store| store.name == identifier)
                .ok_or(if self.declared.contains(identifier) {
                    Refusal::AccessDenied
                } else {
                    Refusal::NoSuchStore
                })
        };
        match found {
            Ok(store) => Ok(store.clone()),
            Err(refusal) => {
                let (label, reason) = match refusal {
                    Refusal::AccessDenied => (
                        identifier,
                        "the route is not granted this store: grant it with --allow-kv (or the \
                         route's allow-kv=)",
                    ),
                    Refusal::NoSuchStore => ("", "no --kv-store declares this store"),
                };
                tracing::warn!(
                    target: "wasmhttpd::kv",
                    id,
                    store = identifier,
                    denied = reason,
                    "key-value store refused"
                );
                let result = match refusal {
                    Refusal::AccessDenied => "denied",
                    Refusal::NoSuchStore => "no-such-store",
                };
                self.metrics.kv_open(label, result);
                Err(refusal)
            }
        }
    }

    /// The limits of every operation.
    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    /// Runs `op` (named `name` in the metrics) on `store` within the
    /// timeout, counting it by its result, in a span under `trace`.
    pub async fn call<T>(
        &self,
        store: &Store,
        trace: &opentelemetry::Context,
        op: Op,
        work: impl Future<Output = KvResult<T>>,
    ) -> KvResult<T> {
        let started = Instant::now();
        let name = op.name();
        let span = telemetry::kv_span(trace, &store.name, store.system, name);
        let work = work.instrument(span.clone());
        // An operation done at once (a read answered on this thread) needs
        // no timer.
        let mut work = std::pin::pin!(work);
        let done = match (&mut work).now_or_never() {
            Some(done) => done,
            None => match tokio::time::timeout(self.limits.timeout, work).await {
                Ok(done) => done,
                Err(_) => Err(KvError::Unavailable(format!(
                    "no answer within --kv-timeout {} s",
                    self.limits.timeout.as_secs_f64()
                ))),
            },
        };
        let outcome = result(&done);
        store.counted.count(op as usize, outcome, started.elapsed());
        match &done {
            Ok(_) => telemetry::kv_result(&span, RESULTS[outcome], None),
            Err(err) => telemetry::kv_result(&span, RESULTS[outcome], Some(err)),
        }
        match &done {
            Err(err @ KvError::Unavailable(_)) => {
                if !store.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        target: "wasmhttpd::kv",
                        store = %store.name,
                        op = name,
                        error = %err,
                        "key-value store unavailable: guests get an error for each operation \
                         until it answers again"
                    );
                }
            }
            Err(err) => {
                tracing::warn!(target: "wasmhttpd::kv", store = %store.name, op = name, error = %err, "key-value operation refused");
            }
            Ok(_) => {
                if store.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "wasmhttpd::kv", store = %store.name, "key-value store answers again");
                }
            }
        }
        done
    }

    /// Checks a key against `--kv-max-key`.
    pub fn check_key(&self, key: &str) -> KvResult<()> {
        if key.len() > self.limits.max_key {
            return Err(KvError::Limit(format!(
                "the key is {} bytes, more than --kv-max-key {} allows",
                key.len(),
                self.limits.max_key
            )));
        }
        Ok(())
    }

    /// Checks a value against `--kv-max-value`.
    pub fn check_value(&self, value: &[u8]) -> KvResult<()> {
        if value.len() > self.limits.max_value {
            return Err(KvError::Limit(format!(
                "the value is {} bytes, more than --kv-max-value {} allows",
                value.len(),
                self.limits.max_value
            )));
        }
        Ok(())
    }
}

impl Store {
    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }
}
