//! `[stt.gradium]` and `[tts.gradium]`: the Gradium sections of the configuration, and their
//! registry entries.

use std::sync::Arc;

use micdrop_core::stt::SpeechToText;
use micdrop_core::tts::TextToSpeech;
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use super::{GradiumStt, GradiumTts};
use crate::config::{
    BuildContext, ConfigError, DEFAULT_GRADIUM_MAX_AGE_MS, DEFAULT_IDLE_CLOSE_MS,
    GRADIUM_DEFAULT_VOICE, GRADIUM_EU_BASE_URL, GRADIUM_KEY_ENV, GRADIUM_US_BASE_URL, KeyNeed,
    ProviderSection, SimEndpoints, SttSection, TtsSection, link_policy, ms, parse_url,
};
use crate::link::LinkPolicy;
use crate::retry::RetryPolicy;
use crate::secret::ApiKey;

/// Gradium's region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradiumRegion {
    /// `eu.api.gradium.ai` (default).
    #[default]
    Eu,
    /// `us.api.gradium.ai` (refused under `[sovereignty] mode = "eu"`).
    Us,
}

fn gradium_url(
    field: &str,
    base_url: &Option<String>,
    region: GradiumRegion,
    path: &str,
) -> Result<Url, ConfigError> {
    let base = match base_url {
        Some(b) => b.clone(),
        None => match region {
            GradiumRegion::Eu => GRADIUM_EU_BASE_URL.into(),
            GradiumRegion::Us => GRADIUM_US_BASE_URL.into(),
        },
    };
    let mut u = parse_url(field, &base)?;
    let scheme = match u.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(ConfigError::invalid(
                field,
                format!("unsupported scheme {other:?}"),
            ));
        }
    };
    if u.scheme() != scheme {
        // http→ws and https→wss are always accepted by `set_scheme`... except between
        // "special" schemes, which these all are.
        let s = u.as_str().replacen(u.scheme(), scheme, 1);
        u = parse_url(field, &s)?;
    }
    // Accept a base given with or without Gradium's `/api` prefix (the real API and the
    // simulators document their base as `…/api`).
    let path = if u.path().trim_end_matches('/').ends_with("/api") {
        let p = path.trim_start_matches('/');
        p.strip_prefix("api/").unwrap_or(p)
    } else {
        path
    };
    Ok(crate::http::join(&u, path))
}

/// `[stt.gradium]`: Gradium ASR.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GradiumSttConfig {
    /// `eu` (default) or `us`.
    pub region: GradiumRegion,
    /// Host override (`wss://…`, `ws://…`, `http(s)://…`); the path `/api/speech/asr` is added
    /// (`/speech/asr` when the base already ends in `/api`).
    pub base_url: Option<String>,
    /// Environment variable of the key (default `GRADIUM_API_KEY`).
    pub api_key_env: String,
    /// A key set by code (never read from TOML).
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
    /// `model_name` (default `default`).
    pub model_name: String,
    /// `json_config.language` (`en`, `fr`, `de`, `es`, `pt`).
    pub language: Option<String>,
    /// `json_config.delay_in_frames`: one of [`DELAY_IN_FRAMES`] (80 ms each); another value is
    /// refused when the configuration is read (Gradium would refuse it at connect with 1008).
    #[serde(deserialize_with = "de_delay_in_frames")]
    pub delay_in_frames: Option<u32>,
    /// Other `json_config` keys, merged as given.
    pub json_config: Map<String, Value>,
    /// After the end of a turn, how long to wait for `flushed` before emitting what was heard.
    pub transcription_timeout_ms: u64,
    /// After the matching `flushed`, how long words are still collected before the transcript
    /// is emitted (Gradium may send the last words just after `flushed`; Pipecat waits 150 ms).
    pub flushed_grace_ms: u64,
    /// Connect timeout (handshake and `ready`).
    pub connect_timeout_ms: u64,
    /// Reconnections before giving up.
    pub max_retries: u32,
    /// First reconnection delay.
    pub retry_delay_ms: u64,
    /// Longest reconnection delay.
    pub max_retry_delay_ms: u64,
    /// Open the provider session only when needed (STT: when the user starts speaking, audio
    /// buffered meanwhile; TTS: when there is text to say) and close it after `idle_close_ms`
    /// without work. Default `true` (an idle call holds no provider session); `false`: opened
    /// when the call first needs it and kept open.
    pub on_demand: bool,
    /// With `on_demand`: close the session after this long without work.
    pub idle_close_ms: u64,
    /// Replace the socket between turns/utterances once it is this old, before Gradium's 300 s
    /// session cap ends it (0: never). A cap reached in the middle of work reconnects anyway.
    pub max_session_age_ms: u64,
}

