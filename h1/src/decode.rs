//! Request body decoding: a strict, incremental `chunked` decoder.
//!
//! httparse's chunk-size parser accepts empty size lines, sizes up to
//! `u64::MAX` and any byte in extensions; this one does not. It consumes
//! from the connection's buffer as bytes arrive, so a body is scanned once
//! however it is split across reads.

use bytes::{Buf, BytesMut};

use crate::error::Error;

/// Longest chunk-size line (size and extensions). Real clients send a few
/// hex digits; this bounds what a line can make the server buffer.
const MAX_CHUNK_LINE: usize = 1024;
/// Hex digits in a chunk size: 16 fit a `u64`; more is an attack.
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines after the last chunk; bytes of trailer so far.
    Trailers(usize),
    /// The body is complete.
    Done,
}

/// Decodes a `Transfer-Encoding: chunked` body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    body: BytesMut,
    /// Body bytes decoded so far, taken out or not.
    decoded: u64,
    max_body: u64,
    max_trailers: usize,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies over `max_body` bytes (413) and trailer
    /// sections over `max_trailers` bytes (431).
    pub fn new(max_body: u64, max_trailers: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            body: BytesMut::new(),
            decoded: 0,
            max_body,
            max_trailers,
        }
    }

    /// Consumes what it can from `buf`. Returns `Ok(true)` once the body is
    /// complete (bytes after it stay in `buf`), `Ok(false)` when it needs more.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<bool, Error> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(false);
                    };
                    let size = parse_chunk_size(&line)?;
                    if self.decoded + size > self.max_body {
                        return Err(Error::BodyTooLarge);
                    }
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    self.body.extend_from_slice(&buf[..n]);
                    self.decoded += n as u64;
                    buf.advance(n);
                    self.state = match left - n as u64 {
                        0 => State::DataEnd,
                        rest => State::Data(rest),
                    };
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::BadRequest("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    let room = self.max_trailers.saturating_sub(seen);
                    let Some(line) = take_line(buf, room).map_err(|err| match err {
                        Error::BadRequest("line too long") => Error::HeadersTooLarge,
                        other => other,
                    })?
                    else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else {
                        check_trailer_field(&line)?;
                        self.state = State::Trailers(seen + line.len() + 2);
                    }
                }
                State::Done => return Ok(true),
            }
        }
    }

    /// The decoded body; call after [`decode`](Self::decode) returned `true`.
    pub fn into_body(mut self) -> bytes::Bytes {
        self.take_body()
    }

    /// Takes the body decoded so far out, leaving the decoder empty; what
    /// it decodes next still counts towards the limit.
    pub fn take_body(&mut self) -> bytes::Bytes {
        std::mem::take(&mut self.body).freeze()
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
/// `Ok(None)`: not all there yet. A line over `max` bytes, a bare LF or a
/// bare CR is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Error> {
    let window = &buf[..buf.len().min(max.saturating_add(2))];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > max {
            return Err(Error::BadRequest("line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(Error::BadRequest("bare LF in chunked body"));
    }
    if lf - 1 > max {
        return Err(Error::BadRequest("line too long"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    if line.contains(&b'\r') {
        return Err(Error::BadRequest("bare CR in chunked body"));
    }
    Ok(Some(line))
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1): hex digits, then optionally
/// whitespace and `;`-led extensions of visible characters, which are ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Error::BadRequest("missing chunk size"));
    }
    if digits > MAX_SIZE_DIGITS {
        return Err(Error::BadRequest("chunk size too large"));
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !rest.is_empty() && !ext.starts_with(b";") {
        return Err(Error::BadRequest("invalid chunk size"));
    }
    if !ext
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(Error::BadRequest("invalid chunk extension"));
    }
    let hex = std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII");
    u64::from_str_radix(hex, 16).map_err(|_| Error::BadRequest("chunk size too large"))
}

/// A trailer line must at least look like a header field.
fn check_trailer_field(line: &[u8]) -> Result<(), Error> {
    let mut fields = [httparse::EMPTY_HEADER; 1];
    let mut with_end = line.to_vec();
    with_end.extend_from_slice(b"\r\n\r\n");
    match httparse::parse_headers(&with_end, &mut fields) {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        _ => Err(Error::BadRequest("invalid trailer field")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let mut dec = ChunkedDecoder::new(1 << 20, 1024);
        let mut buf = BytesMut::from(input);
        assert!(dec.decode(&mut buf)?, "body incomplete");
        Ok((dec.into_body().to_vec(), buf.to_vec()))
    }

    #[test]
    fn decodes_and_leaves_the_next_request() {
        let (body, rest) =
            decode_all(b"5\r\nhello\r\n6;name=val\r\n world\r\n0\r\n\r\nGET").unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(rest, b"GET");
    }

    #[test]
    fn byte_at_a_time_gives_the_same_body() {
        let input = b"A\r\n0123456789\r\n3 ; x\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n";
        let mut dec = ChunkedDecoder::new(1 << 20, 1024);
        let mut buf = BytesMut::new();
        let mut done = false;
        for &b in input.iter() {
            assert!(!done);
            buf.extend_from_slice(&[b]);
            done = dec.decode(&mut buf).unwrap();
        }
        assert!(done);
        assert_eq!(&dec.into_body()[..], b"0123456789abc");
    }

    #[test]
    fn incomplete_asks_for_more() {
        let mut dec = ChunkedDecoder::new(1 << 20, 1024);
        let mut buf = BytesMut::from(&b"5\r\nhel"[..]);
        assert!(!dec.decode(&mut buf).unwrap());
    }

    macro_rules! refused {
        ($($name:ident: $raw:expr => $status:expr;)*) => {$(
            #[test]
            fn $name() {
                let err = decode_all($raw).expect_err("should be refused");
                assert_eq!(err.status().unwrap().as_u16(), $status, "{err}");
            }
        )*};
    }

    refused! {
        empty_size_line: b"\r\nhello\r\n0\r\n\r\n" => 400;
        non_hex_size: b"zz\r\nhello\r\n0\r\n\r\n" => 400;
        signed_size: b"+5\r\nhello\r\n0\r\n\r\n" => 400;
        size_with_junk: b"5 x\r\nhello\r\n0\r\n\r\n" => 400;
        overflowing_size: b"fffffffffffffffff\r\nx\r\n0\r\n\r\n" => 400;
        bare_lf_size: b"5\nhello\r\n0\r\n\r\n" => 400;
        bare_cr_in_extension: b"5;a\rb\r\nhello\r\n0\r\n\r\n" => 400;
        control_in_extension: b"5;a\x01b\r\nhello\r\n0\r\n\r\n" => 400;
        data_longer_than_size: b"3\r\nhello\r\n0\r\n\r\n" => 400;
        missing_crlf_after_data: b"5\r\nhelloXX0\r\n\r\n" => 400;
        body_over_limit: b"200000\r\n" => 413;
        bad_trailer: b"0\r\nnot a header\r\n\r\n" => 400;
    }

    #[test]
    fn trailer_section_over_limit_is_431() {
        let mut input = b"0\r\n".to_vec();
        for i in 0..100 {
            input.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        let err = decode_all(&input).unwrap_err();
        assert_eq!(err.status().unwrap().as_u16(), 431);
    }
}
