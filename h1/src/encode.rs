//! Response body encoding: `Content-Length`, chunked, or close-delimited,
//! and the check that a body matches the length its head declared.

use crate::role::Framing;

/// The body did not match its declared `Content-Length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("body length {actual} differs from Content-Length {declared}")]
pub struct LengthMismatch {
    /// What the head declared.
    pub declared: u64,
    /// What was (or would have been) written.
    pub actual: u64,
}

/// Fields a trailer section must not carry: framing, routing, and what
/// the connection itself means.
const FORBIDDEN_TRAILERS: [http::HeaderName; 7] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::HOST,
    http::header::CONNECTION,
    http::header::TRAILER,
    http::header::CONTENT_TYPE,
    http::header::CONTENT_ENCODING,
];

/// Frames body bytes for the wire according to the response's [`Framing`].
#[derive(Debug)]
pub struct Encoder {
    framing: Framing,
    written: u64,
    /// The trailer section a chunked body ends with, encoded.
    trailers: Vec<u8>,
}

impl Encoder {
    /// An encoder for a body framed as `framing`.
    pub fn new(framing: Framing) -> Self {
        Encoder {
            framing,
            written: 0,
            trailers: Vec::new(),
        }
    }

    /// Sets the trailer fields a chunked body ends with (RFC 9112 §7.1.2).
    /// A body framed otherwise cannot carry them, and fields that frame or
    /// route a message are never sent as trailers (RFC 9110 §6.5.1).
    pub fn trailers(&mut self, fields: &http::HeaderMap) {
        if self.framing != Framing::Chunked {
            return;
        }
        self.trailers.clear();
        for (name, value) in fields {
            if FORBIDDEN_TRAILERS.contains(name) {
                continue;
            }
            self.trailers.extend_from_slice(name.as_str().as_bytes());
            self.trailers.extend_from_slice(b": ");
            self.trailers.extend_from_slice(value.as_bytes());
            self.trailers.extend_from_slice(b"\r\n");
        }
    }

    /// Appends `data`, framed, to `out`. Data past a declared length is
    /// refused (nothing is appended), so a guest can never write into the
    /// next response on a keep-alive connection.
    pub fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), LengthMismatch> {
        if data.is_empty() {
            return Ok(());
        }
        let total = self.written + data.len() as u64;
        match self.framing {
            Framing::Length(declared) if total > declared => {
                return Err(LengthMismatch {
                    declared,
                    actual: total,
                });
            }
            Framing::Chunked => {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            Framing::None => {}
            Framing::Length(_) | Framing::Close => out.extend_from_slice(data),
        }
        self.written = total;
        Ok(())
    }

    /// Ends the body: the last chunk for chunked bodies, and the check that a
    /// `Content-Length` body was written in full.
    pub fn finish(&self, out: &mut Vec<u8>) -> Result<(), LengthMismatch> {
        match self.framing {
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n");
                out.extend_from_slice(&self.trailers);
                out.extend_from_slice(b"\r\n");
            }
            Framing::Length(declared) if declared != self.written => {
                return Err(LengthMismatch {
                    declared,
                    actual: self.written,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Body bytes accepted so far (before framing).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether every byte of a declared `Content-Length` has been accepted:
    /// the client has the whole body once it is flushed.
    pub fn is_full(&self) -> bool {
        matches!(self.framing, Framing::Length(declared) if declared == self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_ends_with_its_trailers_and_no_framing_fields() {
        let mut fields = http::HeaderMap::new();
        fields.insert("x-checksum", "abc".parse().unwrap());
        fields.insert(http::header::CONTENT_LENGTH, "5".parse().unwrap());
        let mut enc = Encoder::new(Framing::Chunked);
        let mut out = Vec::new();
        enc.encode(b"hello", &mut out).unwrap();
        enc.trailers(&fields);
        enc.finish(&mut out).unwrap();
        assert_eq!(out, b"5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n");

        let mut enc = Encoder::new(Framing::Length(5));
        let mut out = Vec::new();
        enc.encode(b"hello", &mut out).unwrap();
        enc.trailers(&fields);
        enc.finish(&mut out).unwrap();
        assert_eq!(out, b"hello");
    }

    #[test]
    fn a_length_body_is_full_once_every_declared_byte_is_in() {
        let mut enc = Encoder::new(Framing::Length(4));
        let mut out = Vec::new();
        assert!(!enc.is_full());
        enc.encode(b"abc", &mut out).unwrap();
        assert!(!enc.is_full());
        enc.encode(b"d", &mut out).unwrap();
        assert!(enc.is_full());
        assert!(!Encoder::new(Framing::Chunked).is_full());
    }

    #[test]
    fn chunked_frames_each_piece_and_ends_with_a_zero_chunk() {
        let mut enc = Encoder::new(Framing::Chunked);
        let mut out = Vec::new();
        enc.encode(b"hello", &mut out).unwrap();
        enc.encode(b"", &mut out).unwrap();
        enc.encode(&[b'x'; 26], &mut out).unwrap();
        enc.finish(&mut out).unwrap();
        let expected = format!("5\r\nhello\r\n1a\r\n{}\r\n0\r\n\r\n", "x".repeat(26));
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(enc.written(), 31);
    }

    #[test]
    fn length_refuses_extra_and_missing_bytes() {
        let mut enc = Encoder::new(Framing::Length(4));
        let mut out = Vec::new();
        enc.encode(b"abc", &mut out).unwrap();
        assert_eq!(
            enc.encode(b"de", &mut out),
            Err(LengthMismatch {
                declared: 4,
                actual: 5
            })
        );
        assert_eq!(out, b"abc");
        assert_eq!(
            enc.finish(&mut out),
            Err(LengthMismatch {
                declared: 4,
                actual: 3
            })
        );
        enc.encode(b"d", &mut out).unwrap();
        enc.finish(&mut out).unwrap();
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn no_body_framing_writes_nothing() {
        let mut enc = Encoder::new(Framing::None);
        let mut out = Vec::new();
        enc.encode(b"ignored", &mut out).unwrap();
        enc.finish(&mut out).unwrap();
        assert!(out.is_empty());
    }
}
