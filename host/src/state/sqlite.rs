//! The SQLite backend, the default: one database file per store, in WAL
//! mode with `synchronous=FULL`, so a value the guest was told is stored
//! is on disk before the guest hears so, and survives the server's crash
//! or a `kill -9` (and a power cut).
//!
//! Writes wait for the disk, so they never run on the threads that serve
//! connections: each store has a writer thread of its own, which takes the
//! writes waiting for it and commits them together, in one `BEGIN
//! IMMEDIATE` transaction and one sync of the log (a group commit), each
//! write in a savepoint of its own so that one refused (the cap, a value
//! that is not a counter) leaves the others; every write's guest hears of
//! it only once the commit is on disk. Writes are thus one after another:
//! an increment or a compare-and-swap from two instances at once never
//! interleave.
//!
//! Reads wait for neither in WAL mode: they run on the thread that serves
//! the request, each thread with a connection of its own that never waits
//! for a lock (a read that finds the database busy, which WAL mode makes
//! rare, goes to the writer's thread instead). A read from the page cache
//! takes microseconds; handing it to another thread and back cost 40 µs of
//! CPU per read (`bench.py`, `kv-read`), as the same reasoning keeps the
//! guests' file reads on their thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::backend::{Backend, KvError, KvResult, Page, add, counter, full};

/// How long the writer waits for a lock held outside this process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes committed together at most: enough that a burst of writes
/// shares its syncs, few enough that none waits long behind the others.
const GROUP: usize = 256;

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

/// A write waiting for the writer thread.
trait Write: Send {
    /// Runs it in the group's transaction: whether it succeeded (else its
    /// savepoint is rolled back), and what tells its guest how it ended
    /// once the group's commit is known.
    fn run(self: Box<Self>, conn: &Connection, max_keys: u64) -> (bool, Answer);
    /// Tells its guest that it was not run.
    fn refuse(self: Box<Self>, err: KvError);
}

/// Tells a write's guest how it ended, given how the commit ended.
type Answer = Box<dyn FnOnce(Result<(), KvError>) + Send>;

/// A write and where its result goes.
struct Pending<F, T> {
    work: F,
    answer: oneshot::Sender<KvResult<T>>,
}

impl<F, T> Write for Pending<F, T>
where
    F: FnOnce(&Connection, u64) -> KvResult<T> + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection, max_keys: u64) -> (bool, Answer) {
        let Pending { work, answer } = *self;
        let done = work(conn, max_keys);
        let ok = done.is_ok();
        (
            ok,
            Box::new(move |committed| {
                let _ = answer.send(committed.and(done));
            }),
        )
    }

    fn refuse(self: Box<Self>, err: KvError) {
        let _ = self.answer.send(Err(err));
    }
}

/// One store's database.
pub struct Sqlite {
    path: PathBuf,
    writes: mpsc::Sender<Box<dyn Write>>,
}

impl Sqlite {
    /// Opens (or creates) the database at `path`, whose directory must
    /// exist, with a cap of `max_keys` keys, and starts its writer thread.
    pub fn open(path: &Path, max_keys: u64) -> rusqlite::Result<Sqlite> {
        let conn = connect(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch(SCHEMA)?;
        let (writes, jobs) = mpsc::channel();
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        std::thread::Builder::new()
            .name(format!("kv-{name}"))
            .spawn(move || write_groups(conn, &jobs, max_keys))
            .map_err(|err| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot start the store's writer thread: {err}")),
                )
            })?;
        Ok(Sqlite {
            path: path.to_owned(),
            writes,
        })
    }

    /// Runs `work` on the writer thread in the next group's transaction;
    /// its result once the group is committed.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, u64) -> KvResult<T> + Send + 'static,
    ) -> KvResult<T> {
        let (answer, answered) = oneshot::channel();
        self.writes
            .send(Box::new(Pending { work, answer }))
            .map_err(|_| KvError::Unavailable("the store's writer has stopped".to_owned()))?;
        answered
            .await
            .map_err(|_| KvError::Unavailable("the store's writer has stopped".to_owned()))?
    }
}

/// The writer thread: takes the writes waiting, runs each in a savepoint
/// of one transaction, commits them together, then answers each.
fn write_groups(mut conn: Connection, jobs: &mpsc::Receiver<Box<dyn Write>>, max_keys: u64) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(err) => {
                let err = unavailable(err);
                for job in group {
                    job.refuse(err.clone());
                }
                continue;
            }
        };
        let mut answers = Vec::with_capacity(group.len());
        for job in group {
            if let Err(err) = tx.execute_batch("SAVEPOINT job") {
                job.refuse(unavailable(err));
                continue;
            }
            let (ok, tell) = job.run(&tx, max_keys);
            let closed = if ok {
                tx.execute_batch("RELEASE job")
            } else {
                tx.execute_batch("ROLLBACK TO job; RELEASE job")
            };
            answers.push((tell, closed.err().map(unavailable)));
        }
        let committed = tx.commit().map_err(unavailable);
        for (tell, failed) in answers {
            tell(match (&committed, failed) {
                (Err(err), _) => Err(err.clone()),
                (Ok(()), Some(err)) => Err(err),
                (Ok(()), None) => Ok(()),
            });
        }
    }
}

