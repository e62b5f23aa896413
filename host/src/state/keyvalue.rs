//! `wasi:keyvalue` for guests, in both versions in use, over one set of
//! backends: `0.2.0-draft` (what `wasmtime serve -S keyvalue` and wasmCloud
//! link) and `0.2.0-draft2` (what Spin links, with compare-and-swap and a
//! string cursor). Where they differ:
//!
//! | | `0.2.0-draft` | `0.2.0-draft2` |
//! |---|---|---|
//! | `increment` | `u64` delta and result (a negative counter is an error) | `s64` |
//! | `list-keys` cursor | `option<u64>` | `option<string>`, the same number as text |
//! | `get-many` | `list<option<tuple<key, value>>>` | `list<tuple<key, option<value>>>` |
//! | compare-and-swap | – | `cas` resource and `swap` |
//!
//! A counter is the decimal text of a signed 64-bit integer on every
//! backend, so one written through either version reads back through the
//! other. Batches hold at most `--kv-page` keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::Context;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::backend::{KvError, KvResult};
use super::{Granted, Op, Refusal, Store};

/// `wasi:keyvalue@0.2.0-draft`.
mod draft {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:keyvalue/imports@0.2.0-draft",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

/// `wasi:keyvalue@0.2.0-draft2`.
mod draft2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:keyvalue/imports@0.2.0-draft2",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}

use draft::wasi::keyvalue0_2_0_draft as v1;
use draft2::wasi::keyvalue0_2_0_draft2 as v2;

/// An open bucket: the store it names.
pub struct Bucket(Arc<Store>);

/// A compare-and-swap in progress: the key, and its value when it began.
pub struct Cas {
    store: Arc<Store>,
    key: String,
    current: Option<Vec<u8>>,
}

/// What an instance's key-value calls need: the stores its route is
/// granted, and the id of the request it serves, for the log.
pub struct KvCtx {
    granted: Arc<Granted>,
    request: Arc<AtomicU64>,
    /// The trace context of the guest's run for that request: each
    /// operation's span goes under it.
    trace: Context,
}

impl KvCtx {
    /// The context of an instance of a route granted `granted`, serving
    /// the request whose id `request` holds.
    pub fn new(granted: Arc<Granted>, request: Arc<AtomicU64>) -> KvCtx {
        KvCtx {
            granted,
            request,
            trace: Context::new(),
        }
    }

    /// Opens the spans of operations under `cx` from now on.
    pub fn trace(&mut self, cx: &Context) {
        self.trace = cx.clone();
    }
}

/// The view the bindings call into.
pub struct KvView<'a> {
    ctx: &'a KvCtx,
    table: &'a mut ResourceTable,
}

impl<'a> KvView<'a> {
    /// A view of `ctx` with the instance's resource `table`.
    pub fn new(ctx: &'a KvCtx, table: &'a mut ResourceTable) -> KvView<'a> {
        KvView { ctx, table }
    }

    fn open_bucket(&mut self, identifier: &str) -> Result<Resource<Bucket>, Option<Refusal>> {
        let id = self.ctx.request.load(Ordering::Relaxed);
        let store = self.ctx.granted.open(identifier, id).map_err(Some)?;
        self.table.push(Bucket(store)).map_err(|_| None)
    }

    fn bucket_store(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<Arc<Store>> {
        Ok(self.table.get(bucket)?.0.clone())
    }
}

/// The operations both versions share: each checked against the limits,
/// within the timeout, counted and, when it fails, logged.
impl Granted {
    pub(super) async fn get(
        &self,
        store: &Store,
        trace: &Context,
        key: String,
    ) -> KvResult<Option<Vec<u8>>> {
        let granted = self;
        granted
            .call(store, trace, Op::Get, async {
                granted.check_key(&key)?;
                store.backend().get(&key).await
            })
            .await
    }

