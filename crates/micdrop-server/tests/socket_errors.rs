//! Socket-level abuse over raw TCP (issue #11, findings 1 and 7): abrupt resets never panic
//! (before or after authentication, idle or while audio is being written), and every WebSocket
//! protocol violation closes with its RFC 6455 code, chosen from a typed error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use micdrop_core::call::{CallConfig, CallEnd, EndReason};
use micdrop_core::socket::SocketError;
use micdrop_server::ServerOptions;
use micdrop_testkit::{ScriptedStt, ScriptedTts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic of the process (server tasks included); all tests here expect none.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

mod common;

/// The common harness, with panics counted.
struct Server(common::Harness);

impl std::ops::Deref for Server {
    type Target = common::Harness;
    fn deref(&self) -> &common::Harness {
        &self.0
    }
}

impl Server {
    async fn start(config: CallConfig, tweak: impl FnOnce(&mut ServerOptions)) -> Self {
        count_panics();
        Self(common::Harness::with_options(ServerOptions::with_template(config), tweak).await)
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Waits until no call is left.
    async fn wait_idle(&self) {
        for _ in 0..500 {
            if self.server.active_calls() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} calls still active", self.server.active_calls());
    }
}

/// A WebSocket client written by hand, to send what no library would.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"GET /call HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..end);
        Self { tcp, buf }
    }

    /// Sends one frame: `first` is the FIN/RSV/opcode byte; client frames are masked unless
    /// `masked` is false.
    async fn frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n < 65536 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        // The server may already have closed (a reset here is fine).
        let _ = self.tcp.write_all(&out).await;
    }

    async fn text(&mut self, t: &str) {
        self.frame(0x81, t.as_bytes(), true).await;
    }

    /// Reads one server frame: (opcode, payload); `None` at the end of the stream.
    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are never masked");
                let (len, start) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk))
                .await
                .expect("no frame from the server within 5 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until the close frame: (code, reason).
    async fn close_frame(&mut self) -> (u16, String) {
        while let Some((op, payload)) = self.read_frame().await {
            if op == 0x8 {
                assert!(payload.len() >= 2, "close frame without a code");
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
        }
        panic!("the server closed the TCP connection without a close frame");
    }

    /// Resets the TCP connection (RST, no close frame).
    fn reset(self) {
        self.tcp.set_zero_linger().unwrap();
        drop(self.tcp);
    }
}

fn stt() -> Arc<ScriptedStt> {
    Arc::new(ScriptedStt::transcripts(&[]))
}

#[tokio::test]
async fn resets_before_authentication_never_panic() {
    let s = Server::start(CallConfig::new(stt()), |o| {
        o.bearer_tokens = vec!["secret".into()];
    })
    .await;
    for i in 0..40 {
        let mut ws = RawWs::connect(s.addr()).await;
        if i % 2 == 1 {
            // A partial frame, then the reset.
            ws.tcp.write_all(&[0x81, 0x85]).await.unwrap();
        }
        ws.reset();
    }
    s.wait_idle().await;
    // The server still serves: a wrong token gets its 4401.
    let mut ws = RawWs::connect(s.addr()).await;
    ws.text(r#"{"authorization":"Bearer nope"}"#).await;
    assert_eq!(ws.close_frame().await.0, 4401);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a server task panicked");
}

#[tokio::test]
async fn resets_during_calls_and_during_assistant_audio_never_panic() {
    // A long first message spoken by a slow TTS: the server writes audio while the client resets.
    let tts = ScriptedTts::new().with_bytes_per_char(400);
    let s = Server::start(
        CallConfig::new(stt())
            .tts(Arc::new(tts))
            .first_message("Hello there, this is a rather long first message. ".repeat(4)),
        |_| {},
    )
    .await;
    for i in 0..40 {
        let mut ws = RawWs::connect(s.addr()).await;
        // Half of them wait for the first audio frame, so the reset lands mid-audio.
        if i % 2 == 0 {
            while let Some((op, _)) = ws.read_frame().await {
                if op == 0x2 {
                    break;
                }
            }
        }
        ws.reset();
    }
    s.wait_idle().await;
    let ends: Vec<CallEnd> = std::mem::take(&mut *s.ends.lock().unwrap());
    assert_eq!(ends.len(), 40);
    for end in &ends {
        match &end.reason {
            EndReason::SocketError(e) => assert!(e.is_disconnect(), "{e:?}"),
            EndReason::ClientClosed => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a server task panicked");
}

/// Connects (no auth), sends one raw frame and returns the close frame's code.
async fn close_code_for(s: &Server, first: u8, payload: &[u8], masked: bool) -> u16 {
    let mut ws = RawWs::connect(s.addr()).await;
    ws.frame(first, payload, masked).await;
    let (code, _) = ws.close_frame().await;
    code
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let s = Server::start(CallConfig::new(stt()), |_| {}).await;
    // RSV1 set without a negotiated extension.
    assert_eq!(
        close_code_for(&s, 0x80 | 0x40 | 0x1, b"StartSpeaking", true).await,
        1002
    );
    assert!(matches!(
        s.wait_end().await.reason,
        EndReason::SocketError(SocketError::Protocol(_))
    ));
    // An unmasked client frame.
    assert_eq!(
        close_code_for(&s, 0x81, b"StartSpeaking", false).await,
        1002
    );
    // A reserved data opcode (3) and a reserved control opcode (0xB).
    assert_eq!(close_code_for(&s, 0x83, b"abc", true).await, 1002);
    assert_eq!(close_code_for(&s, 0x8B, b"", true).await, 1002);
    // A ping of 126 bytes (control frames carry at most 125).
    assert_eq!(close_code_for(&s, 0x89, &[7u8; 126], true).await, 1002);
    // A fragmented control frame (ping without FIN).
    assert_eq!(close_code_for(&s, 0x09, b"x", true).await, 1002);
    // A continuation frame with nothing to continue.
    assert_eq!(close_code_for(&s, 0x80, b"x", true).await, 1002);
    // A 125-byte ping is fine: it gets its pong and the call goes on.
    let mut ws = RawWs::connect(s.addr()).await;
    ws.frame(0x89, &[7u8; 125], true).await;
    loop {
        let (op, payload) = ws.read_frame().await.expect("pong");
        if op == 0xA {
            assert_eq!(payload, vec![7u8; 125]);
            break;
        }
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a server task panicked");
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let s = Server::start(CallConfig::new(stt()), |_| {}).await;
    assert_eq!(
        close_code_for(&s, 0x81, &[0xff, 0xfe, 0xfd, 0x41], true).await,
        1007
    );
    assert_eq!(
        s.wait_end().await.reason,
        EndReason::SocketError(SocketError::InvalidUtf8)
    );
    // Also when the params frame is the bad one.
    let s = Server::start(CallConfig::new(stt()), |o| o.require_params = true).await;
    assert_eq!(
        close_code_for(&s, 0x81, &[b'{', 0xc3, 0x28, b'}'], true).await,
        1007
    );
}

#[tokio::test]
async fn oversized_params_frame_closes_with_1009_not_missing_params() {
    let s = Server::start(CallConfig::new(stt()), |o| {
        o.bearer_tokens = vec!["secret".into()];
        o.max_frame_bytes = 4096;
    })
    .await;
    let big = format!(
        r#"{{"authorization":"Bearer secret","pad":"{}"}}"#,
        "x".repeat(10_000)
    );
    let mut ws = RawWs::connect(s.addr()).await;
    ws.text(&big).await;
    assert_eq!(ws.close_frame().await, (1009, "Frame too big".to_owned()));
    // A 126-byte ping before the params is a protocol error there too.
    let mut ws = RawWs::connect(s.addr()).await;
    ws.frame(0x89, &[1u8; 126], true).await;
    assert_eq!(ws.close_frame().await.0, 1002);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a server task panicked");
}
