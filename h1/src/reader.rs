//! The read side of a connection: a request head, then its body, then
//! the next head, out of the bytes the connection has read so far.
//!
//! The connection owns the buffer and the socket: it reads into the
//! buffer, asks the reader for the next head or body, and reads more when
//! the answer is "not yet". Pipelined requests need nothing special: bytes
//! of the next request stay in the buffer. The answers do not depend on
//! how the bytes were split across reads (the fuzz target checks this).

use bytes::{Buf, Bytes, BytesMut};

use crate::decode::ChunkedDecoder;
use crate::error::Error;
use crate::role::{self, BodyKind, RequestHead};

/// What the reader allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Longest request line plus header section (and chunked trailers).
    pub max_head: usize,
    /// Largest request body.
    pub max_body: u64,
}

/// Where the reader is in the request stream.
#[derive(Debug)]
enum State {
    /// Expecting a request head.
    Head,
    /// Expecting the body of the head just read.
    Body(Body),
}

/// The body of the head just read, as far as it has come.
#[derive(Debug)]
enum Body {
    Empty,
    /// Declared longer than the limit: refused before it is read.
    TooLarge,
    Length(usize),
    Chunked(ChunkedDecoder),
}

/// Reads requests out of a connection's buffer, one head and one body at
/// a time, in that order.
#[derive(Debug)]
pub struct RequestReader {
    state: State,
    limits: ReadLimits,
    /// Names the server in URIs of HTTP/1.0 requests without `Host`.
    authority: String,
}

impl RequestReader {
    /// A reader for a new connection to the server at `authority`.
    pub fn new(limits: ReadLimits, authority: impl Into<String>) -> Self {
        RequestReader {
            state: State::Head,
            limits,
            authority: authority.into(),
        }
    }

    /// The next request head, taken from the front of `buf`; `Ok(None)`
    /// until it is whole. After a head, [`body`](Self::body) must be read
    /// before the next head.
    pub fn head(&mut self, buf: &mut BytesMut) -> Result<Option<RequestHead>, Error> {
        assert!(
            matches!(self.state, State::Head),
            "the body of the previous request was not read"
        );
        if buf.is_empty() {
            return Ok(None);
        }
        let Some((head, len)) = role::parse_request(buf, self.limits.max_head, &self.authority)?
        else {
            return Ok(None);
        };
        buf.advance(len);
        self.state = State::Body(match head.body {
            BodyKind::Empty => Body::Empty,
            BodyKind::Length(n) if n > self.limits.max_body => Body::TooLarge,
            BodyKind::Length(n) => {
                Body::Length(usize::try_from(n).map_err(|_| Error::BodyTooLarge)?)
            }
            BodyKind::Chunked => Body::Chunked(ChunkedDecoder::new(
                self.limits.max_body,
                self.limits.max_head,
            )),
        });
        Ok(Some(head))
    }

    /// The whole body of the head just read, taken from the front of
    /// `buf`; `Ok(None)` until it is whole. A body declared over the limit
    /// is refused at once, before any of it is read.
    pub fn body(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        let State::Body(body) = &mut self.state else {
            panic!("no request head was read");
        };
        let whole = match body {
            Body::Empty => Bytes::new(),
            Body::TooLarge => return Err(Error::BodyTooLarge),
            Body::Length(n) if buf.len() < *n => return Ok(None),
            Body::Length(n) => buf.split_to(*n).freeze(),
            Body::Chunked(decoder) => {
                if !decoder.decode(buf)? {
                    return Ok(None);
                }
                decoder.take_body()
            }
        };
        self.state = State::Head;
        Ok(Some(whole))
    }

    /// The part of the body of the head just read that has arrived, taken
    /// from the front of `buf`, and whether that completes it: the
    /// streaming counterpart of [`body`](Self::body), under the same
    /// limits. After the part that completes it, the next head follows.
    pub fn body_part(&mut self, buf: &mut BytesMut) -> Result<(Bytes, bool), Error> {
        let State::Body(body) = &mut self.state else {
            panic!("no request head was read");
        };
        let (part, done) = match body {
            Body::Empty => (Bytes::new(), true),
            Body::TooLarge => return Err(Error::BodyTooLarge),
            Body::Length(left) => {
                let n = (*left).min(buf.len());
                *left -= n;
                (buf.split_to(n).freeze(), *left == 0)
            }
            Body::Chunked(decoder) => {
                let done = decoder.decode(buf)?;
                (decoder.take_body(), done)
            }
        };
        if done {
            self.state = State::Head;
        }
        Ok((part, done))
    }

