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
//! rest in a heap buffer that it gives up as soon as it has been read. An idle connection holds
//! no read buffer here, and a frame still costs one system call.
//!
//! Writes are gathered the same way: the frames written between two flushes (a burst of paced
//! audio, a text frame and its audio) go to the socket in one system call at the flush (one
//! `writev` of the chunks that wait), from a queue that holds nothing between bursts (at most
//! [`LEAN_IO_WRITE_MAX`] bytes of the library's writes wait; a write beyond sends what waits
//! first). With tungstenite's own write buffer off (`write_buffer_size(0)`), each frame was one
//! `send`: 40 a turn for a 3.7 s answer.
//!
//! A [`RawWriter`] puts binary frames in the same queue without the library: a server's audio
//! frame is its 4-byte header and the payload it already has (`Bytes`), sent by the same
//! `writev` without being copied (through tungstenite, the payload was copied twice: into its
//! frame buffer, then into the gathered buffer). The library's own writes (text, ping, pong,
//! close) keep their order with them; once the library has written a close frame, the raw
//! writer refuses more.
//!
//! Neither buffer is allocated for each frame: a buffer drained (the rest of a read handed
//! out, a queue sent) is kept by the thread as its spare (one of each per thread, in a
//! `thread_local`) and taken by the next connection that needs one on that thread. A
//! connection still holds none between its frames.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes taken from the socket by one read.
pub const LEAN_IO_CHUNK: usize = 8192;
/// Most bytes held for writing until a flush.
pub const LEAN_IO_WRITE_MAX: usize = 64 * 1024;
/// Most chunks handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// The chunks waiting for a flush, shared by a [`LeanIo`] and its [`RawWriter`]s.
#[derive(Debug, Default)]
struct Pending {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    len: usize,
    /// The library wrote a close frame: no frame may follow it.
    closed: bool,
}

impl Pending {
    fn push(&mut self, chunk: Bytes) {
        if self.chunks.capacity() == 0 {
            self.chunks = SPARE_QUEUE.with(Cell::take);
        }
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Drops the first `n` bytes (sent).
    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() > n {
                front.advance(n);
                break;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
        if self.chunks.is_empty() {
            // Nothing held between bursts: the storage becomes the thread's spare.
            let mut chunks = std::mem::take(&mut self.chunks);
            chunks.clear(); // (its ring starts over)
            if (1..=MAX_IOVECS).contains(&chunks.capacity()) {
                SPARE_QUEUE.with(|spare| spare.set(chunks));
            }
        }
    }
}

type Shared = Arc<Mutex<Pending>>;

thread_local! {
    /// The thread's spare read buffer and burst queue: empty storage kept for the next
    /// connection of the thread that needs some, so that the frames of the calls a thread
    /// serves reuse one allocation instead of each making and freeing its own.
    static SPARE_READ: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static SPARE_QUEUE: Cell<VecDeque<Bytes>> = const { Cell::new(VecDeque::new()) };
}

fn lock(shared: &Shared) -> MutexGuard<'_, Pending> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `buf`, whole frames written by a WebSocket library, holds a close frame (opcode 8).
/// A frame cut at the end of `buf` is looked at by its header only.
fn has_close_frame(mut buf: &[u8]) -> bool {
    while buf.len() >= 2 {
        if buf[0] & 0x0f == 0x8 {
            return true;
        }
        let (len, header) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return false,
            n => (u64::from(n), 2),
        };
        let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
        let Ok(end) = usize::try_from(len + header + mask) else {
            return false;
        };
        buf = buf.get(end..).unwrap_or(&[]);
    }
    false
}

/// Writes binary frames of a server (unmasked) into a [`LeanIo`]'s queue, after what the
/// library wrote before and without copying their payload; they go out at the next flush.
#[derive(Debug)]
pub struct RawWriter {
    shared: Shared,
    /// Where the frames' headers are written (one allocation for many headers).
    headers: BytesMut,
}

/// The socket's library wrote a close frame: nothing may be sent after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the WebSocket is closing: no frame may follow its close frame")]
pub struct Closing;

