//! The Redis backend, for replicas that must share state: every replica
//! behind the load balancer opens the same store on the same Redis. A
//! store's keys live under a prefix of their own (`wasmhttpd:NAME:`), so
//! stores never see each other's keys, and a count of them beside it
//! (`wasmhttpd:NAME#keys`) holds the cap. What must be atomic is one Lua
//! script each (a new key against the cap, increment, compare-and-swap,
//! the batches); an increment is Redis's own `INCRBY`, whose decimal
//! text is the counter's encoding on every backend. `list-keys` walks the
//! prefix with `SCAN`, whose cursor is the listing's.
//!
//! The connection is a `ConnectionManager`, which reconnects after Redis
//! restarts; while Redis is down each operation is the guest's error.
//! Durability is Redis's own, as its persistence is configured.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, Script};
use tokio::sync::OnceCell;

use super::backend::{Backend, KvError, KvResult, Page, full};

/// Time to connect, at start and after an outage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets a key, refusing a new one past the cap.
/// KEYS: value, count. ARGV: value, max keys.
const SET: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then
    return redis.error_reply('FULL')
  end
  redis.call('INCR', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

/// Deletes a key. KEYS: value, count.
const DELETE: &str = r"
if redis.call('DEL', KEYS[1]) == 1 then redis.call('DECR', KEYS[2]) end
return 1
";

/// Adds to a counter; gives its new value as text.
/// KEYS: value, count. ARGV: delta, max keys, '1' when unsigned.
const INCREMENT: &str = r"
local existed = redis.call('EXISTS', KEYS[1]) == 1
if not existed and tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then
  return redis.error_reply('FULL')
end
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[3] == '1' and value < 0 then
  if existed then redis.call('DECRBY', KEYS[1], ARGV[1]) else redis.call('DEL', KEYS[1]) end
  return redis.error_reply('NEGATIVE')
end
if not existed then redis.call('INCR', KEYS[2]) end
return redis.call('GET', KEYS[1])
";

/// Compare-and-swap. KEYS: value, count. ARGV: '1' when a value is
/// expected, the expected value, the new value, max keys.
const SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if not current then
  if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[4]) then
    return redis.error_reply('FULL')
  end
  redis.call('INCR', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
";

/// Sets every pair, or none past the cap. KEYS: the values' keys, then
/// the count. ARGV: the values, then max keys.
const SET_MANY: &str = r"
local n = #KEYS - 1
local new = 0
local seen = {}
for i = 1, n do
  if not seen[KEYS[i]] and redis.call('EXISTS', KEYS[i]) == 0 then new = new + 1 end
  seen[KEYS[i]] = true
end
if tonumber(redis.call('GET', KEYS[n + 1]) or '0') + new > tonumber(ARGV[n + 1]) then
  return redis.error_reply('FULL')
end
for i = 1, n do redis.call('SET', KEYS[i], ARGV[i]) end
if new > 0 then redis.call('INCRBY', KEYS[n + 1], new) end
return 1
";

/// Deletes every key. KEYS: the values' keys, then the count.
const DELETE_MANY: &str = r"
local n = #KEYS - 1
local gone = 0
for i = 1, n do gone = gone + redis.call('DEL', KEYS[i]) end
if gone > 0 then redis.call('DECRBY', KEYS[n + 1], gone) end
return 1
";

/// One store on a Redis server.
pub struct Redis {
    client: Client,
    connection: OnceCell<ConnectionManager>,
    /// `wasmhttpd:NAME:`, before every key of the store.
    prefix: String,
    /// Where the count of the store's keys is.
    count: String,
    max_keys: u64,
    scripts: Scripts,
}

struct Scripts {
    set: Script,
    delete: Script,
    increment: Script,
    swap: Script,
    set_many: Script,
    delete_many: Script,
}

impl Redis {
    /// The store `name` on the Redis at `url`, checked now: a server that
    /// does not answer a `PING` is an error at start.
    pub fn open(name: &str, url: &str, max_keys: u64) -> redis::RedisResult<Redis> {
        let client = Client::open(url)?;
        let mut check = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        redis::cmd("PING").query::<String>(&mut check)?;
        Ok(Redis {
            client,
            connection: OnceCell::new(),
            prefix: format!("wasmhttpd:{name}:"),
            count: format!("wasmhttpd:{name}#keys"),
            max_keys,
            scripts: Scripts {
                set: Script::new(SET),
                delete: Script::new(DELETE),
                increment: Script::new(INCREMENT),
                swap: Script::new(SWAP),
                set_many: Script::new(SET_MANY),
                delete_many: Script::new(DELETE_MANY),
            },
        })
    }

    /// The connection, made on first use and remade after an outage.
    async fn connection(&self) -> KvResult<ConnectionManager> {
        self.connection
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(failed)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// A Redis error as the guest gets it: the cap, a guest-side mistake, or
/// Redis not answering.
fn failed(err: redis::RedisError) -> KvError {
    let text = err.to_string();
    if text.contains("FULL") {
        KvError::Limit(String::new())
    } else if text.contains("NEGATIVE") {
        KvError::Invalid(
            "the counter would be below 0, which wasi:keyvalue@0.2.0-draft's increment (u64) \
             cannot give; nothing was written"
                .to_owned(),
        )
    } else if text.contains("not an integer") || text.contains("overflow") {
        KvError::Invalid(format!(
            "the value is not a counter that can take this: {text}"
        ))
    } else {
        KvError::Unavailable(text)
    }
}

impl Redis {
    /// [`failed`], with the cap's message.
    fn refused(&self, err: redis::RedisError) -> KvError {
        match failed(err) {
            KvError::Limit(_) => full(self.max_keys),
            other => other,
        }
    }
}

#[async_trait]
impl Backend for Redis {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        let mut conn = self.connection().await?;
        conn.get(self.key(key)).await.map_err(failed)
    }

    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        let mut conn = self.connection().await?;
        self.scripts
            .set
            .key(self.key(key))
            .key(&self.count)
            .arg(value)
            .arg(self.max_keys)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|err| self.refused(err))
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        let mut conn = self.connection().await?;
        self.scripts
            .delete
            .key(self.key(key))
            .key(&self.count)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(failed)
    }

    async fn exists(&self, key: &str) -> KvResult<bool> {
        let mut conn = self.connection().await?;
        conn.exists(self.key(key)).await.map_err(failed)
    }

    async fn list(&self, cursor: u64, limit: usize) -> KvResult<Page> {
        let mut conn = self.connection().await?;
        let pattern = format!("{}*", self.prefix);
        let mut cursor = cursor;
        // SCAN may answer a step with no key of the prefix: walk on until
        // one comes or the walk is over.
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            if !found.is_empty() || next == 0 {
                let keys = found
                    .into_iter()
                    .filter_map(|key| key.strip_prefix(&self.prefix).map(str::to_owned))
                    .collect();
                return Ok(Page {
                    keys,
                    next: (next != 0).then_some(next),
                });
            }
            cursor = next;
        }
    }

    async fn increment(&self, key: &str, delta: i64, unsigned: bool) -> KvResult<i64> {
        let mut conn = self.connection().await?;
        let value: String = self
            .scripts
            .increment
            .key(self.key(key))
            .key(&self.count)
            .arg(delta)
            .arg(self.max_keys)
            .arg(if unsigned { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(|err| self.refused(err))?;
        value
            .parse()
            .map_err(|_| KvError::Invalid(format!("Redis gave {value:?} for a counter")))
    }

    async fn swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> KvResult<bool> {
        let mut conn = self.connection().await?;
        let swapped: i64 = self
            .scripts
            .swap
            .key(self.key(key))
            .key(&self.count)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(value)
            .arg(self.max_keys)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| self.refused(err))?;
        Ok(swapped == 1)
    }

    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.connection().await?;
        let keys: Vec<String> = keys.iter().map(|key| self.key(key)).collect();
        redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(failed)
    }

    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> KvResult<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let mut call = self.scripts.set_many.prepare_invoke();
        for (key, value) in pairs {
            call.key(self.key(key)).arg(value.as_slice());
        }
        call.key(&self.count).arg(self.max_keys);
        call.invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|err| self.refused(err))
    }

    async fn delete_many(&self, keys: &[String]) -> KvResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let mut call = self.scripts.delete_many.prepare_invoke();
        for key in keys {
            call.key(self.key(key));
        }
        call.key(&self.count);
        call.invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(failed)
    }
}
