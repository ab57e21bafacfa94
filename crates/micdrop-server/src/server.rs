//! The HTTP server: `GET /healthz`, `GET /readyz`, `GET /metrics` (when enabled), the WebSocket
//! call endpoint, the web page and `micdrop.js`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use micdrop_core::call::{CallConfig, CallEnd, reject, run_call};
use micdrop_core::error::MicdropError;
use micdrop_core::params::{PARAMS_TIMEOUT, wait_for_params_json};
use micdrop_core::socket::{SocketSink, SocketStream};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use crate::config::{DEFAULT_MAX_CALLS, DEFAULT_MAX_FRAME_BYTES, DEFAULT_PATH};
use crate::guard::{GuardOptions, Guards};
use crate::telemetry::{self, ActiveCall, MetricsEndpoint};

pub use crate::upgrade::SOCKET_READ_BUFFER;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// Builds the per-call config from the call's params (`None` when the server does not wait for
/// params). Returning an error closes the socket with its code (4400, 4401, 4404, ...).
pub type CallFactory =
    Arc<dyn Fn(Option<&Value>) -> Result<CallConfig, MicdropError> + Send + Sync>;

/// Called with the end of every call (conversation and duration), e.g. to store it.
pub type EndHook = Arc<dyn Fn(CallEnd) + Send + Sync>;

/// Everything the server needs; build it with [`ServerOptions::new`].
#[derive(Clone)]
pub struct ServerOptions {
    factory: CallFactory,
    /// Accepted bearer tokens; when non-empty, params with `authorization` are required.
    pub bearer_tokens: Vec<String>,
    /// Wait for params even without auth (they are then passed to the factory).
    pub require_params: bool,
    /// WebSocket path.
    pub path: String,
    /// Maximum client frame size.
    pub max_frame_bytes: usize,
    /// Maximum concurrent calls (HTTP 503 beyond).
    pub max_calls: usize,
    /// Serve the web page and `micdrop.js`.
    pub serve_assets: bool,
    /// Called at the end of each call.
    pub on_end: Option<EndHook>,
    /// Origins, calls per address, failed-authentication limit, trusted proxies.
    pub guard: GuardOptions,
    /// Servers (WebSocket URLs) the demo page may connect to with `?url=`, besides its own.
    pub demo_allowed_urls: Vec<String>,
    /// Time a client gets to send its request headers (`None`: no limit).
    pub header_read_timeout: Option<Duration>,
    /// Serve `GET /metrics` (off unless set; `micdrop serve` sets it from `[telemetry]`).
    pub metrics: Option<MetricsEndpoint>,
    /// The conversation store (`[store]`): resume, persistence (see [`crate::persist`]).
    pub store: Option<crate::persist::StoreHook>,
    /// More routes on the same listener (the admin API).
    pub routes: Option<Router>,
}

impl ServerOptions {
    /// Options with a call factory and defaults.
    pub fn new(factory: CallFactory) -> Self {
        Self {
            factory,
            bearer_tokens: Vec::new(),
            require_params: false,
            path: DEFAULT_PATH.into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_calls: DEFAULT_MAX_CALLS,
            serve_assets: true,
            on_end: None,
            guard: GuardOptions::default(),
            demo_allowed_urls: Vec::new(),
            header_read_timeout: Some(crate::http::DEFAULT_HEADER_READ_TIMEOUT),
            metrics: None,
            store: None,
            routes: None,
        }
    }

    /// Options whose every call is `template` (cloned), whatever the params.
    pub fn with_template(template: CallConfig) -> Self {
        Self::new(Arc::new(move |_| Ok(template.clone())))
    }
}

struct AppState {
    options: ServerOptions,
    guards: Guards,
    calls: Arc<Semaphore>,
    shutdown: CancellationToken,
    draining: CancellationToken,
    tracker: TaskTracker,
}

/// A running server.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    pub(crate) draining: CancellationToken,
    pub(crate) tracker: TaskTracker,
    http: tokio::task::JoinHandle<()>,
    calls: Arc<Semaphore>,
    max_calls: usize,
}

