//! Gladia live v2 simulator: `POST /v2/live` (init) and the session WebSocket
//! (`GET /v2/live?token=...`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::audio::{Decoder, SampleFormat};
use crate::script::{FaultKind, SimScript};
use crate::state::{
    OpenGuard, Service, SimState, Transcripts, heard, hex, iso_now, ms, spread_words,
};
use crate::vad::{SpeechEvent, SpeechTracker};
use crate::ws::{Ended, Out};

/// Largest accepted audio frame (1 MiB).
const MAX_FRAME: usize = 1024 * 1024;

const LANGUAGES: &[&str] = &[
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da",
    "de", "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he",
    "hi", "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la",
    "lb", "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl",
    "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl", "sn", "so",
    "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt", "uk", "ur", "uz",
    "vi", "yi", "yo", "yue", "zh",
];

const MESSAGE_FLAGS: &[&str] = &[
    "receive_partial_transcripts",
    "receive_final_transcripts",
    "receive_speech_events",
    "receive_pre_processing_events",
    "receive_realtime_processing_events",
    "receive_post_processing_events",
    "receive_acknowledgments",
    "receive_errors",
    "receive_lifecycle_events",
];

/// The session configuration, validated.
#[derive(Debug, Clone)]
pub(crate) struct LiveConfig {
    format: SampleFormat,
    bit_depth: u32,
    sample_rate: u32,
    channels: u32,
    endpointing: f64,
    max_without_endpointing: f64,
    language: Option<String>,
    partials: bool,
    finals: bool,
    speech_events: bool,
    post_processing: bool,
    acks: bool,
    lifecycle: bool,
    /// `custom_metadata.micdrop_call`: the client's call, whose transcripts continue across its
    /// sessions.
    call: Option<String>,
}

impl LiveConfig {
    fn bytes_per_second(&self) -> f64 {
        self.sample_rate as f64 * self.channels as f64 * (self.bit_depth as f64 / 8.0)
    }
}

fn err_bool(errors: &mut Vec<String>, path: &str, v: &Value) {
    if !v.is_boolean() {
        errors.push(format!("{path} must be a boolean value"));
    }
}

fn check_object(
    errors: &mut Vec<String>,
    path: &str,
    v: &Value,
    allowed: &[&str],
) -> Option<Map<String, Value>> {
    match v.as_object() {
        Some(o) => {
            for k in o.keys() {
                if !allowed.contains(&k.as_str()) {
                    errors.push(format!("property {path}.{k} should not exist"));
                }
            }
            Some(o.clone())
        }
        None => {
            errors.push(format!("{path} must be an object"));
            None
        }
    }
}

fn number_in(errors: &mut Vec<String>, path: &str, v: &Value, lo: f64, hi: f64) -> Option<f64> {
    match v.as_f64() {
        Some(x) if x >= lo && x <= hi => Some(x),
        Some(_) => {
            errors.push(format!(
                "{path} must not be less than {lo} and not greater than {hi}"
            ));
            None
        }
        None => {
            errors.push(format!("{path} must be a number"));
            None
        }
    }
}

