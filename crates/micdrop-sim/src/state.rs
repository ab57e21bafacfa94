//! Shared state of the simulators: the live script, counters, fault queues, transcript cursors.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::script::{Fault, FaultKind, SimScript, TranscriptScope};

/// One of the simulated services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Gladia live v2.
    Gladia,
    /// Gradium TTS WebSocket.
    GradiumTts,
    /// Gradium STT WebSocket.
    GradiumStt,
    /// Mistral chat completions.
    Mistral,
}

/// Counters of one service (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServiceCounters {
    /// HTTP requests received (including WebSocket upgrades).
    pub requests: u64,
    /// Sessions created (Gladia: successful inits; Gradium: sockets; Mistral: completions).
    pub sessions: u64,
    /// Sessions still open (Gladia: live sessions, not yet ended or expired; Gradium: open
    /// sockets; Mistral: requests still being answered).
    pub open_sessions: u64,
    /// WebSocket connections accepted (Mistral: 0).
    pub connections: u64,
    /// WebSocket connections still open.
    pub open_connections: u64,
    /// Faults injected.
    pub faults: u64,
    /// Requests refused (401, 4xx validation, 429 limits; not injected faults).
    pub rejected: u64,
}

/// Counters of every service (a snapshot, see [`crate::SimHandle::counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SimCounters {
    /// Gladia live v2.
    pub gladia: ServiceCounters,
    /// Gradium TTS.
    pub gradium_tts: ServiceCounters,
    /// Gradium STT.
    pub gradium_stt: ServiceCounters,
    /// Mistral chat.
    pub mistral: ServiceCounters,
}

