//! A guest that exports only `wasi:http/incoming-handler`: every request,
//! WebSocket upgrades included, is answered `200` with a line naming the
//! method, the target and the `Sec-WebSocket-Version` header it saw
//! (`Upgrade` and `Connection` describe the connection, and wasi:http
//! does not pass them to guests).

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "wasi:http/proxy@0.2.12",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::{Component, bindings};
    bindings::export!(Component with_types_in bindings);
}

impl Guest for Component {
    fn handle(request: IncomingRequest, outparam: ResponseOutparam) {
        let method = match request.method() {
            Method::Get => "GET".to_owned(),
            other => format!("{other:?}"),
        };
        let target = request.path_with_query().unwrap_or_default();
        let version = request
            .headers()
            .get("sec-websocket-version")
            .first()
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        let body = format!("plain {method} {target} version={version}\n");
        let length = body.len().to_string();
        let fields = Fields::from_list(&[("content-length".to_owned(), length.into_bytes())])
            .expect("valid header");
        let response = OutgoingResponse::new(fields);
        let outgoing = response.body().expect("body");
        ResponseOutparam::set(outparam, Ok(response));
        let stream = outgoing.write().expect("stream");
        stream
            .blocking_write_and_flush(body.as_bytes())
            .expect("write");
        drop(stream);
        OutgoingBody::finish(outgoing, None).expect("finish");
    }
}
