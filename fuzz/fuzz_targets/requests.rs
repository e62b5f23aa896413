//! The read side of a connection over arbitrary bytes, delivered whole and
//! in arbitrary pieces.
//!
//! Input: one byte `n` (taken modulo 8), then `n` piece sizes (one byte
//! each, 0 meaning 256), then the bytes a client sends. Checks:
//!
//! - nothing panics;
//! - what the reader makes of the bytes (heads, bodies, the first error)
//!   does not depend on how they were split across reads, nor on whether
//!   each body is taken whole or in parts as it arrives;
//! - a body is never over the limit;
//! - every head's fields, echoed into a response head, give exactly one
//!   well-formed response head (no field can split or frame a response);
//! - every body survives chunked encoding and decoding unchanged.

#![no_main]

use bytes::BytesMut;
use http::{StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use wasmhttpd_h1::decode::ChunkedDecoder;
use wasmhttpd_h1::encode::Encoder;
use wasmhttpd_h1::reader::{ReadLimits, RequestReader};
use wasmhttpd_h1::role::{Framing, RequestHead, encode_response_head};

const LIMITS: ReadLimits = ReadLimits {
    max_head: 4096,
    max_body: 64 * 1024,
};

#[derive(Debug, PartialEq)]
enum Step {
    Head(String),
    Body(Vec<u8>),
    Error(String),
}

/// What the reader makes of `input` fed in pieces of `sizes` (cycled):
/// heads and bodies in order, up to the first error or to where it needs
/// more than there is. With `parts`, each body is taken as it arrives
/// (`body_part`, as a body that streams to the guest) and put together.
fn read_all(input: &[u8], sizes: &[usize], parts: bool) -> Vec<Step> {
    let mut reader = RequestReader::new(LIMITS, "127.0.0.1:8080");
    let mut buf = BytesMut::new();
    let mut sizes = sizes.iter().cycle();
    let (mut fed, mut steps, mut in_body) = (0, Vec::new(), false);
    let mut body_so_far = Vec::new();
    loop {
        let step = if in_body && parts {
            reader.body_part(&mut buf).map(|(part, done)| {
                body_so_far.extend_from_slice(&part);
                done.then(|| Step::Body(std::mem::take(&mut body_so_far)))
            })
        } else if in_body {
            reader.body(&mut buf).map(|body| body.map(|body| Step::Body(body.to_vec())))
        } else {
            reader.head(&mut buf).map(|head| head.map(|head| Step::Head(echo(&head))))
        };
        match step {
            Ok(Some(step)) => {
                steps.push(step);
                in_body = !in_body;
            }
            Ok(None) if fed == input.len() => return steps,
            Ok(None) => {
                let n = sizes.next().copied().unwrap_or(usize::MAX);
                let n = n.clamp(1, input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Err(err) => {
                steps.push(Step::Error(format!("{err:?}")));
                return steps;
            }
        }
    }
}

/// Echoes the head's fields into a response head, checks that it parses
/// back as one response with the host's framing, and describes the head.
fn echo(head: &RequestHead) -> String {
    let mut out = Vec::new();
    let date = "Mon, 23 Nov 2026 00:00:00 GMT";
    for (framing, keep_alive) in [(Framing::Length(5), true), (Framing::Chunked, false)] {
        out.clear();
        let version = head.version;
        encode_response_head(&mut out, StatusCode::OK, &head.headers, framing, keep_alive, version, date);
        let mut fields = [httparse::EMPTY_HEADER; 256];
        let mut response = httparse::Response::new(&mut fields);
        let parsed = response.parse(&out);
        assert_eq!(parsed, Ok(httparse::Status::Complete(out.len())), "{out:?}");
        assert_eq!(response.code, Some(200));
        let count = |name: &str| {
            response
                .headers
                .iter()
                .filter(|field| field.name.eq_ignore_ascii_case(name))
                .count()
        };
        match framing {
            Framing::Length(_) => {
                assert_eq!(count("content-length"), 1, "{out:?}");
                assert_eq!(count("transfer-encoding"), 0, "{out:?}");
            }
            _ => {
                assert_eq!(count("content-length"), 0, "{out:?}");
                assert_eq!(count("transfer-encoding"), 1, "{out:?}");
            }
        }
        let closes = if keep_alive { 0 } else { 1 };
        assert_eq!(count("connection"), closes + usize::from(keep_alive && version == Version::HTTP_10));
        assert_eq!(count("upgrade"), 0, "{out:?}");
    }
    format!("{head:?}")
}

/// A body through chunked encoding and back.
fn rechunk(body: &[u8]) {
    let mut wire = Vec::new();
    let mut encoder = Encoder::new(Framing::Chunked);
    for piece in body.chunks(7) {
        encoder.encode(piece, &mut wire).unwrap();
    }
    encoder.finish(&mut wire).unwrap();
    let mut decoder = ChunkedDecoder::new(LIMITS.max_body, LIMITS.max_head);
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(decoder.decode(&mut buf), Ok(true)));
    assert!(buf.is_empty());
    assert_eq!(&decoder.into_body()[..], body);
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8).min(rest.len());
    let (sizes, input) = rest.split_at(count);
    let sizes: Vec<usize> = sizes
        .iter()
        .map(|&size| if size == 0 { 256 } else { usize::from(size) })
        .collect();

    let whole = read_all(input, &[input.len().max(1)], false);
    let split = read_all(input, &sizes, false);
    assert_eq!(whole, split, "the same bytes split differently read differently");
    let streamed = read_all(input, &sizes, true);
    assert_eq!(whole, streamed, "a body taken in parts differs from the body taken whole");
    for step in &whole {
        if let Step::Body(body) = step {
            assert!(body.len() as u64 <= LIMITS.max_body);
            rechunk(body);
        }
    }
});
