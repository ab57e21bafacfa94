//! [`LeanIo`]: a socket wrapper whose read buffer exists only while it holds data.
//!
//! A WebSocket library reads its socket through a buffer of its own; tungstenite allocates it
//! when the connection opens and keeps it for the connection's life, and its size also caps
//! each read (`read_buffer_size`). With a 4 KiB buffer, an idle call holds 4 KiB for nothing;
//! with a small one, a 100 ms audio frame (3.2 KB) takes several `recv` system calls.
//!
//! `LeanIo` sits below the library: the library keeps a small buffer (e.g. 512 bytes), and
//! each read that finds `LeanIo` empty takes up to [`LEAN_IO_CHUNK`] bytes from the socket in
//! one system call (into a stack buffer), hands the library what it asked for and keeps the
//! rest in a heap buffer of exactly that size, freed as soon as it has been read. An idle
//! connection holds no read buffer here, and a frame still costs one system call.
//!
//! Writes are gathered the same way: the frames written between two flushes (a burst of paced
//! audio, a text frame and its audio) go to the socket in one system call at the flush, from a
//! buffer that exists only until then (at most [`LEAN_IO_WRITE_MAX`] bytes wait; a write beyond
//! sends what waits first). With tungstenite's own write buffer off (`write_buffer_size(0)`),
//! each frame was one `send`: 40 a turn for a 3.7 s answer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes taken from the socket by one read.
pub const LEAN_IO_CHUNK: usize = 8192;
/// Most bytes held for writing until a flush.
pub const LEAN_IO_WRITE_MAX: usize = 64 * 1024;
/// What the write buffer holds at first: five 100 ms frames of PCM 16 kHz with their headers
/// (the default lead of paced audio) without growing.
pub const LEAN_IO_WRITE_RESERVE: usize = 16 * 1024;

/// See the module docs.
#[derive(Debug)]
pub struct LeanIo<T> {
    inner: T,
    /// Bytes read from the socket and not handed out yet (from `pos`); empty, and without an
    /// allocation, when there are none.
    buf: Vec<u8>,
    pos: usize,
    /// Bytes written and not sent yet (from `wpos`); no allocation when there are none.
    wbuf: Vec<u8>,
    wpos: usize,
}

impl<T> LeanIo<T> {
    /// Wraps `inner`; `already_read` are bytes taken from it before (e.g. by the HTTP layer)
    /// that come first.
    pub fn new(inner: T, already_read: &[u8]) -> Self {
        Self {
            inner,
            buf: already_read.to_vec(),
            pos: 0,
            wbuf: Vec::new(),
            wpos: 0,
        }
    }

