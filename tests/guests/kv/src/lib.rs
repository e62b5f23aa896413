//! A guest that keeps state through `wasi:keyvalue`, in both versions in
//! use, and reads `wasi:config`: one request, one operation, answered
//! `200` with a line saying how it went. Paths are
//! `/{draft|draft2}/{op}`; the query names the bucket (`store=NAME`,
//! empty for `""`) and the operation's arguments, undecoded:
//!
//! | op | query | answer |
//! |---|---|---|
//! | `get` | `key` | `value V` or `none` |
//! | `set` | `key`, `value` | `ok` |
//! | `delete`, `exists` | `key` | `ok`, `true` / `false` |
//! | `incr` | `key`, `by` | `value N` |
//! | `list` | `cursor` (optional) | `keys K,K… cursor C` (`-` without) |
//! | `get-many` | `keys=a,b` | `a=V b=- …` |
//! | `set-many` | `pairs=a:1,b:2` | `ok` |
//! | `delete-many` | `keys=a,b` | `ok` |
//! | `cas-incr` (draft2) | `key` | adds 1 by compare-and-swap, retrying; `value N tries T` |
//! | `cas` (draft2) | `key`, `expect`, `value` | `swapped`, or `cas-failed CURRENT` |
//!
//! `/config?key=K` answers `config V` or `config none`. Any error is
//! `error E` with the interface's error value.

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "wasmhttpd:guest/kv-test",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::wasi::config::store as config;
use bindings::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use bindings::wasi::keyvalue0_2_0_draft as draft;
use bindings::wasi::keyvalue0_2_0_draft2 as draft2;

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::{Component, bindings};
    bindings::export!(Component with_types_in bindings);
}

impl Guest for Component {
    fn handle(request: IncomingRequest, outparam: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = Query(query);
        let answer = match path.trim_start_matches('/').split_once('/') {
            Some(("draft", op)) => on_draft(op, &query),
            Some(("draft2", op)) => on_draft2(op, &query),
            _ if path == "/config" => match config::get(query.get("key")) {
                Ok(Some(value)) => format!("config {value}"),
                Ok(None) => "config none".to_owned(),
                Err(err) => format!("error {err:?}"),
            },
            _ => format!("no such path {path}"),
        };
        respond(outparam, answer.as_bytes());
    }
}

/// The query's parameters, undecoded.
struct Query<'a>(&'a str);

impl<'a> Query<'a> {
    fn get(&self, name: &str) -> &'a str {
        self.0
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map_or("", |(_, value)| value)
    }

    fn list(&self, name: &str) -> Vec<String> {
        let value = self.get(name);
        if value.is_empty() {
            return Vec::new();
        }
        value.split(',').map(str::to_owned).collect()
    }

    fn pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.list("pairs")
            .iter()
            .filter_map(|pair| pair.split_once(':'))
            .map(|(key, value)| (key.to_owned(), value.as_bytes().to_vec()))
            .collect()
    }
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

