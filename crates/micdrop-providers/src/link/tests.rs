//! The link against a small loopback WebSocket server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use url::Url;

use super::*;

/// A loopback server: greets each connection with `hello N`, echoes text, closes with code
/// `c` on `close c`. Counts accepted connections and the frames "stop" received.
struct Server {
    url: Url,
    accepted: Arc<AtomicUsize>,
    goodbyes: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("ws://{}/", listener.local_addr().unwrap())).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let goodbyes = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (a, g, c) = (accepted.clone(), goodbyes.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            let (g, c) = (g.clone(), c.clone());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let _ = ws.send(Message::text(format!("hello {n}"))).await;
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) if t.as_str() == "stop" => {
                            g.fetch_add(1, Ordering::SeqCst);
                        }
                        Message::Text(t) if t.starts_with("close ") => {
                            let code: u16 = t[6..].parse().unwrap();
                            let _ = ws
                                .send(Message::Close(Some(CloseFrame {
                                    code: CloseCode::from(code),
                                    reason: "bye".into(),
                                })))
                                .await;
                        }
                        Message::Text(t) => {
                            let _ = ws.send(Message::text(t)).await;
                        }
                        Message::Close(_) => {
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    Server {
        url,
        accepted,
        goodbyes,
        closed,
    }
}

/// Connects to the server, or fails with the next scripted failure.
struct TestConnector {
    url: Url,
    failures: VecDeque<ConnectFailure>,
    attempts: Arc<AtomicUsize>,
}

impl Connector for TestConnector {
    type Info = usize;

    fn connect(&mut self) -> BoxFuture<'static, Result<(WsStream, usize), ConnectFailure>> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let failure = self.failures.pop_front();
        let url = self.url.clone();
        Box::pin(async move {
            if let Some(f) = failure {
                return Err(f);
            }
            let ws = ws::connect(&url, &[], Duration::from_secs(5)).await?;
            Ok((ws, n))
        })
    }
}

fn connector(s: &Server, failures: Vec<ConnectFailure>) -> (TestConnector, Arc<AtomicUsize>) {
    let attempts = Arc::new(AtomicUsize::new(0));
    (
        TestConnector {
            url: s.url.clone(),
            failures: failures.into(),
            attempts: attempts.clone(),
        },
        attempts,
    )
}

fn net(msg: &str) -> ConnectFailure {
    ProviderErrorKind::Network(msg.into()).into()
}

async fn next<C: Connector>(link: &mut Link<C>) -> LinkEvent<C::Info> {
    tokio::time::timeout(Duration::from_secs(10), link.next())
        .await
        .expect("an event within 10 s")
}

async fn expect_text<C: Connector>(link: &mut Link<C>, want: &str) {
    match next(link).await {
        LinkEvent::Message(Message::Text(t)) => assert_eq!(t.as_str(), want),
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn on_demand_link_connects_only_when_opened() {
    let s = server().await;
    let (c, attempts) = connector(&s, vec![]);
    let mut link = Link::new(
        "t",
        c,
        LinkPolicy::on_demand(RetryPolicy::immediate(2), Duration::from_secs(60)),
    );
    // Down: next() stays pending, nothing is opened.
    assert!(link.is_down());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), link.next())
            .await
            .is_err()
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 0);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 0);
    assert!(
        !link.send(Message::text("x")).await,
        "nothing sent while down"
    );

    link.open();
    link.open(); // idempotent
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(1)));
    assert!(link.is_up());
    expect_text(&mut link, "hello 1").await;
    assert!(link.send(Message::text("ping")).await);
    expect_text(&mut link, "ping").await;
    assert_eq!(link.connections_opened(), 1);
}

#[tokio::test]
async fn eager_link_connects_at_once() {
    let s = server().await;
    let (c, _) = connector(&s, vec![]);
    let mut link = Link::new("t", c, LinkPolicy::eager(RetryPolicy::immediate(0)));
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(1)));
    expect_text(&mut link, "hello 1").await;
}

#[tokio::test]
async fn a_lost_socket_is_reopened_only_when_the_session_asks() {
    let s = server().await;
    let (c, _) = connector(&s, vec![]);
    let mut link = Link::new("t", c, LinkPolicy::eager(RetryPolicy::immediate(3)));
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(_)));
    expect_text(&mut link, "hello 1").await;
    link.send(Message::text("close 1000")).await;
    match next(&mut link).await {
        LinkEvent::Lost(ProviderErrorKind::Closed { code, .. }) => assert_eq!(code, 1000),
        other => panic!("{other:?}"),
    }
    assert!(link.is_down());
    // Not reopened by itself.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), link.next())
            .await
            .is_err()
    );
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    // A 1000 close is not retryable by kind, but the session decides to go on.
    link.reconnect(ProviderErrorKind::Closed {
        code: 1000,
        reason: String::new(),
    });
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(2)));
    expect_text(&mut link, "hello 2").await;
    assert_eq!(link.connections_opened(), 2);
    assert_eq!(link.retries(), 1, "the loss counted");
    link.confirm();
    assert_eq!(link.retries(), 0);
}

