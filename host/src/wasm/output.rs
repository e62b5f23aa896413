//! A guest's stdout and stderr: every line it writes becomes a log event
//! (target `wasmhttpd::guest`) carrying the id of the request or WebSocket
//! session it was serving, so its output can be matched with the access
//! log.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tracing::{info, warn};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A line longer than this is logged in pieces of this size: one event
/// stays readable, and a guest that never writes a newline is still heard.
const MAX_LINE: usize = 8 * 1024;
/// Output one instance may log in all (1 MiB); past it the rest is
/// dropped with one warning, so a guest printing in a loop cannot flood
/// the server's log.
const MAX_OUTPUT: usize = 1024 * 1024;

/// Which of the guest's streams.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One of an instance's output streams, turned into log lines.
#[derive(Clone)]
pub(crate) struct GuestOutput(Arc<Mutex<Lines>>);

struct Lines {
    stream: Stream,
    /// The request the instance serves now (a reused instance serves
    /// several, one after another).
    request: Arc<AtomicU64>,
    /// The part of a line written so far.
    pending: Vec<u8>,
    /// Bytes taken so far, against [`MAX_OUTPUT`].
    taken: usize,
}

impl GuestOutput {
    /// The stream `stream` of an instance serving the request in `request`.
    pub(crate) fn new(stream: Stream, request: Arc<AtomicU64>) -> Self {
        GuestOutput(Arc::new(Mutex::new(Lines {
            stream,
            request,
            pending: Vec::new(),
            taken: 0,
        })))
    }

    fn take(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take(bytes);
    }
}

impl Lines {
    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_OUTPUT.saturating_sub(self.taken);
        if room == 0 {
            return;
        }
        let kept = &bytes[..bytes.len().min(room)];
        self.taken += kept.len();
        for piece in kept.split_inclusive(|&b| b == b'\n') {
            for part in piece.chunks(MAX_LINE) {
                self.pending.extend_from_slice(part);
                if self.pending.ends_with(b"\n") || self.pending.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
        if self.taken == MAX_OUTPUT {
            self.emit();
            warn!(
                target: "wasmhttpd::guest",
                id = self.request.load(Ordering::Relaxed),
                stream = self.stream.as_str(),
                limit = MAX_OUTPUT,
                "guest output over its limit; the rest is dropped"
            );
        }
    }

    fn emit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.pending);
        let line = text.trim_end_matches(['\n', '\r']);
        info!(
            target: "wasmhttpd::guest",
            id = self.request.load(Ordering::Relaxed),
            stream = self.stream.as_str(),
            "{line}"
        );
        self.pending.clear();
    }
}

impl Drop for Lines {
    /// A last line without its newline is logged when the instance ends.
    fn drop(&mut self) {
        self.emit();
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: output past the limit is dropped, never blocked on.
        Ok(MAX_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