thread_local! {
    /// Each serving thread's connections for reads, one for each store it
    /// has read.
    static READERS: RefCell<HashMap<PathBuf, Connection>> = RefCell::default();
}

impl Sqlite {
    /// Runs the read `work` on this thread with its own connection to the
    /// store, which never waits for a lock; when the database is busy, on
    /// the writer's thread instead.
    async fn read<T: Send + 'static>(
        &self,
        work: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> KvResult<T> {
        let here = READERS.with(|readers| {
            let mut readers = readers.borrow_mut();
            let conn = match readers.entry(self.path.clone()) {
                Entry::Occupied(conn) => conn.into_mut(),
                Entry::Vacant(slot) => {
                    let conn = connect(&self.path)?;
                    conn.busy_timeout(Duration::ZERO)?;
                    slot.insert(conn)
                }
            };
            work(conn)
        });
        match here {
            Err(rusqlite::Error::SqliteFailure(err, _))
                if matches!(
                    err.code,
                    ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked
                ) =>
            {
                self.write(move |conn, _| work(conn).map_err(unavailable))
                    .await
            }
            done => done.map_err(unavailable),
        }
    }
}

/// A connection in WAL mode with full synchronisation.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn unavailable(err: rusqlite::Error) -> KvError {
    KvError::Unavailable(err.to_string())
}

/// The value of `key`.
fn value(conn: &Connection, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")
        .and_then(|mut get| get.query_row([key], |row| row.get(0)).optional())
}

/// [`value`], in a write.
fn current(conn: &Connection, key: &str) -> KvResult<Option<Vec<u8>>> {
    value(conn, key).map_err(unavailable)
}

/// Sets `key`, refusing a new key past the cap.
fn put(conn: &Connection, key: &str, value: &[u8], max_keys: u64) -> KvResult<()> {
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

/// Removes `key`.
fn remove(conn: &Connection, key: &str) -> KvResult<()> {
    conn.prepare_cached("DELETE FROM kv WHERE key = ?1")
        .and_then(|mut delete| delete.execute([key]))
        .map(drop)
        .map_err(unavailable)
}

#[async_trait]
impl Backend for Sqlite {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.read(move |conn| value(conn, &key)).await
    }

    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.write(move |conn, max| put(conn, &key, &value, max))
            .await
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        let key = key.to_owned();
        self.write(move |conn, _| remove(conn, &key)).await
    }

    async fn exists(&self, key: &str) -> KvResult<bool> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT 1 FROM kv WHERE key = ?1")
                .and_then(|mut exists| exists.exists([&key]))
        })
        .await
    }

    async fn list(&self, cursor: u64, limit: usize) -> KvResult<Page> {
        self.read(move |conn| {
            let mut list =
                conn.prepare_cached("SELECT id, key FROM kv WHERE id >= ?1 ORDER BY id LIMIT ?2")?;
            let rows = list
                .query_map(params![cursor as i64, limit as i64 + 1], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
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
        self.write(move |conn, max| {
            let now = counter(&key, current(conn, &key)?.as_deref())?;
            let new = add(&key, now, delta, unsigned)?;
            put(conn, &key, new.to_string().as_bytes(), max)?;
            Ok(new)
        })
        .await
    }

    async fn swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> KvResult<bool> {
        let (key, expected, value) = (key.to_owned(), expected.map(<[u8]>::to_vec), value.to_vec());
        self.write(move |conn, max| {
            if current(conn, &key)? != expected {
                return Ok(false);
            }
            put(conn, &key, &value, max)?;
            Ok(true)
        })
        .await
    }

    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Vec<u8>>>> {
        let keys = keys.to_vec();
        self.read(move |conn| {
            // One read transaction: every value as of one moment; never
            // left open on the thread's connection, whatever happens.
            conn.execute_batch("BEGIN")?;
            let values: rusqlite::Result<Vec<_>> =
                keys.iter().map(|key| value(conn, key)).collect();
            conn.execute_batch(if values.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
            values
        })
        .await
    }

    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> KvResult<()> {
        let pairs = pairs.to_vec();
        self.write(move |conn, max| {
            pairs
                .iter()
                .try_for_each(|(key, value)| put(conn, key, value, max))
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> KvResult<()> {
        let keys = keys.to_vec();
        self.write(move |conn, _| keys.iter().try_for_each(|key| remove(conn, key)))
            .await
    }
}
