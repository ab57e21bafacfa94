//! Fallbacks between providers, as Micdrop's `FallbackAgent`, `FallbackSTT` and `FallbackTTS`:
//! when the current provider fails (it gave up after its own retries, or it answers nothing at
//! all within a watchdog delay), switch to the next one and replay what was not done: the same
//! chat request, the pending audio of the turn, the unspoken text.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use micdrop_core::agent::{ChatChunk, ChatModel, ChatRequest};
use micdrop_core::stt::{STT_COMMAND_CAPACITY, SpeechToText, SttCommand, SttEvent, SttSessionIo};
use micdrop_core::tts::{
    TTS_COMMAND_CAPACITY, TTS_EVENT_CAPACITY, TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo,
    UtteranceId,
};
use micdrop_core::{AgentError, ProviderErrorKind, SttError, TtsError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use micdrop_core::time::sleep_until;

/// Aborts a child session task when dropped (no detached tasks).
struct Child<C> {
    commands: mpsc::Sender<C>,
    handle: JoinHandle<()>,
}

impl<C> Drop for Child<C> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// A chat model that tries its models in turn: when one fails before any chunk reached the
/// caller, the same request goes to the next one (one full rotation per answer); the model that
/// worked last is tried first next time. A failure after text was streamed ends the answer with
/// the error (the words were already spoken).
pub struct FallbackModel {
    models: Vec<Arc<dyn ChatModel>>,
    current: Arc<AtomicUsize>,
    first_chunk_timeout: Option<Duration>,
}

impl std::fmt::Debug for FallbackModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackModel")
            .field(
                "models",
                &self.models.iter().map(|m| m.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl FallbackModel {
    /// Models in order of preference (at least one).
    pub fn new(models: Vec<Arc<dyn ChatModel>>) -> Self {
        assert!(!models.is_empty(), "FallbackModel needs at least one model");
        Self {
            models,
            current: Arc::new(AtomicUsize::new(0)),
            first_chunk_timeout: None,
        }
    }

    /// Also switch when a model yields nothing at all within `timeout` (for models without
    /// their own first-token timeout; [`MistralModel`](crate::MistralModel) has one).
    pub fn with_first_chunk_timeout(mut self, timeout: Duration) -> Self {
        self.first_chunk_timeout = Some(timeout);
        self
    }

    /// Index of the model tried first.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

struct ModelRun {
    models: Vec<Arc<dyn ChatModel>>,
    current: Arc<AtomicUsize>,
    first_chunk_timeout: Option<Duration>,
    request: ChatRequest,
    idx: usize,
    tries: usize,
    stream: Option<BoxStream<'static, Result<ChatChunk, AgentError>>>,
    yielded: bool,
    done: bool,
}

impl ModelRun {
    async fn next(mut self) -> Option<(Result<ChatChunk, AgentError>, Self)> {
        loop {
            if self.done {
                return None;
            }
            let stream = self
                .stream
                .get_or_insert_with(|| self.models[self.idx].stream(self.request.clone()));
            let item = match (self.yielded, self.first_chunk_timeout) {
                (false, Some(t)) => match tokio::time::timeout(t, stream.next()).await {
                    Ok(item) => item,
                    Err(_) => Some(Err(AgentError::new(
                        self.models[self.idx].name(),
                        ProviderErrorKind::Timeout(format!(
                            "no answer within {} ms",
                            t.as_millis()
                        )),
                    ))),
                },
                _ => stream.next().await,
            };
            match item {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Ok(c)) => {
                    self.yielded = true;
                    return Some((Ok(c), self));
                }
                Some(Err(e)) => {
                    self.stream = None;
                    self.tries += 1;
                    if self.yielded || self.tries >= self.models.len() {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                    let next = (self.idx + 1) % self.models.len();
                    micdrop_core::telemetry::fallback(
                        "llm",
                        self.models[self.idx].name(),
                        self.models[next].name(),
                    );
                    warn!(
                        failed = self.models[self.idx].name(),
                        next = self.models[next].name(),
                        error = %e,
                        "model failed; falling back"
                    );
                    self.idx = next;
                    self.current.store(next, Ordering::Relaxed);
                }
            }
        }
    }
}

impl ChatModel for FallbackModel {
    fn name(&self) -> &str {
        self.models[self.current().min(self.models.len() - 1)].name()
    }

    fn stream(&self, request: ChatRequest) -> BoxStream<'static, Result<ChatChunk, AgentError>> {
        let run = ModelRun {
            models: self.models.clone(),
            current: self.current.clone(),
            first_chunk_timeout: self.first_chunk_timeout,
            request,
            idx: self.current().min(self.models.len() - 1),
            tries: 0,
            stream: None,
            yielded: false,
            done: false,
        };
        futures::stream::unfold(run, ModelRun::next).boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Speech-to-text
// ---------------------------------------------------------------------------------------------

/// A speech-to-text provider that switches to the next provider (circularly) when the current
/// one fails, re-feeding the turn's pending audio. A provider that stays silent for `watchdog`
/// after the end of a turn counts as failed (its own copy of the turn's audio is replayed).
/// After every provider failed in a row, `Failed` reaches the call.
pub struct FallbackStt {
    providers: Vec<Arc<dyn SpeechToText>>,
    watchdog: Duration,
}

impl std::fmt::Debug for FallbackStt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackStt")
            .field(
                "providers",
                &self.providers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl FallbackStt {
    /// Providers in order of preference (at least one). Watchdog: 8 s.
    pub fn new(providers: Vec<Arc<dyn SpeechToText>>) -> Self {
        assert!(
            !providers.is_empty(),
            "FallbackStt needs at least one provider"
        );
        Self {
            providers,
            watchdog: Duration::from_secs(8),
        }
    }

    /// How long a provider may stay silent after the end of a turn.
    pub fn with_watchdog(mut self, watchdog: Duration) -> Self {
        self.watchdog = watchdog;
        self
    }
}

impl SpeechToText for FallbackStt {
    fn name(&self) -> &str {
        "fallback-stt"
    }

    fn run(&self, io: SttSessionIo) -> BoxFuture<'static, ()> {
        let providers = self.providers.clone();
        let watchdog = self.watchdog;
        Box::pin(run_stt(providers, watchdog, io))
    }
}

fn spawn_stt(p: &Arc<dyn SpeechToText>) -> (Child<SttCommand>, mpsc::Receiver<SttEvent>) {
    let (ctx, crx) = mpsc::channel(STT_COMMAND_CAPACITY);
    let (etx, erx) = mpsc::channel(STT_COMMAND_CAPACITY);
    let handle = tokio::spawn(p.run(SttSessionIo {
        commands: crx,
        events: etx,
    }));
    (
        Child {
            commands: ctx,
            handle,
        },
        erx,
    )
}

async fn run_stt(providers: Vec<Arc<dyn SpeechToText>>, watchdog: Duration, mut io: SttSessionIo) {
    let n = providers.len();
    let mut idx = 0;
    let (mut child, mut events) = spawn_stt(&providers[idx]);
    let mut turn_audio: Vec<Bytes> = Vec::new();
    let mut turn_open = false;
    let mut awaiting: Option<Instant> = None;
    let mut failures_in_row = 0usize;
    let mut turn_transcripts = 0usize;
    loop {
        enum Wake {
            Cmd(Option<SttCommand>),
            Ev(Option<SttEvent>),
            Watchdog,
        }
        let wake = tokio::select! {
            biased;
            c = io.commands.recv() => Wake::Cmd(c),
            e = events.recv() => Wake::Ev(e),
            _ = sleep_until(awaiting) => Wake::Watchdog,
        };
        let failure: Option<(SttError, Vec<Bytes>)> = match wake {
            Wake::Cmd(None) => return,
            Wake::Cmd(Some(cmd)) => {
                match &cmd {
                    SttCommand::StartTurn => {
                        turn_audio.clear();
                        turn_transcripts = 0;
                        turn_open = true;
                        awaiting = None;
                    }
                    SttCommand::Audio(b) => turn_audio.push(b.clone()),
                    SttCommand::EndTurn => {
                        if turn_open && !turn_audio.is_empty() {
                            awaiting = Some(Instant::now() + watchdog);
                        }
                        turn_open = false;
                    }
                    SttCommand::DiscardTurn => {
                        turn_open = false;
                        turn_audio.clear();
                        awaiting = None;
                    }
                }
                if child.commands.send(cmd).await.is_err() {
                    Some((
                        SttError::new(
                            providers[idx].name(),
                            ProviderErrorKind::Protocol("session ended".into()),
                        ),
                        turn_audio.clone(),
                    ))
                } else {
                    None
                }
            }
            Wake::Ev(Some(SttEvent::Failed { error, pending })) => {
                // Trust the provider's pending audio, unless it reports none although nothing
                // of this turn was transcribed (then replay our own copy).
                let pending = if pending.is_empty() && turn_transcripts == 0 {
                    turn_audio.clone()
                } else {
                    pending
                };
                Some((error, pending))
            }
            Wake::Ev(Some(ev)) => {
                if let SttEvent::Transcript(_) = &ev {
                    failures_in_row = 0;
                    turn_transcripts += 1;
                    if !turn_open {
                        awaiting = None;
                    }
                }
                if io.events.send(ev).await.is_err() {
                    return;
                }
                None
            }
            Wake::Ev(None) => Some((
                SttError::new(
                    providers[idx].name(),
                    ProviderErrorKind::Protocol("session ended".into()),
                ),
                turn_audio.clone(),
            )),
            Wake::Watchdog => Some((
                SttError::new(
                    providers[idx].name(),
                    ProviderErrorKind::Timeout(format!(
                        "no transcript within {} ms after the end of the turn",
                        watchdog.as_millis()
                    )),
                ),
                turn_audio.clone(),
            )),
        };
        let Some((error, pending)) = failure else {
            continue;
        };
        failures_in_row += 1;
        if failures_in_row >= n {
            // Everyone failed in a row: the call decides (it sends `SkipAnswer`).
            failures_in_row = 0;
            awaiting = None;
            if io
                .events
                .send(SttEvent::Failed { error, pending })
                .await
                .is_err()
            {
                return;
            }
            // Start over with a fresh session of the next provider for the next turn.
            idx = (idx + 1) % n;
            (child, events) = spawn_stt(&providers[idx]);
            continue;
        }
        let next = (idx + 1) % n;
        micdrop_core::telemetry::fallback("stt", providers[idx].name(), providers[next].name());
        warn!(
            failed = providers[idx].name(),
            next = providers[next].name(),
            error = %error,
            pending_chunks = pending.len(),
            "STT failed; falling back"
        );
        idx = next;
        (child, events) = spawn_stt(&providers[idx]);
        // Replay: the turn's pending audio, and its end if it ended.
        let finishing = awaiting.is_some();
        if turn_open || finishing || !pending.is_empty() {
            let mut replay = vec![SttCommand::StartTurn];
            replay.extend(pending.into_iter().map(SttCommand::Audio));
            if !turn_open {
                replay.push(SttCommand::EndTurn);
                awaiting = Some(Instant::now() + watchdog);
            }
            for c in replay {
                if child.commands.send(c).await.is_err() {
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text-to-speech
// ---------------------------------------------------------------------------------------------

/// A text-to-speech provider that switches to the next provider when the current one fails,
/// re-speaking the unspoken text of the utterances in flight. A provider silent for `watchdog`
/// while it owes audio counts as failed: utterances without audio yet are re-spoken whole,
/// an utterance already partly heard is ended there (`Done`), since what was heard is unknown.
pub struct FallbackTts {
    providers: Vec<Arc<dyn TextToSpeech>>,
    watchdog: Duration,
}

impl std::fmt::Debug for FallbackTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackTts")
            .field(
                "providers",
                &self.providers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl FallbackTts {
    /// Providers in order of preference (at least one). Watchdog: 10 s.
    pub fn new(providers: Vec<Arc<dyn TextToSpeech>>) -> Self {
        assert!(
            !providers.is_empty(),
            "FallbackTts needs at least one provider"
        );
        Self {
            providers,
            watchdog: Duration::from_secs(10),
        }
    }

    /// How long a provider may stay silent while it owes audio.
    pub fn with_watchdog(mut self, watchdog: Duration) -> Self {
        self.watchdog = watchdog;
        self
    }
}

impl TextToSpeech for FallbackTts {
    fn name(&self) -> &str {
        "fallback-tts"
    }

    fn run(&self, io: TtsSessionIo) -> BoxFuture<'static, ()> {
        Box::pin(run_tts(self.providers.clone(), self.watchdog, io))
    }
}

fn spawn_tts(p: &Arc<dyn TextToSpeech>) -> (Child<TtsCommand>, mpsc::Receiver<TtsEvent>) {
    let (ctx, crx) = mpsc::channel(TTS_COMMAND_CAPACITY);
    let (etx, erx) = mpsc::channel(TTS_EVENT_CAPACITY);
    let handle = tokio::spawn(p.run(TtsSessionIo {
        commands: crx,
        events: etx,
    }));
    (
        Child {
            commands: ctx,
            handle,
        },
        erx,
    )
}

/// A failure: the failed utterance with its unspoken text (none for a stall), and the error.
type TtsFailure = (Option<(UtteranceId, Vec<String>)>, TtsError);

struct FUtt {
    id: UtteranceId,
    text: String,
    ended: bool,
    audio_seen: bool,
}

async fn run_tts(providers: Vec<Arc<dyn TextToSpeech>>, watchdog: Duration, mut io: TtsSessionIo) {
    let n = providers.len();
    let mut idx = 0;
    let (mut child, mut events) = spawn_tts(&providers[idx]);
    let mut utts: VecDeque<FUtt> = VecDeque::new();
    let mut last_event = Instant::now();
    let mut failures_in_row = 0usize;
    loop {
        let owes_audio = utts.iter().any(|u| u.ended);
        let stall_at = owes_audio.then(|| last_event + watchdog);
        enum Wake {
            Cmd(Option<TtsCommand>),
            Ev(Option<TtsEvent>),
            Stalled,
        }
        let wake = tokio::select! {
            biased;
            c = io.commands.recv() => Wake::Cmd(c),
            e = events.recv() => Wake::Ev(e),
            _ = sleep_until(stall_at) => Wake::Stalled,
        };
        // (failed utterance, its unspoken text, error) or a stall.
        let failure: Option<TtsFailure> = match wake {
            Wake::Cmd(None) => return,
            Wake::Cmd(Some(cmd)) => {
                match &cmd {
                    TtsCommand::Speak(id) => {
                        if !utts.iter().any(|u| u.ended) {
                            last_event = Instant::now();
                        }
                        utts.push_back(FUtt {
                            id: *id,
                            text: String::new(),
                            ended: false,
                            audio_seen: false,
                        });
                    }
                    TtsCommand::Text(id, t) => {
                        if let Some(u) = utts.iter_mut().find(|u| u.id == *id) {
                            u.text.push_str(t);
                        }
                    }
                    TtsCommand::EndText(id) => {
                        if !utts.iter().any(|u| u.ended) {
                            last_event = Instant::now();
                        }
                        if let Some(u) = utts.iter_mut().find(|u| u.id == *id) {
                            u.ended = true;
                        }
                    }
                    TtsCommand::Cancel => utts.clear(),
                }
                if child.commands.send(cmd).await.is_err() {
                    Some((
                        None,
                        TtsError::new(
                            providers[idx].name(),
                            ProviderErrorKind::Protocol("session ended".into()),
                        ),
                    ))
                } else {
                    None
                }
            }
            Wake::Ev(Some(TtsEvent::Failed {
                utterance,
                error,
                unspoken,
            })) => Some((Some((utterance, unspoken)), error)),
            Wake::Ev(Some(ev)) => {
                last_event = Instant::now();
                match &ev {
                    TtsEvent::Audio(id, _) => {
                        failures_in_row = 0;
                        if let Some(u) = utts.iter_mut().find(|u| u.id == *id) {
                            u.audio_seen = true;
                        }
                    }
                    TtsEvent::Done(id) => utts.retain(|u| u.id != *id),
                    TtsEvent::Failed { .. } => {}
                }
                if io.events.send(ev).await.is_err() {
                    return;
                }
                None
            }
            Wake::Ev(None) => Some((
                None,
                TtsError::new(
                    providers[idx].name(),
                    ProviderErrorKind::Protocol("session ended".into()),
                ),
            )),
            Wake::Stalled => Some((
                None,
                TtsError::new(
                    providers[idx].name(),
                    ProviderErrorKind::Timeout(format!(
                        "no audio within {} ms",
                        watchdog.as_millis()
                    )),
                ),
            )),
        };
        let Some((failed, error)) = failure else {
            continue;
        };
        last_event = Instant::now();
        failures_in_row += 1;
        if failures_in_row >= n {
            failures_in_row = 0;
            // Everyone failed: report every utterance in flight to the call.
            for u in utts.drain(..) {
                let unspoken = match &failed {
                    Some((id, unspoken)) if *id == u.id => unspoken.clone(),
                    _ if u.audio_seen => Vec::new(),
                    _ => vec![u.text.clone()],
                };
                let ev = TtsEvent::Failed {
                    utterance: u.id,
                    error: error.clone(),
                    unspoken,
                };
                if io.events.send(ev).await.is_err() {
                    return;
                }
            }
            idx = (idx + 1) % n;
            (child, events) = spawn_tts(&providers[idx]);
            continue;
        }
        let next = (idx + 1) % n;
        micdrop_core::telemetry::fallback("tts", providers[idx].name(), providers[next].name());
        warn!(
            failed = providers[idx].name(),
            next = providers[next].name(),
            error = %error,
            "TTS failed; falling back"
        );
        idx = next;
        (child, events) = spawn_tts(&providers[idx]);
        // Re-speak, in order, what was not heard.
        let mut replay: Vec<TtsCommand> = Vec::new();
        let mut finished: Vec<UtteranceId> = Vec::new();
        for u in utts.iter_mut() {
            let text = match &failed {
                Some((id, unspoken)) if *id == u.id => unspoken.join(" "),
                _ if u.audio_seen => {
                    // Partly heard, by a provider that said nothing about where it stopped.
                    finished.push(u.id);
                    continue;
                }
                _ => u.text.clone(),
            };
            u.text = text.clone();
            u.audio_seen = false;
            replay.push(TtsCommand::Speak(u.id));
            if !text.is_empty() {
                replay.push(TtsCommand::Text(u.id, text));
            }
            if u.ended {
                replay.push(TtsCommand::EndText(u.id));
            }
        }
        utts.retain(|u| !finished.contains(&u.id));
        for id in finished {
            if io.events.send(TtsEvent::Done(id)).await.is_err() {
                return;
            }
        }
        for c in replay {
            if child.commands.send(c).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
