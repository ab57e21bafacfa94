//! Gradium text-to-speech: one multiplexed socket per call, one `client_req_id` per utterance.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::future::BoxFuture;
use micdrop_core::tts::{TextToSpeech, TtsCommand, TtsEvent, TtsSessionIo, UtteranceId};
use micdrop_core::{ProviderErrorKind, TtsError};
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};
use url::Url;

use super::GradiumTtsConfig;
use super::messages::{ServerMessage, parse_message};
use super::{error_kind, open};
use crate::audio::{MICDROP_RATE, PcmResampler};
use crate::config::ConfigError;
use crate::link::{ConnectFailure, Connector, Link, LinkEvent, LinkPolicy};
use crate::secret::ApiKey;
use crate::ws::WsStream;
use micdrop_core::time::sleep_until;

const NAME: &str = "gradium-tts";

/// Gradium text-to-speech (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct GradiumTts {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    url: Url,
    key: ApiKey,
    /// `setup` without `client_req_id`.
    setup: Map<String, Value>,
    rate: u32,
    connect_timeout: Duration,
    audio_timeout: Duration,
    link: LinkPolicy,
}

impl GradiumTts {
    /// A provider from its configuration and key.
    pub fn new(config: GradiumTtsConfig, key: ApiKey) -> Result<Self, ConfigError> {
        let url = config.url()?;
        let rate = config.output_rate()?;
        let mut json_config = Map::new();
        for (k, v) in [
            ("padding_bonus", config.padding_bonus.map(|v| json!(v))),
            ("temp", config.temp.map(|v| json!(v))),
            ("cfg_coef", config.cfg_coef.map(|v| json!(v))),
            (
                "rewrite_rules",
                config.rewrite_rules.as_ref().map(|v| json!(v)),
            ),
        ] {
            if let Some(v) = v {
                json_config.insert(k.into(), v);
            }
        }
        for (k, v) in &config.json_config {
            json_config.insert(k.clone(), v.clone());
        }
        let mut setup = Map::new();
        setup.insert("type".into(), json!("setup"));
        setup.insert("model_name".into(), json!(config.model_name));
        setup.insert("voice_id".into(), json!(config.voice_id));
        setup.insert("output_format".into(), json!(config.output_format));
        if !json_config.is_empty() {
            setup.insert("json_config".into(), Value::Object(json_config));
        }
        if let Some(p) = &config.pronunciation_id {
            setup.insert("pronunciation_id".into(), json!(p));
        }
        setup.insert("close_ws_on_eos".into(), json!(false));
        Ok(Self {
            shared: Arc::new(Shared {
                url,
                key,
                setup,
                rate,
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                audio_timeout: Duration::from_millis(config.audio_timeout_ms),
                link: config.link_policy(),
            }),
        })
    }

    /// The `setup` message of a request.
    pub fn setup_message(&self, client_req_id: &str) -> Value {
        let mut s = self.shared.setup.clone();
        s.insert("client_req_id".into(), json!(client_req_id));
        Value::Object(s)
    }
}

impl TextToSpeech for GradiumTts {
    fn name(&self) -> &str {
        NAME
    }

    fn run(&self, io: TtsSessionIo) -> BoxFuture<'static, ()> {
        Box::pin(Session::new(self.shared.clone(), io).run())
    }
}

struct Utt {
    id: UtteranceId,
    req_id: String,
    text: String,
    /// Text before this byte index was spoken on an earlier socket.
    spoken_upto: usize,
    /// Text before this byte index was sent on the current socket.
    sent_upto: usize,
    ended: bool,
    setup_sent: bool,
    eos_sent: bool,
    server_done: bool,
    /// Seconds of audio received on the current socket.
    audio_secs: f64,
    /// End times of the words spoken on the current socket.
    word_stops: Vec<f64>,
    /// Audio waiting for earlier utterances to finish.
    held: Vec<Bytes>,
    resampler: Option<PcmResampler>,
}

impl Utt {
    /// Byte index in `text` up to which the audio was received (whole words only).
    fn spoken_estimate(&self) -> usize {
        let n = self
            .word_stops
            .iter()
            .filter(|s| **s <= self.audio_secs + 0.01)
            .count();
        advance_words(&self.text, self.spoken_upto, n).min(self.sent_upto.max(self.spoken_upto))
    }

    fn unspoken(&self) -> Vec<String> {
        let from = if self.held.is_empty() {
            self.spoken_estimate()
        } else {
            // Audio received but never played: the whole utterance is unspoken.
            0
        };
        let rest = self.text.get(from..).unwrap_or_default().trim();
        if rest.is_empty() {
            Vec::new()
        } else {
            vec![rest.to_owned()]
        }
    }
}