    pub(super) async fn set(
        &self,
        store: &Store,
        trace: &Context,
        key: String,
        value: Vec<u8>,
    ) -> KvResult<()> {
        let granted = self;
        granted
            .call(store, trace, Op::Set, async {
                granted.check_key(&key)?;
                granted.check_value(&value)?;
                store.backend().set(&key, &value).await
            })
            .await
    }

    pub(super) async fn delete(&self, store: &Store, trace: &Context, key: String) -> KvResult<()> {
        let granted = self;
        granted
            .call(store, trace, Op::Delete, async {
                granted.check_key(&key)?;
                store.backend().delete(&key).await
            })
            .await
    }

    pub(super) async fn exists(
        &self,
        store: &Store,
        trace: &Context,
        key: String,
    ) -> KvResult<bool> {
        let granted = self;
        granted
            .call(store, trace, Op::Exists, async {
                granted.check_key(&key)?;
                store.backend().exists(&key).await
            })
            .await
    }

    pub(super) async fn list(
        &self,
        store: &Store,
        trace: &Context,
        cursor: u64,
    ) -> KvResult<super::backend::Page> {
        let granted = self;
        granted
            .call(store, trace, Op::ListKeys, async {
                store.backend().list(cursor, granted.limits().page).await
            })
            .await
    }

    pub(super) async fn increment(
        &self,
        store: &Store,
        trace: &Context,
        key: String,
        delta: i64,
        unsigned: bool,
    ) -> KvResult<i64> {
        let granted = self;
        granted
            .call(store, trace, Op::Increment, async {
                granted.check_key(&key)?;
                store.backend().increment(&key, delta, unsigned).await
            })
            .await
    }

    pub(super) async fn swap(
        &self,
        store: &Store,
        trace: &Context,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
    ) -> KvResult<bool> {
        let granted = self;
        granted
            .call(store, trace, Op::Swap, async {
                granted.check_value(&value)?;
                store.backend().swap(key, expected, &value).await
            })
            .await
    }

    /// Checks a batch's size and keys.
    pub(super) fn check_batch<'k>(
        &self,
        keys: impl ExactSizeIterator<Item = &'k String>,
    ) -> KvResult<()> {
        let granted = self;
        let page = granted.limits().page;
        if keys.len() > page {
            return Err(KvError::Limit(format!(
                "a batch of {} keys, more than --kv-page {page} allows",
                keys.len()
            )));
        }
        keys.into_iter().try_for_each(|key| granted.check_key(key))
    }

    pub(super) async fn get_many(
        &self,
        store: &Store,
        trace: &Context,
        keys: &[String],
    ) -> KvResult<Vec<Option<Vec<u8>>>> {
        let granted = self;
        granted
            .call(store, trace, Op::GetMany, async {
                granted.check_batch(keys.iter())?;
                store.backend().get_many(keys).await
            })
            .await
    }

    pub(super) async fn set_many(
        &self,
        store: &Store,
        trace: &Context,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> KvResult<()> {
        let granted = self;
        granted
            .call(store, trace, Op::SetMany, async {
                granted.check_batch(pairs.iter().map(|(key, _)| key))?;
                pairs
                    .iter()
                    .try_for_each(|(_, value)| granted.check_value(value))?;
                store.backend().set_many(&pairs).await
            })
            .await
    }

    pub(super) async fn delete_many(
        &self,
        store: &Store,
        trace: &Context,
        keys: Vec<String>,
    ) -> KvResult<()> {
        let granted = self;
        granted
            .call(store, trace, Op::DeleteMany, async {
                granted.check_batch(keys.iter())?;
                store.backend().delete_many(&keys).await
            })
            .await
    }
}

