//! Request heads in, response heads out.
//!
//! httparse does the tokenising. It is permissive by design (bare LF line
//! endings, any `Transfer-Encoding`, repeated `Content-Length`), so the
//! strictness of the front end lives here: line endings, framing headers,
//! `Host`, `Expect`, and the size of the head.

use std::str::FromStr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, StatusCode, Version};

use crate::error::Error;

/// Most header fields in one request; httparse parses into a fixed array of
/// this size. Real browsers send fewer than 30.
pub const MAX_HEADERS: usize = 100;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, validated request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Request method.
    pub method: Method,
    /// Absolute URI: the target with its authority (from the target, from
    /// `Host`, or the fallback for HTTP/1.0 requests without `Host`).
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Header fields as sent.
    pub headers: HeaderMap,
    /// Body framing.
    pub body: BodyKind,
    /// Whether the client allows the connection to stay open afterwards.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
}

/// Parses one request head from the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet: read more and call again.
/// On success returns the head and the number of bytes it took.
/// `fallback_authority` names the server for HTTP/1.0 requests without `Host`.
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    fallback_authority: &str,
) -> Result<Option<(RequestHead, usize)>, Error> {
    // Only the first `max_head` bytes are looked at, so the answer does not
    // depend on how much of what follows has arrived.
    let buf = &buf[..buf.len().min(max_head)];
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(too_large(buf));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => match refused_version(buf) {
            Some(err) => return Err(err),
            None if buf.len() >= max_head => return Err(too_large(buf)),
            None => return Ok(None),
        },
        Err(err) => return Err(err.into()),
    };
    check_line_endings(&buf[..len])?;

    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Error::BadRequest("invalid method"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(Error::Version),
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::BadRequest("invalid header name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| Error::BadRequest("invalid header value"))?;
        headers.append(name, value);
    }

    let uri = request_uri(
        req.path.unwrap_or_default(),
        &headers,
        version,
        fallback_authority,
    )?;
    let body = body_kind(&headers, version)?;
    let keep_alive = match version {
        Version::HTTP_11 => !has_token(&headers, header::CONNECTION, "close"),
        _ => has_token(&headers, header::CONNECTION, "keep-alive"),
    };
    let expect_continue = match headers.get(header::EXPECT) {
        None => false,
        Some(value) if value.as_bytes().eq_ignore_ascii_case(b"100-continue") => {
            // RFC 9110 §10.1.1: an HTTP/1.0 client cannot mean it; ignore it.
            version == Version::HTTP_11
        }
        Some(_) => return Err(Error::ExpectationFailed),
    };
    Ok(Some((
        RequestHead {
            method,
            uri,
            version,
            headers,
            body,
            keep_alive,
            expect_continue,
        },
        len,
    )))
}

/// Past the head limit: 414 if even the request line did not fit, else 431.
fn too_large(head: &[u8]) -> Error {
    if head.contains(&b'\n') {
        Error::HeadersTooLarge
    } else {
        Error::UriTooLong
    }
}

/// What a version httparse refused is: one shaped `HTTP/d.d` is a version
/// this server does not speak (505), anything else garbage (400). `None`
/// while the bytes so far could still become `HTTP/d.d` and its CR: the
/// answer waits for them rather than depend on where a read ended.
fn refused_version(buf: &[u8]) -> Option<Error> {
    const SHAPE: &[u8; 9] = b"HTTP/d.d\r";
    // httparse refuses the version only after one space ends the method
    // and another the target.
    let mut spaces = buf.iter().enumerate().filter(|&(_, &b)| b == b' ');
    let Some((at, _)) = spaces.nth(1) else {
        return Some(Error::BadRequest("malformed request line"));
    };
    let version = &buf[at + 1..];
    let fits = version
        .iter()
        .zip(SHAPE)
        .all(|(&byte, &shape)| match shape {
            b'd' => byte.is_ascii_digit(),
            _ => byte == shape,
        });
    match (fits, version.len() >= SHAPE.len()) {
        (false, _) => Some(Error::BadRequest("malformed request line")),
        (true, true) => Some(Error::Version),
        (true, false) => None,
    }
}