impl Default for GradiumSttConfig {
    fn default() -> Self {
        Self {
            region: GradiumRegion::Eu,
            base_url: None,
            api_key_env: GRADIUM_KEY_ENV.into(),
            api_key: None,
            model_name: "default".into(),
            language: Some("fr".into()),
            delay_in_frames: None,
            json_config: Map::new(),
            transcription_timeout_ms: 4000,
            flushed_grace_ms: 150,
            connect_timeout_ms: 5000,
            max_retries: 3,
            retry_delay_ms: 1000,
            max_retry_delay_ms: 8000,
            on_demand: true,
            idle_close_ms: DEFAULT_IDLE_CLOSE_MS,
            max_session_age_ms: DEFAULT_GRADIUM_MAX_AGE_MS,
        }
    }
}

impl GradiumSttConfig {
    /// The ASR WebSocket URL.
    pub fn url(&self) -> Result<Url, ConfigError> {
        gradium_url(
            "stt.gradium.base_url",
            &self.base_url,
            self.region,
            "api/speech/asr",
        )
    }

    /// When the session's link opens, closes and is recycled.
    pub fn link_policy(&self) -> LinkPolicy {
        link_policy(
            self.retry(),
            self.on_demand,
            self.idle_close_ms,
            self.max_session_age_ms,
        )
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            base_delay: ms(self.retry_delay_ms),
            max_delay: ms(self.max_retry_delay_ms.max(self.retry_delay_ms)),
        }
    }
}

/// `[tts.gradium]`: Gradium TTS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GradiumTtsConfig {
    /// `eu` (default) or `us`.
    pub region: GradiumRegion,
    /// Host override; the path `/api/speech/tts` is added (`/speech/tts` after a base ending in
    /// `/api`).
    pub base_url: Option<String>,
    /// Environment variable of the key (default `GRADIUM_API_KEY`).
    pub api_key_env: String,
    /// A key set by code (never read from TOML).
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
    /// `voice_id`.
    pub voice_id: String,
    /// `model_name` (default `default`).
    pub model_name: String,
    /// `output_format`: `pcm_16000` (default; no resampling) or `pcm_8000` … `pcm_48000`
    /// (resampled to 16 kHz).
    pub output_format: String,
    /// `json_config.padding_bonus` (speed, −4…4, negative is faster).
    pub padding_bonus: Option<f64>,
    /// `json_config.temp` (0…1.4).
    pub temp: Option<f64>,
    /// `json_config.cfg_coef` (voice similarity, 1…4).
    pub cfg_coef: Option<f64>,
    /// `json_config.rewrite_rules` (text normalization language, default `fr`).
    pub rewrite_rules: Option<String>,
    /// Other `json_config` keys.
    pub json_config: Map<String, Value>,
    /// `pronunciation_id`.
    pub pronunciation_id: Option<String>,
    /// Connect timeout (handshake).
    pub connect_timeout_ms: u64,
    /// Longest wait for audio once an utterance's text is complete, before the connection is
    /// considered dead (reconnect, re-send the unspoken text).
    pub audio_timeout_ms: u64,
    /// Reconnections before giving up (`TtsEvent::Failed`).
    pub max_retries: u32,
    /// First reconnection delay.
    pub retry_delay_ms: u64,
    /// Longest reconnection delay.
    pub max_retry_delay_ms: u64,
    /// Open the provider session only when needed (STT: when the user starts speaking, audio
    /// buffered meanwhile; TTS: when there is text to say) and close it after `idle_close_ms`
    /// without work. Default `true` (an idle call holds no provider session); `false`: opened
    /// when the call first needs it and kept open.
    pub on_demand: bool,
    /// With `on_demand`: close the session after this long without work.
    pub idle_close_ms: u64,
    /// Replace the socket between turns/utterances once it is this old, before Gradium's 300 s
    /// session cap ends it (0: never). A cap reached in the middle of work reconnects anyway.
    pub max_session_age_ms: u64,
}

