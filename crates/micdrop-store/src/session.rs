//! Calls as they happen: the bounded write queue, the per-call observer, resume, end of call.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use micdrop_core::call::{CallEnd, CallEvent, EndReason};
use micdrop_core::conversation::ConversationItem;
use micdrop_core::error::MicdropError;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, warn};

use crate::db::{Store, StoreError, redact_url};
use crate::model::{NewCall, TurnRecord};
use crate::recording::StereoRecorder;
use crate::time::{now_ms, rfc3339};
use crate::webhook::{Webhook, WebhookError};

/// Default `[store] url`.
pub const DEFAULT_URL: &str = "sqlite://micdrop-data/micdrop.db";
/// Default `[store] recordings_dir`.
pub const DEFAULT_RECORDINGS_DIR: &str = "micdrop-data/recordings";
/// Default capacity of the write queue (operations).
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// Capacity of each call's observer channel (events).
pub const OBSERVER_CAPACITY: usize = 256;
/// How long a call's end waits for its observer to drain.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// Counter: operations dropped because the write queue was full.
pub const METRIC_DROPPED: &str = "micdrop_store_writes_dropped_total";
/// Counter: operations that failed in the database.
pub const METRIC_FAILED: &str = "micdrop_store_write_errors_total";
/// Counter: conversations erased by the retention job.
pub const METRIC_RETENTION: &str = "micdrop_store_retention_erased_total";
/// Counter: erasures through the admin API (conversations).
pub const METRIC_ERASED: &str = "micdrop_store_erased_total";
/// Counter: webhooks that failed after every attempt.
pub const METRIC_WEBHOOK_FAILED: &str = "micdrop_store_webhook_failures_total";

/// `[store]`: where and what to keep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (embedded) or `postgres://USER:PASSWORD@HOST:PORT/DB`.
    pub url: String,
    /// A `conversation_id` the store does not know starts a conversation with that id
    /// (default: the call is refused with 4404).
    pub create_on_unknown: bool,
    /// Record both sides of each call to a stereo WAV file.
    pub record_audio: bool,
    /// Where recordings go (created if missing).
    pub recordings_dir: PathBuf,
    /// Erase conversations whose newest call is older than this many days (0: keep forever).
    pub retention_days: u32,
    /// How often the retention job runs, in seconds.
    pub retention_interval_secs: u64,
    /// POST each call as JSON to this URL when it ends.
    pub webhook_url: Option<String>,
    /// The environment variable holding the webhook's HMAC-SHA256 secret (required with
    /// `webhook_url`).
    pub webhook_secret_env: String,
    /// Attempts per webhook (with exponential backoff from 1 s).
    pub webhook_max_attempts: u32,
    /// Capacity of the write queue; beyond it writes are dropped (logged, counted).
    pub queue_capacity: usize,
    /// PostgreSQL: end each erasure with `VACUUM FULL` (erased bytes leave the data files; the
    /// tables are locked while they are rewritten) instead of `VACUUM`.
    pub pg_vacuum_full_on_erase: bool,
    /// Without `[auth]`: how long a call waits for a first params frame before starting without
    /// params (clients that send params send them at once).
    pub params_wait_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.into(),
            create_on_unknown: false,
            record_audio: false,
            recordings_dir: DEFAULT_RECORDINGS_DIR.into(),
            retention_days: 0,
            retention_interval_secs: 3600,
            webhook_url: None,
            webhook_secret_env: "MICDROP_WEBHOOK_SECRET".into(),
            webhook_max_attempts: 5,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            pg_vacuum_full_on_erase: false,
            params_wait_ms: 500,
        }
    }
}

impl StoreConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_capacity == 0 {
            return Err("[store] queue_capacity must be at least 1".into());
        }
        if self.retention_interval_secs == 0 {
            return Err("[store] retention_interval_secs must be at least 1".into());
        }
        if self.webhook_max_attempts == 0 {
            return Err("[store] webhook_max_attempts must be at least 1".into());
        }
        if !(self.url.starts_with("sqlite:")
            || self.url.starts_with("postgres:")
            || self.url.starts_with("postgresql:"))
        {
            return Err(format!(
                "[store] url must be sqlite://PATH or postgres://…, got {:?}",
                redact_url(&self.url)
            ));
        }
        Ok(())
    }
}