/// The byte index after `n` whole words of `text` from `from` (trailing whitespace included).
pub fn advance_words(text: &str, from: usize, n: usize) -> usize {
    let mut idx = from.min(text.len());
    while !text.is_char_boundary(idx) {
        idx -= 1;
    }
    for _ in 0..n {
        let rest = &text[idx..];
        let start = rest.len() - rest.trim_start().len();
        let word_len = rest[start..]
            .find(char::is_whitespace)
            .unwrap_or(rest.len() - start);
        idx += start + word_len;
        let rest = &text[idx..];
        idx += rest.len() - rest.trim_start().len();
        if idx >= text.len() {
            return text.len();
        }
    }
    idx
}

/// Opens a Gradium TTS socket (the handshake; each utterance sends its own `setup`).
struct TtsConnector {
    sh: Arc<Shared>,
}

impl Connector for TtsConnector {
    type Info = ();

    fn connect(&mut self) -> BoxFuture<'static, Result<(WsStream, ()), ConnectFailure>> {
        let sh = self.sh.clone();
        Box::pin(async move {
            let ws = open(&sh.url, &sh.key, sh.connect_timeout).await?;
            Ok((ws, ()))
        })
    }
}

struct Session {
    sh: Arc<Shared>,
    io: TtsSessionIo,
    link: Link<TtsConnector>,
    generation: u64,
    utts: VecDeque<Utt>,
    waiting_since: Option<Instant>,
    /// The last `error` message of the current socket (its close follows).
    server_error: Option<ProviderErrorKind>,
}

enum Wake {
    Cmd(Option<TtsCommand>),
    Link(LinkEvent<()>),
    Stalled,
}

impl Session {
    fn new(sh: Arc<Shared>, io: TtsSessionIo) -> Self {
        let link = Link::new(NAME, TtsConnector { sh: sh.clone() }, sh.link);
        Self {
            sh,
            io,
            link,
            generation: 0,
            utts: VecDeque::new(),
            waiting_since: None,
            server_error: None,
        }
    }

