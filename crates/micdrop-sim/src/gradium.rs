//! Gradium simulator: TTS WebSocket (`/api/speech/tts`) and STT WebSocket (`/api/speech/asr`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use futures::stream::SplitStream;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::audio::{
    self, Decoder, SampleFormat, linear_to_alaw, linear_to_ulaw, tone, tone_word_duration,
    wav_header,
};
use crate::script::{FaultKind, SimScript, TtsEngine};
use crate::state::{Service, SimState, Transcripts, heard, ms};
use crate::vad::{SpeechEvent, SpeechTracker};
use crate::ws::{Ended, Out};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Output/input audio formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Pcm,
    Wav,
    Ulaw,
    Alaw,
}

fn parse_format(name: &str) -> Option<(Codec, u32)> {
    Some(match name {
        "pcm" => (Codec::Pcm, 0),
        "wav" => (Codec::Wav, 0),
        "pcm_8000" => (Codec::Pcm, 8000),
        "pcm_16000" => (Codec::Pcm, 16000),
        "pcm_22050" => (Codec::Pcm, 22050),
        "pcm_24000" => (Codec::Pcm, 24000),
        "pcm_44100" => (Codec::Pcm, 44100),
        "pcm_48000" => (Codec::Pcm, 48000),
        "ulaw_8000" | "mulaw_8000" => (Codec::Ulaw, 8000),
        "alaw_8000" => (Codec::Alaw, 8000),
        _ => return None,
    })
}

fn key_ok(script: &SimScript, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query.get("token").map(String::as_str))
        .unwrap_or("");
    match &script.gradium.api_key {
        Some(k) => k.matches(key),
        None => !key.is_empty(),
    }
}

fn error_msg(message: &str, code: u16, client_req_id: Option<&str>) -> Value {
    let mut v = json!({"type": "error", "message": message, "code": code});
    if let (Some(id), Some(o)) = (client_req_id, v.as_object_mut()) {
        o.insert("client_req_id".into(), json!(id));
    }
    v
}

/// Sends an error message and closes with the same code.
async fn fail(out: &mut Out, message: &str, code: u16, client_req_id: Option<&str>) -> Ended {
    if let Err(e) = out.send(&error_msg(message, code, client_req_id)).await {
        return e;
    }
    out.close(code, message).await;
    Ended::Closed
}

