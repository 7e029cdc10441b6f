//! The connection under a socket once the HTTP upgrade handed it over: plain
//! TCP, read without a buffer of its own while it waits, or any other stream
//! (TLS, the in-process tests) through tokio's traits.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_tls::accept::rustls_0_23::TlsStream;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much one read takes at most: the worker thread's scratch buffer.
const SCRATCH: usize = 64 << 10;

thread_local! {
    /// Every socket of a worker reads into this one buffer and keeps only
    /// the bytes it got, so a waiting connection holds no read buffer.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A stream the relay can take over after an upgrade.
pub trait Upgraded: AsyncRead + AsyncWrite + Unpin + 'static {
    /// The stream as the socket holds it.
    fn into_io(self) -> Io;
}

impl Upgraded for TcpStream {
    fn into_io(self) -> Io {
        Io::Tcp(self)
    }
}

impl Upgraded for TlsStream<TcpStream> {
    fn into_io(self) -> Io {
        Io::Other(Box::new(self))
    }
}

/// Any other byte stream (TLS, tests).
pub trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

/// The connection of one socket.
pub enum Io {
    /// Plain TCP: waits for readiness without a buffer.
    Tcp(TcpStream),
    /// Anything else.
    Other(Box<dyn Stream>),
}

impl Io {
    /// Reads what is there into the worker's scratch buffer and hands the
    /// bytes to `take`; `Ok(0)` is the end of the stream.
    pub fn poll_read_with(
        &mut self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<usize>> {
        SCRATCH_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = match self {
                Io::Tcp(tcp) => loop {
                    ready!(tcp.poll_read_ready(cx))?;
                    match tcp.try_read(&mut scratch) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        other => break other?,
                    }
                },
                Io::Other(s) => {
                    let mut buf = ReadBuf::new(&mut scratch);
                    ready!(Pin::new(s).poll_read(cx, &mut buf))?;
                    buf.filled().len()
                }
            };
            take(&scratch[..n]);
            Poll::Ready(Ok(n))
        })
    }
}

impl Io {
    /// Reads what is there straight into `buf`'s spare room (plain TCP:
    /// one copy fewer than through the scratch buffer), for a connection
    /// that is streaming frames and holds a buffer anyway; `Ok(0)` is the
    /// end of the stream.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                match tcp.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return Poll::Ready(other),
                }
            },
            Io::Other(_) => self.poll_read_with(cx, |bytes| buf.extend_from_slice(bytes)),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Other(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Other(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Other(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Other(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
