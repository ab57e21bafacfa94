//! The call task: the `select!` loop and Micdrop's server rules (reference §C, numbered where
//! they are enforced), over the owning values of this module's siblings.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use super::answer::Answer;
use super::latency::LatencyProbe;
use super::outbox::Outbox;
use super::trace::CallTrace;
use super::user_turn::{AudioVerdict, Prediction, UserTurn};
use super::woken::WokenOnly;
use super::{
    CallClose, CallConfig, CallEnd, CallEvent, Control, EndReason, PROVIDER_CLOSE_GRACE,
    TurnLatencies,
};
use crate::agent::AgentEvent;
use crate::call_budget::{AUDIO_FLOOD_REASON, AudioFlood, CLOSE_POLICY_VIOLATION};
use crate::conversation::{Conversation, ConversationItem, Role};
use crate::protocol::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, ClientCommand, ClientFrame, ServerFrame, WsMessage,
    decode_client_frame,
};
use crate::socket::{SocketError, SocketSink, SocketStream};
use crate::stt::{STT_COMMAND_CAPACITY, SttCommand, SttEvent, SttSessionIo};
use crate::telemetry::{self, Stage};
use crate::tts::{
    TTS_COMMAND_CAPACITY, TTS_EVENT_CAPACITY, TtsCommand, TtsEvent, TtsSessionIo, UtteranceId,
};

/// A turn detector's verdict: (user turn number, complete).
type Verdict = (u64, bool);

/// Capacity of an STT session's event channel.
const STT_EVENT_CAPACITY: usize = 64;
/// Most events taken from one channel after the one that woke the call (see `run`).
const DRAIN_MAX: usize = 64;

/// What woke the call task up.
enum Wake {
    Shutdown,
    Client(Option<Result<WsMessage, SocketError>>),
    Control(Control),
    Agent(Option<AgentEvent>),
    Tts(TtsEvent),
    Stt(SttEvent),
    Written(Result<(), SocketError>),
    Paced,
    Prediction(u64, bool),
    HeldTurnExpired,
    TranscriptTimeout,
    Idle,
}

impl Wake {
    /// The commonest wake-ups, handled outside the call's span (see [`CallTask::run`]): a user
    /// audio frame, a paced burst, a write done, TTS events (audio, mostly).
    fn is_quiet(&self) -> bool {
        matches!(
            self,
            Wake::Paced
                | Wake::Written(Ok(()))
                | Wake::Client(Some(Ok(WsMessage::Binary(_))))
                | Wake::Tts(_)
        )
    }
}

/// A job of the serial answer/speak queue.
#[derive(Debug)]
enum Job {
    Answer,
    Speak(String),
}

/// The sending and receiving ends of a provider session.
struct Session<C, E> {
    commands: mpsc::Sender<C>,
    events: mpsc::Receiver<E>,
}

/// One call's state (see the module docs of [`super`]).
pub(super) struct CallTask {
    config: CallConfig,
    id: String,
    started: Instant,
    conversation: Conversation,
    /// Id of the last item that an answer was started for (Micdrop's `lastMessageSpeeched`).
    last_answered: Option<u64>,
    user: UserTurn,
    queue: VecDeque<Job>,
    answer: Option<Answer>,
    /// The latencies of the last user turn, until they are reported.
    probe: Option<Box<LatencyProbe>>,
    /// Created only when a turn detector is configured (channels cost memory per call).
    predictions: Option<(mpsc::Sender<Verdict>, mpsc::Receiver<Verdict>)>,
    next_utterance: UtteranceId,
    outbox: Outbox,
    /// Commands of the embedding code (`None` for [`super::run_call`]: no handle, no channel).
    control: Option<mpsc::Receiver<Control>>,
    stt: Option<Session<SttCommand, SttEvent>>,
    tts: Option<Session<TtsCommand, TtsEvent>>,
    providers: Vec<JoinHandle<()>>,
    /// The trace spans: the turn in progress, the TTS utterances.
    trace: CallTrace,
}

