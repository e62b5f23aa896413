//! `std::io` adapters over `wasi:io` streams, so the encoders can read a
//! file and write a response body like any reader and writer.

use std::io::{self, Read, Write};

use crate::bindings::wasi::filesystem::types::Descriptor;
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};

/// Bytes moved per `splice` call when streaming a file.
const SPLICE_CHUNK: u64 = 256 * 1024;
/// The most bytes one `blocking-write-and-flush` takes (wasi:io's
/// contract): a body up to this size is written in one call.
pub const ONE_WRITE: u64 = 4096;

/// Reads a `wasi:io` input stream; its end is end of file.
pub struct Reader<'a>(pub &'a InputStream);

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.blocking_read(buf.len() as u64) {
            Ok(bytes) => {
                buf[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            Err(StreamError::Closed) => Ok(0),
            Err(err) => Err(io_error(err)),
        }
    }
}

/// Writes to a `wasi:io` output stream as fast as it takes bytes.
pub struct Writer<'a>(pub &'a OutputStream);

impl Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let permit = self.0.check_write().map_err(io_error)?;
            if permit == 0 {
                self.0.subscribe().block();
                continue;
            }
            let n = buf.len().min(usize::try_from(permit).unwrap_or(usize::MAX));
            self.0.write(&buf[..n]).map_err(io_error)?;
            return Ok(n);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.blocking_flush().map_err(io_error)
    }
}

fn io_error(err: StreamError) -> io::Error {
    match err {
        StreamError::Closed => io::ErrorKind::BrokenPipe.into(),
        StreamError::LastOperationFailed(err) => io::Error::other(err.to_debug_string()),
    }
}

/// Streams `length` bytes of `file` from `offset` into `output` without
/// holding them in guest memory.
pub fn splice_file(
    output: &OutputStream,
    file: &Descriptor,
    offset: u64,
    length: u64,
) -> io::Result<()> {
    let input = file
        .read_via_stream(offset)
        .map_err(|code| io::Error::other(format!("{code:?}")))?;
    let mut left = length;
    while left > 0 {
        match output.blocking_splice(&input, left.min(SPLICE_CHUNK)) {
            Ok(moved) => left -= moved,
            Err(err) => return Err(io_error(err)),
        }
    }
    output.blocking_flush().map_err(io_error)
}

/// Writes `bytes` and flushes them, in one call per [`ONE_WRITE`] bytes:
/// each call across the component boundary costs more than the copy.
pub fn write_all(output: &OutputStream, bytes: &[u8]) -> io::Result<()> {
    for chunk in bytes.chunks(ONE_WRITE as usize) {
        output.blocking_write_and_flush(chunk).map_err(io_error)?;
    }
    Ok(())
}

/// Sends `length` bytes (at most [`ONE_WRITE`]) of `file` from `offset`:
/// one read and one write, where a splice takes a stream, the splice, a
/// flush and the stream's end. A file that has shrunk since its size was
/// read fails, as its `Content-Length` can no longer be met.
pub fn send_small(
    output: &OutputStream,
    file: &Descriptor,
    offset: u64,
    length: u64,
) -> io::Result<()> {
    let mut bytes = Vec::new();
    while (bytes.len() as u64) < length {
        let at = offset + bytes.len() as u64;
        let (read, end) = file
            .read(length - bytes.len() as u64, at)
            .map_err(|code| io::Error::other(format!("{code:?}")))?;
        if bytes.is_empty() {
            bytes = read;
        } else {
            bytes.extend_from_slice(&read);
        }
        if end && (bytes.len() as u64) < length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    write_all(output, &bytes)
}