/// Every line must end in CRLF: a bare LF or CR is how requests are
/// smuggled past proxies that split lines differently (RFC 9112 §2.2).
fn check_line_endings(head: &[u8]) -> Result<(), Error> {
    for (i, &byte) in head.iter().enumerate() {
        let ok = match byte {
            b'\n' => i > 0 && head[i - 1] == b'\r',
            b'\r' => head.get(i + 1) == Some(&b'\n'),
            _ => true,
        };
        if !ok {
            return Err(Error::BadRequest("bare CR or LF in request head"));
        }
    }
    Ok(())
}

/// Builds the absolute URI from the request target and `Host`.
fn request_uri(
    target: &str,
    headers: &HeaderMap,
    version: Version,
    fallback_authority: &str,
) -> Result<Uri, Error> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Error::BadRequest("more than one Host header"));
    }
    let host = match host {
        Some(value) => Some(parse_authority(value.as_bytes())?),
        None if version == Version::HTTP_11 => {
            return Err(Error::BadRequest("HTTP/1.1 request without Host"));
        }
        None => None,
    };
    if target.starts_with('/') {
        let path = PathAndQuery::from_str(target)
            .map_err(|_| Error::BadRequest("invalid request target"))?;
        let authority = match host {
            Some(authority) => authority,
            None => Authority::from_str(fallback_authority)
                .map_err(|_| Error::BadRequest("invalid server authority"))?,
        };
        return Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| Error::BadRequest("invalid request target"));
    }
    // Absolute form (RFC 9112 §3.2.2): the target's authority wins over Host.
    let uri = Uri::from_str(target).map_err(|_| Error::BadRequest("invalid request target"))?;
    let absolute = matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'));
    if !absolute {
        return Err(Error::BadRequest("unsupported request target form"));
    }
    Ok(uri)
}

fn parse_authority(value: &[u8]) -> Result<Authority, Error> {
    if value.is_empty() || value.contains(&b'@') {
        return Err(Error::BadRequest("invalid Host"));
    }
    Authority::try_from(value).map_err(|_| Error::BadRequest("invalid Host"))
}

/// Body framing per RFC 9112 §6, refusing every ambiguous shape.
fn body_kind(headers: &HeaderMap, version: Version) -> Result<BodyKind, Error> {
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let has_cl = headers.contains_key(header::CONTENT_LENGTH);
    if has_te {
        if has_cl {
            return Err(Error::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if version == Version::HTTP_10 {
            return Err(Error::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let mut chunked = 0;
        for coding in list_items(headers, header::TRANSFER_ENCODING)? {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                return Err(Error::UnsupportedTransferCoding);
            }
        }
        return match chunked {
            1 => Ok(BodyKind::Chunked),
            _ => Err(Error::BadRequest("chunked applied more than once")),
        };
    }
    if has_cl {
        let mut length = None;
        for item in list_items(headers, header::CONTENT_LENGTH)? {
            if !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::BadRequest("invalid Content-Length"));
            }
            let value: u64 = item
                .parse()
                .map_err(|_| Error::BadRequest("Content-Length out of range"))?;
            if length.is_some_and(|seen| seen != value) {
                return Err(Error::BadRequest("conflicting Content-Length values"));
            }
            length = Some(value);
        }
        return Ok(match length {
            Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
            None => return Err(Error::BadRequest("empty Content-Length")),
        });
    }
    Ok(BodyKind::Empty)
}

/// The comma-separated items of every field named `name`; an empty item is
/// an error (`chunked,,` or `Content-Length: ,5`).
fn list_items(headers: &HeaderMap, name: HeaderName) -> Result<Vec<&str>, Error> {
    let mut items = Vec::new();
    for value in headers.get_all(name).iter() {
        let value = value
            .to_str()
            .map_err(|_| Error::BadRequest("non-ASCII framing header"))?;
        for item in value.split(',') {
            let item = item.trim_matches([' ', '\t']);
            if item.is_empty() {
                return Err(Error::BadRequest("empty list item in framing header"));
            }
            items.push(item);
        }
    }
    Ok(items)
}

/// Whether a comma-separated field named `name` lists `token` (any case).
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body may follow (HEAD, 1xx, 204, 304); headers as the guest gave them.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Delimited by closing the connection (HTTP/1.0, unknown length).
    Close,
}