    async fn run(mut self) {
        loop {
            let stall_at = if self.awaiting_audio() {
                self.waiting_since.map(|t| t + self.sh.audio_timeout)
            } else {
                None
            };
            let wake = tokio::select! {
                biased;
                c = self.io.commands.recv() => Wake::Cmd(c),
                e = self.link.next() => Wake::Link(e),
                _ = sleep_until(stall_at) => Wake::Stalled,
            };
            let ok = match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(c)) => self.on_command(c).await,
                Wake::Link(LinkEvent::Connected(())) => self.on_connected().await,
                Wake::Link(LinkEvent::Message(m)) => self.on_message(m).await,
                Wake::Link(LinkEvent::Lost(kind)) => {
                    self.on_lost(kind);
                    true
                }
                Wake::Link(LinkEvent::GaveUp(kind)) => self.give_up(kind).await,
                Wake::Link(LinkEvent::Closed) => true,
                Wake::Stalled => {
                    self.waiting_since = None;
                    let kind = ProviderErrorKind::Timeout(format!(
                        "no audio from Gradium within {} ms",
                        self.sh.audio_timeout.as_millis()
                    ));
                    // A silent socket: drop it and retry (bounded by the link's budget).
                    self.link.abandon();
                    self.on_lost(kind);
                    true
                }
            };
            self.link.set_busy(!self.utts.is_empty());
            if !ok {
                break;
            }
        }
        self.link.close();
    }

    /// Whether the server owes audio (an utterance whose text is complete is not done).
    fn awaiting_audio(&self) -> bool {
        self.link.is_up() && self.utts.iter().any(|u| u.eos_sent && !u.server_done)
    }

    async fn emit(&mut self, ev: TtsEvent) -> bool {
        self.io.events.send(ev).await.is_ok()
    }

    fn req_id(&self, id: UtteranceId) -> String {
        format!("u{id}-{}", self.generation)
    }

    async fn on_command(&mut self, cmd: TtsCommand) -> bool {
        match cmd {
            TtsCommand::Speak(id) => {
                let req_id = self.req_id(id);
                self.utts.push_back(Utt {
                    id,
                    req_id,
                    text: String::new(),
                    spoken_upto: 0,
                    sent_upto: 0,
                    ended: false,
                    setup_sent: false,
                    eos_sent: false,
                    server_done: false,
                    audio_secs: 0.0,
                    word_stops: Vec::new(),
                    held: Vec::new(),
                    resampler: (self.sh.rate != MICDROP_RATE)
                        .then(|| PcmResampler::new(self.sh.rate, MICDROP_RATE).ok())
                        .flatten(),
                });
                if self.link.is_up() {
                    let i = self.utts.len() - 1;
                    self.sync_utt(i).await;
                } else {
                    // On demand: there is something to say.
                    self.link.open();
                }
            }
            TtsCommand::Text(id, text) => {
                if let Some(i) = self.index(id) {
                    self.utts[i].text.push_str(&text);
                    if self.link.is_up() {
                        self.sync_utt(i).await;
                    }
                }
            }
            TtsCommand::EndText(id) => {
                if let Some(i) = self.index(id) {
                    self.utts[i].ended = true;
                    if self.link.is_up() {
                        self.sync_utt(i).await;
                    }
                }
            }
            TtsCommand::Cancel => {
                let utts: Vec<Utt> = self.utts.drain(..).collect();
                // Gradium has no message that cancels a request: `end_of_stream` would make it
                // render (and bill) the rest, and the request would hold a concurrency slot until
                // done. Closing the socket is the only way to stop the rendering, as Micdrop
                // does; the socket is reopened at once, hidden behind the user's speech.
                let rendering = utts.iter().any(|u| u.setup_sent && !u.server_done);
                self.waiting_since = None;
                if rendering && self.link.is_up() {
                    debug!("cancel: closing the socket to stop the rendering");
                    self.link.close();
                    self.link.open();
                }
            }
        }
        true
    }

    fn index(&self, id: UtteranceId) -> Option<usize> {
        self.utts.iter().position(|u| u.id == id)
    }

    /// Sends what utterance `i` has not sent on this socket: setup, whole words, end of stream.
    async fn sync_utt(&mut self, i: usize) {
        let mut out: Vec<String> = Vec::new();
        {
            let sh = self.sh.clone();
            let Some(u) = self.utts.get_mut(i) else {
                return;
            };
            if u.server_done {
                return;
            }
            if !u.setup_sent {
                u.setup_sent = true;
                let mut s = sh.setup.clone();
                s.insert("client_req_id".into(), json!(u.req_id));
                out.push(Value::Object(s).to_string());
            }
            let pending = u.text.get(u.sent_upto..).unwrap_or_default();
            let cut = if u.ended {
                pending.len()
            } else {
                pending
                    .char_indices()
                    .rev()
                    .find(|(_, c)| c.is_whitespace())
                    .map(|(j, c)| j + c.len_utf8())
                    .unwrap_or(0)
            };
            if cut > 0 {
                let chunk = &pending[..cut];
                if !chunk.trim().is_empty() {
                    out.push(
                        json!({"type": "text", "text": chunk, "client_req_id": u.req_id})
                            .to_string(),
                    );
                }
                u.sent_upto += cut;
            }
            if u.ended && !u.eos_sent {
                u.eos_sent = true;
                out.push(json!({"type": "end_of_stream", "client_req_id": u.req_id}).to_string());
                if self.waiting_since.is_none() {
                    self.waiting_since = Some(Instant::now());
                }
            }
        }
        for m in out {
            if !self.link.send(Message::text(m)).await {
                return;
            }
        }
    }

    async fn on_connected(&mut self) -> bool {
        debug!("gradium tts connected");
        self.generation += 1;
        self.server_error = None;
        let generation = self.generation;
        for u in self.utts.iter_mut() {
            if u.server_done {
                continue;
            }
            // Resume after what was heard on the previous socket.
            let spoken = u.spoken_estimate();
            u.spoken_upto = spoken;
            u.sent_upto = spoken;
            u.word_stops.clear();
            u.audio_secs = 0.0;
            u.setup_sent = false;
            u.eos_sent = false;
            u.req_id = format!("u{}-{generation}", u.id);
        }
        self.waiting_since = None;
        for i in 0..self.utts.len() {
            if !self.link.is_up() {
                break;
            }
            self.sync_utt(i).await;
        }
        true
    }

    /// The socket is gone. With utterances in flight: reconnect and re-send the unspoken text,
    /// also after a normal or 1008 close on a socket that worked (Gradium's 300 s session cap
    /// ends a socket with `error` 1008 and a close); a socket refused before it ever worked
    /// (bad key, bad setup) gives up. Idle: reopened at the next utterance.
    fn on_lost(&mut self, kind: ProviderErrorKind) {
        let kind = self.server_error.take().unwrap_or(kind);
        let active = self.utts.iter().any(|u| !u.server_done);
        if !active {
            debug!(error = %kind, "gradium tts socket closed while idle; will reopen at the next utterance");
            return;
        }
        if kind.is_retryable() || self.link.socket_worked() {
            self.link.reconnect(kind);
        } else {
            self.link.fail(kind);
        }
    }

    /// Fails every utterance in flight (their unspoken text goes to `Failed`), then starts
    /// afresh at the next utterance.
    async fn give_up(&mut self, kind: ProviderErrorKind) -> bool {
        self.waiting_since = None;
        let utts: Vec<Utt> = self.utts.drain(..).collect();
        warn!(error = %kind, utterances = utts.len(), "gradium tts gave up");
        for u in utts {
            let ev = TtsEvent::Failed {
                utterance: u.id,
                error: TtsError::new(NAME, kind.clone()),
                unspoken: u.unspoken(),
            };
            if !self.emit(ev).await {
                return false;
            }
        }
        true
    }

    async fn on_message(&mut self, m: Message) -> bool {
        let Message::Text(text) = m else {
            return true;
        };
        let msg = match parse_message(&text) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "ignoring a malformed gradium message");
                return true;
            }
        };
        if !matches!(msg, ServerMessage::Error { .. }) {
            self.link.confirm();
            self.waiting_since = Some(Instant::now());
        }
        match msg {
            ServerMessage::Audio {
                audio,
                client_req_id,
            } => {
                let Some(i) = self.find(client_req_id.as_deref()) else {
                    return true;
                };
                let pcm = match B64.decode(audio.as_bytes()) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, "ignoring undecodable gradium audio");
                        return true;
                    }
                };
                let rate = self.sh.rate;
                let u = &mut self.utts[i];
                u.audio_secs += crate::audio::duration_secs(pcm.len(), rate);
                let pcm = match u.resampler.as_mut() {
                    Some(r) => r.push(&pcm),
                    None => Bytes::from(pcm),
                };
                self.deliver(i, pcm).await
            }
            ServerMessage::Text {
                stop_s,
                start_s,
                client_req_id,
                ..
            } => {
                if let Some(i) = self.find(client_req_id.as_deref()) {
                    if let Some(t) = stop_s.or(start_s) {
                        self.utts[i].word_stops.push(t);
                    }
                }
                true
            }
            ServerMessage::EndOfStream { client_req_id } => {
                let Some(i) = self.find(client_req_id.as_deref()) else {
                    return true;
                };
                let tail = self.utts[i].resampler.as_mut().map(PcmResampler::flush);
                if let Some(tail) = tail {
                    if !tail.is_empty() && !self.deliver(i, tail).await {
                        return false;
                    }
                }
                self.utts[i].server_done = true;
                self.finish_heads().await
            }
            ServerMessage::Error {
                code,
                message,
                client_req_id,
            } => {
                // The close follows; it is handled as a loss with this error.
                warn!(?code, %message, ?client_req_id, "gradium tts error");
                self.server_error = Some(error_kind(code, &message));
                true
            }
            ServerMessage::Ready { .. } | ServerMessage::Other(_) => true,
            ServerMessage::Flushed { .. }
            | ServerMessage::Step { .. }
            | ServerMessage::EndText { .. } => true,
        }
    }

    /// The utterance of a `client_req_id` (a missing id means the oldest live request, as a
    /// server that does not echo ids serves requests in order).
    fn find(&self, req_id: Option<&str>) -> Option<usize> {
        match req_id {
            Some(r) => self.utts.iter().position(|u| u.req_id == r),
            None => self
                .utts
                .iter()
                .position(|u| u.setup_sent && !u.server_done),
        }
    }

    /// Emits audio of utterance `i` now if it is the one playing, else holds it.
    async fn deliver(&mut self, i: usize, pcm: Bytes) -> bool {
        if pcm.is_empty() {
            return true;
        }
        if i == 0 {
            let id = self.utts[0].id;
            self.emit(TtsEvent::Audio(id, pcm)).await
        } else {
            self.utts[i].held.push(pcm);
            true
        }
    }

    /// Completes finished utterances at the head, releasing the held audio of the next ones.
    async fn finish_heads(&mut self) -> bool {
        while let Some(head) = self.utts.front_mut() {
            let id = head.id;
            let held = std::mem::take(&mut head.held);
            for pcm in held {
                if !self.emit(TtsEvent::Audio(id, pcm)).await {
                    return false;
                }
            }
            if !self.utts[0].server_done {
                break;
            }
            self.utts.pop_front();
            if !self.emit(TtsEvent::Done(id)).await {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_words_counts_whole_words() {
        let t = "Bonjour à tous, comment allez-vous ?";
        assert_eq!(advance_words(t, 0, 0), 0);
        assert_eq!(&t[advance_words(t, 0, 1)..], "à tous, comment allez-vous ?");
        assert_eq!(&t[advance_words(t, 0, 3)..], "comment allez-vous ?");
        assert_eq!(advance_words(t, 0, 10), t.len());
        let from = advance_words(t, 0, 2);
        assert_eq!(&t[advance_words(t, from, 1)..], "comment allez-vous ?");
    }
}
