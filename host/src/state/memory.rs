//! The in-memory backend, for tests and throwaway runs: a store lives as
//! long as the server, shared by every instance of every route granted
//! it, and is gone when the server stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::backend::{Backend, KvResult, Page, add, counter, full};

/// One in-memory store.
pub struct Memory {
    inner: Mutex<Inner>,
    max_keys: u64,
}

/// The keys by name, and in the order they were first set, for listing.
#[derive(Default)]
struct Inner {
    values: HashMap<String, (u64, Vec<u8>)>,
    order: BTreeMap<u64, String>,
    next: u64,
}

impl Inner {
    fn set(&mut self, key: &str, value: &[u8], max_keys: u64) -> KvResult<()> {
        if let Some((_, old)) = self.values.get_mut(key) {
            *old = value.to_vec();
            return Ok(());
        }
        if self.values.len() as u64 >= max_keys {
            return Err(full(max_keys));
        }
        self.next += 1;
        self.order.insert(self.next, key.to_owned());
        self.values
            .insert(key.to_owned(), (self.next, value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &str) {
        if let Some((seq, _)) = self.values.remove(key) {
            self.order.remove(&seq);
        }
    }
}

impl Memory {
    /// An empty store of at most `max_keys` keys.
    pub fn new(max_keys: u64) -> Memory {
        Memory {
            inner: Mutex::new(Inner::default()),
            max_keys,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Backend for Memory {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        Ok(self.lock().values.get(key).map(|(_, value)| value.clone()))
    }

    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        self.lock().set(key, value, self.max_keys)
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        self.lock().delete(key);
        Ok(())
    }

    async fn exists(&self, key: &str) -> KvResult<bool> {
        Ok(self.lock().values.contains_key(key))
    }

    async fn list(&self, cursor: u64, limit: usize) -> KvResult<Page> {
        let inner = self.lock();
        let mut page = inner.order.range(cursor..).take(limit + 1);
        let keys: Vec<(u64, String)> = page
            .by_ref()
            .take(limit)
            .map(|(seq, key)| (*seq, key.clone()))
            .collect();
        let next = page.next().map(|(seq, _)| *seq);
        Ok(Page {
            keys: keys.into_iter().map(|(_, key)| key).collect(),
            next,
        })
    }

    async fn increment(&self, key: &str, delta: i64, unsigned: bool) -> KvResult<i64> {
        let mut inner = self.lock();
        let current = counter(
            key,
            inner.values.get(key).map(|(_, value)| value.as_slice()),
        )?;
        let new = add(key, current, delta, unsigned)?;
        inner.set(key, new.to_string().as_bytes(), self.max_keys)?;
        Ok(new)
    }

    async fn swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> KvResult<bool> {
        let mut inner = self.lock();
        let current = inner.values.get(key).map(|(_, value)| value.as_slice());
        if current != expected {
            return Ok(false);
        }
        inner.set(key, value, self.max_keys)?;
        Ok(true)
    }

    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Vec<u8>>>> {
        let inner = self.lock();
        Ok(keys
            .iter()
            .map(|key| inner.values.get(key).map(|(_, value)| value.clone()))
            .collect())
    }

    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> KvResult<()> {
        let mut inner = self.lock();
        let new = pairs
            .iter()
            .filter(|(key, _)| !inner.values.contains_key(key))
            .map(|(key, _)| key)
            .collect::<std::collections::HashSet<_>>()
            .len() as u64;
        if inner.values.len() as u64 + new > self.max_keys {
            return Err(full(self.max_keys));
        }
        for (key, value) in pairs {
            inner.set(key, value, u64::MAX)?;
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> KvResult<()> {
        let mut inner = self.lock();
        for key in keys {
            inner.delete(key);
        }
        Ok(())
    }
}
