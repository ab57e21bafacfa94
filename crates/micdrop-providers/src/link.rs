//! One reconnecting WebSocket link, shared by the Gladia, Gradium STT and Gradium TTS sessions.
//!
//! A [`Link`] owns the socket of a provider session and the reconnect state machine that the
//! three sessions used to carry each in their own copy: connecting, backoff, bounded retries,
//! giving up. The session keeps only its protocol (what to send, how to read messages) and its
//! replay rules (what to re-send after a reconnection).
//!
//! **Driving it.** The session `select!`s on [`Link::next`] next to its command channel and
//! reacts to the [`LinkEvent`]s:
//!
//! - [`LinkEvent::Connected`]: a connection attempt succeeded (first or re-connection), with what
//!   the [`Connector`] returned about it (e.g. Gladia's session URL); the session replays.
//! - [`LinkEvent::Message`]: a text or binary frame (pings, pongs and raw frames are handled
//!   below).
//! - [`LinkEvent::Lost`]: an open socket closed or failed. The link is down and does **not**
//!   reconnect by itself: the session decides. With work in flight it calls [`Link::reconnect`]
//!   (a retry after backoff, or [`LinkEvent::GaveUp`] when the retries are spent or the error is
//!   final); when idle it does nothing and the link reopens on demand.
//! - [`LinkEvent::GaveUp`]: connection attempts failed `max_retries + 1` times in a row, or
//!   failed with a final error (4xx, 1008...). The link is down with a fresh retry budget: the
//!   next [`Link::open`] starts again.
//! - [`LinkEvent::Closed`]: the link closed an idle socket by itself ([`LinkPolicy::idle_close`]
//!   or [`LinkPolicy::max_age`]); the session forgets per-socket state.
//!
//! **Retry budget.** Every failed attempt counts; the count is reset only when the session says
//! the connection works ([`Link::confirm`], called on the first well-formed, non-error message),
//! so a server that accepts and then drops every connection still ends in `GaveUp`.
//!
//! **On demand.** [`Link::open`] starts connecting if the link is down (no-op otherwise), so a
//! session may open when it first needs the provider (STT at the start of a user turn, its audio
//! buffered by the session until [`LinkEvent::Connected`]; TTS when there is text to say) instead
//! of at the start of the call. While the session is not busy ([`Link::set_busy`]`(false)`), the
//! link closes the socket after [`LinkPolicy::idle_close`] and, before a provider's session cap,
//! after [`LinkPolicy::max_age`] (a fresh socket between turns instead of a close in the middle
//! of one). Closing sends the [`Link::with_goodbye`] frame first (e.g. Gladia's
//! `stop_recording`), so the provider frees the session and its concurrency slot at once.
//! With [`LinkPolicy::eager`], the socket is opened at once and reopened right after a max-age
//! recycle (the next turn does not wait for a handshake).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use micdrop_core::ProviderErrorKind;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

use crate::retry::RetryPolicy;
use crate::ws::{self, WsStream};

/// A failed connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailure {
    /// What went wrong.
    pub kind: ProviderErrorKind,
    /// Not worth retrying (bad key, refused settings, a host the policy refuses).
    pub fatal: bool,
}

impl From<ProviderErrorKind> for ConnectFailure {
    /// A failure that is final when its kind is not retryable.
    fn from(kind: ProviderErrorKind) -> Self {
        let fatal = !kind.is_retryable();
        Self { kind, fatal }
    }
}

/// How a provider opens a connection: the handshake and whatever the protocol does before the
/// socket is usable (Gladia's init request, Gradium STT's `setup`/`ready`).
pub trait Connector: Send + 'static {
    /// What the session learns about a new connection (e.g. a session URL, whether it resumed).
    type Info: std::fmt::Debug + Send + 'static;

    /// Starts one connection attempt. `&mut self` lets a connector carry state between
    /// attempts (Gladia: the session URL to resume).
    fn connect(&mut self) -> BoxFuture<'static, Result<(WsStream, Self::Info), ConnectFailure>>;
}