impl SimCounters {
    /// Sum of open sessions and open connections over every service (0 when nothing leaks).
    pub fn open(&self) -> u64 {
        [
            self.gladia,
            self.gradium_tts,
            self.gradium_stt,
            self.mistral,
        ]
        .iter()
        .map(|c| c.open_sessions + c.open_connections)
        .sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct AtomicCounters {
    pub(crate) requests: AtomicU64,
    pub(crate) sessions: AtomicU64,
    pub(crate) open_sessions: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) open_connections: AtomicU64,
    pub(crate) faults: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

impl AtomicCounters {
    fn snapshot(&self) -> ServiceCounters {
        ServiceCounters {
            requests: self.requests.load(Ordering::SeqCst),
            sessions: self.sessions.load(Ordering::SeqCst),
            open_sessions: self.open_sessions.load(Ordering::SeqCst),
            connections: self.connections.load(Ordering::SeqCst),
            open_connections: self.open_connections.load(Ordering::SeqCst),
            faults: self.faults.load(Ordering::SeqCst),
            rejected: self.rejected.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn reject(&self) {
        self.rejected.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn fault(&self) {
        self.faults.fetch_add(1, Ordering::SeqCst);
    }
}

/// Decrements an open counter when dropped.
pub(crate) struct OpenGuard {
    state: Arc<SimState>,
    service: Service,
    connection: bool,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let c = self.state.counters(self.service);
        if self.connection {
            c.open_connections.fetch_sub(1, Ordering::SeqCst);
        } else {
            c.open_sessions.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

pub(crate) struct SimState {
    pub(crate) script: RwLock<SimScript>,
    gladia: AtomicCounters,
    gradium_tts: AtomicCounters,
    gradium_stt: AtomicCounters,
    mistral: AtomicCounters,
    global_transcripts: AtomicUsize,
    /// Per-call transcript cursors (`Session` scope, clients that name their call).
    call_transcripts: Mutex<std::collections::HashMap<String, usize>>,
    pub(crate) mistral_reply_cursor: AtomicUsize,
    pub(crate) mistral_bucket: Mutex<(f64, std::time::Instant)>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) gladia_sessions: Mutex<std::collections::HashMap<String, Arc<crate::gladia::Slot>>>,
}

impl SimState {
    pub(crate) fn new(script: SimScript, addr: std::net::SocketAddr) -> Self {
        Self {
            script: RwLock::new(script),
            gladia: AtomicCounters::default(),
            gradium_tts: AtomicCounters::default(),
            gradium_stt: AtomicCounters::default(),
            mistral: AtomicCounters::default(),
            global_transcripts: AtomicUsize::new(0),
            call_transcripts: Mutex::new(Default::default()),
            mistral_reply_cursor: AtomicUsize::new(0),
            mistral_bucket: Mutex::new((f64::NAN, std::time::Instant::now())),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            addr,
            gladia_sessions: Mutex::new(Default::default()),
        }
    }

    pub(crate) fn counters(&self, s: Service) -> &AtomicCounters {
        match s {
            Service::Gladia => &self.gladia,
            Service::GradiumTts => &self.gradium_tts,
            Service::GradiumStt => &self.gradium_stt,
            Service::Mistral => &self.mistral,
        }
    }

    pub(crate) fn snapshot(&self) -> SimCounters {
        SimCounters {
            gladia: self.gladia.snapshot(),
            gradium_tts: self.gradium_tts.snapshot(),
            gradium_stt: self.gradium_stt.snapshot(),
            mistral: self.mistral.snapshot(),
        }
    }

    /// A copy of the script (cheap enough: read at session start).
    pub(crate) fn script(&self) -> SimScript {
        self.script.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// A wall-clock delay, zero in zero-delay mode.
    pub(crate) fn delay(&self, ms: u64) -> Duration {
        let zero = self.script.read().map(|s| s.zero_delay).unwrap_or(false);
        if zero {
            Duration::ZERO
        } else {
            Duration::from_millis(ms)
        }
    }

    /// Opens a session (counted until the guard drops).
    pub(crate) fn open_session(self: &Arc<Self>, service: Service) -> OpenGuard {
        let c = self.counters(service);
        c.sessions.fetch_add(1, Ordering::SeqCst);
        c.open_sessions.fetch_add(1, Ordering::SeqCst);
        OpenGuard {
            state: self.clone(),
            service,
            connection: false,
        }
    }

    /// Opens a connection (counted until the guard drops).
    pub(crate) fn open_connection(self: &Arc<Self>, service: Service) -> OpenGuard {
        let c = self.counters(service);
        c.connections.fetch_add(1, Ordering::SeqCst);
        c.open_connections.fetch_add(1, Ordering::SeqCst);
        OpenGuard {
            state: self.clone(),
            service,
            connection: true,
        }
    }

    /// Takes one use of the first fault of `service` that `applies`.
    pub(crate) fn take_fault(
        &self,
        service: Service,
        applies: impl Fn(FaultKind) -> bool,
    ) -> Option<Fault> {
        let mut script = self.script.write().ok()?;
        let faults = match service {
            Service::Gladia => &mut script.gladia.faults,
            Service::GradiumTts => &mut script.gradium.tts_faults,
            Service::GradiumStt => &mut script.gradium.stt_faults,
            Service::Mistral => &mut script.mistral.faults,
        };
        let f = faults.iter_mut().find(|f| f.times > 0 && applies(f.kind))?;
        f.times -= 1;
        let taken = f.clone();
        faults.retain(|f| f.times > 0);
        self.counters(service).fault();
        Some(taken)
    }

    /// The transcript source of a new STT session.
    pub(crate) fn transcripts(self: &Arc<Self>) -> Transcripts {
        Transcripts {
            state: self.clone(),
            local: 0,
            call: None,
            inflight: 0,
        }
    }

    fn call_cursor(&self, call: &str) -> usize {
        self.call_transcripts
            .lock()
            .ok()
            .and_then(|m| m.get(call).copied())
            .unwrap_or(0)
    }

    fn advance_call(&self, call: &str) {
        if let Ok(mut m) = self.call_transcripts.lock() {
            if m.len() >= MAX_CALL_CURSORS && !m.contains_key(call) {
                // A long-running simulator: forget old calls rather than grow without bound.
                m.clear();
            }
            *m.entry(call.to_owned()).or_insert(0) += 1;
        }
    }
}

/// Calls whose transcript cursor is remembered at once.
const MAX_CALL_CURSORS: usize = 100_000;

/// Hands out scripted transcripts, one per utterance.
///
/// In `Session` scope, a session whose client names its call (Gladia `custom_metadata.micdrop_call`,
/// Gradium STT `client_req_id`) continues the call's script: a call that closes its idle session and
/// opens a new one at the next turn hears the next transcript, not the first again. The call's
/// cursor moves when an utterance is finalized, so an utterance cut by a dropped connection and
/// replayed on a new session gets the same transcript.
pub(crate) struct Transcripts {
    state: Arc<SimState>,
    local: usize,
    call: Option<String>,
    /// Utterances of this session started but not finalized (call-scoped cursor).
    inflight: usize,
}

impl std::fmt::Debug for Transcripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcripts")
            .field("local", &self.local)
            .field("call", &self.call)
            .finish()
    }
}

impl Transcripts {
    /// Continues the script of `call` (empty: this session's own script).
    pub(crate) fn set_call(&mut self, call: Option<&str>) {
        self.call = call.filter(|c| !c.is_empty()).map(str::to_owned);
    }

    /// The next scripted utterance, or `None` when the script ran out.
    pub(crate) fn next(&mut self) -> Option<String> {
        let script = self.state.script.read().ok()?;
        let i = match (script.transcript_scope, &self.call) {
            (TranscriptScope::Session, Some(call)) => {
                self.inflight += 1;
                self.state.call_cursor(call) + self.inflight - 1
            }
            (TranscriptScope::Session, None) => {
                self.local += 1;
                self.local - 1
            }
            (TranscriptScope::Global, _) => {
                self.state.global_transcripts.fetch_add(1, Ordering::SeqCst)
            }
        };
        script.transcripts.get(i).cloned()
    }

    /// The utterance started last-but-`inflight` was finalized: the call's script moves on.
    pub(crate) fn finalized(&mut self) {
        if let Some(call) = &self.call {
            if self.inflight > 0 {
                self.inflight -= 1;
                self.state.advance_call(call);
            }
        }
    }
}

/// What a transcript says when the script ran out.
pub(crate) fn heard(speech_s: f64) -> String {
    format!("({speech_s:.1} seconds of speech)")
}

/// ISO-8601 UTC with milliseconds, e.g. `2024-10-10T14:35:28.387Z`.
pub(crate) fn iso_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let ms = now.subsec_millis();
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Random alphanumeric string.
pub(crate) fn alnum(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Random lowercase hex string.
pub(crate) fn hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// The first half of `s` (cut on a character boundary): malformed JSON for fault injection.
pub(crate) fn first_half(s: &str) -> String {
    let mut i = s.len() / 2;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    s[..i].to_string()
}

/// Rounds seconds to milliseconds (wire times look like `0.188`).
pub(crate) fn ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

/// Splits text into words with their share of `[start, end]` (by character count).
pub(crate) fn spread_words(text: &str, start: f64, end: f64) -> Vec<(String, f64, f64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let total: usize = words.iter().map(|w| w.chars().count().max(1)).sum();
    let span = (end - start).max(0.0);
    let mut t = start;
    let mut out = Vec::with_capacity(words.len());
    for w in words {
        let d = span * w.chars().count().max(1) as f64 / total.max(1) as f64;
        out.push((w.to_string(), ms(t), ms(t + d)));
        t += d;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_now_has_the_wire_shape() {
        let s = iso_now();
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.ends_with('Z') && &s[4..5] == "-" && &s[10..11] == "T" && &s[19..20] == ".");
        assert!(s.starts_with("20"));
    }

    #[test]
    fn first_half_cuts_on_char_boundaries() {
        assert_eq!(first_half("{\"a\":1}"), "{\"a");
        for s in ["«»", "éé", "a«b", ""] {
            assert!(first_half(s).len() <= s.len() / 2);
        }
    }

    #[test]
    fn words_cover_the_span() {
        let w = spread_words("Bonjour tout le monde", 1.0, 2.0);
        assert_eq!(w.len(), 4);
        assert_eq!(w[0].1, 1.0);
        assert_eq!(w[3].2, 2.0);
        assert!(w.windows(2).all(|p| p[0].2 <= p[1].1 + 1e-9));
    }
}