#[tokio::test]
async fn failed_attempts_are_retried_then_the_link_gives_up() {
    let s = server().await;
    let (c, attempts) = connector(&s, vec![net("a"), net("b"), net("c")]);
    let mut link = Link::new(
        "t",
        c,
        LinkPolicy::on_demand(RetryPolicy::immediate(2), Duration::from_secs(60)),
    );
    link.open();
    match next(&mut link).await {
        LinkEvent::GaveUp(ProviderErrorKind::Exhausted { attempts: n, last }) => {
            assert_eq!(n, 3);
            assert!(last.contains('c'), "{last}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert!(link.is_down());
    // A fresh budget: the next open works.
    link.open();
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(4)));
}

#[tokio::test]
async fn a_final_failure_is_not_retried() {
    let s = server().await;
    let refused = ProviderErrorKind::Status {
        status: 401,
        body: "bad key".into(),
    };
    let (c, attempts) = connector(&s, vec![refused.clone().into()]);
    let mut link = Link::new("t", c, LinkPolicy::eager(RetryPolicy::immediate(5)));
    match next(&mut link).await {
        LinkEvent::GaveUp(kind) => assert_eq!(kind, refused),
        other => panic!("{other:?}"),
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_that_never_works_exhausts_the_budget() {
    // Accepted, then dropped each time: without a confirm the count keeps growing.
    let s = server().await;
    let (c, _) = connector(&s, vec![]);
    let mut link = Link::new("t", c, LinkPolicy::eager(RetryPolicy::immediate(2)));
    let mut gave_up = false;
    for _ in 0..20 {
        match next(&mut link).await {
            LinkEvent::Connected(_) => {
                link.send(Message::text("close 1011")).await;
            }
            LinkEvent::Lost(kind) => link.reconnect(kind),
            LinkEvent::GaveUp(kind) => {
                assert!(
                    matches!(kind, ProviderErrorKind::Exhausted { attempts: 3, .. }),
                    "{kind:?}"
                );
                gave_up = true;
                break;
            }
            LinkEvent::Message(_) | LinkEvent::Closed => {}
        }
    }
    assert!(gave_up);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_idle_socket_is_closed_with_its_goodbye_and_reopened_on_demand() {
    let s = server().await;
    let (c, _) = connector(&s, vec![]);
    let mut link = Link::new(
        "t",
        c,
        LinkPolicy::on_demand(RetryPolicy::immediate(0), Duration::from_millis(200)),
    )
    .with_goodbye(Message::text("stop"));
    link.set_busy(true);
    link.open();
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(1)));
    expect_text(&mut link, "hello 1").await;
    // Busy: kept open past the idle delay.
    assert!(
        tokio::time::timeout(Duration::from_millis(400), link.next())
            .await
            .is_err()
    );
    assert!(link.is_up());
    link.set_busy(false);
    assert!(matches!(next(&mut link).await, LinkEvent::Closed));
    assert!(link.is_down());
    for _ in 0..100 {
        if s.closed.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.goodbyes.load(Ordering::SeqCst),
        1,
        "goodbye sent before the close"
    );
    assert_eq!(s.closed.load(Ordering::SeqCst), 1, "closed politely");
    // Down and quiet until needed again.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), link.next())
            .await
            .is_err()
    );
    link.open();
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(2)));
}

#[tokio::test]
async fn an_old_socket_is_recycled_between_units_of_work() {
    let s = server().await;
    let (c, _) = connector(&s, vec![]);
    let policy =
        LinkPolicy::eager(RetryPolicy::immediate(0)).with_max_age(Some(Duration::from_millis(300)));
    let mut link = Link::new("t", c, policy);
    link.set_busy(true);
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(1)));
    expect_text(&mut link, "hello 1").await;
    // Busy past the max age: not recycled in the middle of the work.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), link.next())
            .await
            .is_err()
    );
    link.set_busy(false);
    assert!(matches!(next(&mut link).await, LinkEvent::Closed));
    // Eager: reopened at once.
    assert!(matches!(next(&mut link).await, LinkEvent::Connected(2)));
    expect_text(&mut link, "hello 2").await;
}