/// When the link opens and closes its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkPolicy {
    /// Backoff and retry budget.
    pub retry: RetryPolicy,
    /// Open at once when the session starts (and reopen right after a max-age recycle) instead
    /// of on the first [`Link::open`].
    pub eager: bool,
    /// Close the socket after this long without being busy (`None`: keep it).
    pub idle_close: Option<Duration>,
    /// Recycle the socket, between units of work, once it is this old (`None`: never). Set it
    /// below a provider's session cap (Gradium: 300 s).
    pub max_age: Option<Duration>,
}

impl LinkPolicy {
    /// An eager link that keeps its socket (no idle close, no recycle).
    pub fn eager(retry: RetryPolicy) -> Self {
        Self {
            retry,
            eager: true,
            idle_close: None,
            max_age: None,
        }
    }

    /// A link opened on demand and closed after `idle_close` without work.
    pub fn on_demand(retry: RetryPolicy, idle_close: Duration) -> Self {
        Self {
            retry,
            eager: false,
            idle_close: Some(idle_close),
            max_age: None,
        }
    }

    /// The same policy with a maximum socket age.
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }
}

/// What happened on a [`Link`].
#[derive(Debug)]
pub enum LinkEvent<I> {
    /// A connection attempt succeeded.
    Connected(I),
    /// A text or binary frame from the server.
    Message(Message),
    /// The open socket closed or failed (a close frame's code is in the kind). The link is
    /// down; call [`Link::reconnect`] to retry.
    Lost(ProviderErrorKind),
    /// The link gave up: retries spent (`Exhausted`) or a final error. The link is down with a
    /// fresh retry budget.
    GaveUp(ProviderErrorKind),
    /// The link closed an idle or old socket itself (see [`LinkPolicy`]).
    Closed,
}

enum State<I> {
    /// No socket, nothing scheduled.
    Down,
    /// A connection attempt is running.
    Connecting(BoxFuture<'static, Result<(WsStream, I), ConnectFailure>>),
    /// Waiting before the next attempt.
    Backoff(Instant),
    /// The socket is open (since `since`).
    Up { ws: Box<WsStream>, since: Instant },
}

/// A reconnecting WebSocket link (see the [module docs](self)).
pub struct Link<C: Connector> {
    name: &'static str,
    connector: C,
    policy: LinkPolicy,
    state: State<C::Info>,
    /// Failed attempts (and losses) since the last [`Link::confirm`].
    retries: u32,
    last_error: Option<ProviderErrorKind>,
    /// An event to deliver at the next [`Link::next`] (a failure noticed while sending).
    queued: Option<LinkEvent<C::Info>>,
    busy: bool,
    /// When the link last stopped being busy (or connected).
    idle_since: Instant,
    goodbye: Option<Message>,
    opened: u64,
    /// The current socket got a [`Link::confirm`].
    worked: bool,
}

impl<C: Connector> std::fmt::Debug for Link<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("name", &self.name)
            .field("state", &self.state_name())
            .field("retries", &self.retries)
            .field("busy", &self.busy)
            .finish()
    }
}

impl<C: Connector> Link<C> {
    /// A link that is down; with an eager policy, it starts connecting at once.
    pub fn new(name: &'static str, connector: C, policy: LinkPolicy) -> Self {
        let mut link = Self {
            name,
            connector,
            policy,
            state: State::Down,
            retries: 0,
            last_error: None,
            queued: None,
            busy: false,
            idle_since: Instant::now(),
            goodbye: None,
            opened: 0,
            worked: false,
        };
        if policy.eager {
            link.open();
        }
        link
    }

    /// A frame sent before the link closes a socket (idle close, recycle, [`Link::close`]).
    pub fn with_goodbye(mut self, goodbye: Message) -> Self {
        self.goodbye = Some(goodbye);
        self
    }

    /// The connector (to update what the next attempt uses, e.g. a session to resume).
    pub fn connector_mut(&mut self) -> &mut C {
        &mut self.connector
    }

    /// The policy.
    pub fn policy(&self) -> &LinkPolicy {
        &self.policy
    }

    /// Whether the socket is open.
    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// Whether the link is down with nothing scheduled (neither connecting nor backing off).
    pub fn is_down(&self) -> bool {
        matches!(self.state, State::Down)
    }