/// A write for the queue.
#[derive(Debug)]
enum Op {
    Start(NewCall),
    Item {
        call_id: Arc<str>,
        conversation_id: Arc<str>,
        seq: i64,
        at: i64,
        item: ConversationItem,
    },
    CancelLastUser(Arc<str>),
    Turn(Arc<str>, TurnRecord),
    Recording(Arc<str>, String),
    End {
        call_id: Arc<str>,
        ended_at: i64,
        duration_ms: i64,
        close_code: Option<u16>,
        close_reason: Option<String>,
        end_reason: &'static str,
    },
}

async fn apply(store: &Store, op: Op) -> Result<(), StoreError> {
    match op {
        Op::Start(call) => store.start_call(&call).await,
        Op::Item {
            call_id,
            conversation_id,
            seq,
            at,
            item,
        } => {
            store
                .add_item(&call_id, &conversation_id, seq, at, &item)
                .await
        }
        Op::CancelLastUser(call_id) => store.cancel_last_user(&call_id).await,
        Op::Turn(call_id, turn) => store.add_turn(&call_id, &turn).await,
        Op::Recording(call_id, path) => store.set_recording(&call_id, &path).await,
        Op::End {
            call_id,
            ended_at,
            duration_ms,
            close_code,
            close_reason,
            end_reason,
        } => {
            store
                .end_call(
                    &call_id,
                    ended_at,
                    duration_ms,
                    close_code,
                    close_reason.as_deref(),
                    end_reason,
                )
                .await
        }
    }
}

/// The bounded write queue: calls push, one task writes. Pushing never waits.
#[derive(Debug, Clone)]
struct Writer {
    tx: mpsc::Sender<Op>,
    /// Operations queued or being written.
    pending: Arc<AtomicUsize>,
}

impl Writer {
    fn spawn(store: Store, capacity: usize) -> (Writer, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Op>(capacity);
        let pending = Arc::new(AtomicUsize::new(0));
        let done = pending.clone();
        let task = tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                if let Err(e) = apply(&store, op).await {
                    metrics::counter!(METRIC_FAILED).increment(1);
                    warn!(error = %e, "store write failed: data lost");
                }
                done.fetch_sub(1, Ordering::AcqRel);
            }
        });
        (Writer { tx, pending }, task)
    }

    fn push(&self, op: Op) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(op) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(METRIC_DROPPED).increment(1);
                warn!("store write queue full: write dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::counter!(METRIC_DROPPED).increment(1);
            }
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The store as the server uses it: the database, the write queue, recordings, webhooks and
/// the retention job.
#[derive(Debug)]
pub struct CallStore {
    store: Store,
    writer: Writer,
    config: StoreConfig,
    webhook: Option<Webhook>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database.
    #[error("store {url}: {source}")]
    Store {
        /// The URL, password redacted.
        url: String,
        /// The error.
        source: StoreError,
    },
    /// A configuration value.
    #[error("{0}")]
    Config(String),
    /// The webhook.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// What a call starts with: its conversation and the history to resume.
#[derive(Debug)]
pub struct CallBegin {
    /// The conversation id.
    pub conversation_id: String,
    /// Whether the call resumes a stored conversation.
    pub resumed: bool,
    /// The stored items to give the agent (empty for a new conversation).
    pub history: Vec<ConversationItem>,
    /// The call's session: its observer, and its end.
    pub session: CallSession,
}

/// Params keys never stored (secrets); keys containing these words are dropped too.
const SECRET_WORDS: &[&str] = &["authorization", "token", "secret", "password", "key"];

/// The params as stored: everything but secrets (`authorization` and any key whose name holds
/// `token`, `secret`, `password` or `key`, at any depth).
pub fn redact_params(params: Option<&Value>) -> Value {
    fn clean(v: &Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| {
                        let k = k.to_ascii_lowercase();
                        !SECRET_WORDS.iter().any(|w| k.contains(w))
                    })
                    .map(|(k, v)| (k.clone(), clean(v)))
                    .collect::<Map<String, Value>>(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
            other => other.clone(),
        }
    }
    match params {
        Some(p @ Value::Object(_)) => clean(p),
        _ => Value::Object(Map::new()),
    }
}