/// Validates an init body like the real API (unknown fields and bad enums rejected).
pub(crate) fn validate_init(body: &Value) -> Result<LiveConfig, Vec<String>> {
    let mut errors = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(vec!["body must be a JSON object".into()]);
    };
    let mut cfg = LiveConfig {
        format: SampleFormat::S16,
        bit_depth: 16,
        sample_rate: 16000,
        channels: 1,
        endpointing: 0.05,
        max_without_endpointing: 5.0,
        language: None,
        partials: false,
        finals: true,
        speech_events: true,
        post_processing: true,
        acks: true,
        lifecycle: false,
        call: None,
    };
    let mut encoding = "wav/pcm".to_string();
    for (k, v) in obj {
        match k.as_str() {
            "encoding" => match v.as_str() {
                Some(e @ ("wav/pcm" | "wav/alaw" | "wav/ulaw")) => encoding = e.to_string(),
                _ => errors.push(
                    "encoding must be one of the following values: wav/pcm, wav/alaw, wav/ulaw"
                        .into(),
                ),
            },
            "bit_depth" => match v.as_u64() {
                Some(b @ (8 | 16 | 24 | 32)) => cfg.bit_depth = b as u32,
                _ => errors
                    .push("bit_depth must be one of the following values: 8, 16, 24, 32".into()),
            },
            "sample_rate" => match v.as_u64() {
                Some(r @ (8000 | 16000 | 32000 | 44100 | 48000)) => cfg.sample_rate = r as u32,
                _ => errors.push(
                    "sample_rate must be one of the following values: 8000, 16000, 32000, 44100, 48000"
                        .into(),
                ),
            },
            "channels" => match v.as_u64() {
                Some(c) if (1..=8).contains(&c) => cfg.channels = c as u32,
                _ => errors.push("channels must not be less than 1 and not greater than 8".into()),
            },
            "custom_metadata" => {
                if !v.is_object() {
                    errors.push("custom_metadata must be an object".into());
                }
                cfg.call = v
                    .get("micdrop_call")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            "model" => {
                if v.as_str() != Some("solaria-1") {
                    errors.push("model must be one of the following values: solaria-1".into());
                }
            }
            "endpointing" => {
                if let Some(x) = number_in(&mut errors, "endpointing", v, 0.01, 10.0) {
                    cfg.endpointing = x;
                }
            }
            "maximum_duration_without_endpointing" => {
                if let Some(x) =
                    number_in(&mut errors, "maximum_duration_without_endpointing", v, 5.0, 60.0)
                {
                    cfg.max_without_endpointing = x;
                }
            }
            "language_config" => {
                if let Some(o) = check_object(
                    &mut errors,
                    "language_config",
                    v,
                    &["languages", "code_switching"],
                ) {
                    if let Some(l) = o.get("languages") {
                        match l.as_array() {
                            Some(a) => {
                                for x in a {
                                    match x.as_str() {
                                        Some(code) if LANGUAGES.contains(&code) => {
                                            if cfg.language.is_none() {
                                                cfg.language = Some(code.to_string());
                                            }
                                        }
                                        _ => errors.push(format!(
                                            "language_config.languages must only contain the following values: {}",
                                            LANGUAGES.join(", ")
                                        )),
                                    }
                                }
                            }
                            None => errors.push("language_config.languages must be an array".into()),
                        }
                    }
                    if let Some(b) = o.get("code_switching") {
                        err_bool(&mut errors, "language_config.code_switching", b);
                    }
                }
            }
            "pre_processing" => {
                if let Some(o) = check_object(
                    &mut errors,
                    "pre_processing",
                    v,
                    &["audio_enhancer", "speech_threshold"],
                ) {
                    if let Some(b) = o.get("audio_enhancer") {
                        err_bool(&mut errors, "pre_processing.audio_enhancer", b);
                    }
                    if let Some(x) = o.get("speech_threshold") {
                        number_in(&mut errors, "pre_processing.speech_threshold", x, 0.0, 1.0);
                    }
                }
            }
            "realtime_processing" => {
                let bools = [
                    "custom_vocabulary",
                    "custom_spelling",
                    "translation",
                    "named_entity_recognition",
                    "sentiment_analysis",
                ];
                let objs = [
                    "custom_vocabulary_config",
                    "custom_spelling_config",
                    "translation_config",
                ];
                let allowed: Vec<&str> = bools.iter().chain(objs.iter()).copied().collect();
                if let Some(o) = check_object(&mut errors, "realtime_processing", v, &allowed) {
                    for b in bools {
                        if let Some(x) = o.get(b) {
                            err_bool(&mut errors, &format!("realtime_processing.{b}"), x);
                        }
                    }
                    for b in objs {
                        if let Some(x) = o.get(b) {
                            if !x.is_object() {
                                errors.push(format!("realtime_processing.{b} must be an object"));
                            }
                        }
                    }
                }
            }
            "post_processing" => {
                if let Some(o) = check_object(
                    &mut errors,
                    "post_processing",
                    v,
                    &["summarization", "summarization_config", "chapterization"],
                ) {
                    for b in ["summarization", "chapterization"] {
                        if let Some(x) = o.get(b) {
                            err_bool(&mut errors, &format!("post_processing.{b}"), x);
                        }
                    }
                    if let Some(c) = o.get("summarization_config") {
                        if let Some(co) = check_object(
                            &mut errors,
                            "post_processing.summarization_config",
                            c,
                            &["type"],
                        ) {
                            if let Some(t) = co.get("type") {
                                if !t.as_str().is_some_and(|s| {
                                    ["general", "bullet_points", "concise"].contains(&s)
                                }) {
                                    errors.push("post_processing.summarization_config.type must be one of the following values: general, bullet_points, concise".into());
                                }
                            }
                        }
                    }
                }
            }
            "messages_config" => {
                if let Some(o) = check_object(&mut errors, "messages_config", v, MESSAGE_FLAGS) {
                    for (k, x) in &o {
                        err_bool(&mut errors, &format!("messages_config.{k}"), x);
                        let b = x.as_bool().unwrap_or(false);
                        match k.as_str() {
                            "receive_partial_transcripts" => cfg.partials = b,
                            "receive_final_transcripts" => cfg.finals = b,
                            "receive_speech_events" => cfg.speech_events = b,
                            "receive_post_processing_events" => cfg.post_processing = b,
                            "receive_acknowledgments" => cfg.acks = b,
                            "receive_lifecycle_events" => cfg.lifecycle = b,
                            _ => {}
                        }
                    }
                }
            }
            "callback" => err_bool(&mut errors, "callback", v),
            "callback_config" => {
                let mut allowed = vec!["url"];
                allowed.extend_from_slice(MESSAGE_FLAGS);
                if let Some(o) = check_object(&mut errors, "callback_config", v, &allowed) {
                    if !o.get("url").is_some_and(Value::is_string) {
                        errors.push("callback_config.url must be a URL address".into());
                    }
                }
            }
            other => errors.push(format!("property {other} should not exist")),
        }
    }
    cfg.format = match (encoding.as_str(), cfg.bit_depth) {
        ("wav/alaw", 8) => SampleFormat::Alaw,
        ("wav/ulaw", 8) => SampleFormat::Ulaw,
        ("wav/alaw" | "wav/ulaw", _) if obj.contains_key("bit_depth") => {
            errors.push("bit_depth must be 8 when encoding is wav/alaw or wav/ulaw".into());
            SampleFormat::S16
        }
        ("wav/alaw", _) => {
            cfg.bit_depth = 8;
            SampleFormat::Alaw
        }
        ("wav/ulaw", _) => {
            cfg.bit_depth = 8;
            SampleFormat::Ulaw
        }
        (_, 8) => SampleFormat::U8,
        (_, 24) => SampleFormat::S24,
        (_, 32) => SampleFormat::S32,
        _ => SampleFormat::S16,
    };
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

fn error_response(status: StatusCode, message: &str, validation: Option<Vec<String>>) -> Response {
    let mut body = json!({
        "timestamp": iso_now(),
        "path": "/v2/live",
        "request_id": format!("G-{}", hex(8)),
        "statusCode": status.as_u16(),
        "message": message,
    });
    if let (Some(v), Some(o)) = (validation, body.as_object_mut()) {
        o.insert("validation_errors".into(), json!(v));
    }
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert("x-aipi-call-id", HeaderValue::from_static("sim"));
    r
}

/// One live session (kept after it ends, to answer a late reconnection with 4403).
pub(crate) struct Slot {
    id: String,
    session: Arc<tokio::sync::Mutex<Session>>,
    guard: Mutex<Option<OpenGuard>>,
    ended: AtomicBool,
    ended_at: Mutex<Option<std::time::Instant>>,
    generation: AtomicU64,
}

/// Ended sessions are remembered this long (a late reconnection gets 4403, then 4404).
const FORGET_ENDED: Duration = Duration::from_secs(600);

impl Slot {
    fn end(&self) {
        if let Ok(mut t) = self.ended_at.lock() {
            t.get_or_insert_with(std::time::Instant::now);
        }
        self.ended.store(true, Ordering::SeqCst);
        if let Ok(mut g) = self.guard.lock() {
            g.take();
        }
    }
}

/// Ends a session nobody (re)connected to within the idle timeout.
fn schedule_expiry(state: &Arc<SimState>, slot: &Arc<Slot>) {
    let generation = slot.generation.load(Ordering::SeqCst);
    let idle = Duration::from_millis(state.script().gladia.idle_timeout_ms);
    let slot = slot.clone();
    let shutdown = state.shutdown.clone();
    state.tracker.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(idle) => {
                if slot.generation.load(Ordering::SeqCst) == generation {
                    slot.end();
                }
            }
            _ = shutdown.cancelled() => slot.end(),
        }
    });
}