    /// Connections opened so far (a test and metrics figure).
    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    /// Failed attempts since the connection last worked.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Down => "down",
            State::Connecting(_) => "connecting",
            State::Backoff(_) => "backoff",
            State::Up { .. } => "up",
        }
    }

    /// Starts connecting if the link is down (no-op while connecting, backing off or up).
    pub fn open(&mut self) {
        if matches!(self.state, State::Down) {
            self.state = State::Connecting(self.connector.connect());
        }
    }

    /// The connection works (a well-formed, non-error message came): the retry budget is reset.
    pub fn confirm(&mut self) {
        self.retries = 0;
        self.worked = true;
    }

    /// Whether the current (or last) socket was confirmed to work: a close after that is the
    /// end of a working session (e.g. a provider's session cap), not a refusal.
    pub fn socket_worked(&self) -> bool {
        self.worked
    }

    /// Whether the session has work in flight (a turn, an utterance). An idle link may be closed
    /// ([`LinkPolicy::idle_close`]) or recycled ([`LinkPolicy::max_age`]).
    pub fn set_busy(&mut self, busy: bool) {
        if self.busy && !busy {
            self.idle_since = Instant::now();
        }
        self.busy = busy;
    }

    /// After [`LinkEvent::Lost`] with work in flight: retry after a backoff (whatever the close
    /// code: the session decided the work must go on), or queue [`LinkEvent::GaveUp`] when the
    /// retries are spent. No-op unless down.
    pub fn reconnect(&mut self, kind: ProviderErrorKind) {
        if !matches!(self.state, State::Down) {
            return;
        }
        self.failed_attempt(ConnectFailure { kind, fatal: false });
    }

    /// Gives up at once with `kind` (a final error): the link goes down and the next
    /// [`Link::next`] yields [`LinkEvent::GaveUp`].
    pub fn fail(&mut self, kind: ProviderErrorKind) {
        self.last_error = Some(kind.clone());
        self.give_up(kind);
    }

    /// Sends a frame. On failure the socket is dropped and [`LinkEvent::Lost`] is delivered by
    /// the next [`Link::next`]. Returns whether it was sent (false when not up).
    pub async fn send(&mut self, msg: Message) -> bool {
        let State::Up { ws, .. } = &mut self.state else {
            return false;
        };
        match ws.send(msg).await {
            Ok(()) => true,
            Err(e) => {
                let kind = ws::ws_error(&e);
                self.state = State::Down;
                self.last_error = Some(kind.clone());
                self.queued = Some(LinkEvent::Lost(kind));
                false
            }
        }
    }

    /// Closes the socket politely (goodbye frame, then a 1000 close, in a background task so
    /// the session never waits for it) and cancels any attempt or backoff. The link is down with
    /// a fresh retry budget; [`Link::open`] reopens it.
    pub fn close(&mut self) {
        self.retries = 0;
        self.abandon();
    }

    /// Drops the socket (closed politely in the background) or the attempt in progress, keeping
    /// the retry budget: for a socket the session found dead (no answer in time). Call
    /// [`Link::reconnect`] next to retry.
    pub fn abandon(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Down);
        self.queued = None;
        if let State::Up { ws, .. } = state {
            let goodbye = self.goodbye.clone();
            tokio::spawn(async move {
                let mut ws = *ws;
                if let Some(g) = goodbye {
                    let _ = tokio::time::timeout(Duration::from_millis(500), ws.send(g)).await;
                }
                ws::close(ws).await;
            });
        }
    }

    /// The next event. Cancel-safe: use it in `select!`. Pending forever while the link is down
    /// with nothing to do.
    pub async fn next(&mut self) -> LinkEvent<C::Info> {
        loop {
            if let Some(ev) = self.queued.take() {
                return ev;
            }
            match &mut self.state {
                State::Down => std::future::pending::<()>().await,
                State::Backoff(at) => {
                    tokio::time::sleep_until(*at).await;
                    self.state = State::Connecting(self.connector.connect());
                }
                State::Connecting(fut) => {
                    let r = fut.await;
                    match r {
                        Ok((ws, info)) => {
                            let (provider, kind) = self.labels();
                            micdrop_core::telemetry::provider_request(provider, kind);
                            self.opened += 1;
                            self.worked = false;
                            let now = Instant::now();
                            self.state = State::Up {
                                ws: Box::new(ws),
                                since: now,
                            };
                            self.idle_since = now;
                            return LinkEvent::Connected(info);
                        }
                        Err(f) => {
                            let (provider, kind) = self.labels();
                            micdrop_core::telemetry::provider_request(provider, kind);
                            micdrop_core::telemetry::provider_error(provider, kind);
                            self.state = State::Down;
                            self.failed_attempt(f);
                        }
                    }
                }
                State::Up { ws, since } => {
                    let since = *since;
                    let close_at = if self.busy {
                        None
                    } else {
                        let idle = self.policy.idle_close.map(|d| self.idle_since + d);
                        let old = self.policy.max_age.map(|d| since + d);
                        match (idle, old) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        }
                    };
                    let m = tokio::select! {
                        m = ws.next() => Some(m),
                        _ = micdrop_core::time::sleep_until(close_at) => None,
                    };
                    match m {
                        None => {
                            let recycle = self.policy.max_age.is_some_and(|d| since.elapsed() >= d);
                            debug!(link = self.name, recycle, "closing an idle socket");
                            self.close();
                            if recycle && self.policy.eager {
                                self.open();
                            }
                            return LinkEvent::Closed;
                        }
                        Some(Some(Ok(msg @ (Message::Text(_) | Message::Binary(_))))) => {
                            return LinkEvent::Message(msg);
                        }
                        Some(Some(Ok(Message::Close(frame)))) => {
                            return self.lost(ws::close_error(frame.as_ref()));
                        }
                        Some(Some(Ok(_))) => {}
                        Some(Some(Err(e))) => return self.lost(ws::ws_error(&e)),
                        Some(None) => {
                            return self.lost(ProviderErrorKind::Closed {
                                code: 1006,
                                reason: "stream ended".into(),
                            });
                        }
                    }
                }
            }
        }
    }

    fn lost(&mut self, kind: ProviderErrorKind) -> LinkEvent<C::Info> {
        let (provider, k) = self.labels();
        micdrop_core::telemetry::provider_error(provider, k);
        self.state = State::Down;
        self.last_error = Some(kind.clone());
        LinkEvent::Lost(kind)
    }

    /// A failed attempt (or a loss to retry): back off, or queue `GaveUp`.
    fn failed_attempt(&mut self, f: ConnectFailure) {
        self.last_error = Some(f.kind.clone());
        if f.fatal {
            warn!(link = self.name, error = %f.kind, "connection refused; not retrying");
            self.give_up(f.kind);
        } else if self.policy.retry.allows(self.retries) {
            let delay = self.policy.retry.delay(self.retries);
            warn!(link = self.name, error = %f.kind, retry = self.retries + 1, "connection lost; reconnecting");
            self.retries += 1;
            let (provider, kind) = self.labels();
            micdrop_core::telemetry::provider_retry(provider, kind);
            self.state = State::Backoff(Instant::now() + delay);
        } else {
            let kind = ProviderErrorKind::Exhausted {
                attempts: self.retries + 1,
                last: f.kind.to_string(),
            };
            self.give_up(kind);
        }
    }

    fn give_up(&mut self, kind: ProviderErrorKind) {
        self.state = State::Down;
        self.retries = 0;
        self.queued = Some(LinkEvent::GaveUp(kind));
    }

    /// The `provider` and `kind` labels of this link's metrics, from its name: `gladia` (STT),
    /// `gradium-stt`, `gradium-tts`, and any `<provider>-<kind>`.
    fn labels(&self) -> (&'static str, &'static str) {
        match self.name.split_once('-') {
            Some((provider, "tts")) => (provider, "tts"),
            Some((provider, _)) => (provider, "stt"),
            None => (self.name, "stt"),
        }
    }

    /// The last error seen (for logs).
    pub fn last_error(&self) -> Option<&ProviderErrorKind> {
        self.last_error.as_ref()
    }
}

#[cfg(test)]
mod tests;