impl CallStore {
    /// Opens the database (migrations run), starts the write queue, the retention job and the
    /// webhook client.
    pub async fn start(config: StoreConfig) -> Result<Arc<CallStore>, StartError> {
        config.validate().map_err(StartError::Config)?;
        let webhook = match &config.webhook_url {
            Some(url) => Some(Webhook::from_env(
                url,
                &config.webhook_secret_env,
                config.webhook_max_attempts,
            )?),
            None => None,
        };
        if config.record_audio {
            std::fs::create_dir_all(&config.recordings_dir).map_err(|e| {
                StartError::Config(format!(
                    "cannot create [store] recordings_dir {}: {e}",
                    config.recordings_dir.display()
                ))
            })?;
        }
        let store = Store::open(&config.url)
            .await
            .map_err(|source| StartError::Store {
                url: redact_url(&config.url),
                source,
            })?
            .with_vacuum_full(config.pg_vacuum_full_on_erase);
        let (writer, writer_task) = Writer::spawn(store.clone(), config.queue_capacity);
        let this = Arc::new(CallStore {
            store,
            writer,
            config,
            webhook,
            tasks: std::sync::Mutex::new(vec![writer_task]),
        });
        if this.config.retention_days > 0 {
            let weak = Arc::downgrade(&this);
            let every = Duration::from_secs(this.config.retention_interval_secs);
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(this) = weak.upgrade() else { return };
                    let _ = this.run_retention().await;
                }
            });
            this.tasks.lock().expect("tasks").push(task);
        }
        Ok(this)
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Runs the retention job once: erases the conversations older than `retention_days`.
    /// Returns how many were erased (0 when retention is off).
    pub async fn run_retention(&self) -> Result<usize, StoreError> {
        if self.config.retention_days == 0 {
            return Ok(0);
        }
        let cutoff = now_ms() - i64::from(self.config.retention_days) * 86_400_000;
        match self.store.erase_older_than(cutoff).await {
            Ok(erased) => {
                metrics::counter!(METRIC_RETENTION).increment(erased.conversations as u64);
                info!(
                    conversations = erased.conversations,
                    calls = erased.calls.len(),
                    recordings = erased.recordings,
                    retention_days = self.config.retention_days,
                    "retention: old conversations erased"
                );
                Ok(erased.conversations)
            }
            Err(e) => {
                warn!(error = %e, "retention job failed");
                Err(e)
            }
        }
    }

    /// Waits until the queued writes are done (at most `grace`), then stops the background
    /// tasks. Returns whether every write was done.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let drained = self.flush(grace).await;
        if !drained {
            warn!(
                pending = self.writer.pending.load(Ordering::Acquire),
                "store: queued writes not done at shutdown"
            );
        }
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
        drained
    }

    /// Waits until every queued write is done (at most `timeout`); returns whether it is.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.writer.pending.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Starts storing a call: resolves `conversation_id` from the params (4404 if unknown,
    /// unless `create_on_unknown`), loads the history to resume, records the call's start.
    /// `call_id` must be unique across instances (a UUID).
    pub async fn begin_call(
        self: &Arc<Self>,
        call_id: &str,
        params: Option<&Value>,
        provider_hosts: Vec<String>,
    ) -> Result<CallBegin, MicdropError> {
        let started_at = now_ms();
        let obj = params.and_then(Value::as_object);
        let requested = match obj.and_then(|m| m.get("conversation_id")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => Some(s.clone()),
            Some(_) => return Err(MicdropError::invalid_params()),
        };
        let user_ref = match obj.and_then(|m| m.get("user_ref")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= 200 => Some(s.clone()),
            Some(_) => return Err(MicdropError::invalid_params()),
        };
        let (conversation_id, resumed, history) = match requested {
            None => (call_id.to_owned(), false, Vec::new()),
            Some(id) => {
                let items = self.store.conversation_items(&id).await.map_err(|e| {
                    warn!(error = %e, "store unavailable: cannot resume");
                    MicdropError::new(1011, "Store unavailable")
                })?;
                if !items.is_empty() {
                    (id, true, items.into_iter().map(|i| i.item).collect())
                } else {
                    let exists = self.store.conversation_exists(&id).await.map_err(|e| {
                        warn!(error = %e, "store unavailable: cannot resume");
                        MicdropError::new(1011, "Store unavailable")
                    })?;
                    if exists {
                        (id, true, Vec::new())
                    } else if self.config.create_on_unknown {
                        (id, false, Vec::new())
                    } else {
                        info!("call rejected: unknown conversation_id");
                        return Err(MicdropError::new(4404, "Conversation not found"));
                    }
                }
            }
        };
        let call_id: Arc<str> = Arc::from(call_id);
        let conversation: Arc<str> = Arc::from(conversation_id.as_str());
        let redacted = redact_params(params);
        self.writer.push(Op::Start(NewCall {
            id: call_id.to_string(),
            conversation_id: conversation_id.clone(),
            started_at,
            user_ref: user_ref.clone(),
            resumed,
            provider_hosts: provider_hosts.clone(),
            params: redacted.clone(),
        }));
        let recorder = if self.config.record_audio {
            let path = self
                .config
                .recordings_dir
                .join(format!("{}.wav", safe_file_name(&call_id)));
            match StereoRecorder::create(&path) {
                Ok(r) => {
                    self.writer
                        .push(Op::Recording(call_id.clone(), path.display().to_string()));
                    Some(r)
                }
                Err(e) => {
                    warn!(error = %e, path = %path.display(), "cannot create the recording: call not recorded");
                    None
                }
            }
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(OBSERVER_CAPACITY);
        let task = tokio::spawn(
            observe(
                rx,
                self.writer.clone(),
                call_id.clone(),
                conversation.clone(),
                recorder,
            )
            .instrument(tracing::Span::current()),
        );
        Ok(CallBegin {
            conversation_id,
            resumed,
            history,
            session: CallSession {
                store: self.clone(),
                call_id,
                conversation_id: conversation,
                started_at,
                started: Instant::now(),
                user_ref,
                resumed,
                params: redacted,
                provider_hosts,
                observer: Some(tx),
                task,
            },
        })
    }
}