/// Adds both versions of `wasi:keyvalue` to `linker`, each instance's
/// calls going to the view `view` gives of its state.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    v1::store::add_to_linker::<_, HasKv>(linker, view)?;
    v1::atomics::add_to_linker::<_, HasKv>(linker, view)?;
    v1::batch::add_to_linker::<_, HasKv>(linker, view)?;
    v2::store::add_to_linker::<_, HasKv>(linker, view)?;
    v2::atomics::add_to_linker::<_, HasKv>(linker, view)?;
    v2::batch::add_to_linker::<_, HasKv>(linker, view)?;
    Ok(())
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// `From<KvError>` for a version's error, and its `store::Host`: alike in
/// both versions but for the types, which `$kv` (the version's bindings)
/// names.
macro_rules! store_host {
    ($kv:ident) => {
        impl From<KvError> for $kv::store::Error {
            fn from(err: KvError) -> Self {
                $kv::store::Error::Other(err.to_string())
            }
        }

        impl $kv::store::Host for KvView<'_> {
            async fn open(
                &mut self,
                identifier: String,
            ) -> wasmtime::Result<Result<Resource<Bucket>, $kv::store::Error>> {
                Ok(self
                    .open_bucket(&identifier)
                    .map_err(|refusal| match refusal {
                        Some(Refusal::AccessDenied) => $kv::store::Error::AccessDenied,
                        Some(Refusal::NoSuchStore) => $kv::store::Error::NoSuchStore,
                        None => $kv::store::Error::Other("too many open buckets".to_owned()),
                    }))
            }
        }
    };
}

/// The `bucket` methods both versions have alike: single keys, and the
/// bucket's drop.
macro_rules! bucket_methods {
    ($kv:ident) => {
        async fn get(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, $kv::store::Error>> {
            let store = self.bucket_store(&bucket)?;
            Ok(self
                .ctx
                .granted
                .get(&store, &self.ctx.trace, key)
                .await
                .map_err(Into::into))
        }

        async fn set(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), $kv::store::Error>> {
            let store = self.bucket_store(&bucket)?;
            Ok(self
                .ctx
                .granted
                .set(&store, &self.ctx.trace, key, value)
                .await
                .map_err(Into::into))
        }

        async fn delete(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<(), $kv::store::Error>> {
            let store = self.bucket_store(&bucket)?;
            Ok(self
                .ctx
                .granted
                .delete(&store, &self.ctx.trace, key)
                .await
                .map_err(Into::into))
        }

        async fn exists(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<bool, $kv::store::Error>> {
            let store = self.bucket_store(&bucket)?;
            Ok(self
                .ctx
                .granted
                .exists(&store, &self.ctx.trace, key)
                .await
                .map_err(Into::into))
        }

        async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
            self.table.delete(bucket)?;
            Ok(())
        }
    };
}

/// The `batch` writes both versions have alike.
macro_rules! batch_writes {
    ($kv:ident) => {
        async fn set_many(
            &mut self,
            bucket: Resource<Bucket>,
            pairs: Vec<(String, Vec<u8>)>,
        ) -> wasmtime::Result<Result<(), $kv::store::Error>> {
            let store = self.bucket_store(&bucket)?;
            Ok(self
                .ctx
                .granted
                .set_many(&store, &self.ctx.trace, pairs)
                .await
                .map_err(Into::into))
        }

        async fn delete_many(
            &mut self,
            bucket: Resource<Bucket>,
            keys: Vec<String>,
        ) -> wasmtime::Result<Result<(), $kv::store::Error>> {
            let store = self.bucket_store(&bucket)?;
            Ok(self
                .ctx
                .granted
                .delete_many(&store, &self.ctx.trace, keys)
                .await
                .map_err(Into::into))
        }
    };
}

store_host!(v1);
store_host!(v2);

impl v1::store::HostBucket for KvView<'_> {
    bucket_methods!(v1);

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<v1::store::KeyResponse, v1::store::Error>> {
        let store = self.bucket_store(&bucket)?;
        Ok(self
            .ctx
            .granted
            .list(&store, &self.ctx.trace, cursor.unwrap_or(0))
            .await
            .map(|page| v1::store::KeyResponse {
                keys: page.keys,
                cursor: page.next,
            })
            .map_err(Into::into))
    }
}

impl v1::atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, v1::store::Error>> {
        let store = self.bucket_store(&bucket)?;
        let done = match i64::try_from(delta) {
            Ok(delta) => {
                self.ctx
                    .granted
                    .increment(&store, &self.ctx.trace, key, delta, true)
                    .await
            }
            Err(_) => Err(KvError::Invalid(format!(
                "an increment of {delta} is past a 64-bit signed counter"
            ))),
        };
        // A counter below 0 was refused, so the value fits.
        Ok(done.map(|value| value as u64).map_err(Into::into))
    }
}