/// Header fields a guest may not set: they describe this connection, which
/// the host owns, not the resource (RFC 9110 §7.6.1). `content-length` and
/// `date` are written by the host itself.
fn host_owned(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

/// Writes a response head into `out`.
///
/// `date` is the current IMF-fixdate; `keep_alive` says whether this
/// connection stays open after the response, and `version` is the
/// request's (an HTTP/1.0 client that asked for keep-alive is told yes).
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    keep_alive: bool,
    version: Version,
    date: &str,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if host_owned(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::SERVER) {
        out.extend_from_slice(b"server: wasmhttpd\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;

    fn parse(raw: &str) -> Result<Option<(RequestHead, usize)>, Error> {
        parse_request(raw.as_bytes(), MAX, "127.0.0.1:8080")
    }

    fn head(raw: &str) -> RequestHead {
        parse(raw).expect("valid").expect("complete").0
    }

    fn status(raw: &str) -> u16 {
        parse(raw)
            .expect_err("should be refused")
            .status()
            .expect("answered")
            .as_u16()
    }

    #[test]
    fn partial_heads_ask_for_more() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n\r").unwrap().is_none());
    }

    #[test]
    fn complete_head_reports_its_length() {
        let raw = "GET /x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\nGET /next";
        let (head, len) = parse(raw).unwrap().unwrap();
        assert_eq!(len, raw.find("GET /next").unwrap());
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.to_string(), "http://example.com/x?y=1");
        assert_eq!(head.body, BodyKind::Empty);
        assert!(head.keep_alive);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn http10_without_host_gets_the_fallback_authority() {
        let h = head("GET /a HTTP/1.0\r\n\r\n");
        assert_eq!(h.uri.to_string(), "http://127.0.0.1:8080/a");
        assert_eq!(h.version, Version::HTTP_10);
    }

    #[test]
    fn absolute_form_target() {
        let h = head("GET http://other.example/p HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.uri.authority().unwrap().as_str(), "other.example");
    }

    #[test]
    fn framing() {
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(chunked).body, BodyKind::Chunked);
        let cl = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(head(cl).body, BodyKind::Length(12));
        let same = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(head(same).body, BodyKind::Length(5));
    }

    #[test]
    fn expect_continue() {
        let raw = "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-Continue\r\n\r\n";
        assert!(head(raw).expect_continue);
        let old = "PUT / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n";
        assert!(!head(old).expect_continue);
    }

    #[test]
    fn response_head_encoding() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("connection", HeaderValue::from_static("upgrade"));
        headers.insert("transfer-encoding", HeaderValue::from_static("gzip"));
        let mut out = Vec::new();
        let date = "Sat, 21 Nov 2026 00:00:00 GMT";
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &headers,
            Framing::Length(5),
            true,
            Version::HTTP_11,
            date,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: Sat, 21 Nov 2026 00:00:00 GMT\r\n\
             server: wasmhttpd\r\ncontent-length: 5\r\n\r\n"
        );
    }

    macro_rules! refused {
        ($($name:ident: $raw:expr => $status:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(status($raw), $status, "request {:?}", $raw);
            }
        )*};
    }

    refused! {
        garbage: "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n" => 400;
        missing_version: "GET /\r\n\r\n" => 400;
        http2_version: "GET / HTTP/2.0\r\nHost: a\r\n\r\n" => 505;
        http12_version: "GET / HTTP/1.2\r\nHost: a\r\n\r\n" => 505;
        http09_style: "GET / FOO/1.1\r\nHost: a\r\n\r\n" => 400;
        bare_lf: "GET / HTTP/1.1\nHost: a\n\n" => 400;
        bare_lf_in_headers: "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n" => 400;
        bare_cr: "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n" => 400;
        obs_fold: "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n" => 400;
        space_before_colon: "GET / HTTP/1.1\r\nHost : a\r\n\r\n" => 400;
        no_host: "GET / HTTP/1.1\r\n\r\n" => 400;
        two_hosts: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" => 400;
        bad_host: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n" => 400;
        userinfo_host: "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n" => 400;
        cl_and_te: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
        conflicting_cl: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n" => 400;
        conflicting_cl_list: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n" => 400;
        signed_cl: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n" => 400;
        huge_cl: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n" => 400;
        te_gzip: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => 501;
        te_identity: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n" => 501;
        te_chunked_twice: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" => 400;
        te_in_http10: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
        expect_other: "GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n" => 417;
        asterisk_target: "GET * HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        authority_target: "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        ftp_target: "GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
    }

    #[test]
    fn oversized_request_line_is_414_and_headers_431() {
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX));
        assert_eq!(status(&long_line), 414);
        let long_header = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(MAX)
        );
        assert_eq!(status(&long_header), 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            431
        );
    }

    /// The answer for `raw` at every length it may have arrived with so
    /// far: "more" until some prefix gets an answer, then that answer for
    /// every longer prefix. Returns the answer for all of `raw`.
    fn same_answer_for_every_prefix(raw: &[u8], max: usize) -> Result<usize, String> {
        let answer = |bytes: &[u8]| match parse_request(bytes, max, "h:1") {
            Ok(None) => None,
            Ok(Some((_, len))) => Some(Ok(len)),
            Err(err) => Some(Err(format!("{err:?}"))),
        };
        let whole = answer(raw).expect("an answer for the whole request");
        let first = (1..=raw.len())
            .find(|&n| answer(&raw[..n]).is_some())
            .unwrap();
        for n in first..=raw.len() {
            assert_eq!(
                answer(&raw[..n]),
                Some(whole.clone()),
                "after {n} bytes of {raw:?}"
            );
        }
        whole
    }

    #[test]
    fn a_refused_version_gets_one_answer_however_the_line_arrives() {
        // Found by the fuzz target: "HTTP/2" was garbage (400) until its
        // ".0" arrived, then a version (505).
        for (raw, expected) in [
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", "Version"),
            ("GET / HTTP/0.1\r\n\r\n", "Version"),
            (
                "GET / HTTP/2.0x\r\n\r\n",
                "BadRequest(\"malformed request line\")",
            ),
            (
                "GET / HTTX/1.1\r\n\r\n",
                "BadRequest(\"malformed request line\")",
            ),
            // A later line shaped like a request line does not make the
            // first one's version look valid.
            (
                "POST /echo HTTP/\x03 OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
                "BadRequest(\"malformed request line\")",
            ),
        ] {
            let answer = same_answer_for_every_prefix(raw.as_bytes(), MAX);
            assert_eq!(answer, Err(expected.to_owned()), "{raw:?}");
        }
    }

    #[test]
    fn an_oversized_line_with_a_bad_version_is_414_however_it_arrives() {
        // Found by the fuzz target: with the whole line in the buffer the
        // version was refused (505), read in pieces the length was (414).
        let raw = format!("GET /{} HTTP/0.1\r\nHost: t\r\n\r\n", "a".repeat(5000));
        let answer = same_answer_for_every_prefix(raw.as_bytes(), 4096);
        assert_eq!(answer, Err("UriTooLong".to_owned()));
    }
}