/// Keeps `[A-Za-z0-9_-]` (call ids are UUIDs; anything else cannot escape the directory).
fn safe_file_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the observer task saw, for the end of the call.
#[derive(Debug, Default)]
struct Observed {
    items: Vec<ConversationItem>,
    turns: Vec<TurnRecord>,
    recording: Option<PathBuf>,
}

async fn observe(
    mut rx: mpsc::Receiver<CallEvent>,
    writer: Writer,
    call_id: Arc<str>,
    conversation_id: Arc<str>,
    mut recorder: Option<StereoRecorder>,
) -> Observed {
    let mut seq: i64 = 0;
    let mut observed = Observed::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            CallEvent::Message(item) => {
                observed.items.push(item.clone());
                writer.push(Op::Item {
                    call_id: call_id.clone(),
                    conversation_id: conversation_id.clone(),
                    seq,
                    at: now_ms(),
                    item,
                });
                seq += 1;
            }
            CallEvent::CancelLastUserMessage => {
                if let Some(pos) = observed
                    .items
                    .iter()
                    .rposition(|i| matches!(i, ConversationItem::User { .. }))
                {
                    observed.items.remove(pos);
                }
                writer.push(Op::CancelLastUser(call_id.clone()));
            }
            CallEvent::UserAudio(pcm) => {
                if let Some(r) = recorder.as_mut() {
                    r.user(&pcm);
                }
            }
            CallEvent::AssistantAudio(pcm) => {
                if let Some(r) = recorder.as_mut() {
                    r.assistant(&pcm);
                }
            }
            CallEvent::TurnLatencies(l) => {
                let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
                let at_ms = now_ms();
                let turn = TurnRecord {
                    call_id: call_id.to_string(),
                    seq: observed.turns.len() as i64,
                    at_ms,
                    at: rfc3339(at_ms),
                    stt_ms: ms(l.stt),
                    llm_first_token_ms: ms(l.llm_first_token),
                    tts_first_audio_ms: ms(l.tts_first_audio),
                    voice_to_voice_ms: ms(l.voice_to_voice),
                };
                observed.turns.push(turn.clone());
                writer.push(Op::Turn(call_id.clone(), turn));
            }
            CallEvent::EndCall => {}
        }
    }
    if let Some(r) = recorder {
        observed.recording = r.finish();
    }
    observed
}