impl v1::batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, v1::store::Error>> {
        let store = self.bucket_store(&bucket)?;
        Ok(self
            .ctx
            .granted
            .get_many(&store, &self.ctx.trace, &keys)
            .await
            .map(|values| {
                keys.into_iter()
                    .zip(values)
                    .map(|(key, value)| value.map(|value| (key, value)))
                    .collect()
            })
            .map_err(Into::into))
    }

    batch_writes!(v1);
}

impl v2::store::HostBucket for KvView<'_> {
    bucket_methods!(v2);

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<v2::store::KeyResponse, v2::store::Error>> {
        let store = self.bucket_store(&bucket)?;
        let cursor = match cursor.map(|text| (text.parse::<u64>(), text)) {
            None => 0,
            Some((Ok(cursor), _)) => cursor,
            Some((Err(_), text)) => {
                return Ok(Err(KvError::Invalid(format!(
                    "{text:?} is not a cursor this store gave"
                ))
                .into()));
            }
        };
        Ok(self
            .ctx
            .granted
            .list(&store, &self.ctx.trace, cursor)
            .await
            .map(|page| v2::store::KeyResponse {
                keys: page.keys,
                cursor: page.next.map(|next| next.to_string()),
            })
            .map_err(Into::into))
    }
}

impl v2::atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, v2::store::Error>> {
        let store = self.bucket_store(&bucket)?;
        Ok(self
            .ctx
            .granted
            .increment(&store, &self.ctx.trace, key, delta, false)
            .await
            .map_err(Into::into))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        let swapped = self
            .ctx
            .granted
            .swap(
                &cas.store,
                &self.ctx.trace,
                &cas.key,
                cas.current.as_deref(),
                value,
            )
            .await;
        match swapped {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Another write came first: a new cas with the value now.
                let current = match self
                    .ctx
                    .granted
                    .get(&cas.store, &self.ctx.trace, cas.key.clone())
                    .await
                {
                    Ok(current) => current,
                    Err(err) => return Ok(Err(v2::atomics::CasError::StoreError(err.into()))),
                };
                let again = self.table.push(Cas {
                    store: cas.store,
                    key: cas.key,
                    current,
                })?;
                Ok(Err(v2::atomics::CasError::CasFailed(again)))
            }
            Err(err) => Ok(Err(v2::atomics::CasError::StoreError(err.into()))),
        }
    }
}

impl v2::atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, v2::store::Error>> {
        let store = self.bucket_store(&bucket)?;
        let current = match self
            .ctx
            .granted
            .get(&store, &self.ctx.trace, key.clone())
            .await
        {
            Ok(current) => current,
            Err(err) => return Ok(Err(err.into())),
        };
        Ok(Ok(self.table.push(Cas {
            store,
            key,
            current,
        })?))
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v2::store::Error>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl v2::batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, v2::store::Error>> {
        let store = self.bucket_store(&bucket)?;
        Ok(self
            .ctx
            .granted
            .get_many(&store, &self.ctx.trace, &keys)
            .await
            .map(|values| keys.into_iter().zip(values).collect())
            .map_err(Into::into))
    }

    batch_writes!(v2);
}
