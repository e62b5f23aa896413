//! The SQLite backend, the default: one database file per store, in WAL
//! mode with `synchronous=FULL`, so a value the guest was told is stored
//! is on disk before the guest hears so, and survives the server's crash
//! or a `kill -9` (and a power cut). Every operation runs on tokio's
//! blocking pool, never on the threads that serve connections; writes are
//! `BEGIN IMMEDIATE` transactions, so an increment or a compare-and-swap
//! from two instances at once is one after the other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::backend::{Backend, KvError, KvResult, Page, add, counter, full};

/// How long a connection waits for another's write transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections kept open for the next operation.
const IDLE_CONNECTIONS: usize = 8;

/// The tables: the pairs, in the order their keys were first set (the
/// `id` a listing's cursor is), and the count of keys the cap is checked
/// against, kept by triggers.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS kv (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        value BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
    INSERT OR IGNORE INTO meta (name, n) SELECT 'keys', COUNT(*) FROM kv;
    CREATE TRIGGER IF NOT EXISTS kv_insert AFTER INSERT ON kv
        BEGIN UPDATE meta SET n = n + 1 WHERE name = 'keys'; END;
    CREATE TRIGGER IF NOT EXISTS kv_delete AFTER DELETE ON kv
        BEGIN UPDATE meta SET n = n - 1 WHERE name = 'keys'; END;
";

/// One store's database.
pub struct Sqlite {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_keys: u64,
}

impl Sqlite {
    /// Opens (or creates) the database at `path`, whose directory must
    /// exist, with a cap of `max_keys` keys.
    pub fn open(path: &Path, max_keys: u64) -> rusqlite::Result<Sqlite> {
        let conn = connect(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Sqlite {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                idle: Mutex::new(vec![conn]),
                max_keys,
            }),
        })
    }

    /// Runs `work` with a connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, u64) -> KvResult<T> + Send + 'static,
    ) -> KvResult<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let idle = shared
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => connect(&shared.path).map_err(unavailable)?,
            };
            let done = work(&mut conn, shared.max_keys);
            let mut idle = shared
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(conn);
            }
            done
        })
        .await
        .map_err(|err| KvError::Unavailable(err.to_string()))?
    }
}

/// A connection in WAL mode with full synchronisation.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn unavailable(err: rusqlite::Error) -> KvError {
    KvError::Unavailable(err.to_string())
}

/// The value of `key`, in `conn`'s transaction.
fn read(conn: &Connection, key: &str) -> KvResult<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")
        .and_then(|mut get| get.query_row([key], |row| row.get(0)).optional())
        .map_err(unavailable)
}

/// Sets `key` in `conn`'s transaction, refusing a new key past the cap.
fn write(conn: &Connection, key: &str, value: &[u8], max_keys: u64) -> KvResult<()> {
    let updated = conn
        .prepare_cached("UPDATE kv SET value = ?2 WHERE key = ?1")
        .and_then(|mut update| update.execute(params![key, value]))
        .map_err(unavailable)?;
    if updated > 0 {
        return Ok(());
    }
    let count: i64 = conn
        .prepare_cached("SELECT n FROM meta WHERE name = 'keys'")
        .and_then(|mut count| count.query_row([], |row| row.get(0)))
        .map_err(unavailable)?;
    if count as u64 >= max_keys {
        return Err(full(max_keys));
    }
    conn.prepare_cached("INSERT INTO kv (key, value) VALUES (?1, ?2)")
        .and_then(|mut insert| insert.execute(params![key, value]))
        .map_err(unavailable)?;
    Ok(())
}

/// Runs `work` in a write transaction, committed only when it succeeds.
fn in_write<T>(
    conn: &mut Connection,
    work: impl FnOnce(&Connection) -> KvResult<T>,
) -> KvResult<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let done = work(&tx)?;
    tx.commit().map_err(unavailable)?;
    Ok(done)
}

#[async_trait]
impl Backend for Sqlite {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.run(move |conn, _| read(conn, &key)).await
    }

    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.run(move |conn, max| in_write(conn, |tx| write(tx, &key, &value, max)))
            .await
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        let key = key.to_owned();
        self.run(move |conn, _| {
            conn.prepare_cached("DELETE FROM kv WHERE key = ?1")
                .and_then(|mut delete| delete.execute([&key]))
                .map(drop)
                .map_err(unavailable)
        })
        .await
    }

    async fn exists(&self, key: &str) -> KvResult<bool> {
        let key = key.to_owned();
        self.run(move |conn, _| {
            conn.prepare_cached("SELECT 1 FROM kv WHERE key = ?1")
                .and_then(|mut exists| exists.exists([&key]))
                .map_err(unavailable)
        })
        .await
    }

    async fn list(&self, cursor: u64, limit: usize) -> KvResult<Page> {
        self.run(move |conn, _| {
            let mut list = conn
                .prepare_cached("SELECT id, key FROM kv WHERE id >= ?1 ORDER BY id LIMIT ?2")
                .map_err(unavailable)?;
            let rows = list
                .query_map(params![cursor as i64, limit as i64 + 1], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
                .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                .map_err(unavailable)?;
            let next = rows.get(limit).map(|(id, _)| *id as u64);
            Ok(Page {
                keys: rows.into_iter().take(limit).map(|(_, key)| key).collect(),
                next,
            })
        })
        .await
    }

    async fn increment(&self, key: &str, delta: i64, unsigned: bool) -> KvResult<i64> {
        let key = key.to_owned();
        self.run(move |conn, max| {
            in_write(conn, |tx| {
                let current = counter(&key, read(tx, &key)?.as_deref())?;
                let new = add(&key, current, delta, unsigned)?;
                write(tx, &key, new.to_string().as_bytes(), max)?;
                Ok(new)
            })
        })
        .await
    }

    async fn swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> KvResult<bool> {
        let (key, expected, value) = (key.to_owned(), expected.map(<[u8]>::to_vec), value.to_vec());
        self.run(move |conn, max| {
            in_write(conn, |tx| {
                if read(tx, &key)? != expected {
                    return Ok(false);
                }
                write(tx, &key, &value, max)?;
                Ok(true)
            })
        })
        .await
    }

    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Vec<u8>>>> {
        let keys = keys.to_vec();
        self.run(move |conn, _| {
            let tx = conn.transaction().map_err(unavailable)?;
            keys.iter().map(|key| read(&tx, key)).collect()
        })
        .await
    }

    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> KvResult<()> {
        let pairs = pairs.to_vec();
        self.run(move |conn, max| {
            in_write(conn, |tx| {
                pairs
                    .iter()
                    .try_for_each(|(key, value)| write(tx, key, value, max))
            })
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> KvResult<()> {
        let keys = keys.to_vec();
        self.run(move |conn, _| {
            in_write(conn, |tx| {
                let mut delete = tx
                    .prepare_cached("DELETE FROM kv WHERE key = ?1")
                    .map_err(unavailable)?;
                keys.iter()
                    .try_for_each(|key| delete.execute([key]).map(drop).map_err(unavailable))
            })
        })
        .await
    }
}
