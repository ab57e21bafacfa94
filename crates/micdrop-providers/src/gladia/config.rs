//! `[stt.gladia]`: the Gladia section of the configuration, and its registry entry.

use std::sync::Arc;

use micdrop_core::stt::SpeechToText;
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use super::GladiaStt;
use crate::config::{
    BuildContext, ConfigError, DEFAULT_IDLE_CLOSE_MS, GLADIA_BASE_URL, GLADIA_KEY_ENV, KeyNeed,
    ProviderSection, SimEndpoints, SovereigntyConfig, SovereigntyError, SovereigntyMode,
    SttSection, link_policy, ms, parse_url,
};
use crate::link::LinkPolicy;
use crate::retry::RetryPolicy;
use crate::secret::ApiKey;

/// Gladia's processing region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum GladiaRegion {
    /// `eu-west` (default).
    #[default]
    #[serde(rename = "eu-west")]
    EuWest,
    /// `us-west` (refused under `[sovereignty] mode = "eu"`).
    #[serde(rename = "us-west")]
    UsWest,
}

impl GladiaRegion {
    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            GladiaRegion::EuWest => "eu-west",
            GladiaRegion::UsWest => "us-west",
        }
    }
}

/// `[stt.gladia]`: Gladia live v2.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GladiaConfig {
    /// `eu-west` (default) or `us-west`.
    pub region: GladiaRegion,
    /// API root (default `https://api.gladia.io`).
    pub base_url: Option<String>,
    /// Environment variable of the key (default `GLADIA_API_KEY`).
    pub api_key_env: String,
    /// A key set by code (never read from TOML).
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
    /// `model` (Gladia's default: `solaria-1`).
    pub model: Option<String>,
    /// `language_config.languages` (default `["fr"]`, like Gradium STT's `fr`; empty:
    /// Gladia's auto-detection).
    pub languages: Vec<String>,
    /// `language_config.code_switching`.
    pub code_switching: Option<bool>,
    /// `endpointing`: seconds of silence that close an utterance (Gladia default 0.05).
    pub endpointing: Option<f64>,
    /// `maximum_duration_without_endpointing` (seconds).
    pub maximum_duration_without_endpointing: Option<f64>,
    /// Custom vocabulary (`realtime_processing.custom_vocabulary_config.vocabulary`).
    pub custom_vocabulary: Vec<String>,
    /// Emit partial transcripts (`SttEvent::Partial`).
    pub partial_transcripts: bool,
    /// Any other init fields, deep-merged last into the init body (e.g.
    /// `{ pre_processing = { audio_enhancer = true } }`).
    pub settings: Map<String, Value>,
    /// Silence sent at once at the end of a turn to force the final transcript (default:
    /// endpointing + 250 ms).
    pub finalize_silence_ms: Option<u64>,
    /// When no final came shortly after that first burst, silence keeps being fed (in real time)
    /// until the final, up to this much silence in total for the turn (default 2000 ms; at most
    /// `finalize_silence_ms`: no feeding).
    pub max_finalize_silence_ms: u64,
    /// After the end of a turn, how long to wait for a transcript before emitting `""`.
    pub transcription_timeout_ms: u64,
    /// Connect timeout (init request and WebSocket handshake).
    pub connect_timeout_ms: u64,
    /// Reconnections before giving up (`SttEvent::Failed`).
    pub max_retries: u32,
    /// First reconnection delay (doubles each retry).
    pub retry_delay_ms: u64,
    /// Longest reconnection delay.
    pub max_retry_delay_ms: u64,
    /// Keep-alive: an empty audio chunk after this long without audio (Gladia closes idle
    /// sessions after ~30 s).
    pub keepalive_ms: u64,
    /// Open the provider session only when needed (STT: when the user starts speaking, audio
    /// buffered meanwhile; TTS: when there is text to say) and close it after `idle_close_ms`
    /// without work. Default `true` (an idle call holds no provider session); `false`: opened
    /// when the call first needs it and kept open.
    pub on_demand: bool,
    /// With `on_demand`: close the session after this long without work.
    pub idle_close_ms: u64,
}

impl Default for GladiaConfig {
    fn default() -> Self {
        Self {
            region: GladiaRegion::EuWest,
            base_url: None,
            api_key_env: GLADIA_KEY_ENV.into(),
            api_key: None,
            model: None,
            languages: vec!["fr".into()],
            code_switching: None,
            endpointing: None,
            maximum_duration_without_endpointing: None,
            custom_vocabulary: Vec::new(),
            partial_transcripts: false,
            settings: Map::new(),
            finalize_silence_ms: None,
            max_finalize_silence_ms: 2000,
            transcription_timeout_ms: 4000,
            connect_timeout_ms: 5000,
            max_retries: 3,
            retry_delay_ms: 1000,
            max_retry_delay_ms: 8000,
            keepalive_ms: 10_000,
            on_demand: true,
            idle_close_ms: DEFAULT_IDLE_CLOSE_MS,
        }
    }
}

impl GladiaConfig {
    /// `POST` URL of the init request, region included.
    pub fn init_url(&self) -> Result<Url, ConfigError> {
        let base = parse_url(
            "stt.gladia.base_url",
            self.base_url.as_deref().unwrap_or(GLADIA_BASE_URL),
        )?;
        let mut u = crate::http::join(&base, "v2/live");
        u.query_pairs_mut()
            .append_pair("region", self.region.as_str());
        Ok(u)
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            base_delay: ms(self.retry_delay_ms),
            max_delay: ms(self.max_retry_delay_ms.max(self.retry_delay_ms)),
        }
    }

    /// When the session's link opens and closes.
    pub fn link_policy(&self) -> LinkPolicy {
        link_policy(self.retry(), self.on_demand, self.idle_close_ms, 0)
    }
}

impl ProviderSection for GladiaConfig {
    fn key_need(&self) -> Option<KeyNeed> {
        Some(KeyNeed::new(&self.api_key_env, &self.api_key))
    }

    fn endpoints(&self) -> Vec<Url> {
        self.init_url().into_iter().collect()
    }

    fn check_policy(
        &self,
        label: &str,
        policy: &SovereigntyConfig,
    ) -> Result<(), SovereigntyError> {
        if policy.mode != SovereigntyMode::Eu {
            return Ok(());
        }
        let Ok(url) = self.init_url() else {
            return Ok(());
        };
        if self.region == GladiaRegion::UsWest && url.host_str() == Some("api.gladia.io") {
            return Err(SovereigntyError {
                provider: label.to_owned(),
                endpoint: url.to_string(),
                reason: "Gladia region \"us-west\" processes audio in the US".into(),
            });
        }
        Ok(())
    }

    fn point_to_simulators(&mut self, sims: &SimEndpoints) {
        self.base_url = Some(sims.gladia.clone());
        self.api_key = Some(ApiKey::new("sim-gladia-key"));
    }
}

impl SttSection for GladiaConfig {
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn SpeechToText>, ConfigError> {
        Ok(Arc::new(
            GladiaStt::new(self.clone(), cx.key(self)?)?
                .with_session_host_policy(cx.sovereignty.clone()),
        ))
    }
}
