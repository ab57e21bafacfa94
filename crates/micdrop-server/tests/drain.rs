//! Readiness and drain: `/readyz` flips to 503 at once, new upgrades get HTTP 503, calls in
//! progress go on until they end (the drain then returns at once), until the drain timeout or a
//! second signal (then 1001). Also `/readyz` at `max_calls`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use micdrop_core::call::{CallConfig, CallEnd, EndReason};
use micdrop_server::drain::DrainEnd;
use micdrop_server::{RunningServer, ServerOptions, start};
use micdrop_testkit::{Frame, ScriptedStt, WsClient, http_get};

async fn server(max_calls: usize) -> (RunningServer, Arc<Mutex<Vec<CallEnd>>>) {
    let ends = Arc::new(Mutex::new(Vec::new()));
    let e = ends.clone();
    let mut options =
        ServerOptions::with_template(CallConfig::new(Arc::new(ScriptedStt::transcripts(&[
            "Un", "Deux", "Trois",
        ]))));
    options.max_calls = max_calls;
    options.on_end = Some(Arc::new(move |end| e.lock().unwrap().push(end)));
    let server = start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    (server, ends)
}

async fn refused(server_url: &str) -> String {
    tokio_tungstenite::connect_async(server_url)
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn drain_waits_for_calls_in_progress_and_ends_when_the_last_one_does() {
    let (server, ends) = server(10).await;
    let addr = server.local_addr();
    let url = server.ws_url("/call");
    assert_eq!(http_get(addr, "/readyz", "").await, (200, "ready".into()));
    let mut a = WsClient::connect(&url).await;
    a.expect_text("SkipAnswer").await;

    let drain = tokio::spawn(server.drain(Duration::from_secs(600), std::future::pending()));
    // Ready no more, at once; liveness unchanged; new calls refused before the upgrade.
    let mut status = 0;
    for _ in 0..100 {
        status = http_get(addr, "/readyz", "").await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 503);
    assert_eq!(http_get(addr, "/healthz", "").await, (200, "ok".into()));
    let err = refused(&url).await;
    assert!(err.contains("503"), "{err}");

    // The call in progress goes on: it still answers a command.
    a.text("StartSpeaking").await;
    a.audio(10).await; // 1 s (more than 5 s at once would be an audio flood: 1008)
    a.text("StopSpeaking").await;
    a.expect_text(r#"Message {"role":"user","content":"Un"}"#)
        .await;
    a.expect_text("SkipAnswer").await;
    assert!(!drain.is_finished());

    // The caller hangs up: the drain is over, without any 1001.
    a.close().await;
    let end = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the drain ends when the last call does")
        .unwrap();
    assert_eq!(end, DrainEnd::Drained);
    let ends = ends.lock().unwrap();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].reason, EndReason::ClientClosed);
}

#[tokio::test]
async fn drain_timeout_closes_the_remaining_calls_with_1001() {
    let (server, ends) = server(10).await;
    let mut a = WsClient::connect(&server.ws_url("/call")).await;
    a.expect_text("SkipAnswer").await;
    let end = server
        .drain(Duration::from_millis(300), std::future::pending())
        .await;
    assert_eq!(end, DrainEnd::TimedOut);
    assert_eq!(
        a.next().await,
        Frame::Close(1001, "Server shutting down".into())
    );
    assert_eq!(ends.lock().unwrap()[0].reason, EndReason::Shutdown);
}

#[tokio::test]
async fn a_second_signal_ends_the_drain_at_once_with_1001() {
    let (server, ends) = server(10).await;
    let mut a = WsClient::connect(&server.ws_url("/call")).await;
    a.expect_text("SkipAnswer").await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let drain = tokio::spawn(server.drain(Duration::from_secs(600), async move {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!drain.is_finished());
    tx.send(()).unwrap();
    assert_eq!(
        a.next().await,
        Frame::Close(1001, "Server shutting down".into())
    );
    assert_eq!(drain.await.unwrap(), DrainEnd::Interrupted);
    assert_eq!(ends.lock().unwrap()[0].reason, EndReason::Shutdown);
}

#[tokio::test]
async fn a_drain_without_calls_ends_at_once() {
    let (server, _) = server(10).await;
    let end = tokio::time::timeout(
        Duration::from_secs(10),
        server.drain(Duration::from_secs(600), std::future::pending()),
    )
    .await
    .expect("nothing to wait for");
    assert_eq!(end, DrainEnd::Drained);
}

#[tokio::test]
async fn readyz_is_503_at_max_calls_and_200_again_after() {
    let (server, ends) = server(1).await;
    let addr = server.local_addr();
    let mut a = WsClient::connect(&server.ws_url("/call")).await;
    a.expect_text("SkipAnswer").await;
    assert_eq!(
        http_get(addr, "/readyz", "").await,
        (503, "at max_calls".into())
    );
    a.close().await;
    for _ in 0..200 {
        if !ends.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(http_get(addr, "/readyz", "").await, (200, "ready".into()));
}