    /// Bytes held in the buffer (a test figure).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Capacity of the buffer (0 when it holds nothing).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes written and waiting for a flush (a test figure).
    pub fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Copies buffered bytes to `dst`; frees the buffer once it is drained.
    fn drain_into(&mut self, dst: &mut ReadBuf<'_>) {
        let n = dst.remaining().min(self.buf.len() - self.pos);
        dst.put_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LeanIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if dst.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.pos < this.buf.len() {
            this.drain_into(dst);
            return Poll::Ready(Ok(()));
        }
        if dst.remaining() >= LEAN_IO_CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, dst);
        }
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); LEAN_IO_CHUNK];
        let mut tmp = ReadBuf::uninit(&mut chunk);
        futures::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut tmp))?;
        let got = tmp.filled();
        let n = dst.remaining().min(got.len());
        dst.put_slice(&got[..n]);
        if n < got.len() {
            this.buf = got[n..].to_vec();
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> LeanIo<T> {
    /// Sends the bytes waiting for a flush; frees their buffer once they are all sent.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n =
                futures::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf = Vec::new();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LeanIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending_write() + buf.len() > LEAN_IO_WRITE_MAX {
            futures::ready!(this.poll_send_pending(cx))?;
            if buf.len() >= LEAN_IO_WRITE_MAX {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        if this.wbuf.capacity() == 0 {
            // One allocation for a burst (a lead of 100 ms frames), not one growth a frame.
            this.wbuf.reserve(buf.len().max(LEAN_IO_WRITE_RESERVE));
        }
        this.wbuf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::ready!(self.poll_send_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::ready!(self.poll_send_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_take_one_chunk_and_the_buffer_is_freed_when_drained() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let mut io = LeanIo::new(ours, b"ab");
        let frame: Vec<u8> = (0..3214u32).map(|i| i as u8).collect();
        peer.write_all(&frame).await.unwrap();
        let mut out = Vec::new();
        let mut small = [0u8; 512];
        // The bytes read before come first.
        let n = io.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"ab");
        assert_eq!(io.buffer_capacity(), 0);
        while out.len() < frame.len() {
            let n = io.read(&mut small).await.unwrap();
            assert!(n > 0);
            out.extend_from_slice(&small[..n]);
            if out.len() == 512 {
                // The first read took the whole frame from the socket.
                assert_eq!(io.buffered(), frame.len() - 512);
            }
        }
        assert_eq!(out, frame);
        assert_eq!(io.buffered(), 0);
        assert_eq!(io.buffer_capacity(), 0, "drained: no buffer held");
        // Writes go out at the flush; the end of the stream is seen.
        io.write_all(b"pong").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(peer);
        assert_eq!(io.read(&mut small).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn large_reads_go_straight_to_the_socket() {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let mut io = LeanIo::new(ours, &[]);
        let data = vec![7u8; 20_000];
        peer.write_all(&data).await.unwrap();
        let mut big = vec![0u8; LEAN_IO_CHUNK * 3];
        let mut got = 0;
        while got < data.len() {
            got += io.read(&mut big[got..]).await.unwrap();
            assert_eq!(io.buffer_capacity(), 0);
        }
    }

    /// Counts the writes that reach the socket.
    struct Counting<W> {
        inner: W,
        writes: usize,
    }

    impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<W> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn the_frames_of_a_burst_go_out_in_one_write_at_the_flush() {
        let (mut peer, ours) = tokio::io::duplex(256 * 1024);
        let mut io = LeanIo::new(
            Counting {
                inner: ours,
                writes: 0,
            },
            &[],
        );
        let frame = vec![1u8; 3204];
        for _ in 0..5 {
            io.write_all(&frame).await.unwrap();
        }
        assert_eq!(io.inner.writes, 0, "nothing sent before the flush");
        assert_eq!(io.pending_write(), 5 * 3204);
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1, "one write for the burst");
        assert_eq!(io.pending_write(), 0);
        assert_eq!(io.wbuf.capacity(), 0, "sent: no buffer held");
        let mut got = vec![0u8; 5 * 3204];
        peer.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 1));
        // Beyond the cap, what waits is sent first; a large write goes straight through.
        io.write_all(&vec![2u8; LEAN_IO_WRITE_MAX - 10])
            .await
            .unwrap();
        io.write_all(&[3u8; 20]).await.unwrap();
        assert_eq!(io.inner.writes, 2);
        assert_eq!(io.pending_write(), 20);
        io.write_all(&vec![4u8; LEAN_IO_WRITE_MAX]).await.unwrap();
        io.flush().await.unwrap();
        let mut all = vec![0u8; 2 * LEAN_IO_WRITE_MAX + 10];
        peer.read_exact(&mut all).await.unwrap();
        assert!(all[..LEAN_IO_WRITE_MAX - 10].iter().all(|b| *b == 2));
        assert!(
            all[LEAN_IO_WRITE_MAX - 10..LEAN_IO_WRITE_MAX + 10]
                .iter()
                .all(|b| *b == 3)
        );
        assert!(all[LEAN_IO_WRITE_MAX + 10..].iter().all(|b| *b == 4));
    }
}