/// `POST /v2/live`.
pub(crate) async fn init(
    State(state): State<Arc<SimState>>,
    Query(_query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let counters = state.counters(Service::Gladia);
    counters.request();
    let fault = state.take_fault(Service::Gladia, |k| {
        matches!(k, FaultKind::Status | FaultKind::Hang)
    });
    if let Some(f) = fault {
        if f.kind == FaultKind::Hang {
            state.shutdown.cancelled().await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        let status = StatusCode::from_u16(f.status.unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let msg = match status.as_u16() {
            429 => "Too many requests",
            s if s >= 500 => "Internal server error",
            _ => "Simulated error",
        };
        return error_response(status, msg, None);
    }
    let script = state.script();
    let key = headers
        .get("x-gladia-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = match &script.gladia.api_key {
        Some(k) => k.matches(key),
        None => !key.is_empty(),
    };
    if !ok {
        counters.reject();
        return error_response(StatusCode::UNAUTHORIZED, "gladia key not found", None);
    }
    let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                counters.reject();
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid JSON body: {e}"),
                    None,
                );
            }
        }
    };
    let cfg = match validate_init(&parsed) {
        Ok(c) => c,
        Err(v) => {
            counters.reject();
            return error_response(
                StatusCode::BAD_REQUEST,
                "Invalid parameter(s). See validation_errors for more details.",
                Some(v),
            );
        }
    };
    let open = counters.open_sessions.load(Ordering::SeqCst);
    if open as usize >= script.gladia.max_sessions {
        counters.reject();
        return error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "You have reached the maximum number of concurrent live sessions",
            None,
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    let token = uuid::Uuid::new_v4().to_string();
    let session = Session::new(&state, &script, id.clone(), cfg);
    let slot = Arc::new(Slot {
        id: id.clone(),
        session: Arc::new(tokio::sync::Mutex::new(session)),
        guard: Mutex::new(Some(state.open_session(Service::Gladia))),
        ended: AtomicBool::new(false),
        ended_at: Mutex::new(None),
        generation: AtomicU64::new(0),
    });
    if let Ok(mut map) = state.gladia_sessions.lock() {
        map.retain(|_, s| {
            s.ended_at
                .lock()
                .ok()
                .and_then(|t| *t)
                .is_none_or(|t| t.elapsed() < FORGET_ENDED)
        });
        map.insert(token.clone(), slot.clone());
    }
    schedule_expiry(&state, &slot);
    // The session URL uses the host the client reached us by (like the real API's own host).
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| state.addr.to_string());
    let url = format!("ws://{host}/v2/live?token={token}");
    let mut r = (
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "created_at": iso_now(), "url": url})),
    )
        .into_response();
    r.headers_mut()
        .insert("x-aipi-call-id", HeaderValue::from_static("sim"));
    r
}