impl Default for GradiumTtsConfig {
    fn default() -> Self {
        Self {
            region: GradiumRegion::Eu,
            base_url: None,
            api_key_env: GRADIUM_KEY_ENV.into(),
            api_key: None,
            voice_id: GRADIUM_DEFAULT_VOICE.into(),
            model_name: "default".into(),
            output_format: "pcm_16000".into(),
            padding_bonus: None,
            temp: None,
            cfg_coef: None,
            rewrite_rules: Some("fr".into()),
            json_config: Map::new(),
            pronunciation_id: None,
            connect_timeout_ms: 5000,
            audio_timeout_ms: 5000,
            max_retries: 3,
            retry_delay_ms: 500,
            max_retry_delay_ms: 8000,
            on_demand: true,
            idle_close_ms: DEFAULT_IDLE_CLOSE_MS,
            max_session_age_ms: DEFAULT_GRADIUM_MAX_AGE_MS,
        }
    }
}

impl GradiumTtsConfig {
    /// The TTS WebSocket URL.
    pub fn url(&self) -> Result<Url, ConfigError> {
        gradium_url(
            "tts.gradium.base_url",
            &self.base_url,
            self.region,
            "api/speech/tts",
        )
    }

    /// When the session's link opens, closes and is recycled.
    pub fn link_policy(&self) -> LinkPolicy {
        link_policy(
            self.retry(),
            self.on_demand,
            self.idle_close_ms,
            self.max_session_age_ms,
        )
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            base_delay: ms(self.retry_delay_ms),
            max_delay: ms(self.max_retry_delay_ms.max(self.retry_delay_ms)),
        }
    }

    /// The output sample rate of `output_format` (`pcm_16000` → 16000; `pcm` → 48000).
    pub fn output_rate(&self) -> Result<u32, ConfigError> {
        match self.output_format.as_str() {
            "pcm" => Ok(48_000),
            f => f
                .strip_prefix("pcm_")
                .and_then(|r| r.parse().ok())
                .filter(|r| [8000, 16_000, 22_050, 24_000, 44_100, 48_000].contains(r))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "tts.gradium.output_format",
                        format!("{f:?}: use pcm_16000 (or pcm_8000 … pcm_48000)"),
                    )
                }),
        }
    }
}

/// The `delay_in_frames` values Gradium STT accepts.
pub const DELAY_IN_FRAMES: [u32; 10] = [7, 8, 10, 12, 14, 16, 20, 24, 36, 48];

fn de_delay_in_frames<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = Option::<u32>::deserialize(d)?;
    match v {
        Some(n) if !DELAY_IN_FRAMES.contains(&n) => Err(serde::de::Error::custom(format!(
            "delay_in_frames = {n}: Gradium accepts 7, 8, 10, 12, 14, 16, 20, 24, 36 or 48"
        ))),
        v => Ok(v),
    }
}

impl GradiumSttConfig {
    /// Checks values set by code (the TOML reader checks them already).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.delay_in_frames {
            Some(n) if !DELAY_IN_FRAMES.contains(&n) => Err(ConfigError::invalid(
                "stt.gradium.delay_in_frames",
                format!("{n}: Gradium accepts 7, 8, 10, 12, 14, 16, 20, 24, 36 or 48"),
            )),
            _ => Ok(()),
        }
    }
}

impl ProviderSection for GradiumSttConfig {
    fn key_need(&self) -> Option<KeyNeed> {
        Some(KeyNeed::new(&self.api_key_env, &self.api_key))
    }

    fn endpoints(&self) -> Vec<Url> {
        self.url().into_iter().collect()
    }

    fn point_to_simulators(&mut self, sims: &SimEndpoints) {
        self.base_url = Some(sims.gradium.clone());
        self.api_key = Some(ApiKey::new("sim-gradium-key"));
    }
}

impl SttSection for GradiumSttConfig {
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn SpeechToText>, ConfigError> {
        self.validate()?;
        Ok(Arc::new(GradiumStt::new(self.clone(), cx.key(self)?)?))
    }
}

impl ProviderSection for GradiumTtsConfig {
    fn key_need(&self) -> Option<KeyNeed> {
        Some(KeyNeed::new(&self.api_key_env, &self.api_key))
    }

    fn endpoints(&self) -> Vec<Url> {
        self.url().into_iter().collect()
    }

    fn point_to_simulators(&mut self, sims: &SimEndpoints) {
        self.base_url = Some(sims.gradium.clone());
        self.api_key = Some(ApiKey::new("sim-gradium-key"));
    }
}

impl TtsSection for GradiumTtsConfig {
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn TextToSpeech>, ConfigError> {
        Ok(Arc::new(GradiumTts::new(self.clone(), cx.key(self)?)?))
    }
}