fn on_draft(op: &str, query: &Query) -> String {
    use draft::{atomics, batch, store};
    let bucket = match store::open(query.get("store")) {
        Ok(bucket) => bucket,
        Err(err) => return format!("error {err:?}"),
    };
    let key = query.get("key");
    let done: Result<String, store::Error> = match op {
        "get" => bucket.get(key).map(|value| match value {
            Some(value) => format!("value {}", text(&value)),
            None => "none".to_owned(),
        }),
        "set" => bucket
            .set(key, query.get("value").as_bytes())
            .map(|()| "ok".to_owned()),
        "delete" => bucket.delete(key).map(|()| "ok".to_owned()),
        "exists" => bucket.exists(key).map(|found| found.to_string()),
        "incr" => atomics::increment(&bucket, key, query.get("by").parse().unwrap_or(1))
            .map(|value| format!("value {value}")),
        "list" => bucket
            .list_keys(query.get("cursor").parse().ok())
            .map(|page| {
                let cursor = page.cursor.map_or("-".to_owned(), |c| c.to_string());
                format!("keys {} cursor {cursor}", page.keys.join(","))
            }),
        "get-many" => batch::get_many(&bucket, &query.list("keys")).map(|found| {
            let keys = query.list("keys");
            keys.iter()
                .zip(found)
                .map(|(key, pair)| match pair {
                    Some((_, value)) => format!("{key}={}", text(&value)),
                    None => format!("{key}=-"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        }),
        "set-many" => batch::set_many(&bucket, &query.pairs()).map(|()| "ok".to_owned()),
        "delete-many" => batch::delete_many(&bucket, &query.list("keys")).map(|()| "ok".to_owned()),
        other => Ok(format!("no such op {other}")),
    };
    done.unwrap_or_else(|err| format!("error {err:?}"))
}

fn on_draft2(op: &str, query: &Query) -> String {
    use draft2::{atomics, batch, store};
    let bucket = match store::open(query.get("store")) {
        Ok(bucket) => bucket,
        Err(err) => return format!("error {err:?}"),
    };
    let key = query.get("key");
    let done: Result<String, store::Error> = match op {
        "get" => bucket.get(key).map(|value| match value {
            Some(value) => format!("value {}", text(&value)),
            None => "none".to_owned(),
        }),
        "set" => bucket
            .set(key, query.get("value").as_bytes())
            .map(|()| "ok".to_owned()),
        "delete" => bucket.delete(key).map(|()| "ok".to_owned()),
        "exists" => bucket.exists(key).map(|found| found.to_string()),
        "incr" => atomics::increment(&bucket, key, query.get("by").parse().unwrap_or(1))
            .map(|value| format!("value {value}")),
        "list" => {
            let cursor = query.get("cursor");
            let cursor = (!cursor.is_empty()).then(|| cursor.to_owned());
            bucket.list_keys(cursor.as_deref()).map(|page| {
                let cursor = page.cursor.unwrap_or_else(|| "-".to_owned());
                format!("keys {} cursor {cursor}", page.keys.join(","))
            })
        }
        "get-many" => batch::get_many(&bucket, &query.list("keys")).map(|found| {
            found
                .into_iter()
                .map(|(key, value)| match value {
                    Some(value) => format!("{key}={}", text(&value)),
                    None => format!("{key}=-"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        }),
        "set-many" => batch::set_many(&bucket, &query.pairs()).map(|()| "ok".to_owned()),
        "delete-many" => batch::delete_many(&bucket, &query.list("keys")).map(|()| "ok".to_owned()),
        "cas" => cas(&bucket, key, query.get("expect"), query.get("value")),
        "cas-incr" => cas_increment(&bucket, key),
        other => Ok(format!("no such op {other}")),
    };
    done.unwrap_or_else(|err| format!("error {err:?}"))
}

/// One compare-and-swap that expects `expect` (`-`: no value).
fn cas(
    bucket: &draft2::store::Bucket,
    key: &str,
    expect: &str,
    value: &str,
) -> Result<String, draft2::store::Error> {
    use draft2::atomics::{Cas, CasError, swap};
    let cas = Cas::new(bucket, key)?;
    let current = cas.current()?;
    let expected = (expect != "-").then(|| expect.as_bytes().to_vec());
    if current != expected {
        return Ok(format!(
            "cas-failed {}",
            current.map_or("-".to_owned(), |value| text(&value))
        ));
    }
    match swap(cas, value.as_bytes()) {
        Ok(()) => Ok("swapped".to_owned()),
        Err(CasError::CasFailed(again)) => Ok(format!(
            "cas-failed {}",
            again
                .current()?
                .map_or("-".to_owned(), |value| text(&value))
        )),
        Err(CasError::StoreError(err)) => Err(err),
    }
}

/// Adds 1 to the counter at `key` by compare-and-swap, until a swap holds.
fn cas_increment(
    bucket: &draft2::store::Bucket,
    key: &str,
) -> Result<String, draft2::store::Error> {
    use draft2::atomics::{Cas, CasError, swap};
    let mut cas = Cas::new(bucket, key)?;
    let mut tries = 1;
    loop {
        let current: i64 = cas
            .current()?
            .map_or(0, |value| text(&value).parse().unwrap_or(0));
        let next = current + 1;
        match swap(cas, next.to_string().as_bytes()) {
            Ok(()) => return Ok(format!("value {next} tries {tries}")),
            Err(CasError::CasFailed(again)) => {
                cas = again;
                tries += 1;
            }
            Err(CasError::StoreError(err)) => return Err(err),
        }
    }
}

fn respond(outparam: ResponseOutparam, body: &[u8]) {
    let length = body.len().to_string();
    let fields = Fields::from_list(&[("content-length".to_owned(), length.into_bytes())])
        .expect("valid header");
    let response = OutgoingResponse::new(fields);
    let outgoing = response.body().expect("body");
    ResponseOutparam::set(outparam, Ok(response));
    let stream = outgoing.write().expect("stream");
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("write");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish");
}