/// A stored call in progress: give [`CallSession::observer`] to the call's config, then
/// [`CallSession::finish`] with its end.
#[derive(Debug)]
pub struct CallSession {
    store: Arc<CallStore>,
    call_id: Arc<str>,
    conversation_id: Arc<str>,
    started_at: i64,
    started: Instant,
    user_ref: Option<String>,
    resumed: bool,
    params: Value,
    provider_hosts: Vec<String>,
    observer: Option<mpsc::Sender<CallEvent>>,
    task: JoinHandle<Observed>,
}

/// The close code, its reason and a name for why a call ended.
pub fn end_fields(reason: &EndReason) -> (Option<u16>, Option<String>, &'static str) {
    match reason {
        EndReason::ClientClosed => (None, None, "client_closed"),
        EndReason::Idle => (Some(1000), Some("Idle timeout".into()), "idle"),
        EndReason::Shutdown => (Some(1001), Some("Server shutting down".into()), "shutdown"),
        EndReason::HungUp => (None, None, "hung_up"),
        EndReason::SocketError(e) => (
            e.close_code(),
            e.close_code().map(|_| e.close_reason().to_owned()),
            "socket_error",
        ),
        EndReason::AudioFlood(_) => (
            Some(micdrop_core::call_budget::CLOSE_POLICY_VIOLATION),
            Some(micdrop_core::call_budget::AUDIO_FLOOD_REASON.into()),
            "audio_flood",
        ),
    }
}

impl CallSession {
    /// The call's id.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The observer to set on the call's config (`CallConfig::observer`); once only.
    pub fn observer(&mut self) -> mpsc::Sender<CallEvent> {
        match &self.observer {
            Some(tx) => tx.clone(),
            None => mpsc::channel(1).0,
        }
    }

    /// Records the end of the call (after its last events are written), finishes the recording
    /// and sends the webhook. Never fails: problems are logged and counted.
    pub async fn finish(mut self, end: &CallEnd) {
        drop(self.observer.take());
        let abort = self.task.abort_handle();
        let observed = match tokio::time::timeout(FINISH_GRACE, &mut self.task).await {
            Ok(Ok(o)) => o,
            _ => {
                abort.abort();
                warn!("call observer did not drain in time");
                Observed::default()
            }
        };
        let ended_at = now_ms();
        let duration_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (mut close_code, mut close_reason, end_reason) = end_fields(&end.reason);
        // The close frame that ended the call (the server's or the client's), when known.
        if let Some(close) = &end.close {
            close_code = Some(close.code);
            close_reason = Some(close.reason.clone());
        }
        self.store.writer.push(Op::End {
            call_id: self.call_id.clone(),
            ended_at,
            duration_ms,
            close_code,
            close_reason: close_reason.clone(),
            end_reason,
        });
        if let Some(webhook) = &self.store.webhook {
            let body = json!({
                "event": "call.ended",
                "call": {
                    "id": &*self.call_id,
                    "conversation_id": &*self.conversation_id,
                    "started_at": rfc3339(self.started_at),
                    "ended_at": rfc3339(ended_at),
                    "duration_ms": duration_ms,
                    "close_code": close_code,
                    "close_reason": close_reason,
                    "end_reason": end_reason,
                    "user_ref": self.user_ref,
                    "resumed": self.resumed,
                    "provider_hosts": self.provider_hosts,
                    "params": self.params,
                    "has_recording": observed.recording.is_some(),
                },
                "items": observed.items,
                "turns": observed.turns,
            });
            webhook.send(body);
        }
    }
}
