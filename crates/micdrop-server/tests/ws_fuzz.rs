//! A protocol fuzz test at the WebSocket level: raw frames written on the TCP socket after a real
//! handshake (random opcodes, RSV bits, masked or not, fragments, control frames of every size,
//! commands, params, audio, truncated frames, abrupt resets). No panic anywhere in the process,
//! and the server keeps serving calls and `/healthz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use micdrop_core::call::CallConfig;
use micdrop_server::{ServerOptions, start};
use micdrop_testkit::{ScriptedStt, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One raw WebSocket frame: FIN/RSV/opcode byte, length, optional mask, payload.
fn frame(rng: &mut Rng, first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = rng.bytes(4);
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn random_payload(rng: &mut Rng) -> Vec<u8> {
    const TEXTS: [&str; 10] = [
        "StartSpeaking",
        "StopSpeaking",
        "Mute",
        r#"{"authorization":"Bearer nope"}"#,
        r#"{"lang":"fr"}"#,
        "{",
        "",
        "startspeaking",
        "StartSpeaking StopSpeaking",
        "\u{0}\u{1}",
    ];
    match rng.below(6) {
        0 | 1 => TEXTS[rng.below(TEXTS.len() as u64) as usize]
            .as_bytes()
            .to_vec(),
        2 => vec![0u8; 3200],
        3 => {
            let n = rng.below(300) as usize;
            rng.bytes(n)
        }
        4 => {
            // Control-frame sizes around the 125-byte limit, and odd PCM lengths.
            let n = [0usize, 1, 124, 125, 126, 127, 3199][rng.below(7) as usize];
            rng.bytes(n)
        }
        _ => vec![0xff, 0xfe, 0xc3],
    }
}

/// A random first byte: mostly valid (FIN + text/binary/ping/pong/close/continuation), sometimes
/// RSV bits or reserved opcodes.
fn random_first(rng: &mut Rng) -> u8 {
    let opcode = [0x0u8, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB][rng.below(8) as usize];
    let fin = if rng.below(5) == 0 { 0 } else { 0x80 };
    let rsv = if rng.below(12) == 0 {
        (rng.below(8) as u8) << 4
    } else {
        0
    };
    fin | rsv | opcode
}

async fn handshake(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "GET /call HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Some(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_never_panic_and_the_server_keeps_serving() {
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let mut options =
        ServerOptions::with_template(CallConfig::new(Arc::new(ScriptedStt::transcripts(&[]))));
    options.max_frame_bytes = 4096;
    let server = start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    let addr = server.local_addr();

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for conn in 0..300u64 {
        let Some(mut s) = handshake(addr).await else {
            panic!("handshake {conn} failed");
        };
        let frames = 1 + rng.below(25);
        for _ in 0..frames {
            let first = random_first(&mut rng);
            let payload = random_payload(&mut rng);
            // Client frames must be masked: 1 in 10 is not (a protocol error).
            let masked = rng.below(10) != 0;
            let mut bytes = frame(&mut rng, first, &payload, masked);
            if rng.below(20) == 0 {
                // A truncated frame.
                let keep = rng.below(bytes.len() as u64) as usize;
                bytes.truncate(keep);
            }
            if s.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // Read whatever comes back for a moment, then go: a normal end, or a reset.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await;
        if rng.below(3) == 0 {
            // A TCP reset instead of a FIN (zero linger: the drop does not block).
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
        }
        drop(s);
    }

    // Every fuzzed call ends.
    for _ in 0..500 {
        if server.active_calls() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.active_calls(), 0, "fuzzed calls still running");
    // The server still serves a normal call and /healthz.
    let mut c = WsClient::connect(&server.ws_url("/call")).await;
    c.expect_text("SkipAnswer").await;
    c.text("StartSpeaking").await;
    c.audio(2).await;
    c.text("StopSpeaking").await;
    c.close().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "panics in the server");
}
