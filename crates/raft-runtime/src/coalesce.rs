//! Write coalescing for HTTP/2 connections: fewer, larger socket writes under load.
//!
//! h2 (under tonic and hyper) writes and flushes a connection's frames every time its task
//! runs, and its task runs once per finished request or response: at 64 concurrent requests
//! over 8 connections, that is one `writev` system call (and, on loopback, the receiver's
//! TCP processing charged to the sender) per request, about a quarter of a load generator's
//! CPU and a seventh of a leader's in profiles (docs/BENCHMARKS.md). gRPC-Go coalesces such
//! frames in its write loop; h2 has no such option.
//!
//! [`CoalescingIo`] wraps a socket: writes go to a buffer, and the first flush of a batch
//! yields once to the scheduler (the task re-queues itself behind the tasks that are already
//! runnable) before the buffer goes out in one write. Responses and requests that become
//! ready in the same scheduling round share one system call. When nothing else is runnable
//! the yield costs one extra poll of the connection task, no system call and no timer: it
//! never waits for more data to arrive.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Buffered bytes past which a write goes to the socket without waiting for a flush: bounds
/// the buffer's memory and keeps bulk transfers (snapshots) streaming.
const BUFFER_BYTES_MAX: usize = 256 * 1024;

/// A socket whose writes are gathered until a flush, and whose flushes yield once first.
#[derive(Debug)]
pub struct CoalescingIo<T> {
    inner: T,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already written to `inner`.
    written: usize,
    /// The current flush has yielded once already.
    yielded: bool,
}

impl<T> CoalescingIo<T> {
    pub fn new(inner: T) -> CoalescingIo<T> {
        CoalescingIo {
            inner,
            buffer: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> CoalescingIo<T> {
    /// Writes the buffer out; Ready once it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescingIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = slices.iter().map(|s| s.len()).sum();
        if this.buffer.len() + len > BUFFER_BYTES_MAX {
            std::task::ready!(this.poll_drain(cx))?;
            if len > BUFFER_BYTES_MAX {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, slices);
            }
        }
        for slice in slices {
            this.buffer.extend_from_slice(slice);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buffer.is_empty() {
            this.yielded = false;
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.yielded {
            // Re-queue behind the tasks already runnable (tokio treats a task that wakes itself
            // as yielding): their frames join this write.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for CoalescingIo<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Connects `endpoint` over TCP (`TCP_NODELAY`, at most `connect_timeout`) with coalesced writes.
/// The endpoint's other settings (keep-alive, timeouts) apply as with `Endpoint::connect`.
pub async fn connect(
    endpoint: Endpoint,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: Uri| async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            let stream = tokio::time::timeout(connect_timeout, TcpStream::connect((host, port)))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(TokioIo::new(CoalescingIo::new(stream)))
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_go_out_in_order() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut io = CoalescingIo::new(client);
        io.write_all(b"hello ").await.unwrap();
        io.write_all(b"world").await.unwrap();
        // Nothing went to the peer before the flush.
        assert_eq!(io.buffer.len(), 11);
        // (A zero timeout polls the read once: nothing is there to read.)
        let mut probe = [0u8; 1];
        assert!(tokio::time::timeout(Duration::ZERO, server.read(&mut probe))
            .await
            .is_err());
        io.flush().await.unwrap();
        assert!(io.buffer.is_empty());
        let mut got = vec![0u8; 11];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
    }

    #[tokio::test]
    async fn a_large_write_bypasses_the_buffer_after_draining_it() {
        let (client, mut server) = tokio::io::duplex(4 << 20);
        let mut io = CoalescingIo::new(client);
        io.write_all(b"head").await.unwrap();
        let big = vec![7u8; BUFFER_BYTES_MAX + 10];
        io.write_all(&big).await.unwrap();
        io.flush().await.unwrap();
        let mut got = vec![0u8; 4 + big.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..].iter().all(|&b| b == 7));
        io.shutdown().await.unwrap();
        assert_eq!(
            server.read(&mut [0u8; 1]).await.unwrap(),
            0,
            "shutdown must end the stream"
        );
    }
}
