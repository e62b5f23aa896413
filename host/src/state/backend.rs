//! What every key-value backend does, in the terms both versions of
//! `wasi:keyvalue` need: single keys, an atomic increment and
//! compare-and-swap, batches, and keys listed a page at a time.
//!
//! Numbers: a counter is the decimal text of a signed 64-bit integer
//! (`"42"`, `"-7"`), on every backend: what Redis's `INCRBY` and
//! `wasmtime serve`'s in-memory store write, so a counter one version
//! (or one backend's tool) wrote reads back through the other.

use async_trait::async_trait;

/// Why a backend could not do an operation; the guest gets it as
/// `wasi:keyvalue`'s `error::other` with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A limit of the operator's refused it: the text names the flag.
    #[error("{0}")]
    Limit(String),
    /// The backend is down or did not answer in time.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The key's value is not what the operation needs (a counter that is
    /// not a number), or the guest's argument is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// A result of a backend.
pub type KvResult<T> = Result<T, KvError>;

/// A page of keys: the keys, and the cursor of the next page, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys, in the backend's order.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<u64>,
}

/// One store's data. A cursor is the backend's own number (0 starts a
/// listing); a key listed once is listed at most once in a listing that
/// runs through every page.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The value of `key`, if it has one.
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>>;
    /// Sets `key` to `value`, refusing a new key past the store's cap.
    async fn set(&self, key: &str, value: &[u8]) -> KvResult<()>;
    /// Removes `key`, if it is there.
    async fn delete(&self, key: &str) -> KvResult<()>;
    /// Whether `key` has a value.
    async fn exists(&self, key: &str) -> KvResult<bool>;
    /// Up to `limit` keys from `cursor` on.
    async fn list(&self, cursor: u64, limit: usize) -> KvResult<Page>;
    /// Adds `delta` to the counter at `key` (0 when it has none) and gives
    /// its new value, atomically; with `unsigned`, a result below 0 is
    /// refused and nothing written.
    async fn increment(&self, key: &str, delta: i64, unsigned: bool) -> KvResult<i64>;
    /// Sets `key` to `value` if its value is still `expected` (`None`: it
    /// has none); whether it did, atomically.
    async fn swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> KvResult<bool>;
    /// The values of `keys`, in their order.
    async fn get_many(&self, keys: &[String]) -> KvResult<Vec<Option<Vec<u8>>>>;
    /// Sets every pair, all or none past the store's cap.
    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> KvResult<()>;
    /// Removes every one of `keys`.
    async fn delete_many(&self, keys: &[String]) -> KvResult<()>;
}

/// The counter in `value` (`None`: 0), for [`Backend::increment`].
pub fn counter(key: &str, value: Option<&[u8]>) -> KvResult<i64> {
    let Some(value) = value else { return Ok(0) };
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| {
            KvError::Invalid(format!(
                "the value of {key:?} is not a counter (the decimal text of a 64-bit integer)"
            ))
        })
}

/// `current + delta`, or why not; with `unsigned`, a result below 0 is
/// why not (`wasi:keyvalue@0.2.0-draft`'s increment gives a `u64`).
pub fn add(key: &str, current: i64, delta: i64, unsigned: bool) -> KvResult<i64> {
    let sum = current.checked_add(delta).ok_or_else(|| {
        KvError::Invalid(format!(
            "incrementing {key:?} by {delta} overflows a 64-bit integer"
        ))
    })?;
    if unsigned && sum < 0 {
        return Err(KvError::Invalid(format!(
            "the counter {key:?} would be {sum}, which wasi:keyvalue@0.2.0-draft's increment \
             (u64) cannot give; nothing was written"
        )));
    }
    Ok(sum)
}

/// The error of a new key past a store's cap of `max` keys.
pub fn full(max: u64) -> KvError {
    KvError::Limit(format!(
        "the store holds --kv-max-keys {max} keys already: delete some, or raise --kv-max-keys"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_text() {
        assert_eq!(counter("k", None), Ok(0));
        assert_eq!(counter("k", Some(b"42")), Ok(42));
        assert_eq!(counter("k", Some(b"-7")), Ok(-7));
        assert!(counter("k", Some(b"4 2")).is_err());
        assert!(counter("k", Some(&42u64.to_le_bytes())).is_err());
        assert!(add("k", i64::MAX, 1, false).is_err());
        assert_eq!(add("k", -1, 1, true), Ok(0));
        assert_eq!(add("k", 1, -2, false), Ok(-1));
        assert!(add("k", 1, -2, true).is_err());
    }
}