    /// How many more bytes the body being read needs at least, so the
    /// connection can make room for them in one go.
    pub fn body_bytes_wanted(&self, buf: &BytesMut) -> usize {
        match &self.state {
            State::Body(Body::Length(n)) => n.saturating_sub(buf.len()),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReadLimits = ReadLimits {
        max_head: 1024,
        max_body: 64,
    };

    fn reader() -> RequestReader {
        RequestReader::new(LIMITS, "127.0.0.1:8080")
    }

    #[test]
    fn a_body_read_in_parts_is_the_body_read_whole_and_has_the_same_limit() {
        let head = |framing: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n");
        for (framing, body) in [
            ("Content-Length: 11", "hello world"),
            (
                "Transfer-Encoding: chunked",
                "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            ),
        ] {
            let mut reader = reader();
            let mut buf = BytesMut::from(head(framing).as_str());
            reader.head(&mut buf).unwrap().unwrap();
            // One byte at a time, then the next request's first byte.
            let mut parts = Vec::new();
            let mut done = false;
            for byte in body.bytes().chain(*b"G") {
                buf.extend_from_slice(&[byte]);
                if done {
                    break;
                }
                let (part, complete) = reader.body_part(&mut buf).unwrap();
                parts.extend_from_slice(&part);
                done = complete;
            }
            assert!(done, "{framing}");
            assert_eq!(parts, b"hello world", "{framing}");
            assert_eq!(&buf[..], b"G", "{framing}");
        }

        // 40 + 40 bytes in two chunks: over the limit of 64 however it is taken.
        let mut reader = reader();
        let chunk = format!("28\r\n{}\r\n", "x".repeat(40));
        let mut buf = BytesMut::from(head("Transfer-Encoding: chunked").as_str());
        reader.head(&mut buf).unwrap().unwrap();
        buf.extend_from_slice(chunk.as_bytes());
        let (part, done) = reader.body_part(&mut buf).unwrap();
        assert_eq!((part.len(), done), (40, false));
        buf.extend_from_slice(chunk.as_bytes());
        assert!(matches!(
            reader.body_part(&mut buf),
            Err(Error::BodyTooLarge)
        ));
    }

    #[test]
    fn heads_and_bodies_in_order_with_pipelining() {
        let mut buf = BytesMut::from(
            &b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
               POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n\
               GET /c HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        );
        let mut reader = reader();
        for (path, body) in [("/a", &b"abc"[..]), ("/b", b"de"), ("/c", b"")] {
            let head = reader.head(&mut buf).unwrap().unwrap();
            assert_eq!(head.uri.path(), path);
            assert_eq!(reader.body(&mut buf).unwrap().unwrap(), body);
        }
        assert!(buf.is_empty());
        assert!(reader.head(&mut buf).unwrap().is_none());
    }

    #[test]
    fn a_body_split_across_reads_waits_for_the_rest() {
        let mut reader = reader();
        let mut buf =
            BytesMut::from(&b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab"[..]);
        reader.head(&mut buf).unwrap().unwrap();
        assert!(reader.body(&mut buf).unwrap().is_none());
        assert_eq!(reader.body_bytes_wanted(&buf), 3);
        buf.extend_from_slice(b"cdeGET");
        assert_eq!(reader.body(&mut buf).unwrap().unwrap(), &b"abcde"[..]);
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn a_declared_body_over_the_limit_is_refused_before_it_arrives() {
        let mut reader = reader();
        let mut buf =
            BytesMut::from(&b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n"[..]);
        reader.head(&mut buf).unwrap().unwrap();
        assert!(matches!(reader.body(&mut buf), Err(Error::BodyTooLarge)));
    }

    #[test]
    fn a_chunked_body_over_the_limit_is_refused() {
        let mut reader = reader();
        let mut buf = BytesMut::from(
            &b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n"[..],
        );
        reader.head(&mut buf).unwrap().unwrap();
        assert!(matches!(reader.body(&mut buf), Err(Error::BodyTooLarge)));
    }

    #[test]
    #[should_panic(expected = "not read")]
    fn a_head_before_the_previous_body_is_a_bug() {
        let mut reader = reader();
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..]);
        reader.head(&mut buf).unwrap().unwrap();
        let _ = reader.head(&mut buf);
    }
}