/// `GET /v2/live/{id}`: a minimal result lookup.
pub(crate) async fn result(
    State(state): State<Arc<SimState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let slot = state
        .gladia_sessions
        .lock()
        .ok()
        .and_then(|m| m.values().find(|s| s.id == id).cloned());
    match slot {
        None => error_response(StatusCode::NOT_FOUND, "Session not found", None),
        Some(slot) => {
            // A connected session is locked by its socket: it is still being processed.
            let result = match slot.session.try_lock() {
                Ok(s) if slot.ended.load(Ordering::SeqCst) => {
                    json!({"transcription": s.transcription()})
                }
                _ => Value::Null,
            };
            let body = json!({
                "id": id,
                "status": if result.is_null() { "processing" } else { "done" },
                "result": result,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

/// `GET /v2/live?token=...` (WebSocket).
pub(crate) async fn websocket(
    State(state): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    state.counters(Service::Gladia).request();
    let token = query.get("token").cloned().unwrap_or_default();
    let slot = state
        .gladia_sessions
        .lock()
        .ok()
        .and_then(|m| m.get(&token).cloned());
    let guard = state.tracker.token();
    ws.max_message_size(4 * MAX_FRAME)
        .max_frame_size(4 * MAX_FRAME)
        .on_upgrade(move |socket| async move {
            let _guard = guard;
            run_socket(state, slot, socket).await;
        })
}

async fn drain_after_close(mut stream: futures::stream::SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

async fn run_socket(state: Arc<SimState>, slot: Option<Arc<Slot>>, socket: WebSocket) {
    let _conn = state.open_connection(Service::Gladia);
    let (sink, stream) = socket.split();
    let Some(slot) = slot else {
        let mut out = Out::new(sink, None);
        out.close(4404, "Session not found").await;
        drain_after_close(stream).await;
        return;
    };
    if slot.ended.load(Ordering::SeqCst) {
        let mut out = Out::new(sink, None);
        out.close(4403, "Session already ended").await;
        drain_after_close(stream).await;
        return;
    }
    let Ok(mut session) =
        tokio::time::timeout(Duration::from_secs(2), slot.session.clone().lock_owned()).await
    else {
        let mut out = Out::new(sink, None);
        out.close(4409, "Session already has a connection").await;
        drain_after_close(stream).await;
        return;
    };
    slot.generation.fetch_add(1, Ordering::SeqCst);
    let fault = state.take_fault(Service::Gladia, |k| {
        !matches!(k, FaultKind::Status | FaultKind::Hang)
    });
    let mut out = Out::new(sink, fault);
    let result = session.serve(&state, &mut out, stream).await;
    let ended = session.ended;
    drop(session);
    match result {
        Ok(stream) => {
            if let Some(stream) = stream {
                drain_after_close(stream).await;
            }
        }
        Err(Ended::Dropped) => tracing::debug!("gladia: simulated connection drop"),
        Err(_) => {}
    }
    if ended {
        slot.end();
    } else {
        slot.generation.fetch_add(1, Ordering::SeqCst);
        schedule_expiry(&state, &slot);
    }
}

struct Utt {
    id: String,
    start: f64,
    text: Option<String>,
    partials: usize,
    next_partial_at: f64,
}

/// The state of one live session (survives reconnections).
pub(crate) struct Session {
    id: String,
    cfg: LiveConfig,
    bytes: u64,
    decoder: Decoder,
    tracker: SpeechTracker,
    transcripts: Transcripts,
    language: String,
    utt: Option<Utt>,
    utt_counter: u32,
    recording_started: bool,
    stopped: bool,
    ended: bool,
    start_session_sent: bool,
    /// Finals waiting for their delay.
    pending: VecDeque<(Instant, Value)>,
    /// An utterance that stopped, kept while the same user turn may go on: (utterance, end of
    /// speech, when the end was detected).
    held: Option<(Utt, f64, Instant)>,
    /// Silence (audio time) that ends a user turn; 0 = every utterance is its own turn.
    turn_gap: f64,
    /// No audio for this long (wall clock) also ends the turn (not in strict mode).
    turn_idle: Duration,
    /// Strict mode (`strict_end_silence_ms`): the silence (audio time) after the last speech
    /// that closes an utterance, the only way besides `stop_recording` and the session cap.
    strict_end_silence: Option<f64>,
    utterances: Vec<Value>,
    partial_interval: f64,
    max_session_s: f64,
}

impl Session {
    fn new(state: &Arc<SimState>, script: &SimScript, id: String, cfg: LiveConfig) -> Self {
        let g = &script.gladia;
        Self {
            id,
            decoder: Decoder::new(cfg.format, cfg.channels as usize),
            tracker: SpeechTracker::new(
                cfg.sample_rate,
                script.speech_threshold,
                g.min_speech_ms as f64 / 1000.0,
                cfg.endpointing,
                cfg.max_without_endpointing,
            ),
            transcripts: {
                let mut t = state.transcripts();
                t.set_call(cfg.call.as_deref());
                t
            },
            language: cfg
                .language
                .clone()
                .unwrap_or_else(|| script.language.clone()),
            cfg,
            bytes: 0,
            utt: None,
            utt_counter: 0,
            recording_started: false,
            stopped: false,
            ended: false,
            start_session_sent: false,
            pending: VecDeque::new(),
            held: None,
            turn_gap: script.turn_gap_ms as f64 / 1000.0,
            turn_idle: Duration::from_millis(script.turn_idle_ms),
            strict_end_silence: (g.strict_end_silence_ms > 0)
                .then(|| g.strict_end_silence_ms as f64 / 1000.0),
            utterances: Vec::new(),
            partial_interval: (g.partial_interval_ms as f64 / 1000.0).max(0.02),
            max_session_s: g.max_session_ms as f64 / 1000.0,
        }
    }

    fn msg(&self, ty: &str, rest: Value) -> Value {
        let mut m = Map::new();
        m.insert("session_id".into(), json!(self.id));
        m.insert("created_at".into(), json!(iso_now()));
        m.insert("type".into(), json!(ty));
        if let Value::Object(o) = rest {
            m.extend(o);
        }
        Value::Object(m)
    }

    fn transcription(&self) -> Value {
        let full: Vec<&str> = self
            .utterances
            .iter()
            .filter_map(|u| u["text"].as_str())
            .map(str::trim)
            .collect();
        json!({
            "full_transcript": full.join(" "),
            "languages": [self.language],
            "utterances": self.utterances,
        })
    }

    fn utt_text(utt: &Utt, end: f64) -> String {
        utt.text
            .clone()
            .unwrap_or_else(|| heard((end - utt.start).max(0.1)))
    }

    /// The transcript message of `utt` (the first `words` words for a partial).
    fn transcript(&self, utt: &Utt, text: &str, end: f64, is_final: bool) -> Value {
        let words = spread_words(text, utt.start, end.max(utt.start));
        let conf = if is_final { 0.95 } else { 0.8 };
        let words_json: Vec<Value> = words
            .iter()
            .map(|(w, s, e)| json!({"word": format!(" {w}"), "start": s, "end": e, "confidence": conf}))
            .collect();
        let utterance = json!({
            "text": format!(" {}", text.trim()),
            "start": ms(utt.start),
            "end": ms(end),
            "language": self.language,
            "confidence": conf,
            "channel": 0,
            "words": words_json,
        });
        self.msg(
            "transcript",
            json!({"data": {"id": utt.id, "is_final": is_final, "utterance": utterance}}),
        )
    }

    /// The open utterance stopped at `end` (endpointing silence): `speech_end` now; its final
    /// waits while the same user turn may go on (see `turn_gap_ms`), unless merging is off.
    fn end_speech(&mut self, end: f64, now: Instant, delay: Duration, out: &mut Vec<Value>) {
        let Some(utt) = self.utt.take() else { return };
        if self.cfg.speech_events {
            out.push(self.msg(
                "speech_end",
                json!({"data": {"time": ms(end), "channel": 0}}),
            ));
        }
        if self.turn_gap > 0.0 || self.strict_end_silence.is_some() {
            self.finalize_held(now, delay, out);
            self.held = Some((utt, end, now));
        } else {
            self.finalize(utt, end, now, now, delay, out);
        }
    }

    /// Sends (or schedules) the final of the held utterance.
    fn finalize_held(&mut self, now: Instant, delay: Duration, out: &mut Vec<Value>) {
        if let Some((utt, end, detected)) = self.held.take() {
            self.finalize(utt, end, detected, now, delay, out);
        }
    }

    /// The final of `utt`, due `delay` after its end was detected.
    fn finalize(
        &mut self,
        utt: Utt,
        end: f64,
        detected: Instant,
        now: Instant,
        delay: Duration,
        out: &mut Vec<Value>,
    ) {
        let text = Self::utt_text(&utt, end);
        self.transcripts.finalized();
        let fin = self.transcript(&utt, &text, end, true);
        self.utterances.push(fin["data"]["utterance"].clone());
        if self.cfg.finals {
            let due = detected + delay;
            if due <= now && self.pending.is_empty() {
                out.push(fin);
            } else {
                self.pending.push_back((due.max(now), fin));
            }
        }
    }

    /// Closes the open utterance now (stop, session cap): speech_end and its final at once.
    fn finish_now(&mut self, end: f64, out: &mut Vec<Value>) {
        let now = Instant::now();
        self.finalize_held(now, Duration::ZERO, out);
        if let Some(utt) = self.utt.take() {
            if self.cfg.speech_events {
                out.push(self.msg(
                    "speech_end",
                    json!({"data": {"time": ms(end), "channel": 0}}),
                ));
            }
            self.finalize(utt, end, now, now, Duration::ZERO, out);
        }
    }

    fn on_audio(&mut self, data: &[u8], delay: Duration) -> Vec<Value> {
        let now = Instant::now();
        let mut out = Vec::new();
        if !self.recording_started {
            self.recording_started = true;
            if self.cfg.lifecycle {
                out.push(self.msg("start_recording", json!({})));
            }
        }
        let before = self.bytes;
        self.bytes += data.len() as u64;
        let bps = self.cfg.bytes_per_second();
        if self.cfg.acks {
            out.push(self.msg(
                "audio_chunk",
                json!({
                    "acknowledged": true,
                    "error": null,
                    "data": {
                        "byte_range": [before, self.bytes],
                        "time_range": [ms(before as f64 / bps), ms(self.bytes as f64 / bps)],
                    },
                }),
            ));
        }
        let samples = self.decoder.push(data);
        for ev in self.tracker.push(&samples) {
            match ev {
                SpeechEvent::Start { time } => {
                    match self.held.take() {
                        // Speech again soon after: the same user turn goes on.
                        Some((utt, end, _)) if time - end < self.turn_gap => self.utt = Some(utt),
                        held => {
                            self.held = held;
                            self.finalize_held(now, delay, &mut out);
                            let id = format!("00_{:08}", self.utt_counter);
                            self.utt_counter += 1;
                            let text = self.transcripts.next();
                            self.utt = Some(Utt {
                                id,
                                start: time,
                                text,
                                partials: 0,
                                next_partial_at: time + self.partial_interval,
                            });
                        }
                    }
                    if self.cfg.speech_events {
                        out.push(self.msg(
                            "speech_start",
                            json!({"data": {"time": ms(time), "channel": 0}}),
                        ));
                    }
                }
                SpeechEvent::End { end, .. } => self.end_speech(end, now, delay, &mut out),
            }
        }
        // The held utterance closes after the turn gap (strict mode: the trailing silence).
        let close_after = match self.strict_end_silence {
            Some(s) => s - 1e-9,
            None => self.turn_gap,
        };
        if self
            .held
            .as_ref()
            .is_some_and(|(_, end, _)| self.tracker.now() - end >= close_after)
        {
            self.finalize_held(now, delay, &mut out);
        }
        if self.cfg.partials {
            let t = self.tracker.now();
            if let Some(mut utt) = self.utt.take() {
                while t >= utt.next_partial_at {
                    utt.partials += 1;
                    utt.next_partial_at += self.partial_interval;
                    let text = Self::utt_text(&utt, t);
                    let words: Vec<&str> = text.split_whitespace().collect();
                    let n = utt.partials.min(words.len());
                    if n > 0 {
                        let partial = words[..n].join(" ");
                        out.push(self.transcript(&utt, &partial, t, false));
                    }
                }
                self.utt = Some(utt);
            }
        }
        out
    }

    /// The closing sequence after `stop_recording` (or the session cap).
    fn closing(&mut self, ack: bool) -> Vec<Value> {
        let mut out = Vec::new();
        let duration = self.bytes as f64 / self.cfg.bytes_per_second();
        if ack && self.cfg.acks {
            out.push(self.msg(
                "stop_recording",
                json!({"acknowledged": true, "error": null,
                       "data": {"recording_duration": ms(duration), "recording_left_to_process": 0.0}}),
            ));
        }
        self.stopped = true;
        out.extend(self.pending.drain(..).map(|(_, m)| m));
        let end = match self.tracker.force_end() {
            Some(SpeechEvent::End { end, .. }) => end,
            _ => self.tracker.now(),
        };
        self.finish_now(end, &mut out);
        if self.cfg.lifecycle {
            out.push(self.msg(
                "end_recording",
                json!({"data": {"recording_duration": ms(duration)}}),
            ));
        }
        if self.cfg.post_processing {
            out.push(self.msg("post_transcript", json!({"data": self.transcription()})));
            out.push(self.msg(
                "post_final_transcript",
                json!({"data": {
                    "metadata": {
                        "audio_duration": ms(duration),
                        "number_of_distinct_channels": self.cfg.channels,
                        "billing_time": ms(duration),
                        "transcription_time": 0.1,
                    },
                    "transcription": self.transcription(),
                }}),
            ));
        }
        if self.cfg.lifecycle {
            out.push(self.msg("end_session", json!({})));
        }
        self.ended = true;
        out
    }

    /// Serves one connection. `Ok(Some(stream))`: a close frame was sent, drain the stream.
    async fn serve(
        &mut self,
        state: &Arc<SimState>,
        out: &mut Out,
        mut stream: futures::stream::SplitStream<WebSocket>,
    ) -> Result<Option<futures::stream::SplitStream<WebSocket>>, Ended> {
        let script = state.script();
        let delay = state.delay(script.gladia.final_delay_ms);
        let idle = Duration::from_millis(script.gladia.idle_timeout_ms);
        let drop_acks = script.gladia.drop_acks;
        let mut last_audio = Instant::now();
        let mut chunk_gap = Duration::ZERO;
        if self.cfg.lifecycle && !self.start_session_sent {
            self.start_session_sent = true;
            out.send(&self.msg("start_session", json!({}))).await?;
        }
        loop {
            let next_final = self.pending.front().map(|(t, _)| *t);
            tokio::select! {
                msg = stream.next() => {
                    let Some(Ok(msg)) = msg else { return Ok(None) };
                    let audio: Option<Vec<u8>> = match msg {
                        Message::Binary(b) => Some(b.to_vec()),
                        Message::Text(t) => {
                            let v: Value = match serde_json::from_str(t.as_str()) {
                                Ok(v) => v,
                                Err(_) => {
                                    out.close(4400, "Invalid message: not JSON").await;
                                    return Ok(Some(stream));
                                }
                            };
                            match v["type"].as_str() {
                                Some("audio_chunk") => {
                                    let chunk = v["data"]["chunk"].as_str().unwrap_or("");
                                    match base64::engine::general_purpose::STANDARD.decode(chunk) {
                                        Ok(b) => Some(b),
                                        Err(_) => {
                                            if self.cfg.acks {
                                                let m = self.msg("audio_chunk", json!({
                                                    "acknowledged": false,
                                                    "error": {"status_code": 400, "exception": "InvalidArgument", "message": "Invalid base64 audio chunk"},
                                                    "data": null,
                                                }));
                                                out.send(&m).await?;
                                            }
                                            None
                                        }
                                    }
                                }
                                Some("stop_recording") => {
                                    if self.stopped {
                                        if self.cfg.acks {
                                            let m = self.msg("stop_recording", json!({
                                                "acknowledged": false,
                                                "error": {"status_code": 409, "exception": "ConflictError", "message": "Recording already stopped"},
                                                "data": {},
                                            }));
                                            out.send(&m).await?;
                                        }
                                        continue;
                                    }
                                    for m in self.closing(true) {
                                        out.send(&m).await?;
                                    }
                                    out.close(1000, "Session ended").await;
                                    return Ok(Some(stream));
                                }
                                _ => None,
                            }
                        }
                        // Pings are answered by the WebSocket layer.
                        Message::Ping(_) | Message::Pong(_) => None,
                        Message::Close(frame) => {
                            // A normal close (1000) ends the recording like stop_recording;
                            // any other close or a dropped connection leaves the session open
                            // for a reconnection.
                            if frame.is_some_and(|f| f.code == 1000) {
                                let _ = self.closing(false);
                            }
                            return Ok(None);
                        }
                    };
                    let Some(audio) = audio else { continue };
                    let now = Instant::now();
                    let gap = now.duration_since(last_audio);
                    if gap < Duration::from_secs(1) {
                        // Typical interval between audio messages (pauses between turns excluded).
                        chunk_gap = chunk_gap.mul_f64(0.8) + gap.mul_f64(0.2);
                    }
                    last_audio = now;
                    if self.stopped {
                        continue;
                    }
                    if audio.len() > MAX_FRAME {
                        out.close(1009, "Audio chunk larger than 1 MiB").await;
                        return Ok(Some(stream));
                    }
                    if out.fault_is(FaultKind::DropMidUtterance)
                        && self.utt.is_some()
                        && self.tracker.voiced_in_utterance() >= 0.2
                    {
                        return Err(Ended::Dropped);
                    }
                    let msgs = self.on_audio(&audio, delay);
                    for m in msgs {
                        if drop_acks && m["type"] == "audio_chunk" {
                            continue;
                        }
                        out.send(&m).await?;
                    }
                    if self.tracker.received() >= self.max_session_s {
                        for m in self.closing(false) {
                            out.send(&m).await?;
                        }
                        out.close(1000, "Maximum session duration reached").await;
                        return Ok(Some(stream));
                    }
                }
                _ = crate::ws::sleep_until_opt(self.held.as_ref().filter(|_| self.strict_end_silence.is_none()).map(|_| last_audio + self.turn_idle.max(chunk_gap * 3))) => {
                    // The client stopped streaming: the user turn is over.
                    let mut msgs = Vec::new();
                    self.finalize_held(Instant::now(), delay, &mut msgs);
                    for m in msgs {
                        out.send(&m).await?;
                    }
                }
                _ = crate::ws::sleep_until_opt(next_final) => {
                    let now = Instant::now();
                    while self.pending.front().is_some_and(|(t, _)| *t <= now) {
                        if let Some((_, m)) = self.pending.pop_front() {
                            out.send(&m).await?;
                        }
                    }
                }
                _ = tokio::time::sleep_until(last_audio + idle) => {
                    self.ended = true;
                    out.close(script.gladia.idle_close_code, "No audio received: inactivity timeout").await;
                    return Ok(Some(stream));
                }
                _ = state.shutdown.cancelled() => {
                    out.close(1001, "Server shutting down").await;
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_validation_rejects_unknown_and_bad_enums() {
        let e = validate_init(&json!({"sample_rate": 22050, "languge": "fr"})).unwrap_err();
        assert!(
            e.iter()
                .any(|m| m.starts_with("sample_rate must be one of"))
        );
        assert!(e.iter().any(|m| m == "property languge should not exist"));
        let e = validate_init(&json!({"messages_config": {"receive_partials": true}})).unwrap_err();
        assert_eq!(
            e,
            vec!["property messages_config.receive_partials should not exist"]
        );
        let ok = validate_init(&json!({
            "encoding": "wav/pcm", "bit_depth": 16, "sample_rate": 16000, "channels": 1,
            "model": "solaria-1", "endpointing": 0.1, "maximum_duration_without_endpointing": 15,
            "language_config": {"languages": ["fr"], "code_switching": false},
            "messages_config": {"receive_partial_transcripts": true, "receive_final_transcripts": true},
        }))
        .unwrap();
        assert!(ok.partials && ok.finals);
        assert_eq!(ok.language.as_deref(), Some("fr"));
    }
}