impl CallTask {
    pub(super) fn new(
        config: CallConfig,
        id: String,
        sink: SocketSink,
        control: Option<mpsc::Receiver<Control>>,
    ) -> Self {
        let mut conversation = match &config.agent {
            Some(agent) => Conversation::with_system(agent.system_prompt()),
            None => Conversation::new(),
        };
        for item in &config.history {
            conversation.push(item.clone());
        }
        let predictions = config.turn_detector.is_some().then(|| mpsc::channel(4));
        let outbox = Outbox::new(sink, config.audio_lead);
        // Created inside the call's span (see `start_call`).
        let trace = CallTrace::new(
            tracing::Span::current(),
            &id,
            config.stt.name(),
            config.tts.as_ref().map(|t| t.name()),
        );
        Self {
            config,
            id,
            started: Instant::now(),
            conversation,
            last_answered: None,
            user: UserTurn::default(),
            queue: VecDeque::new(),
            answer: None,
            probe: None,
            predictions,
            next_utterance: 1,
            outbox,
            control,
            stt: None,
            tts: None,
            providers: Vec::new(),
            trace,
        }
    }

    /// Starts the STT session if it is not running (at the first `StartSpeaking`: an idle
    /// call holds no provider session, channel or task).
    fn ensure_stt(&mut self) {
        if self.stt.is_some() {
            return;
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(STT_COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = mpsc::channel(STT_EVENT_CAPACITY);
        let fut = self.config.stt.run(SttSessionIo {
            commands: cmd_rx,
            events: ev_tx,
        });
        self.spawn_session(fut);
        self.stt = Some(Session {
            commands: cmd_tx,
            events: ev_rx,
        });
    }

    /// Spawns a provider session in the call's span (the call task does not enter it at each
    /// wake-up, see `run`; the session's lines carry the call id).
    fn spawn_session(&mut self, session: BoxFuture<'static, ()>) {
        let span = self.trace.call_span().clone();
        self.providers.push(tokio::spawn(session.instrument(span)));
    }

    /// Starts the TTS session if there is a TTS and it is not running: at the first utterance,
    /// or at a `StopSpeaking` that will be answered (its connection is then set up while the
    /// STT and the model work).
    fn ensure_tts(&mut self) {
        if self.tts.is_some() {
            return;
        }
        let Some(tts) = &self.config.tts else {
            return;
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(TTS_COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = mpsc::channel(TTS_EVENT_CAPACITY);
        let fut = tts.run(TtsSessionIo {
            commands: cmd_rx,
            events: ev_tx,
        });
        self.spawn_session(fut);
        self.tts = Some(Session {
            commands: cmd_tx,
            events: ev_rx,
        });
    }

    /// Runs the call to its end. The task is boxed and the end of the call (`finish`) is
    /// boxed when it comes: the future of an idle call stays small (it is most of an idle
    /// call's memory), and its timers are one `Sleep` (the earliest deadline) instead of one
    /// per deadline.
    ///
    /// The call's span is entered to handle a wake-up, but not for the commonest ones
    /// ([`Wake::is_quiet`]: not entering it at each of them saves 4.5 % of a turn's instructions,
    /// docs/BENCHMARKS.md): the few lines their handling may log enter it themselves
    /// ([`Self::in_span`]), and the provider sessions and the agent get it explicitly.
    pub(super) async fn run(mut self: Box<Self>, stream: SocketStream) -> CallEnd {
        let span = self.trace.call_span().clone();
        let entered = span.enter();
        info!(
            stt = self.config.stt.name(),
            tts = self.config.tts.as_ref().map(|t| t.name()),
            agent = self.config.agent.as_ref().map(|a| a.model_name()),
            "call started"
        );
        self.first_message();
        drop(entered);

        let mut idle_at = tokio::time::Instant::now() + self.config.idle_timeout;
        let timer = tokio::time::sleep_until(idle_at);
        tokio::pin!(timer);
        let shutdown = self.config.shutdown.clone();
        // One registration for the whole call (a fresh future per wake-up would register again).
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        // The socket and the shutdown signal are polled only when they woke the call (most
        // wake-ups are neither; the other sources are replaced during the call).
        let mut cancelled = WokenOnly::new(cancelled);
        let mut stream = WokenOnly::new(stream);
        let mut client_close = None;
        let (reason, close): (EndReason, Option<(u16, String)>) = loop {
            let now = tokio::time::Instant::now();
            let write_due = self.outbox.is_due(now);
            let pace = self.outbox.pace_deadline(now);
            let read_tts = self.outbox.wants_audio();
            let next = [pace, self.user.transcript_deadline, self.user.held_deadline]
                .into_iter()
                .flatten()
                .fold(idle_at, std::cmp::Ord::min);
            // A later deadline leaves the timer where it is (it fires early and is set again
            // then): the idle deadline moves at every client frame, and moving a timer costs a
            // trip to the timer wheel.
            if next < timer.deadline() || (next > timer.deadline() && timer.is_elapsed()) {
                timer.as_mut().reset(next);
            }
            let wake = tokio::select! {
                biased;
                // Client frames first: an interruption is handled before any queued audio.
                msg = stream.next() => Wake::Client(msg),
                Some(control) = recv_opt(self.control.as_mut()) => Wake::Control(control),
                ev = recv_answer(&mut self.answer) => Wake::Agent(ev),
                Some(ev) = recv_opt(self.tts.as_mut().map(|s| &mut s.events)), if read_tts => {
                    Wake::Tts(ev)
                }
                Some(ev) = recv_opt(self.stt.as_mut().map(|s| &mut s.events)) => Wake::Stt(ev),
                r = self.outbox.write(), if write_due => Wake::Written(r),
                Some((seq, complete)) = recv_opt(self.predictions.as_mut().map(|p| &mut p.1)) => {
                    Wake::Prediction(seq, complete)
                }
                _ = &mut timer => {
                    // The earliest due deadline, in this order; the others fire at the next
                    // turn of the loop.
                    let now = tokio::time::Instant::now();
                    let due = |d: Option<tokio::time::Instant>| d.is_some_and(|d| d <= now);
                    if due(self.user.transcript_deadline) {
                        Wake::TranscriptTimeout
                    } else if due(self.user.held_deadline) {
                        Wake::HeldTurnExpired
                    } else if idle_at <= now {
                        Wake::Idle
                    } else {
                        Wake::Paced
                    }
                }
                // Last, and reached only once the token fired (`WokenOnly`: a token's check
                // takes a lock); it is never starved, as the other branches run out of budget.
                _ = &mut cancelled => Wake::Shutdown,
            };
            let _entered = (!wake.is_quiet()).then(|| span.enter());
            match wake {
                Wake::Shutdown => {
                    break (
                        EndReason::Shutdown,
                        Some((CLOSE_GOING_AWAY, "Server shutting down".into())),
                    );
                }
                Wake::Client(msg) => {
                    idle_at = tokio::time::Instant::now() + self.config.idle_timeout;
                    match msg {
                        None => break (EndReason::ClientClosed, None),
                        Some(Err(e)) => {
                            // The error's type picks the close code (1002, 1007, 1009, 1011);
                            // a lost connection gets none.
                            if e.is_disconnect() {
                                info!(error = %e, "connection lost");
                            } else {
                                warn!(error = %e, "socket error");
                            }
                            let close = e.close_code().map(|c| (c, e.close_reason().to_owned()));
                            break (EndReason::SocketError(e), close);
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            client_close = frame;
                            break (EndReason::ClientClosed, None);
                        }
                        Some(Ok(msg)) => match decode_client_frame(msg) {
                            ClientFrame::Close => break (EndReason::ClientClosed, None),
                            ClientFrame::Ignored => {}
                            ClientFrame::Command(c) => self.on_command(c),
                            ClientFrame::Audio(pcm) => {
                                if let Some(flood) = self.on_audio(pcm) {
                                    span.in_scope(|| {
                                        warn!(%flood, "audio faster than real time: closing the call");
                                    });
                                    break (
                                        EndReason::AudioFlood(flood),
                                        Some((CLOSE_POLICY_VIOLATION, AUDIO_FLOOD_REASON.into())),
                                    );
                                }
                            }
                        },
                    }
                }
                Wake::Control(Control::HangUp(code, reason)) => {
                    break (EndReason::HungUp, Some((code, reason)));
                }
                Wake::Control(control) => self.on_control(control),
                // Events already waiting in the same channel are taken in the same wake-up (at
                // most DRAIN_MAX): a provider's burst costs one turn of the loop, not one each.
                // They are only queued: the client's frames are still read before any write.
                Wake::Agent(ev) => {
                    self.on_agent_event(ev);
                    self.drain(
                        |c| c.answer.as_mut()?.try_next_event(),
                        |c, ev| c.on_agent_event(Some(ev)),
                    );
                }
                Wake::Tts(ev) => {
                    self.on_tts_event(ev);
                    self.drain(
                        |c| {
                            if !c.outbox.wants_audio() {
                                return None;
                            }
                            c.tts.as_mut()?.events.try_recv().ok()
                        },
                        Self::on_tts_event,
                    );
                }
                Wake::Stt(ev) => {
                    self.on_stt_event(ev);
                    self.drain(
                        |c| c.stt.as_mut()?.events.try_recv().ok(),
                        Self::on_stt_event,
                    );
                }
                Wake::Written(Ok(())) => self.on_written(),
                Wake::Written(Err(e)) => {
                    info!(error = %e, "socket write failed");
                    break (EndReason::SocketError(e), None);
                }
                Wake::Paced => {}
                Wake::Prediction(seq, complete) => self.on_prediction(seq, complete),
                Wake::HeldTurnExpired => {
                    // Rule 6: the held turn is answered anyway.
                    self.user.held_deadline = None;
                    debug!("held turn expired: answering");
                    self.cancel();
                    self.enqueue(Job::Answer);
                }
                Wake::TranscriptTimeout => {
                    self.user.transcript_deadline = None;
                    warn!("no transcript from the STT in time: skipping the answer");
                    self.trace.stt_done("timeout");
                    self.send(ServerFrame::SkipAnswer);
                }
                Wake::Idle => {
                    break (EndReason::Idle, Some((CLOSE_NORMAL, "Idle timeout".into())));
                }
            }
        };
        span.in_scope(|| {
            self.report_latencies(None);
            self.report_stt_drops();
        });
        Box::pin(self.finish(reason, close, client_close))
            .instrument(span)
            .await
    }

    /// Runs `f` in the call's span: for the lines logged on the paths of the quiet wake-ups
    /// (see [`Self::run`]).
    fn in_span<R>(&self, f: impl FnOnce() -> R) -> R {
        self.trace.call_span().in_scope(f)
    }

    /// Handles the events `next` finds already waiting, at most [`DRAIN_MAX`].
    fn drain<T>(&mut self, next: impl Fn(&mut Self) -> Option<T>, handle: impl Fn(&mut Self, T)) {
        for _ in 0..DRAIN_MAX {
            let Some(ev) = next(self) else { break };
            handle(self, ev);
        }
    }

    /// Releases the answer and the providers, writes what is queued, closes the socket.
    async fn finish(
        self: Box<Self>,
        reason: EndReason,
        close: Option<(u16, String)>,
        client_close: Option<(u16, String)>,
    ) -> CallEnd {
        let CallTask {
            id,
            started,
            conversation,
            answer,
            outbox,
            stt,
            tts,
            providers,
            mut trace,
            ..
        } = *self;
        drop(answer);
        // Closing the command channels ends the provider sessions: give them a moment to close
        // their provider connections cleanly (end the STT session, close the sockets), then
        // abort whatever still runs.
        drop((stt, tts));
        let release = async move {
            let aborts: Vec<_> = providers.iter().map(|p| p.abort_handle()).collect();
            if tokio::time::timeout(PROVIDER_CLOSE_GRACE, futures::future::join_all(providers))
                .await
                .is_err()
            {
                for a in aborts {
                    a.abort();
                }
            }
        };
        let call_close = match (&close, client_close) {
            (Some((code, reason)), _) => Some(CallClose {
                code: *code,
                reason: reason.clone(),
                by_server: true,
            }),
            (None, Some((code, reason))) => Some(CallClose {
                code,
                reason,
                by_server: false,
            }),
            (None, None) => None,
        };
        trace.end_call(&reason, call_close.as_ref().map(|c| c.code));
        tokio::join!(outbox.finish(close), release);
        let conversation = conversation.to_vec();
        let duration_secs = started.elapsed().as_secs_f64().round() as u64;
        info!(
            ?reason,
            close_code = call_close.as_ref().map(|c| c.code),
            duration_secs,
            items = conversation.len(),
            "call ended"
        );
        CallEnd {
            call_id: id,
            close: call_close,
            conversation,
            duration_secs,
            reason,
        }
    }

    // ----- output -----

    fn send(&mut self, frame: ServerFrame) {
        debug!(frame = ?DebugFrame(&frame), "send");
        if matches!(frame, ServerFrame::SkipAnswer) {
            self.trace.skip_answer();
        }
        self.outbox.push_frame(frame.encode());
    }

    fn emit(&mut self, ev: CallEvent) {
        if let Some(obs) = &self.config.observer {
            if let Err(mpsc::error::TrySendError::Full(_)) = obs.try_send(ev) {
                self.in_span(|| warn!("call observer is full: event dropped"));
            }
        }
    }

    /// After a write: the first frame of the probed answer gives its latencies.
    fn on_written(&mut self) {
        if let Some((u, at)) = self.outbox.take_first_written() {
            if self.probe.as_ref().is_some_and(|p| p.utterance == Some(u)) {
                self.report_latencies(Some(at));
            }
        }
    }

    /// Reports the probed turn's latencies (once), logged at info without user content.
    fn report_latencies(&mut self, first_audio: Option<tokio::time::Instant>) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        // Reached from a write (a quiet wake-up): logs, so in the call's span.
        let span = self.trace.call_span().clone();
        let _entered = span.enter();
        let l: TurnLatencies = probe.finish(first_audio);
        self.trace.latencies(&l);
        for (stage, d) in [
            (Stage::Stt, l.stt),
            (Stage::LlmFirstToken, l.llm_first_token),
            (Stage::TtsFirstAudio, l.tts_first_audio),
            (Stage::VoiceToVoice, l.voice_to_voice),
        ] {
            if let Some(d) = d {
                telemetry::turn_latency(stage, d);
            }
        }
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        info!(
            stt_ms = ms(l.stt),
            llm_first_token_ms = ms(l.llm_first_token),
            tts_first_audio_ms = ms(l.tts_first_audio),
            voice_to_voice_ms = ms(l.voice_to_voice),
            "turn latencies"
        );
        self.emit(CallEvent::TurnLatencies(l));
    }

    // ----- conversation -----

    fn add_item(&mut self, item: ConversationItem) -> u64 {
        let id = self.conversation.push(item.clone());
        self.announce(item);
        id
    }

    /// Tells the client and the observer about an item added to the conversation.
    fn announce(&mut self, item: ConversationItem) {
        self.send(ServerFrame::Message(item.clone()));
        self.emit(CallEvent::Message(item));
    }

    fn add_message(&mut self, role: Role, text: &str) -> Option<u64> {
        // Blank messages are ignored (Micdrop, Aug 2026).
        if text.trim().is_empty() {
            return None;
        }
        let item = match role {
            Role::User => ConversationItem::user(text),
            _ => match &self.config.agent {
                Some(agent) => agent.assistant_item(text)?,
                None => ConversationItem::assistant(text),
            },
        };
        Some(self.add_item(item))
    }

    // ----- rules -----

    fn first_message(&mut self) {
        if let Some(text) = self.config.first_message.clone() {
            self.speak_text(text);
        } else if self.config.generate_first_message && self.config.agent.is_some() {
            self.enqueue(Job::Answer);
        } else {
            self.send(ServerFrame::SkipAnswer);
        }
    }

    /// Rule 1: `cancel()`: the current answer, queued jobs, TTS, stale audio. Tool calls of the
    /// cancelled answer that have no result get one that says so (the model requires a result
    /// for every call: [`Conversation::cancel_dangling_tool_calls`]).
    fn cancel(&mut self) {
        if let Some(answer) = self.answer.take() {
            for item in answer.cancel() {
                self.add_item(item);
            }
            for item in self.conversation.cancel_dangling_tool_calls() {
                self.announce(item);
            }
        }
        self.queue.clear();
        self.outbox.cancel_below(self.next_utterance);
        self.trace.cancel_utterances(self.next_utterance);
        if let Some(tts) = &self.tts {
            if tts.commands.try_send(TtsCommand::Cancel).is_err() {
                warn!("TTS session not accepting commands");
            }
        }
    }

    fn stt(&mut self, cmd: SttCommand) {
        let Some(stt) = &self.stt else {
            return;
        };
        match stt.commands.try_send(cmd) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(SttCommand::Audio(pcm))
                | mpsc::error::TrySendError::Closed(SttCommand::Audio(pcm)),
            ) => {
                // Counted, and reported once at the end of the turn (a flooding or stuck
                // session would otherwise log one line per chunk).
                if self.user.stt_dropped == 0 {
                    self.in_span(|| {
                        warn!("STT session not accepting audio: losing it until it catches up");
                    });
                }
                self.user.stt_dropped += 1;
                self.user.stt_dropped_bytes += pcm.len() as u64;
            }
            Err(e) => self.in_span(|| warn!(error = %e, "STT session not accepting commands")),
        }
    }

    fn tts(&mut self, cmd: TtsCommand) {
        if let Some(tts) = &self.tts {
            if let Err(e) = tts.commands.try_send(cmd) {
                self.in_span(|| warn!(error = %e, "TTS session not accepting commands"));
            }
        }
    }

    fn on_command(&mut self, cmd: ClientCommand) {
        debug!(?cmd, "client command");
        match cmd {
            // Rule 2: a new user turn replaces the last one.
            ClientCommand::StartSpeaking => {
                self.report_latencies(None);
                if self.answer.is_some() || self.outbox.has_queued_audio() {
                    telemetry::barge_in();
                }
                self.report_stt_drops();
                self.user = UserTurn::next(&self.user, self.config.audio_burst);
                self.trace.start_turn(self.user.seq);
                self.ensure_stt();
                self.stt(SttCommand::StartTurn);
                self.cancel();
            }
            // Rule 4.
            ClientCommand::StopSpeaking => {
                let was_open = self.user.stop();
                if was_open {
                    let transcribed = self.last_is_unanswered_user();
                    self.trace.stop_speaking(self.user.chunks > 0, transcribed);
                    self.stt(SttCommand::EndTurn);
                    self.report_stt_drops();
                }
                if let Some(opened) = self.user.opened_at.filter(|_| was_open) {
                    debug!(
                        chunks = self.user.chunks,
                        audio_bytes = self.user.audio_bytes,
                        turn_ms = opened.elapsed().as_millis() as u64,
                        "user turn closed"
                    );
                }
                if !was_open || self.user.chunks == 0 {
                    self.send(ServerFrame::SkipAnswer);
                    return;
                }
                let transcribed = self.last_is_unanswered_user();
                if self.config.agent.is_some() {
                    self.ensure_tts();
                }
                self.report_latencies(None);
                self.probe = Some(Box::new(LatencyProbe::new(transcribed)));
                self.start_prediction();
                if transcribed {
                    self.answer_turn();
                } else {
                    self.user.transcript_deadline =
                        Some(tokio::time::Instant::now() + self.config.transcript_timeout);
                }
            }
            // Rule 11.
            ClientCommand::Mute => {
                self.report_latencies(None);
                self.trace.mute();
                if self.user.mute() {
                    self.stt(SttCommand::DiscardTurn);
                    self.report_stt_drops();
                }
                self.cancel();
            }
        }
    }

    // Rule 3; a flood (audio faster than real time plus the burst) ends the call.
    fn on_audio(&mut self, pcm: Bytes) -> Option<AudioFlood> {
        let keep = self.config.turn_detector.is_some();
        match self.user.accept_audio(&pcm, keep) {
            AudioVerdict::Ignored => {}
            AudioVerdict::Flood(flood) => return Some(flood),
            AudioVerdict::Accepted => {
                telemetry::user_audio(pcm.len());
                if self.config.observer.is_some() {
                    self.emit(CallEvent::UserAudio(pcm.clone()));
                }
                self.stt(SttCommand::Audio(pcm));
            }
        }
        None
    }

    /// One warning for the user audio of the turn the STT session did not take (its queue was
    /// full), instead of one per chunk.
    fn report_stt_drops(&mut self) {
        let chunks = std::mem::take(&mut self.user.stt_dropped);
        let bytes = std::mem::take(&mut self.user.stt_dropped_bytes);
        if chunks > 0 {
            warn!(
                chunks,
                bytes,
                audio_ms = bytes / 32,
                "user audio lost: the STT session did not take it (its queue was full)"
            );
        }
    }

    fn last_is_unanswered_user(&self) -> bool {
        matches!(self.conversation.last(), Some((id, item))
            if item.role() == Role::User && Some(id) != self.last_answered)
    }

    // Rule 5.
    fn on_stt_event(&mut self, ev: SttEvent) {
        match ev {
            SttEvent::Partial(text) => debug!(%text, "partial transcript"),
            SttEvent::Transcript(text) => {
                self.user.transcript_deadline = None;
                debug!(%text, "transcript");
                if text.trim().is_empty() {
                    self.trace.stt_done("empty");
                    self.send(ServerFrame::SkipAnswer);
                    return;
                }
                self.add_message(Role::User, &text);
                if !self.user.open {
                    self.trace.stt_done("transcript");
                    if let Some(p) = self.probe.as_mut() {
                        p.transcript();
                    }
                    self.answer_turn();
                }
            }
            SttEvent::Failed { error, pending } => {
                warn!(%error, pending_chunks = pending.len(), "STT failed");
                self.trace.stt_done("failed");
                if self.user.transcript_deadline.take().is_some() {
                    self.send(ServerFrame::SkipAnswer);
                }
            }
        }
    }

    /// Starts the turn detector on the turn's audio (rule 4); without one the turn is complete.
    fn start_prediction(&mut self) {
        let Some(detector) = self.config.turn_detector.clone() else {
            self.user.prediction = Prediction::Complete;
            return;
        };
        self.user.prediction = Prediction::Pending;
        let samples = std::mem::take(&mut self.user.samples);
        let seq = self.user.seq;
        let Some(tx) = self.predictions.as_ref().map(|p| p.0.clone()) else {
            return;
        };
        tokio::spawn(async move {
            let complete = detector.predict(samples).await;
            let _ = tx.send((seq, complete)).await;
        });
    }

    fn on_prediction(&mut self, seq: u64, complete: bool) {
        if seq != self.user.seq || self.user.prediction != Prediction::Pending {
            return;
        }
        debug!(complete, "turn prediction");
        self.user.prediction = if complete {
            Prediction::Complete
        } else {
            Prediction::Incomplete
        };
        if std::mem::take(&mut self.user.answer_waits_prediction) {
            self.answer_turn();
        }
    }

    // Rule 6.
    fn answer_turn(&mut self) {
        match self.user.prediction {
            Prediction::Pending => {
                self.user.answer_waits_prediction = true;
                return;
            }
            Prediction::Incomplete => {
                // Hold the turn: the user probably continues.
                self.send(ServerFrame::SkipAnswer);
                if self.user.held_deadline.is_none() {
                    self.user.held_deadline =
                        Some(tokio::time::Instant::now() + self.config.turn_max_wait);
                }
                return;
            }
            Prediction::Complete => self.user.held_deadline = None,
        }
        self.cancel();
        self.enqueue(Job::Answer);
    }

    fn enqueue(&mut self, job: Job) {
        self.queue.push_back(job);
        self.run_queue();
    }

    /// Starts queued jobs while no answer is in progress (speak jobs complete at once).
    fn run_queue(&mut self) {
        while self.answer.is_none() {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            match job {
                Job::Speak(text) => self.speak_now(text),
                Job::Answer => self.start_answer(),
            }
        }
    }

    // Rule 7.
    fn start_answer(&mut self) {
        let last = self.conversation.last().map(|(id, _)| id);
        let Some(agent) = self.config.agent.clone() else {
            // Dictation: the `SkipAnswer` is the answer. Unlike Micdrop (which never marks the
            // message answered and so sends a second, early `SkipAnswer` at the next
            // `StopSpeaking`), the message counts as answered.
            self.last_answered = last;
            self.send(ServerFrame::SkipAnswer);
            self.report_latencies(None);
            return;
        };
        if last.is_some() && last == self.last_answered {
            debug!("already answered");
            return;
        }
        self.last_answered = last;
        if let Some(p) = self.probe.as_mut() {
            p.answer_started();
        }
        // The answer's task (and its model requests' spans) runs in the turn's span.
        let answer = self
            .trace
            .answer_span()
            .in_scope(|| Answer::start(agent, self.conversation.to_vec()));
        self.answer = Some(answer);
    }

    fn open_utterance(&mut self) -> UtteranceId {
        self.ensure_tts();
        let u = self.next_utterance;
        self.next_utterance += 1;
        self.tts(TtsCommand::Speak(u));
        self.trace.open_utterance(u);
        u
    }

    // Rule 8 for a fixed text: record it, then speak it (or `SkipAnswer` without TTS).
    fn speak_text(&mut self, text: String) {
        self.enqueue(Job::Speak(text));
    }

    fn speak_now(&mut self, text: String) {
        if self.add_message(Role::Assistant, &text).is_none() {
            return;
        }
        let spoken = self
            .config
            .agent
            .as_ref()
            .map_or(text.clone(), |a| a.split_extract(&text).0);
        if self.config.tts.is_some() {
            let u = self.open_utterance();
            self.tts(TtsCommand::Text(u, spoken));
            self.tts(TtsCommand::EndText(u));
        } else {
            self.send(ServerFrame::SkipAnswer);
        }
    }

    fn on_agent_event(&mut self, ev: Option<AgentEvent>) {
        let Some(ev) = ev else {
            // The answer is complete.
            if let Some(answer) = self.answer.take() {
                match answer.utterance {
                    Some(u) => self.tts(TtsCommand::EndText(u)),
                    None => {
                        self.send(ServerFrame::SkipAnswer);
                        self.report_latencies(None);
                    }
                }
            }
            self.run_queue();
            return;
        };
        match ev {
            AgentEvent::Text(delta) => {
                let Some(answer) = self.answer.as_mut() else {
                    return;
                };
                answer.text.push_str(&delta);
                let cumulative = self.config.partial_messages.then(|| answer.text.clone());
                // The first text of an answer opens its utterance (never for an empty answer).
                let utterance = match answer.utterance {
                    Some(u) => Some(u),
                    None => {
                        let opened = self.config.tts.is_some().then(|| self.open_utterance());
                        if let Some(a) = self.answer.as_mut() {
                            a.utterance = opened;
                        }
                        if let Some(p) = self.probe.as_mut() {
                            p.first_token(opened);
                        }
                        self.trace.answer_text(opened);
                        opened
                    }
                };
                if let Some(text) = cumulative {
                    self.send(ServerFrame::PartialAssistantMessage(text));
                }
                if let Some(u) = utterance {
                    self.tts(TtsCommand::Text(u, delta));
                }
            }
            AgentEvent::Message(item) => {
                if let Some(a) = self.answer.as_mut() {
                    a.note_item(&item);
                }
                self.add_item(item);
            }
            AgentEvent::CancelLastUserMessage => {
                if self.conversation.remove_last_user() {
                    self.send(ServerFrame::CancelLastUserMessage);
                    self.emit(CallEvent::CancelLastUserMessage);
                }
            }
            AgentEvent::EndCall => {
                self.send(ServerFrame::EndCall);
                self.emit(CallEvent::EndCall);
            }
            AgentEvent::ToolCall(call) => self.send(ServerFrame::ToolCall(call)),
            AgentEvent::Failed(error) => warn!(%error, "agent failed"),
        }
    }

    fn on_tts_event(&mut self, ev: TtsEvent) {
        match ev {
            TtsEvent::Audio(u, pcm) => {
                if let Some(p) = self.probe.as_mut() {
                    p.tts_audio(u);
                }
                self.trace.utterance_audio(u);
                let observe = self.config.observer.is_some();
                if let Some(chunk) = self.outbox.push_audio(u, pcm, observe) {
                    self.emit(CallEvent::AssistantAudio(chunk));
                }
            }
            TtsEvent::Done(u) => {
                self.in_span(|| debug!(utterance = u, "utterance spoken"));
                self.trace.utterance_over(u, "done");
            }
            TtsEvent::Failed {
                utterance,
                error,
                unspoken,
            } => {
                // A TTS event is a quiet wake-up (see `run`): this one logs.
                let span = self.trace.call_span().clone();
                let _entered = span.enter();
                warn!(%error, utterance, unspoken = unspoken.len(), "TTS failed");
                self.trace.utterance_over(utterance, "failed");
                // Without any audio the client would wait forever: release it.
                if utterance >= self.outbox.watermark() && !self.outbox.has_audio(utterance) {
                    self.send(ServerFrame::SkipAnswer);
                }
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Speak(text) => self.speak_text(text),
            Control::AddUserMessage(text) => {
                self.add_message(Role::User, &text);
            }
            Control::AddAssistantMessage(text) => {
                self.add_message(Role::Assistant, &text);
            }
            Control::Answer => self.answer_turn(),
            Control::Cancel => self.cancel(),
            Control::HangUp(..) => {}
        }
    }
}

async fn recv_opt<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_answer(answer: &mut Option<Answer>) -> Option<AgentEvent> {
    match answer {
        Some(a) => a.next_event().await,
        None => std::future::pending().await,
    }
}

/// Logs frames without user content at info level: the content only shows at debug.
struct DebugFrame<'a>(&'a ServerFrame);

impl std::fmt::Debug for DebugFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ServerFrame::Audio(b) => write!(f, "Audio({} bytes)", b.len()),
            other => write!(f, "{other:?}"),
        }
    }
}