async fn drain(mut stream: SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

fn with_id(mut v: Value, id: &Option<String>) -> Value {
    if let (Some(id), Some(o)) = (id, v.as_object_mut()) {
        o.insert("client_req_id".into(), json!(id));
    }
    v
}

/// Shared upgrade logic: counters, HTTP-level faults, auth, concurrency.
async fn upgrade<F, Fut>(
    state: Arc<SimState>,
    service: Service,
    headers: HeaderMap,
    query: HashMap<String, String>,
    ws: WebSocketUpgrade,
    run: F,
) -> Response
where
    F: FnOnce(Arc<SimState>, SplitStream<WebSocket>, Out, Instant) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Ended>> + Send + 'static,
{
    let counters = state.counters(service);
    counters.request();
    let fault = state.take_fault(service, |_| true);
    if let Some(f) = &fault {
        if f.kind == FaultKind::Status {
            let status = StatusCode::from_u16(f.status.unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (
                status,
                format!("error from server {}: simulated", status.as_u16()),
            )
                .into_response();
        }
    }
    let script = state.script();
    let authorized = key_ok(&script, &headers, &query);
    let max = script.gradium.max_sessions;
    let tracker_token = state.tracker.token();
    ws.on_upgrade(move |socket| async move {
        let _t = tracker_token;
        let over = state
            .counters(service)
            .open_sessions
            .load(std::sync::atomic::Ordering::SeqCst) as usize
            >= max;
        let _conn = state.open_connection(service);
        let _sess = state.open_session(service);
        let (sink, stream) = socket.split();
        let hang = fault.as_ref().is_some_and(|f| f.kind == FaultKind::Hang);
        let mut out = Out::new(sink, fault.filter(|f| f.kind != FaultKind::Hang));
        if !authorized {
            state.counters(service).reject();
            fail(&mut out, "API key is revoked or expired", 1008, None).await;
            drain(stream).await;
            return;
        }
        if over {
            state.counters(service).reject();
            fail(
                &mut out,
                "Concurrency limit reached for this API key",
                1008,
                None,
            )
            .await;
            drain(stream).await;
            return;
        }
        if hang {
            let mut stream = stream;
            tokio::select! {
                _ = async { while let Some(Ok(_)) = stream.next().await {} } => {}
                _ = state.shutdown.cancelled() => {}
            }
            return;
        }
        let shutdown = state.shutdown.clone();
        let deadline =
            Instant::now() + Duration::from_millis(state.script().gradium.max_session_ms);
        let fut = run(state.clone(), stream, out, deadline);
        tokio::select! {
            r = fut => {
                if let Err(Ended::Dropped) = r {
                    tracing::debug!("gradium: simulated connection drop");
                }
            }
            _ = shutdown.cancelled() => {}
        }
    })
}

// ---------------------------------------------------------------------------------------------
// TTS

/// `GET /api/speech/tts` (WebSocket).
pub(crate) async fn tts(
    State(state): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(state, Service::GradiumTts, headers, query, ws, run_tts).await
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Word(String),
    Break(f64),
    Flush,
}

/// Parses complete text into words and tags (`<flush>`, `<break time="1.5s" />`).
fn parse_items(text: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(start) = rest.find('<') {
            for w in rest[..start].split_whitespace() {
                items.push(Item::Word(w.to_string()));
            }
            let after = &rest[start..];
            match after.find('>') {
                Some(end) => {
                    let tag = &after[1..end];
                    let t = tag.trim().trim_end_matches('/').trim();
                    if t == "flush" {
                        items.push(Item::Flush);
                    } else if let Some(attrs) = t.strip_prefix("break") {
                        let secs = attrs
                            .split('"')
                            .nth(1)
                            .and_then(|v| v.trim_end_matches('s').parse::<f64>().ok())
                            .unwrap_or(0.5)
                            .clamp(0.1, 2.0);
                        items.push(Item::Break(secs));
                    } else {
                        items.push(Item::Word(after[..=end].to_string()));
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    for w in after.split_whitespace() {
                        items.push(Item::Word(w.to_string()));
                    }
                    rest = "";
                }
            }
        } else {
            for w in rest.split_whitespace() {
                items.push(Item::Word(w.to_string()));
            }
            rest = "";
        }
    }
    items
}

struct Job {
    key: Option<String>,
    items: Vec<Item>,
    pad: bool,
}

/// Synthesized samples and word timings (relative to the first sample).
type Synth = (Vec<i16>, Vec<(String, f64, f64)>);

struct JobDone {
    key: Option<String>,
    result: Result<Synth, String>,
    pad: bool,
}

/// Synthesizes words and breaks (blocking).
fn synthesize(
    items: &[Item],
    engine: TtsEngine,
    voice: &str,
    speed: u32,
    rate: u32,
) -> Result<Synth, String> {
    let use_espeak = match engine {
        TtsEngine::Tone => false,
        TtsEngine::Espeak => {
            if !audio::espeak_available() {
                return Err("espeak-ng is not installed".into());
            }
            true
        }
        TtsEngine::Auto => audio::espeak_available(),
    };
    let mut samples: Vec<i16> = Vec::new();
    let mut words_out = Vec::new();
    let mut run: Vec<String> = Vec::new();
    let flush_run = |run: &mut Vec<String>,
                     samples: &mut Vec<i16>,
                     words_out: &mut Vec<(String, f64, f64)>|
     -> Result<(), String> {
        if run.is_empty() {
            return Ok(());
        }
        let t0 = samples.len() as f64 / rate as f64;
        let spoken = if use_espeak {
            match audio::espeak(&run.join(" "), voice, speed, rate) {
                Ok(a) => Some(a),
                // `auto` falls back to the tone (e.g. a voice espeak-ng does not know).
                Err(e) if engine == TtsEngine::Auto => {
                    tracing::warn!("espeak-ng failed, using the tone: {e}");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if let Some(audio) = spoken {
            let dur = audio.len() as f64 / rate as f64;
            let total: usize = run.iter().map(|w| w.chars().count().max(1)).sum();
            let mut t = t0;
            for w in run.iter() {
                let d = dur * w.chars().count().max(1) as f64 / total as f64;
                words_out.push((w.clone(), t, t + d));
                t += d;
            }
            samples.extend(audio);
        } else {
            let refs: Vec<&str> = run.iter().map(String::as_str).collect();
            let mut t = t0;
            for w in &refs {
                let d = tone_word_duration(w);
                words_out.push((w.to_string(), t, t + d));
                t += d + 0.04;
            }
            samples.extend(tone(&refs, rate));
        }
        run.clear();
        Ok(())
    };
    for item in items {
        match item {
            Item::Word(w) => run.push(w.clone()),
            Item::Break(s) => {
                flush_run(&mut run, &mut samples, &mut words_out)?;
                samples.extend(std::iter::repeat_n(0i16, (s * rate as f64) as usize));
            }
            Item::Flush => flush_run(&mut run, &mut samples, &mut words_out)?,
        }
    }
    flush_run(&mut run, &mut samples, &mut words_out)?;
    Ok((samples, words_out))
}

struct TtsReq {
    key: Option<String>,
    codec: Codec,
    rate: u32,
    frame: usize,
    voice: String,
    speed: u32,
    close_on_eos: bool,
    ready_at: Instant,
    ready_sent: bool,
    text: String,
    consumed: usize,
    items: Vec<Item>,
    eos: bool,
    busy: bool,
    queue: VecDeque<(Vec<Item>, bool)>,
    audio: VecDeque<i16>,
    words: VecDeque<(String, f64, f64)>,
    synth_t: f64,
    emitted_t: f64,
    first_release: Option<Instant>,
    next_emit: Option<Instant>,
    audio_msgs: u32,
    header_sent: bool,
    done: bool,
}

impl TtsReq {
    /// Moves complete text into items and releases what the model would speak now.
    fn release(&mut self, lookahead: usize) {
        let complete_end = if self.eos {
            self.text.len()
        } else {
            let mut end = self
                .text
                .char_indices()
                .filter(|(_, c)| c.is_whitespace())
                .map(|(i, c)| i + c.len_utf8())
                .next_back()
                .unwrap_or(0);
            // Never cut inside a tag (a `<` far from any `>` is plain text, not a tag).
            if let Some(lt) = self.text[..end].rfind('<') {
                if !self.text[lt..end].contains('>') && end - lt < 64 {
                    end = lt;
                }
            }
            end
        };
        if complete_end > self.consumed {
            let parsed = parse_items(&self.text[self.consumed..complete_end]);
            self.items.extend(parsed);
            self.consumed = complete_end;
        }
        let take = if self.eos {
            Some((self.items.len(), true))
        } else if let Some(p) = self.items.iter().rposition(|i| *i == Item::Flush) {
            Some((p + 1, true))
        } else {
            let word_pos: Vec<usize> = self
                .items
                .iter()
                .enumerate()
                .filter(|(_, i)| matches!(i, Item::Word(_)))
                .map(|(p, _)| p)
                .collect();
            let releasable = word_pos.len().saturating_sub(lookahead);
            if releasable >= 3 {
                Some((word_pos[releasable - 1] + 1, false))
            } else {
                word_pos[..releasable]
                    .iter()
                    .rev()
                    .find(|&&p| {
                        matches!(&self.items[p], Item::Word(w) if w.ends_with(['.', '!', '?', ',', ';', ':']))
                    })
                    .map(|&p| (p + 1, false))
            }
        };
        if let Some((n, pad)) = take {
            if n > 0 || (pad && self.eos) {
                let items: Vec<Item> = self.items.drain(..n).collect();
                if self.first_release.is_none() && items.iter().any(|i| matches!(i, Item::Word(_)))
                {
                    self.first_release = Some(Instant::now());
                }
                self.queue.push_back((items, pad));
            }
        }
    }

    fn finished(&self) -> bool {
        self.eos
            && self.consumed == self.text.len()
            && self.items.is_empty()
            && self.queue.is_empty()
            && !self.busy
            && self.audio.is_empty()
    }

    fn encode(&mut self, samples: &[i16]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(samples.len() * 2 + 44);
        if self.codec == Codec::Wav && !self.header_sent {
            self.header_sent = true;
            bytes.extend(wav_header(self.rate));
        }
        match self.codec {
            Codec::Pcm | Codec::Wav => {
                for s in samples {
                    bytes.extend_from_slice(&s.to_le_bytes());
                }
            }
            Codec::Ulaw => bytes.extend(samples.iter().map(|&s| linear_to_ulaw(s))),
            Codec::Alaw => bytes.extend(samples.iter().map(|&s| linear_to_alaw(s))),
        }
        bytes
    }
}

impl TtsReq {
    /// A request used only to encode audio (one-shot HTTP).
    fn for_encoding(codec: Codec, rate: u32) -> Self {
        Self {
            key: None,
            codec,
            rate,
            frame: (rate as f64 * 0.08).round() as usize,
            voice: String::new(),
            speed: 175,
            close_on_eos: true,
            ready_at: Instant::now(),
            ready_sent: false,
            text: String::new(),
            consumed: 0,
            items: Vec::new(),
            eos: false,
            busy: false,
            queue: VecDeque::new(),
            audio: VecDeque::new(),
            words: VecDeque::new(),
            synth_t: 0.0,
            emitted_t: 0.0,
            first_release: None,
            next_emit: None,
            audio_msgs: 0,
            header_sent: false,
            done: false,
        }
    }
}

struct TtsConn {
    state: Arc<SimState>,
    script: SimScript,
    reqs: Vec<TtsReq>,
    jobs_tx: mpsc::Sender<JobDone>,
    setups: usize,
    dropped_mid: bool,
}

impl TtsConn {
    fn find(&mut self, key: &Option<String>) -> Option<&mut TtsReq> {
        if key.is_none() && self.reqs.len() == 1 {
            return self.reqs.first_mut();
        }
        self.reqs.iter_mut().find(|r| &r.key == key)
    }

    fn kick(&mut self) {
        let engine = self.script.tts_engine;
        for r in &mut self.reqs {
            if r.busy {
                continue;
            }
            let Some((items, pad)) = r.queue.pop_front() else {
                continue;
            };
            r.busy = true;
            let job = Job {
                key: r.key.clone(),
                items,
                pad,
            };
            let voice = r.voice.clone();
            let (speed, rate) = (r.speed, r.rate);
            let tx = self.jobs_tx.clone();
            self.state.tracker.spawn(async move {
                let items = job.items;
                let result = tokio::task::spawn_blocking(move || {
                    synthesize(&items, engine, &voice, speed, rate)
                })
                .await
                .unwrap_or_else(|e| Err(format!("synthesis task failed: {e}")));
                let _ = tx
                    .send(JobDone {
                        key: job.key,
                        result,
                        pad: job.pad,
                    })
                    .await;
            });
        }
    }

    /// Handles one client message. `Ok(false)`: nothing else to do.
    async fn on_message(&mut self, out: &mut Out, v: Value) -> Result<(), Ended> {
        let key = v["client_req_id"].as_str().map(str::to_string);
        match v["type"].as_str() {
            Some("setup") => self.setup(out, &v, key).await,
            Some("text") => {
                let Some(text) = v["text"].as_str() else {
                    return Err(fail(
                        out,
                        "text message without a text string",
                        1008,
                        key.as_deref(),
                    )
                    .await);
                };
                let lookahead = self.script.gradium.tts_lookahead_words;
                if self.reqs.is_empty() {
                    return Err(fail(
                        out,
                        "Session not found. Send setup first.",
                        1002,
                        key.as_deref(),
                    )
                    .await);
                }
                match self.find(&key) {
                    Some(r) if !r.eos => {
                        r.text.push_str(text);
                        r.release(lookahead);
                    }
                    Some(_) => {}
                    None => {
                        return Err(fail(out, "Unknown client_req_id", 1008, key.as_deref()).await);
                    }
                }
                self.kick();
                Ok(())
            }
            Some("end_of_stream") => {
                if self.reqs.is_empty() {
                    return Err(fail(
                        out,
                        "Session not found. Send setup first.",
                        1002,
                        key.as_deref(),
                    )
                    .await);
                }
                let lookahead = self.script.gradium.tts_lookahead_words;
                match self.find(&key) {
                    Some(r) => {
                        if !r.eos {
                            r.eos = true;
                            r.release(lookahead);
                        }
                    }
                    None => {
                        return Err(fail(out, "Unknown client_req_id", 1008, key.as_deref()).await);
                    }
                }
                self.kick();
                Ok(())
            }
            _ => {
                if self.reqs.is_empty() {
                    return Err(fail(
                        out,
                        "Session not found. Send setup first.",
                        1002,
                        key.as_deref(),
                    )
                    .await);
                }
                Ok(())
            }
        }
    }

    async fn setup(&mut self, out: &mut Out, v: &Value, key: Option<String>) -> Result<(), Ended> {
        if self.setups > 0 && (key.is_none() || self.reqs.iter().any(|r| r.key.is_none())) {
            return Err(fail(
                out,
                "Only one request per connection without client_req_id",
                1008,
                key.as_deref(),
            )
            .await);
        }
        if self.reqs.iter().any(|r| r.key == key) {
            return Err(fail(out, "client_req_id already in use", 1008, key.as_deref()).await);
        }
        let fmt_name = v["output_format"].as_str().unwrap_or("wav");
        let Some((codec, rate)) = parse_format(fmt_name) else {
            let msg = if fmt_name == "opus" {
                "output_format opus is not supported by the simulator".to_string()
            } else {
                format!("Invalid output_format: {fmt_name}")
            };
            return Err(fail(out, &msg, 1008, key.as_deref()).await);
        };
        let rate = if rate == 0 { 48000 } else { rate };
        let voice_id = v["voice_id"].as_str().or_else(|| v["voice"].as_str());
        let Some(voice_id) = voice_id else {
            return Err(fail(out, "voice_id is required", 1008, key.as_deref()).await);
        };
        if voice_id.is_empty() || voice_id == "default" {
            return Err(fail(
                out,
                &format!("Embeddings not found for {voice_id}"),
                1011,
                key.as_deref(),
            )
            .await);
        }
        let cfg = match &v["json_config"] {
            Value::Null => json!({}),
            Value::Object(_) => v["json_config"].clone(),
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(o @ Value::Object(_)) => o,
                _ => {
                    return Err(fail(
                        out,
                        "json_config is not a valid JSON object",
                        1008,
                        key.as_deref(),
                    )
                    .await);
                }
            },
            _ => {
                return Err(fail(
                    out,
                    "json_config must be an object or a JSON string",
                    1008,
                    key.as_deref(),
                )
                .await);
            }
        };
        let espeak_voice = self
            .script
            .gradium
            .voices
            .get(voice_id)
            .cloned()
            .or_else(|| cfg["rewrite_rules"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.script.language.clone());
        let padding = cfg["padding_bonus"]
            .as_f64()
            .unwrap_or(0.0)
            .clamp(-4.0, 4.0);
        let speed = (175.0 * (1.0 - padding * 0.1)).clamp(80.0, 450.0) as u32;
        let close_on_eos = v["close_ws_on_eos"].as_bool().unwrap_or(true);
        let ready_delay = self.state.delay(self.script.gradium.ready_delay_ms);
        self.setups += 1;
        self.reqs.push(TtsReq {
            key,
            codec,
            rate,
            frame: (rate as f64 * 0.08).round() as usize,
            voice: espeak_voice,
            speed,
            close_on_eos,
            ready_at: Instant::now() + ready_delay,
            ready_sent: false,
            text: String::new(),
            consumed: 0,
            items: Vec::new(),
            eos: false,
            busy: false,
            queue: VecDeque::new(),
            audio: VecDeque::new(),
            words: VecDeque::new(),
            synth_t: 0.0,
            emitted_t: 0.0,
            first_release: None,
            next_emit: None,
            audio_msgs: 0,
            header_sent: false,
            done: false,
        });
        Ok(())
    }

    fn on_job(&mut self, done: JobDone) -> Result<(), String> {
        let Some(r) = self.reqs.iter_mut().find(|r| r.key == done.key) else {
            return Ok(());
        };
        r.busy = false;
        let (samples, words) = done.result?;
        for (w, s, e) in words {
            r.words.push_back((w, r.synth_t + s, r.synth_t + e));
        }
        r.synth_t += samples.len() as f64 / r.rate as f64;
        r.audio.extend(samples);
        if done.pad {
            let rem = r.audio.len() % r.frame;
            if rem != 0 {
                let pad = r.frame - rem;
                r.audio.extend(std::iter::repeat_n(0i16, pad));
                r.synth_t += pad as f64 / r.rate as f64;
            }
        }
        self.kick();
        Ok(())
    }

    /// The next instant something is due (ready, audio frame).
    fn next_due(&self) -> Option<Instant> {
        let ttfa = self.state.delay(self.script.gradium.tts_first_audio_ms);
        self.reqs
            .iter()
            .filter(|r| !r.done)
            .filter_map(|r| {
                if !r.ready_sent {
                    return Some(r.ready_at);
                }
                if r.audio.len() >= r.frame {
                    let first = r
                        .first_release
                        .map(|t| t + ttfa)
                        .unwrap_or_else(Instant::now);
                    return Some(r.next_emit.unwrap_or(first).max(r.ready_at));
                }
                if r.finished() {
                    return Some(Instant::now());
                }
                None
            })
            .min()
    }

    /// Sends what is due. `Ok(true)`: the connection must close (close_ws_on_eos).
    async fn emit_due(&mut self, out: &mut Out) -> Result<bool, Ended> {
        let now = Instant::now();
        let ttfa = self.state.delay(self.script.gradium.tts_first_audio_ms);
        let rtf = if self.script.zero_delay {
            0.0
        } else {
            self.script.gradium.tts_realtime_factor
        };
        let need_more = self.script.gradium.need_more_text;
        let mut close = false;
        for i in 0..self.reqs.len() {
            let r = &mut self.reqs[i];
            if r.done {
                continue;
            }
            if !r.ready_sent {
                if r.ready_at > now {
                    continue;
                }
                r.ready_sent = true;
                let ready = with_id(
                    json!({
                        "type": "ready",
                        "request_id": uuid::Uuid::new_v4().to_string(),
                        "model_name": "default",
                        "sample_rate": r.rate,
                        "frame_size": r.frame,
                        "audio_stream_names": ["tts"],
                        "text_stream_names": ["tts"],
                    }),
                    &r.key,
                );
                out.send(&ready).await?;
            }
            // Audio frames.
            loop {
                let r = &mut self.reqs[i];
                if r.audio.len() < r.frame {
                    break;
                }
                let first = r.first_release.map(|t| t + ttfa).unwrap_or(now);
                let due = r.next_emit.unwrap_or(first);
                if due > now {
                    break;
                }
                let frame: Vec<i16> = r.audio.drain(..r.frame).collect();
                let t0 = r.emitted_t;
                let t1 = t0 + r.frame as f64 / r.rate as f64;
                let mut msgs = Vec::new();
                while r.words.front().is_some_and(|w| w.1 < t1) {
                    if let Some((w, s, e)) = r.words.pop_front() {
                        msgs.push(with_id(
                            json!({"type": "text", "text": w, "start_s": ms(s), "stop_s": ms(e), "stream_id": 0}),
                            &r.key,
                        ));
                    }
                }
                let bytes = r.encode(&frame);
                msgs.push(with_id(
                    json!({"type": "audio", "audio": B64.encode(&bytes), "start_s": ms(t0), "stop_s": ms(t1), "stream_id": 0}),
                    &r.key,
                ));
                r.emitted_t = t1;
                r.next_emit = Some(due + Duration::from_secs_f64(0.08 * rtf));
                r.audio_msgs += 1;
                let first_audio = r.audio_msgs == 1;
                let key = r.key.clone();
                for m in msgs {
                    out.send(&m).await?;
                }
                if first_audio && out.fault_is(FaultKind::DropMidUtterance) && !self.dropped_mid {
                    self.dropped_mid = true;
                    return Err(Ended::Dropped);
                }
                if first_audio && need_more {
                    out.send(&with_id(json!({"type": "need_more_text"}), &key))
                        .await?;
                }
            }
            let r = &mut self.reqs[i];
            if r.finished() {
                while let Some((w, s, e)) = r.words.pop_front() {
                    let m = with_id(
                        json!({"type": "text", "text": w, "start_s": ms(s), "stop_s": ms(e), "stream_id": 0}),
                        &r.key,
                    );
                    out.send(&m).await?;
                }
                r.done = true;
                out.send(&with_id(json!({"type": "end_of_stream"}), &r.key))
                    .await?;
                if r.close_on_eos {
                    close = true;
                }
            }
        }
        Ok(close)
    }
}

/// The error sent when a socket reaches `max_session_ms`.
const SESSION_CAP: &str = "Maximum session duration reached";

async fn run_tts(
    state: Arc<SimState>,
    mut stream: SplitStream<WebSocket>,
    mut out: Out,
    deadline: Instant,
) -> Result<(), Ended> {
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<JobDone>(16);
    let script = state.script();
    let mut conn = TtsConn {
        state: state.clone(),
        script,
        reqs: Vec::new(),
        jobs_tx,
        setups: 0,
        dropped_mid: false,
    };
    let result = async {
        loop {
            let due = conn.next_due();
            tokio::select! {
                msg = stream.next() => {
                    let Some(Ok(msg)) = msg else { return Ok(()) };
                    match msg {
                        Message::Text(t) => {
                            let v: Value = match serde_json::from_str(t.as_str()) {
                                Ok(v) => v,
                                Err(_) => return Err(fail(&mut out, "Invalid JSON message", 1008, None).await),
                            };
                            if conn.reqs.is_empty() && v["type"] != "setup" {
                                return Err(fail(&mut out, "Session not found. Send setup first.", 1002, None).await);
                            }
                            conn.on_message(&mut out, v).await?;
                        }
                        Message::Binary(_) => {
                            return Err(fail(&mut out, "Binary messages are not supported", 1008, None).await);
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(_) => return Ok(()),
                    }
                }
                Some(done) = jobs_rx.recv() => {
                    let key = done.key.clone();
                    if let Err(e) = conn.on_job(done) {
                        return Err(fail(&mut out, &e, 1011, key.as_deref()).await);
                    }
                }
                _ = crate::ws::sleep_until_opt(due) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(fail(&mut out, SESSION_CAP, 1008, None).await);
                }
            }
            if conn.emit_due(&mut out).await? {
                out.close(1000, "end of stream").await;
                return Err(Ended::Closed);
            }
        }
    }
    .await;
    if matches!(result, Err(Ended::Closed)) {
        drain(stream).await;
        return Ok(());
    }
    result
}

// ---------------------------------------------------------------------------------------------
// TTS one-shot HTTP

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `POST /api/post/speech/tts`: the whole text at once; raw audio (`only_audio`) or the
/// WebSocket messages as NDJSON. Errors before streaming are HTTP 500 with a plain-text body.
pub(crate) async fn tts_post(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let counters = state.counters(Service::GradiumTts);
    counters.request();
    if let Some(f) = state.take_fault(Service::GradiumTts, |k| {
        matches!(k, FaultKind::Status | FaultKind::Hang)
    }) {
        if f.kind == FaultKind::Hang {
            state.shutdown.cancelled().await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        let status = StatusCode::from_u16(f.status.unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return plain(
            status,
            format!("error from server 1011: simulated {}", status.as_u16()),
        );
    }
    let script = state.script();
    let err = |msg: &str| {
        plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("error from server 1008: {msg}"),
        )
    };
    if !key_ok(&script, &headers, &HashMap::new()) {
        counters.reject();
        return err("API key is revoked or expired");
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        counters.reject();
        return err("invalid JSON body");
    };
    let Some(text) = v["text"].as_str().map(str::to_string) else {
        counters.reject();
        return err("text is required");
    };
    let Some(voice_id) = v["voice_id"].as_str().map(str::to_string) else {
        counters.reject();
        return err("voice_id is required");
    };
    let fmt_name = v["output_format"].as_str().unwrap_or("");
    let Some((codec, rate)) = parse_format(fmt_name) else {
        counters.reject();
        return err(&format!("Invalid output_format: {fmt_name}"));
    };
    if voice_id == "default" {
        counters.reject();
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error from server 1011: Embeddings not found for default".into(),
        );
    }
    let cfg = match &v["json_config"] {
        Value::String(st) => serde_json::from_str::<Value>(st).unwrap_or(Value::Null),
        o => o.clone(),
    };
    let rate = if rate == 0 { 48000 } else { rate };
    let voice = script
        .gradium
        .voices
        .get(&voice_id)
        .cloned()
        .or_else(|| cfg["rewrite_rules"].as_str().map(str::to_string))
        .unwrap_or_else(|| script.language.clone());
    let _guard = state.open_session(Service::GradiumTts);
    let items = parse_items(&text);
    let engine = script.tts_engine;
    let synth = tokio::task::spawn_blocking(move || synthesize(&items, engine, &voice, 175, rate))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let (samples, words) = match synth {
        Ok(s) => s,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error from server 1011: {e}"),
            );
        }
    };
    let frame = (rate as f64 * 0.08).round() as usize;
    let mut req_codec = TtsReq::for_encoding(codec, rate);
    if v["only_audio"].as_bool() == Some(true) {
        let bytes = req_codec.encode(&samples);
        let ct = match codec {
            Codec::Wav => "audio/wav",
            _ => "audio/pcm",
        };
        return ([(axum::http::header::CONTENT_TYPE, ct)], bytes).into_response();
    }
    let mut lines = Vec::new();
    lines.push(
        json!({"type": "ready", "request_id": uuid::Uuid::new_v4().to_string(),
        "model_name": v["model_name"].as_str().unwrap_or("default"), "sample_rate": rate,
        "frame_size": frame, "audio_stream_names": ["tts"], "text_stream_names": ["tts"]}),
    );
    for (w, s0, s1) in &words {
        lines.push(json!({"type": "text", "text": w, "start_s": ms(*s0), "stop_s": ms(*s1), "stream_id": 0}));
    }
    for (i, chunk) in samples.chunks(frame.max(1)).enumerate() {
        let t0 = i as f64 * 0.08;
        let bytes = req_codec.encode(chunk);
        lines.push(
            json!({"type": "audio", "audio": B64.encode(&bytes), "start_s": ms(t0),
            "stop_s": ms(t0 + chunk.len() as f64 / rate as f64), "stream_id": 0}),
        );
    }
    lines.push(json!({"type": "end_of_stream"}));
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// STT

/// `GET /api/speech/asr` (WebSocket).
pub(crate) async fn stt(
    State(state): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(state, Service::GradiumStt, headers, query, ws, run_stt).await
}

const DELAYS: &[u64] = &[7, 8, 10, 12, 14, 16, 20, 24, 36, 48];
const STT_LANGUAGES: &[&str] = &["en", "fr", "de", "es", "pt"];

struct SUtt {
    words: Option<Vec<String>>,
    revealed: usize,
    /// Start of the user turn.
    start: f64,
    /// Start of the current speech segment of the turn.
    seg_start: f64,
    /// Speech time of the turn's earlier segments.
    base: f64,
    /// End of speech while the turn may go on (see `turn_gap_ms`).
    held: Option<f64>,
}

struct SttSession {
    decoder: Option<Decoder>,
    codec_is_wav: bool,
    rate: u32,
    frame: usize,
    tracker: Option<SpeechTracker>,
    transcripts: Transcripts,
    buf: Vec<i16>,
    step_idx: u64,
    delay_s: f64,
    word_interval: f64,
    /// See `SimScript::turn_gap_ms`.
    turn_gap: f64,
    endpointing: f64,
    min_speech: f64,
    threshold: f64,
    utt: Option<SUtt>,
    queue: VecDeque<(String, f64, f64)>,
    /// Stop time of the segment being closed (sent as `end_text` after its words).
    closing: Option<f64>,
    ready: bool,
}

impl SttSession {
    fn tracker(&mut self) -> &mut SpeechTracker {
        let (rate, th, ms_, ep) = (self.rate, self.threshold, self.min_speech, self.endpointing);
        self.tracker
            .get_or_insert_with(|| SpeechTracker::new(rate, th, ms_, ep, 3600.0))
    }

    fn now(&self) -> f64 {
        self.tracker.as_ref().map(|t| t.now()).unwrap_or(0.0)
    }

    fn start_utt(&mut self, time: f64) {
        let words = self
            .transcripts
            .next()
            .map(|t| t.split_whitespace().map(str::to_string).collect::<Vec<_>>());
        self.utt = Some(SUtt {
            words,
            revealed: 0,
            start: time,
            seg_start: time,
            base: 0.0,
            held: None,
        });
    }

    /// Ends the utterance: its remaining words are due at `at` (audio time).
    fn end_utt(&mut self, start: f64, end: f64, at: f64) {
        let Some(mut u) = self.utt.take() else { return };
        self.transcripts.finalized();
        let words = u.words.take().unwrap_or_else(|| {
            heard((end - start).max(0.1))
                .split_whitespace()
                .map(str::to_string)
                .collect()
        });
        let rest = &words[u.revealed.min(words.len())..];
        let from = if u.revealed == 0 {
            start
        } else {
            (start + u.revealed as f64 * self.word_interval).min(end)
        };
        let n = rest.len().max(1) as f64;
        for (k, w) in rest.iter().enumerate() {
            let s = from + (end - from) * k as f64 / n;
            self.queue.push_back((w.clone(), ms(s), at));
        }
        self.closing = Some(ms(end));
    }

    /// Releases due words (all of them when `all`) and the pending `end_text`.
    fn release(&mut self, all: bool, out: &mut Vec<Value>) {
        let now = self.now();
        while self
            .queue
            .front()
            .is_some_and(|(_, _, at)| all || *at <= now + 1e-9)
        {
            if let Some((w, s, _)) = self.queue.pop_front() {
                out.push(json!({"type": "text", "text": w, "start_s": s, "stream_id": 0}));
            }
        }
        if self.queue.is_empty() {
            if let Some(stop) = self.closing.take() {
                out.push(json!({"type": "end_text", "stop_s": stop, "stream_id": 0}));
            }
        }
    }

    fn vad(&self) -> Value {
        let speaking = self
            .tracker
            .as_ref()
            .is_some_and(|t| t.utterance_start().is_some())
            && self
                .tracker
                .as_ref()
                .is_some_and(|t| t.silence_run() < 0.05);
        let s = self
            .tracker
            .as_ref()
            .map(|t| t.silence_run())
            .unwrap_or(0.0);
        let x = if speaking {
            0.0
        } else {
            s / self.endpointing.max(0.01)
        };
        let horizons = [0.5, 1.0, 2.0, 3.0];
        let v: Vec<Value> = horizons
            .iter()
            .map(|h: &f64| {
                let p = (0.5 * x * (2.0 / h).sqrt()).clamp(0.01, 0.99);
                json!({"horizon_s": h, "inactivity_prob": (p * 1000.0).round() / 1000.0})
            })
            .collect();
        json!(v)
    }

    /// Processes decoded samples in 80 ms steps.
    fn push(&mut self, samples: Vec<i16>, out: &mut Vec<Value>) {
        self.buf.extend(samples);
        while self.buf.len() >= self.frame {
            let step: Vec<i16> = self.buf.drain(..self.frame).collect();
            let events = self.tracker().push(&step);
            let now = self.now();
            for ev in events {
                match ev {
                    SpeechEvent::Start { time } => {
                        let resume = self
                            .utt
                            .as_ref()
                            .and_then(|u| u.held)
                            .is_some_and(|end| time - end < self.turn_gap);
                        if let (true, Some(u)) = (resume, self.utt.as_mut()) {
                            // The same user turn goes on.
                            u.held = None;
                            u.seg_start = time;
                        } else {
                            self.end_held(now);
                            self.start_utt(time);
                        }
                    }
                    SpeechEvent::End { end, .. } => {
                        if self.turn_gap > 0.0 {
                            if let Some(u) = self.utt.as_mut() {
                                u.base += (end - u.seg_start).max(0.0);
                                u.held = Some(end);
                            }
                        } else if let Some(start) = self.utt.as_ref().map(|u| u.start) {
                            let at = (end + self.delay_s).max(now);
                            self.end_utt(start, end, at);
                        }
                    }
                }
            }
            if self
                .utt
                .as_ref()
                .and_then(|u| u.held)
                .is_some_and(|end| now - end >= self.turn_gap)
            {
                self.end_held(now);
            }
            // Reveal words while the user speaks (the last one waits for the end).
            let voiced_now = self
                .tracker
                .as_ref()
                .map(|t| t.voiced_in_utterance())
                .unwrap_or(0.0);
            if let Some(u) = self.utt.as_mut() {
                let voiced = u.base + if u.held.is_some() { 0.0 } else { voiced_now };
                if let Some(words) = &u.words {
                    while u.revealed + 1 < words.len()
                        && voiced >= (u.revealed + 1) as f64 * self.word_interval
                    {
                        let s = u.start + u.revealed as f64 * self.word_interval;
                        self.queue.push_back((
                            words[u.revealed].clone(),
                            ms(s),
                            now + self.delay_s,
                        ));
                        u.revealed += 1;
                    }
                }
            }
            self.release(false, out);
            self.step_idx += 1;
            out.push(json!({
                "type": "step",
                "vad": self.vad(),
                "step_idx": self.step_idx,
                "step_duration_s": 0.08,
                "total_duration_s": ms(now),
            }));
        }
    }

    /// Ends a held turn: its remaining words are due `delay_in_frames` after its end.
    fn end_held(&mut self, now: f64) {
        if let Some((start, end)) = self.utt.as_ref().and_then(|u| u.held.map(|e| (u.start, e))) {
            self.end_utt(start, end, (end + self.delay_s).max(now));
        }
    }

    /// Flush / end of stream: finish the open utterance and emit everything.
    fn finish(&mut self, out: &mut Vec<Value>) {
        let now = self.now();
        if let Some(SpeechEvent::End { end, .. }) = self.tracker().force_end() {
            if let Some(start) = self.utt.as_ref().map(|u| u.start) {
                self.end_utt(start, end, now);
            }
        } else if let Some(u) = &self.utt {
            let (start, end) = (u.start, u.held.unwrap_or(now));
            self.end_utt(start, end, now);
        }
        self.release(true, out);
    }
}

/// Splits off the last `n` words of `msgs` (and what follows them: `end_text`), to be sent
/// after `flushed`.
fn late_words(msgs: &mut Vec<Value>, n: usize) -> Vec<Value> {
    if n == 0 {
        return Vec::new();
    }
    let texts: Vec<usize> = msgs
        .iter()
        .enumerate()
        .filter(|(_, m)| m["type"] == "text")
        .map(|(i, _)| i)
        .collect();
    match texts.get(texts.len().saturating_sub(n)) {
        Some(&at) => msgs.split_off(at),
        None => Vec::new(),
    }
}

async fn run_stt(
    state: Arc<SimState>,
    mut stream: SplitStream<WebSocket>,
    mut out: Out,
    deadline: Instant,
) -> Result<(), Ended> {
    let script = state.script();
    let g = &script.gradium;
    let final_delay = state.delay(g.stt_final_delay_ms);
    let late_delay = state.delay(g.stt_words_after_flushed_ms);
    let ready_delay = state.delay(g.ready_delay_ms);
    let mut s = SttSession {
        decoder: None,
        codec_is_wav: false,
        rate: 24000,
        frame: 1920,
        tracker: None,
        transcripts: state.transcripts(),
        buf: Vec::new(),
        step_idx: 0,
        delay_s: 0.0,
        word_interval: g.stt_word_interval_ms as f64 / 1000.0,
        turn_gap: script.turn_gap_ms as f64 / 1000.0,
        endpointing: g.stt_endpointing_ms as f64 / 1000.0,
        min_speech: g.stt_min_speech_ms as f64 / 1000.0,
        threshold: script.speech_threshold,
        utt: None,
        queue: VecDeque::new(),
        closing: None,
        ready: false,
    };
    let result: Result<(), Ended> = async {
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = state.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(fail(&mut out, SESSION_CAP, 1008, None).await);
                }
            };
            let Some(Ok(msg)) = msg else { return Ok(()) };
            let v: Value = match msg {
                Message::Text(t) => match serde_json::from_str(t.as_str()) {
                    Ok(v) => v,
                    Err(_) => return Err(fail(&mut out, "Invalid JSON message", 1008, None).await),
                },
                Message::Binary(_) => {
                    return Err(fail(&mut out, "Binary messages are not supported", 1008, None).await);
                }
                // Pings are answered by the WebSocket layer.
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => return Ok(()),
            };
            let ty = v["type"].as_str().unwrap_or("");
            if !s.ready && ty != "setup" {
                return Err(fail(&mut out, "Session not found. Send setup first.", 1002, None).await);
            }
            match ty {
                "setup" => {
                    if s.ready {
                        return Err(fail(&mut out, "setup already received", 1008, None).await);
                    }
                    let fmt_name = v["input_format"].as_str().unwrap_or("pcm");
                    let Some((codec, rate)) = parse_format(fmt_name) else {
                        let msg = if fmt_name == "opus" {
                            "input_format opus is not supported by the simulator".to_string()
                        } else {
                            format!("Invalid input_format: {fmt_name}")
                        };
                        return Err(fail(&mut out, &msg, 1008, None).await);
                    };
                    let cfg = match &v["json_config"] {
                        Value::Null => json!({}),
                        o @ Value::Object(_) => o.clone(),
                        Value::String(st) => match serde_json::from_str::<Value>(st) {
                            Ok(o @ Value::Object(_)) => o,
                            _ => return Err(fail(&mut out, "json_config is not a valid JSON object", 1008, None).await),
                        },
                        _ => return Err(fail(&mut out, "json_config must be an object or a JSON string", 1008, None).await),
                    };
                    let delay = match &cfg["delay_in_frames"] {
                        Value::Null => 10,
                        d => match d.as_u64() {
                            Some(d) if DELAYS.contains(&d) => d,
                            _ => return Err(fail(&mut out, "delay_in_frames must be one of 7, 8, 10, 12, 14, 16, 20, 24, 36, 48", 1008, None).await),
                        },
                    };
                    if let Some(l) = cfg.get("language").filter(|l| !l.is_null()) {
                        if !l.as_str().is_some_and(|l| STT_LANGUAGES.contains(&l)) {
                            return Err(fail(&mut out, "language must be one of en, fr, de, es, pt", 1008, None).await);
                        }
                    }
                    s.rate = if rate == 0 { 24000 } else { rate };
                    // A client that names its call continues the call's transcripts.
                    s.transcripts.set_call(v["client_req_id"].as_str());
                    s.codec_is_wav = codec == Codec::Wav;
                    s.decoder = Some(Decoder::new(
                        match codec {
                            Codec::Ulaw => SampleFormat::Ulaw,
                            Codec::Alaw => SampleFormat::Alaw,
                            _ => SampleFormat::S16,
                        },
                        1,
                    ));
                    s.frame = (s.rate as f64 * 0.08).round() as usize;
                    s.delay_s = delay as f64 * 0.08;
                    tokio::time::sleep(ready_delay).await;
                    s.ready = true;
                    out.send(&json!({
                        "type": "ready",
                        "request_id": uuid::Uuid::new_v4().to_string(),
                        "model_name": v["model_name"].as_str().unwrap_or("default"),
                        "sample_rate": 24000,
                        "frame_size": 1920,
                        "delay_in_frames": delay,
                        "text_stream_names": [],
                    }))
                    .await?;
                }
                "audio" => {
                    let Some(b64) = v["audio"].as_str() else {
                        return Err(fail(&mut out, "audio message without audio", 1008, None).await);
                    };
                    let Ok(bytes) = B64.decode(b64) else {
                        return Err(fail(&mut out, "audio is not valid base64", 1008, None).await);
                    };
                    if s.codec_is_wav && s.tracker.is_none() && bytes.len() >= 28 && &bytes[0..4] == b"RIFF" {
                        s.rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]).max(8000);
                        s.frame = (s.rate as f64 * 0.08).round() as usize;
                    }
                    if out.fault_is(FaultKind::DropMidUtterance)
                        && s.utt.is_some()
                        && s.tracker.as_ref().is_some_and(|t| t.voiced_in_utterance() >= 0.2)
                    {
                        return Err(Ended::Dropped);
                    }
                    let samples = s.decoder.as_mut().map(|d| d.push(&bytes)).unwrap_or_default();
                    let mut msgs = Vec::new();
                    s.push(samples, &mut msgs);
                    for m in msgs {
                        out.send(&m).await?;
                    }
                }
                "flush" => {
                    tokio::time::sleep(final_delay).await;
                    let mut msgs = Vec::new();
                    s.finish(&mut msgs);
                    let late = late_words(&mut msgs, g.stt_words_after_flushed);
                    msgs.push(json!({"type": "flushed", "flush_id": v["flush_id"].clone()}));
                    for m in msgs {
                        out.send(&m).await?;
                    }
                    if !late.is_empty() {
                        tokio::time::sleep(late_delay).await;
                        for m in late {
                            out.send(&m).await?;
                        }
                    }
                }
                "end_of_stream" => {
                    let mut msgs = Vec::new();
                    s.finish(&mut msgs);
                    msgs.push(json!({"type": "end_of_stream"}));
                    for m in msgs {
                        out.send(&m).await?;
                    }
                    out.close(1000, "end of stream").await;
                    return Err(Ended::Closed);
                }
                _ => {}
            }
        }
    }
    .await;
    if matches!(result, Err(Ended::Closed)) {
        drain(stream).await;
        return Ok(());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_tags() {
        let items = parse_items("Hello <break time=\"1.5s\" /> world <flush> again");
        assert_eq!(
            items,
            vec![
                Item::Word("Hello".into()),
                Item::Break(1.5),
                Item::Word("world".into()),
                Item::Flush,
                Item::Word("again".into()),
            ]
        );
    }

    #[test]
    fn formats() {
        assert_eq!(parse_format("pcm"), Some((Codec::Pcm, 0)));
        assert_eq!(parse_format("pcm_16000"), Some((Codec::Pcm, 16000)));
        assert_eq!(parse_format("mulaw_8000"), Some((Codec::Ulaw, 8000)));
        assert_eq!(parse_format("mp3"), None);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any client text: no panic, and every plain word comes out in order.
        #[test]
        fn parse_items_keeps_plain_words(text in "[a-zé<>/=\" .0-9]{0,80}") {
            let items = parse_items(&text);
            if !text.contains('<') {
                let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
                let got: Vec<String> = items.into_iter().filter_map(|i| match i { Item::Word(w) => Some(w), _ => None }).collect();
                prop_assert_eq!(got, words);
            }
        }

        /// Streaming text in arbitrary pieces releases exactly the words of the whole text.
        #[test]
        fn release_is_complete_at_end_of_stream(pieces in proptest::collection::vec("[a-z]{0,5}[ ,.]{0,2}", 0..12)) {
            let mut r = TtsReq::for_encoding(Codec::Pcm, 16000);
            for p in &pieces {
                r.text.push_str(p);
                r.release(2);
            }
            r.eos = true;
            r.release(2);
            let released: Vec<String> = r.queue.iter().flat_map(|(items, _)| items.iter().filter_map(|i| match i { Item::Word(w) => Some(w.clone()), _ => None })).collect();
            let expected: Vec<String> = pieces.concat().split_whitespace().map(str::to_string).collect();
            prop_assert_eq!(released, expected);
            prop_assert!(r.items.is_empty());
        }
    }
}