impl RawWriter {
    /// Queues a final binary frame (opcode 2) carrying `payload`.
    pub fn push_binary(&mut self, payload: Bytes) -> Result<(), Closing> {
        let mut pending = lock(&self.shared);
        if pending.closed {
            return Err(Closing);
        }
        if self.headers.capacity() - self.headers.len() < 10 {
            self.headers.reserve(16 * 10);
        }
        self.headers.put_u8(0x82);
        match payload.len() {
            n if n < 126 => self.headers.put_u8(n as u8),
            n if n <= usize::from(u16::MAX) => {
                self.headers.put_u8(126);
                self.headers.put_u16(n as u16);
            }
            n => {
                self.headers.put_u8(127);
                self.headers.put_u64(n as u64);
            }
        }
        let header = self.headers.split().freeze();
        pending.push(header);
        if !payload.is_empty() {
            pending.push(payload);
        }
        Ok(())
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct LeanIo<T> {
    inner: T,
    /// Bytes read from the socket and not handed out yet (from `pos`); empty, and without an
    /// allocation, when there are none.
    buf: Vec<u8>,
    pos: usize,
    /// Chunks written and not sent yet, shared with the [`RawWriter`]s.
    pending: Shared,
}

impl<T> LeanIo<T> {
    /// Wraps `inner`; `already_read` are bytes taken from it before (e.g. by the HTTP layer)
    /// that come first.
    pub fn new(inner: T, already_read: &[u8]) -> Self {
        Self {
            inner,
            buf: already_read.to_vec(),
            pos: 0,
            pending: Shared::default(),
        }
    }

    /// A writer of binary frames into this socket's write queue (for a server: unmasked).
    pub fn raw_writer(&self) -> RawWriter {
        RawWriter {
            shared: self.pending.clone(),
            headers: BytesMut::new(),
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
        lock(&self.pending).len
    }

    /// Copies buffered bytes to `dst`; frees the buffer once it is drained.
    fn drain_into(&mut self, dst: &mut ReadBuf<'_>) {
        let n = dst.remaining().min(self.buf.len() - self.pos);
        dst.put_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.buf.len() {
            // The storage becomes the thread's spare.
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            if (1..=LEAN_IO_CHUNK).contains(&buf.capacity()) {
                SPARE_READ.with(|spare| spare.set(buf));
            }
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
            let mut buf = SPARE_READ.with(Cell::take);
            buf.extend_from_slice(&got[n..]);
            this.buf = buf;
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> LeanIo<T> {
    /// Sends the chunks waiting for a flush: one `writev` of them when the socket takes
    /// vectors, else one write of them copied together.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut pending = lock(&self.pending);
            if pending.len == 0 {
                return Poll::Ready(Ok(()));
            }
            let n = if self.inner.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                for (slot, chunk) in slices.iter_mut().zip(&pending.chunks) {
                    *slot = IoSlice::new(chunk);
                }
                let k = pending.chunks.len().min(MAX_IOVECS);
                futures::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..k]))?
            } else {
                if pending.chunks.len() > 1 {
                    // One chunk of the same bytes (the length is unchanged).
                    let mut all = BytesMut::with_capacity(pending.len);
                    for chunk in pending.chunks.drain(..) {
                        all.extend_from_slice(&chunk);
                    }
                    pending.chunks.push_back(all.freeze());
                }
                futures::ready!(Pin::new(&mut self.inner).poll_write(cx, &pending.chunks[0]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            pending.advance(n);
        }
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
        let mut pending = lock(&this.pending);
        if has_close_frame(buf) {
            pending.closed = true;
        }
        pending.push(Bytes::copy_from_slice(buf));
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
    async fn drained_buffers_are_reused_by_the_next_connection_of_the_thread() {
        // A read's rest: the second connection's is the allocation the first one drained. In
        // between, an allocation of the same size is made (`malloc`, as `calloc` may take
        // another path) and kept: had the first been freed, the allocator would hand it out there.
        let mut small = [0u8; 512];
        let mut rest_at = None;
        let mut blockers = Vec::new();
        for _ in 0..2 {
            let (mut peer, ours) = tokio::io::duplex(64 * 1024);
            let mut io = LeanIo::new(ours, &[]);
            peer.write_all(&[7u8; 3000]).await.unwrap();
            assert_eq!(io.read(&mut small).await.unwrap(), 512);
            assert_eq!(io.buffered(), 3000 - 512);
            let at = io.buf.as_ptr();
            assert_eq!(*rest_at.get_or_insert(at), at);
            while io.buffered() > 0 {
                assert!(io.read(&mut small).await.unwrap() > 0);
            }
            assert_eq!(
                io.buffer_capacity(),
                0,
                "a drained connection holds no buffer"
            );
            blockers.push(Vec::<u8>::with_capacity(3000 - 512));
        }
        // A burst's queue: the same for the write side.
        let mut queue_at = None;
        for _ in 0..2 {
            let (_peer, ours) = tokio::io::duplex(64 * 1024);
            let mut io = LeanIo::new(ours, &[]);
            io.write_all(b"frame").await.unwrap();
            let at = lock(&io.pending).chunks.as_slices().0.as_ptr();
            assert_eq!(*queue_at.get_or_insert(at), at);
            io.flush().await.unwrap();
            assert_eq!(
                lock(&io.pending).chunks.capacity(),
                0,
                "nothing held between bursts"
            );
            blockers.push(Vec::<u8>::with_capacity(4 * std::mem::size_of::<Bytes>()));
        }
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
        /// Whether it takes vectors (`writev`).
        vectored: bool,
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

        /// Like a socket's `writev`: all the slices in one write.
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &all)
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A `LeanIo` over a socket that counts its writes, and the socket's peer.
    fn counting_io(
        vectored: bool,
    ) -> (
        tokio::io::DuplexStream,
        LeanIo<Counting<tokio::io::DuplexStream>>,
    ) {
        let (peer, ours) = tokio::io::duplex(256 * 1024);
        let io = LeanIo::new(
            Counting {
                inner: ours,
                writes: 0,
                vectored,
            },
            &[],
        );
        (peer, io)
    }

    #[tokio::test]
    async fn the_frames_of_a_burst_go_out_in_one_write_at_the_flush() {
        let (mut peer, mut io) = counting_io(true);
        let frame = vec![1u8; 3204];
        for _ in 0..5 {
            io.write_all(&frame).await.unwrap();
        }
        assert_eq!(io.inner.writes, 0, "nothing sent before the flush");
        assert_eq!(io.pending_write(), 5 * 3204);
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1, "one write for the burst");
        assert_eq!(io.pending_write(), 0);
        assert_eq!(
            lock(&io.pending).chunks.capacity(),
            0,
            "sent: no buffer held"
        );
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

    #[tokio::test]
    async fn raw_frames_keep_their_order_with_the_library_writes_and_go_out_in_one_writev() {
        let (mut peer, mut io) = counting_io(true);
        let mut raw = io.raw_writer();
        // A text frame written by the library, two audio frames, a pong, one more audio frame.
        io.write_all(&[0x81, 2, b'h', b'i']).await.unwrap();
        let audio = Bytes::from(vec![5u8; 3200]);
        raw.push_binary(audio.clone()).unwrap();
        raw.push_binary(Bytes::from_static(b"abc")).unwrap();
        io.write_all(&[0x8a, 0]).await.unwrap();
        raw.push_binary(Bytes::from(vec![6u8; 70_000])).unwrap();
        assert_eq!(io.inner.writes, 0, "nothing sent before the flush");
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1, "one writev for the burst");
        assert_eq!(io.pending_write(), 0);
        let mut expected = vec![0x81, 2, b'h', b'i', 0x82, 126, 0x0c, 0x80];
        expected.extend_from_slice(&audio);
        expected.extend_from_slice(&[0x82, 3, b'a', b'b', b'c', 0x8a, 0, 0x82, 127]);
        expected.extend_from_slice(&70_000u64.to_be_bytes());
        expected.extend_from_slice(&[6u8; 70_000]);
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_socket_without_vectored_writes_gets_the_chunks_in_one_write() {
        let (mut peer, mut io) = counting_io(false);
        let mut raw = io.raw_writer();
        io.write_all(&[0x81, 1, b'x']).await.unwrap();
        raw.push_binary(Bytes::from_static(b"pcm")).unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1, "the three chunks copied together");
        assert_eq!(io.pending_write(), 0);
        let mut got = [0u8; 8];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x81, 1, b'x', 0x82, 3, b'p', b'c', b'm']);
    }

    #[tokio::test]
    async fn no_raw_frame_follows_the_library_s_close_frame() {
        let (_peer, ours) = tokio::io::duplex(1024);
        let mut io = LeanIo::new(ours, &[]);
        let mut raw = io.raw_writer();
        // A pong then a close frame (code 1000) in one write.
        io.write_all(&[0x8a, 0, 0x88, 2, 0x03, 0xe8]).await.unwrap();
        assert_eq!(raw.push_binary(Bytes::from_static(b"late")), Err(Closing));
    }

    #[test]
    fn close_frames_are_found_behind_other_frames() {
        assert!(!has_close_frame(&[0x81, 2, b'h', b'i']));
        assert!(has_close_frame(&[0x81, 2, b'h', b'i', 0x88, 0]));
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend_from_slice(&[0x88; 256]);
        assert!(!has_close_frame(&long), "0x88 bytes in a payload");
        long.extend_from_slice(&[0x88, 0]);
        assert!(has_close_frame(&long));
        assert!(!has_close_frame(&[0x82, 127, 0, 0]), "a cut header");
    }
}