impl RunningServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/PATH` for clients.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Number of calls in progress.
    pub fn active_calls(&self) -> usize {
        self.max_calls - self.calls.available_permits()
    }

    /// Stops accepting, closes every call with 1001 (each gets its end), waits for them (at
    /// most `grace`), then returns.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.http).await;
    }
}

/// Binds `addr` and serves until [`RunningServer::shutdown`].
pub async fn start(addr: SocketAddr, options: ServerOptions) -> std::io::Result<RunningServer> {
    let guards = Guards::new(&options.guard)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let draining = CancellationToken::new();
    let tracker = TaskTracker::new();
    let calls = Arc::new(Semaphore::new(options.max_calls));
    let max_calls = options.max_calls;
    let header_read_timeout = options.header_read_timeout;
    let state = Arc::new(AppState {
        options,
        guards,
        calls: calls.clone(),
        shutdown: shutdown.clone(),
        draining: draining.clone(),
        tracker: tracker.clone(),
    });
    let app = router(state);
    let stop = shutdown.clone();
    let http = tokio::spawn(crate::http::serve(listener, app, stop, header_read_timeout));
    info!(%addr, "listening");
    Ok(RunningServer {
        addr,
        shutdown,
        draining,
        tracker,
        http,
        calls,
        max_calls,
    })
}

fn router(state: Arc<AppState>) -> Router {
    let path = state.options.path.clone();
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(&path, get(call_handler));
    if state.options.metrics.is_some() {
        app = app.route("/metrics", get(metrics));
    }
    if state.options.serve_assets {
        let index = crate::guard::demo_index(
            assets::ASSETS
                .iter()
                .find(|(n, _, _)| *n == "index.html")
                .map_or(&[][..], |a| a.2),
            &state.options.demo_allowed_urls,
        );
        app = app.route(
            "/",
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    index,
                )
            }),
        );
        for (name, _, _) in assets::ASSETS {
            if *name != "index.html" {
                let route = format!("/{name}");
                app = app.route(&route, get(move || async move { asset(name) }));
            }
        }
    }
    let extra = state.options.routes.clone();
    let app = app.with_state(state);
    match extra {
        Some(extra) => app.merge(extra),
        None => app,
    }
}

fn asset(name: &str) -> Response {
    match assets::ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, bytes)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `GET /readyz`: 200 while new calls are accepted; 503 when draining or at `max_calls`, so that
/// a load balancer sends new calls elsewhere.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.is_cancelled() || state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if state.calls.available_permits() == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "at max_calls").into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match &state.options.metrics {
        Some(m) => m.respond(&headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn call_handler(
    ws: crate::upgrade::CallUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if state.draining.is_cancelled() || state.shutdown.is_cancelled() {
        telemetry::call_rejected();
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let client = state.guards.client_ip(peer, &headers);
    if let Err(refused) = state.guards.check_origin(peer, &headers) {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        warn!(%client, origin, "call refused: origin not allowed");
        telemetry::call_rejected();
        return refused;
    }
    let ip_permit = match state.guards.admit(client) {
        Ok(p) => p,
        Err(refused) => {
            warn!(%client, status = refused.status().as_u16(), "call refused");
            telemetry::call_rejected();
            return refused;
        }
    };
    let Ok(permit) = state.calls.clone().try_acquire_owned() else {
        warn!(
            max_calls = state.options.max_calls,
            "call refused: too many calls"
        );
        telemetry::call_rejected();
        return (StatusCode::SERVICE_UNAVAILABLE, "too many calls").into_response();
    };
    let max = state.options.max_frame_bytes;
    let tracker = state.tracker.clone();
    // Small socket buffers: tungstenite's defaults (128 KiB each way) would cost far more
    // memory per idle call than the call itself (see `crate::upgrade`).
    ws.on_upgrade(crate::upgrade::socket_config(max), move |sink, stream| {
        tracker.track_future(async move {
            // Every line of the call carries the client's address (at every level): the
            // phases before and after the call run in the `client` span; the call's own span is
            // made inside it, so it is its child (its lines show the address, the call's trace
            // does not), and only the call's span is entered at each poll of the call.
            let span = tracing::error_span!("client", addr = %client);
            // Taken apart at once: only what the end of the call needs (`active`, `session`)
            // stays in the task's state while the call runs. A `PreparedCall` kept whole (or
            // the `Option` it came in) would hold the spent config, sink and stream there,
            // 1.2 KB of each idle call (docs/BENCHMARKS.md, "the call's task").
            let Some(PreparedCall {
                config,
                sink,
                stream,
                active,
                session,
            }) = Box::pin(prepare_call(&state, sink, stream, client))
                .instrument(span.clone())
                .await
            else {
                drop((ip_permit, permit));
                return;
            };
            let run = span.in_scope(|| run_call(config, sink, stream));
            let end = run.await;
            Box::pin(finish_call(&state, active, session, end))
                .instrument(span)
                .await;
            drop((ip_permit, permit));
        })
    })
}

/// A call ready to run: params checked, config made, store session begun.
struct PreparedCall {
    config: CallConfig,
    sink: SocketSink,
    stream: SocketStream,
    active: ActiveCall,
    /// Boxed: it waits in the call's task while the call runs, and most servers keep no store.
    session: Option<Box<micdrop_store::CallSession>>,
}

/// The phase before the call: params, authentication, config, store. `None`: the call was
/// rejected (and its socket closed).
async fn prepare_call(
    state: &AppState,
    sink: SocketSink,
    mut stream: SocketStream,
    client: std::net::IpAddr,
) -> Option<PreparedCall> {
    // In the active-calls gauge from the upgrade on (params included), out when dropped.
    // This phase and the one after the call are boxed when they run: the future of a call in
    // progress, held by every idle call, stays small.
    let active = ActiveCall::start();
    let opts = &state.options;
    let auth = !opts.bearer_tokens.is_empty();
    let params = if let (Some(hook), false) = (&opts.store, opts.require_params || auth) {
        let wait = Duration::from_millis(hook.store.config().params_wait_ms);
        let (params, rest) = crate::persist::optional_params(stream, wait).await;
        stream = rest;
        params
    } else if opts.require_params || auth {
        match wait_for_params_json(&mut stream, PARAMS_TIMEOUT).await {
            Ok(p) => Some(p),
            Err(e) => {
                if auth && e == MicdropError::invalid_params() {
                    state.guards.auth_failed(client);
                }
                info!(%client, code = e.code, reason = %e.message, "call rejected");
                telemetry::call_rejected();
                reject(sink, &e).await;
                return None;
            }
        }
    } else {
        None
    };
    if auth {
        if let Err(e) = check_bearer(params.as_ref(), &opts.bearer_tokens) {
            state.guards.auth_failed(client);
            info!(%client, code = e.code, reason = %e.message, "call rejected");
            telemetry::call_rejected();
            reject(sink, &e).await;
            return None;
        }
    }
    let config = match (opts.factory)(params.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            info!(%client, code = e.code, reason = %e.message, "call rejected");
            telemetry::call_rejected();
            reject(sink, &e).await;
            return None;
        }
    };
    let mut config = config.shutdown(state.shutdown.child_token());
    let mut session = None;
    if let Some(hook) = &opts.store {
        match crate::persist::begin(hook, config, params.as_ref()).await {
            Ok((c, s)) => (config, session) = (c, Some(Box::new(s))),
            Err(e) => {
                telemetry::call_rejected();
                reject(sink, &e).await;
                return None;
            }
        }
    }
    // Not held for the call's life (it is in the config already, if needed).
    drop(params);
    Some(PreparedCall {
        config,
        sink,
        stream,
        active,
        session,
    })
}

/// The phase after the call: metrics, store, the end hook.
async fn finish_call(
    state: &AppState,
    active: ActiveCall,
    session: Option<Box<micdrop_store::CallSession>>,
    end: CallEnd,
) {
    active.end(&end.reason);
    if let Some(session) = session {
        session.finish(&end).await;
    }
    if let Some(hook) = &state.options.on_end {
        hook(end);
    }
}

/// Checks `params.authorization == "Bearer <token>"` in constant time. Params that are not an
/// object are 4400 `Invalid params`; a missing or wrong token is 4401.
fn check_bearer(params: Option<&Value>, tokens: &[String]) -> Result<(), MicdropError> {
    let Some(Value::Object(map)) = params else {
        return Err(MicdropError::invalid_params());
    };
    let Some(auth) = map.get("authorization") else {
        return Err(MicdropError::unauthorized());
    };
    let Some(auth) = auth.as_str() else {
        return Err(MicdropError::invalid_params());
    };
    let given = auth.strip_prefix("Bearer ").unwrap_or("").as_bytes();
    let mut ok = false;
    for t in tokens {
        ok |= bool::from(t.as_bytes().ct_eq(given));
    }
    if ok {
        Ok(())
    } else {
        Err(MicdropError::unauthorized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer() {
        let tokens = vec!["abc".to_owned()];
        let p = |v: Value| check_bearer(Some(&v), &tokens);
        assert!(p(serde_json::json!({"authorization": "Bearer abc"})).is_ok());
        assert_eq!(
            p(serde_json::json!({"authorization": "Bearer abd"}))
                .unwrap_err()
                .code,
            4401
        );
        assert_eq!(p(serde_json::json!({})).unwrap_err().code, 4401);
        assert_eq!(p(serde_json::json!([1])).unwrap_err().code, 4400);
        assert_eq!(
            p(serde_json::json!({"authorization": 3})).unwrap_err().code,
            4400
        );
    }
}
