//! The guards in front of the upgrade, over real sockets: foreign origins get 403, an address
//! over `max_calls_per_ip` gets 503, failed authentications get 429 after the limit (with the
//! client's address in the log, and what actually failed), `X-Forwarded-For` only from trusted
//! proxies, and slow or silent clients are disconnected after the header-read timeout.

use std::sync::Arc;
use std::time::Duration;

use micdrop_core::call::CallConfig;
use micdrop_server::{RunningServer, ServerOptions, start};
use micdrop_testkit::{Frame, ScriptedStt, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

mod common;

async fn server(tweak: impl FnOnce(&mut ServerOptions)) -> RunningServer {
    let mut options =
        ServerOptions::with_template(CallConfig::new(Arc::new(ScriptedStt::transcripts(&[]))));
    tweak(&mut options);
    start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap()
}

/// Opens a WebSocket with extra headers: `Ok(client)` or `Err(HTTP status)`.
async fn connect(server: &RunningServer, headers: &[(&str, &str)]) -> Result<WsClient, u16> {
    let mut req = server.ws_url("/call").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(WsClient::from_stream(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn foreign_origins_get_403_before_the_upgrade() {
    let s = server(|_| {}).await;
    let own = format!("http://{}", s.local_addr());
    // A page of another site: refused.
    assert_eq!(
        connect(&s, &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(connect(&s, &[("origin", "null")]).await.err(), Some(403));
    // The server's own page, loopback pages on any port, native clients (no Origin): allowed.
    for origin in [
        own.as_str(),
        "http://localhost:5173",
        "http://127.0.0.1:3000",
    ] {
        let mut c = connect(&s, &[("origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        c.expect_text("SkipAnswer").await;
    }
    let mut c = connect(&s, &[]).await.unwrap();
    c.expect_text("SkipAnswer").await;

    // An explicit list replaces the default; "*" allows every origin.
    let s = server(|o| o.guard.allowed_origins = vec!["https://app.example.com".into()]).await;
    assert!(
        connect(&s, &[("origin", "https://app.example.com")])
            .await
            .is_ok()
    );
    assert_eq!(
        connect(&s, &[("origin", "http://localhost:5173")])
            .await
            .err(),
        Some(403)
    );
    let s = server(|o| o.guard.allowed_origins = vec!["*".into()]).await;
    assert!(
        connect(&s, &[("origin", "https://evil.example")])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn calls_per_address_get_503_beyond_the_limit() {
    let s = server(|o| o.guard.max_calls_per_ip = 2).await;
    let mut a = connect(&s, &[]).await.unwrap();
    let mut b = connect(&s, &[]).await.unwrap();
    a.expect_text("SkipAnswer").await;
    b.expect_text("SkipAnswer").await;
    assert_eq!(connect(&s, &[]).await.err(), Some(503));
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(
        connect(&s, &[("x-forwarded-for", "198.51.100.1")])
            .await
            .err(),
        Some(503)
    );
    // A call that ends frees its slot.
    a.close().await;
    let mut freed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(c) = connect(&s, &[]).await {
            freed = Some(c);
            break;
        }
    }
    freed
        .expect("the slot is freed")
        .expect_text("SkipAnswer")
        .await;

    // Behind a trusted proxy, each forwarded client has its own count.
    let s = server(|o| {
        o.guard.max_calls_per_ip = 1;
        o.guard.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let _x = connect(&s, &[("x-forwarded-for", "198.51.100.1")])
        .await
        .unwrap();
    let _y = connect(&s, &[("x-forwarded-for", "198.51.100.2")])
        .await
        .unwrap();
    assert_eq!(
        connect(&s, &[("x-forwarded-for", "198.51.100.1")])
            .await
            .err(),
        Some(503)
    );
    // The proxy's own address has its own count too.
    let _z = connect(&s, &[]).await.unwrap();
}

#[tokio::test]
async fn failed_authentications_get_429_and_are_logged_with_the_address() {
    let (logs, _guard) = common::capture_logs(tracing::Level::INFO);

    let s = server(|o| {
        o.bearer_tokens = vec!["s3cret".into()];
        o.guard.auth_failures_per_minute = 3;
        o.guard.auth_block = Duration::from_secs(2);
    })
    .await;
    let mut c = connect(&s, &[]).await.unwrap();
    c.text(r#"{"authorization":"Bearer nope"}"#).await;
    assert_eq!(c.next().await, Frame::Close(4401, "Unauthorized".into()));
    let mut c = connect(&s, &[]).await.unwrap();
    c.text(r#"{"authorization": 42}"#).await;
    assert_eq!(c.next().await, Frame::Close(4400, "Invalid params".into()));
    // A forged X-Forwarded-For does not reset the count (no trusted proxy).
    let mut c = connect(&s, &[("x-forwarded-for", "198.51.100.7")])
        .await
        .unwrap();
    c.text("{not json").await;
    assert_eq!(c.next().await, Frame::Close(4400, "Invalid params".into()));
    // Blocked: 429 before the upgrade, even with the right token.
    assert_eq!(connect(&s, &[]).await.err(), Some(429));
    // For a while only.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut c = connect(&s, &[]).await.unwrap();
    c.text(r#"{"authorization":"Bearer s3cret"}"#).await;
    c.expect_text("SkipAnswer").await;

    let text = logs.text();
    let rejected: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("call rejected"))
        .collect();
    assert_eq!(rejected.len(), 3, "{text}");
    assert!(rejected[0].contains("Unauthorized"), "{}", rejected[0]);
    assert!(rejected[1].contains("Invalid params"), "{}", rejected[1]);
    assert!(!rejected[1].contains("Unauthorized"), "{}", rejected[1]);
    for line in &rejected {
        assert!(line.contains("127.0.0.1"), "no client address: {line}");
    }
    assert!(text.contains("too many failed authentications"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn slow_or_silent_clients_are_cut_at_the_header_read_timeout() {
    let s = server(|o| o.header_read_timeout = Some(Duration::from_millis(500))).await;
    // Trickles its headers, one byte at a time, slower than the timeout allows.
    let mut slow = tokio::net::TcpStream::connect(s.local_addr())
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(s.local_addr())
        .await
        .unwrap();
    let request =
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in request {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        cut || matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the trickling client was served: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // A client that sends nothing is closed as well.
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf))
        .await
        .expect("the silent connection is closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // A normal client is served.
    let mut ok = tokio::net::TcpStream::connect(s.local_addr())
        .await
        .unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    ok.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
