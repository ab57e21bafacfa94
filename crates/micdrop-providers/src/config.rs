//! Configuration (serde, TOML): which provider serves each capability, with its options; keys
//! from environment variables; the EU data policy.
//!
//! ```toml
//! [agent]
//! provider = "mistral"            # or "openai-compatible"
//! model = "mistral-small-latest"
//! temperature = 0.3
//!
//! [stt]
//! provider = "gladia"             # or "gradium"
//! fallbacks = ["gradium"]
//! [stt.gladia]
//! languages = ["fr"]
//!
//! [tts]
//! provider = "gradium"            # or "none" (text-only answers)
//! [tts.gradium]
//! voice_id = "YTpq7expH9539ERJ"
//!
//! [sovereignty]
//! mode = "eu"                     # or "off"
//! allowed_hosts = ["llm.internal.example"]
//! ```
//!
//! Every key is documented in `docs/providers.md`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use micdrop_core::agent::ChatModel;
use micdrop_core::stt::SpeechToText;
use micdrop_core::tts::TextToSpeech;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use url::Url;

use crate::fallback::{FallbackModel, FallbackStt, FallbackTts};
use crate::gladia::GladiaStt;
use crate::gradium::{GradiumStt, GradiumTts};
use crate::link::LinkPolicy;
use crate::mistral::{
    ChatSettings, Dialect, MISTRAL_BASE_URL, MISTRAL_DEFAULT_MODEL, MistralModel, MistralOptions,
};
use crate::retry::RetryPolicy;
use crate::secret::ApiKey;

/// Default environment variable of the Mistral key.
pub const MISTRAL_KEY_ENV: &str = "MISTRAL_API_KEY";
/// Default environment variable of the Gladia key.
pub const GLADIA_KEY_ENV: &str = "GLADIA_API_KEY";
/// Default environment variable of the Gradium key.
pub const GRADIUM_KEY_ENV: &str = "GRADIUM_API_KEY";
/// Gladia's API root.
pub const GLADIA_BASE_URL: &str = "https://api.gladia.io";
/// Gradium's EU host.
pub const GRADIUM_EU_BASE_URL: &str = "wss://eu.api.gradium.ai";
/// Gradium's US host.
pub const GRADIUM_US_BASE_URL: &str = "wss://us.api.gradium.ai";
/// Default Gradium voice: the voice of Gradium's documentation examples. Set `voice_id` to the
/// French voice of your choice from Gradium's voice library.
pub const GRADIUM_DEFAULT_VOICE: &str = "YTpq7expH9539ERJ";

/// The hosts accepted by `[sovereignty] mode = "eu"` (besides loopback and `allowed_hosts`):
/// Mistral's EU production server, Gladia (with `region = "eu-west"`), Gradium's EU host.
pub const EU_HOSTS: &[&str] = &["api.mistral.ai", "api.gladia.io", "eu.api.gradium.ai"];

/// An error in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A provider's API key is not set.
    #[error("{provider}: API key missing: set the environment variable {env}")]
    MissingKey {
        /// The provider.
        provider: String,
        /// The environment variable to set.
        env: String,
    },
    /// A value is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The config key (`agent.base_url`, ...).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration breaks the EU data policy.
    #[error(transparent)]
    Sovereignty(#[from] SovereigntyError),
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An endpoint that `[sovereignty] mode = "eu"` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{provider} endpoint {endpoint} is not allowed by [sovereignty] mode = \"eu\": {reason}. \
     Choose an EU endpoint, add the host to [sovereignty] allowed_hosts, or set mode = \"off\""
)]
pub struct SovereigntyError {
    /// The provider (`stt gladia`, `agent fallback 1 (openai-compatible)`, ...).
    pub provider: String,
    /// The offending endpoint.
    pub endpoint: String,
    /// Why it is refused.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Top level
// ---------------------------------------------------------------------------------------------

/// The providers' configuration: TOML sections `[agent]`, `[stt]`, `[tts]`, `[sovereignty]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    /// The agent's chat model.
    pub agent: AgentProviderConfig,
    /// Speech-to-text.
    pub stt: SttProviderConfig,
    /// Text-to-speech (`None`: `[tts] provider = "none"`, answers as text only).
    #[serde(deserialize_with = "de_tts")]
    pub tts: Option<TtsProviderConfig>,
    /// EU data policy.
    pub sovereignty: SovereigntyConfig,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            agent: AgentProviderConfig::default(),
            stt: SttProviderConfig::default(),
            tts: Some(TtsProviderConfig::default()),
            sovereignty: SovereigntyConfig::default(),
        }
    }
}

fn de_tts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TtsProviderConfig>, D::Error> {
    let c = TtsProviderConfig::deserialize(d)?;
    Ok((c.provider != TtsKind::None).then_some(c))
}

/// The built providers, ready for `micdrop_core::call::CallConfig`.
#[derive(Clone)]
pub struct Providers {
    /// The agent's chat model (a [`FallbackModel`] when fallbacks are configured).
    pub model: Arc<dyn ChatModel>,
    /// Speech-to-text (a [`FallbackStt`] when fallbacks are configured).
    pub stt: Arc<dyn SpeechToText>,
    /// Text-to-speech, if enabled.
    pub tts: Option<Arc<dyn TextToSpeech>>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("model", &self.model.name())
            .field("stt", &self.stt.name())
            .field("tts", &self.tts.as_ref().map(|t| t.name().to_owned()))
            .finish()
    }
}

impl ProvidersConfig {
    /// Parses a TOML document holding (some of) the sections `[agent]`, `[stt]`, `[tts]`,
    /// `[sovereignty]`.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::invalid("providers config", e.to_string()))
    }

    /// The environment variables of keys that are needed and not set (deduplicated, in
    /// configuration order). Keys set in code ([`ApiKey`] fields) count as set.
    pub fn missing_keys(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for need in self.key_needs() {
            if need.key.is_none()
                && ApiKey::from_env(&need.env).is_none()
                && !out.contains(&need.env)
            {
                out.push(need.env);
            }
        }
        out
    }

    /// Checks the EU data policy: under `mode = "eu"`, every endpoint must be an EU host listed
    /// in [`EU_HOSTS`] (Gladia with `region = "eu-west"`), a loopback address, or a host of
    /// `allowed_hosts`. The error names the first offending endpoint.
    pub fn check_sovereignty(&self) -> Result<(), SovereigntyError> {
        if self.sovereignty.mode == SovereigntyMode::Off {
            return Ok(());
        }
        for (provider, url) in self.labelled_endpoints() {
            self.sovereignty.check(&provider, &url)?;
        }
        for (provider, g) in self.gladia_configs() {
            let Ok(url) = g.init_url() else { continue };
            if g.region == GladiaRegion::UsWest && url.host_str() == Some("api.gladia.io") {
                return Err(SovereigntyError {
                    provider,
                    endpoint: url.to_string(),
                    reason: "Gladia region \"us-west\" processes audio in the US".into(),
                });
            }
        }
        Ok(())
    }

    /// Points every Gladia, Gradium and Mistral provider (fallbacks included) at local
    /// simulators and gives them fake keys, for `micdrop serve --sim`. OpenAI-compatible models
    /// are left as configured.
    pub fn point_to_simulators(
        &mut self,
        gladia_base: &str,
        gradium_base: &str,
        mistral_base: &str,
    ) {
        let fake = |name: &str| Some(ApiKey::new(format!("sim-{name}-key")));
        point_agent(&mut self.agent, mistral_base, &fake("mistral"));
        self.stt.gladia.base_url = Some(gladia_base.to_owned());
        self.stt.gladia.api_key = fake("gladia");
        self.stt.gradium.base_url = Some(gradium_base.to_owned());
        self.stt.gradium.api_key = fake("gradium");
        if let Some(tts) = &mut self.tts {
            tts.gradium.base_url = Some(gradium_base.to_owned());
            tts.gradium.api_key = fake("gradium");
        }
    }

    /// Every endpoint the configuration reaches (agent, fallbacks, STT, TTS), for the per-call
    /// log and the sovereignty check. Invalid URLs are skipped here (reported by `build`).
    pub fn endpoints(&self) -> Vec<Url> {
        let mut out: Vec<Url> = Vec::new();
        for (_, u) in self.labelled_endpoints() {
            if !out.contains(&u) {
                out.push(u);
            }
        }
        out
    }

    /// Builds the providers. Fails on a missing key, an invalid value, or (under
    /// `mode = "eu"`) a non-EU endpoint.
    pub fn build(&self) -> Result<Providers, ConfigError> {
        self.check_sovereignty()?;
        let model = {
            let mut models: Vec<Arc<dyn ChatModel>> = Vec::new();
            for (label, a) in self.agent.flatten() {
                models.push(Arc::new(a.build_model(&label)?));
            }
            if models.len() == 1 {
                models.remove(0)
            } else {
                Arc::new(FallbackModel::new(models))
            }
        };
        let stt = {
            let mut list: Vec<Arc<dyn SpeechToText>> = Vec::new();
            for kind in self.stt.chain() {
                list.push(match kind {
                    SttKind::Gladia => Arc::new(
                        GladiaStt::new(
                            self.stt.gladia.clone(),
                            self.stt.gladia.key("stt gladia")?,
                        )?
                        .with_session_host_policy(self.sovereignty.clone()),
                    ),
                    SttKind::Gradium => Arc::new(GradiumStt::new(
                        self.stt.gradium.clone(),
                        self.stt.gradium.key("stt gradium")?,
                    )?),
                });
            }
            if list.len() == 1 {
                list.remove(0)
            } else {
                Arc::new(FallbackStt::new(list))
            }
        };
        let tts = match &self.tts {
            None => None,
            Some(t) => {
                let mut list: Vec<Arc<dyn TextToSpeech>> = Vec::new();
                for kind in t.chain() {
                    match kind {
                        TtsKind::Gradium => list.push(Arc::new(GradiumTts::new(
                            t.gradium.clone(),
                            t.gradium.key("tts gradium")?,
                        )?)),
                        TtsKind::None => {}
                    }
                }
                match list.len() {
                    0 => None,
                    1 => Some(list.remove(0)),
                    _ => Some(Arc::new(FallbackTts::new(list)) as Arc<dyn TextToSpeech>),
                }
            }
        };
        Ok(Providers { model, stt, tts })
    }

    fn key_needs(&self) -> Vec<KeyNeed> {
        let mut out = Vec::new();
        for (_, a) in self.agent.flatten() {
            if let Some(env) = a.key_env() {
                out.push(KeyNeed {
                    env,
                    key: a.api_key.clone(),
                });
            }
        }
        for kind in self.stt.chain() {
            match kind {
                SttKind::Gladia => out.push(KeyNeed {
                    env: self.stt.gladia.api_key_env.clone(),
                    key: self.stt.gladia.api_key.clone(),
                }),
                SttKind::Gradium => out.push(KeyNeed {
                    env: self.stt.gradium.api_key_env.clone(),
                    key: self.stt.gradium.api_key.clone(),
                }),
            }
        }
        if let Some(t) = &self.tts {
            if t.chain().contains(&TtsKind::Gradium) {
                out.push(KeyNeed {
                    env: t.gradium.api_key_env.clone(),
                    key: t.gradium.api_key.clone(),
                });
            }
        }
        out
    }

    fn gladia_configs(&self) -> Vec<(String, &GladiaConfig)> {
        if self.stt.chain().contains(&SttKind::Gladia) {
            vec![("stt gladia".into(), &self.stt.gladia)]
        } else {
            vec![]
        }
    }

    fn labelled_endpoints(&self) -> Vec<(String, Url)> {
        let mut out = Vec::new();
        for (label, a) in self.agent.flatten() {
            if let Ok(u) = a.base_url() {
                out.push((label, u));
            }
        }
        for kind in self.stt.chain() {
            match kind {
                SttKind::Gladia => {
                    if let Ok(u) = self.stt.gladia.init_url() {
                        out.push(("stt gladia".into(), u));
                    }
                }
                SttKind::Gradium => {
                    if let Ok(u) = self.stt.gradium.url() {
                        out.push(("stt gradium".into(), u));
                    }
                }
            }
        }
        if let Some(t) = &self.tts {
            if t.chain().contains(&TtsKind::Gradium) {
                if let Ok(u) = t.gradium.url() {
                    out.push(("tts gradium".into(), u));
                }
            }
        }
        out
    }
}

fn point_agent(a: &mut AgentProviderConfig, mistral_base: &str, key: &Option<ApiKey>) {
    if a.provider == AgentKind::Mistral {
        a.base_url = Some(mistral_base.to_owned());
        a.api_key = key.clone();
    }
    for f in &mut a.fallbacks {
        point_agent(f, mistral_base, key);
    }
}

struct KeyNeed {
    env: String,
    key: Option<ApiKey>,
}

fn parse_url(field: &str, value: &str) -> Result<Url, ConfigError> {
    Url::parse(value)
        .map_err(|e| ConfigError::invalid(field, format!("invalid URL {value:?}: {e}")))
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

// ---------------------------------------------------------------------------------------------
// [agent]
// ---------------------------------------------------------------------------------------------

/// Which chat API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// Mistral's API (`https://api.mistral.ai`).
    #[default]
    Mistral,
    /// An OpenAI-compatible server (vLLM, llama.cpp server, Ollama): needs `base_url` and
    /// `model`.
    OpenaiCompatible,
}

/// `[agent]`: the chat model, its settings and its fallbacks (`[[agent.fallbacks]]`, same keys).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentProviderConfig {
    /// `mistral` (default) or `openai-compatible`.
    pub provider: AgentKind,
    /// Model name (Mistral default: `mistral-small-latest`, see [`MISTRAL_DEFAULT_MODEL`]).
    pub model: Option<String>,
    /// Base URL (Mistral default: `https://api.mistral.ai`; for OpenAI-compatible servers the
    /// root or the `/v1` URL, e.g. `http://127.0.0.1:11434/v1`).
    pub base_url: Option<String>,
    /// Environment variable of the key (Mistral default `MISTRAL_API_KEY`; OpenAI-compatible
    /// default: none, no `Authorization` header; `""` disables the key).
    pub api_key_env: Option<String>,
    /// A key set by code (never read from TOML: keys do not belong in config files).
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Maximum tokens per answer.
    pub max_tokens: Option<u32>,
    /// Seed (`random_seed` on Mistral, `seed` on OpenAI-compatible servers).
    pub random_seed: Option<u64>,
    /// Mistral's `safe_prompt`.
    pub safe_prompt: Option<bool>,
    /// `tool_choice` when tools are offered.
    pub tool_choice: Option<String>,
    /// `parallel_tool_calls` when tools are offered.
    pub parallel_tool_calls: Option<bool>,
    /// `presence_penalty`.
    pub presence_penalty: Option<f64>,
    /// `frequency_penalty`.
    pub frequency_penalty: Option<f64>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Extra request-body fields, sent as given (Mistral rejects unknown fields).
    pub extra: Map<String, Value>,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First retry delay (doubles each retry).
    pub retry_delay_ms: u64,
    /// Longest retry delay.
    pub max_retry_delay_ms: u64,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Time allowed until the first streamed event.
    pub first_token_timeout_ms: u64,
    /// Longest pause between streamed events.
    pub idle_timeout_ms: u64,
    /// Models tried in order when this one fails (`[[agent.fallbacks]]`).
    pub fallbacks: Vec<AgentProviderConfig>,
}

impl Default for AgentProviderConfig {
    fn default() -> Self {
        Self {
            provider: AgentKind::Mistral,
            model: None,
            base_url: None,
            api_key_env: None,
            api_key: None,
            temperature: None,
            top_p: None,
            max_tokens: None,
            random_seed: None,
            safe_prompt: None,
            tool_choice: None,
            parallel_tool_calls: None,
            presence_penalty: None,
            frequency_penalty: None,
            stop: Vec::new(),
            extra: Map::new(),
            max_retries: 3,
            retry_delay_ms: 500,
            max_retry_delay_ms: 8000,
            connect_timeout_ms: 5000,
            first_token_timeout_ms: 10_000,
            idle_timeout_ms: 15_000,
            fallbacks: Vec::new(),
        }
    }
}

impl AgentProviderConfig {
    /// An OpenAI-compatible model at `base_url`.
    pub fn openai_compatible(base_url: &str, model: &str) -> Self {
        Self {
            provider: AgentKind::OpenaiCompatible,
            base_url: Some(base_url.to_owned()),
            model: Some(model.to_owned()),
            ..Self::default()
        }
    }

    /// This model and its fallbacks (depth first), labelled for errors.
    fn flatten(&self) -> Vec<(String, &AgentProviderConfig)> {
        let mut out = vec![(format!("agent ({})", self.kind_name()), self)];
        let mut n = 0;
        fn walk<'a>(
            a: &'a AgentProviderConfig,
            n: &mut usize,
            out: &mut Vec<(String, &'a AgentProviderConfig)>,
        ) {
            for f in &a.fallbacks {
                *n += 1;
                out.push((format!("agent fallback {} ({})", n, f.kind_name()), f));
                walk(f, n, out);
            }
        }
        walk(self, &mut n, &mut out);
        out
    }

    fn kind_name(&self) -> &'static str {
        match self.provider {
            AgentKind::Mistral => "mistral",
            AgentKind::OpenaiCompatible => "openai-compatible",
        }
    }

    fn key_env(&self) -> Option<String> {
        match (&self.api_key_env, self.provider) {
            (Some(e), _) if e.trim().is_empty() => None,
            (Some(e), _) => Some(e.clone()),
            (None, AgentKind::Mistral) => Some(MISTRAL_KEY_ENV.into()),
            (None, AgentKind::OpenaiCompatible) => None,
        }
    }

    fn base_url(&self) -> Result<Url, ConfigError> {
        match (&self.base_url, self.provider) {
            (Some(u), _) => parse_url("agent.base_url", u),
            (None, AgentKind::Mistral) => parse_url("agent.base_url", MISTRAL_BASE_URL),
            (None, AgentKind::OpenaiCompatible) => Err(ConfigError::invalid(
                "agent.base_url",
                "required for provider = \"openai-compatible\"",
            )),
        }
    }

    /// The model options (key resolved from the environment).
    pub fn model_options(&self, label: &str) -> Result<MistralOptions, ConfigError> {
        let api_key = match (&self.api_key, self.key_env()) {
            (Some(k), _) => Some(k.clone()),
            (None, None) => None,
            (None, Some(env)) => {
                Some(
                    ApiKey::from_env(&env).ok_or_else(|| ConfigError::MissingKey {
                        provider: label.to_owned(),
                        env,
                    })?,
                )
            }
        };
        let model = match (&self.model, self.provider) {
            (Some(m), _) if !m.trim().is_empty() => m.clone(),
            (_, AgentKind::Mistral) => MISTRAL_DEFAULT_MODEL.into(),
            (_, AgentKind::OpenaiCompatible) => {
                return Err(ConfigError::invalid(
                    "agent.model",
                    "required for provider = \"openai-compatible\"",
                ));
            }
        };
        Ok(MistralOptions {
            name: self.kind_name().into(),
            dialect: match self.provider {
                AgentKind::Mistral => Dialect::Mistral,
                AgentKind::OpenaiCompatible => Dialect::OpenAi,
            },
            base_url: self.base_url()?,
            api_key,
            model,
            settings: ChatSettings {
                temperature: self.temperature,
                top_p: self.top_p,
                max_tokens: self.max_tokens,
                random_seed: self.random_seed,
                safe_prompt: self.safe_prompt,
                tool_choice: self.tool_choice.clone(),
                parallel_tool_calls: self.parallel_tool_calls,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                stop: self.stop.clone(),
                extra: self.extra.clone(),
            },
            retry: RetryPolicy {
                max_retries: self.max_retries,
                base_delay: ms(self.retry_delay_ms),
                max_delay: ms(self.max_retry_delay_ms.max(self.retry_delay_ms)),
            },
            connect_timeout: ms(self.connect_timeout_ms),
            first_token_timeout: ms(self.first_token_timeout_ms),
            idle_timeout: ms(self.idle_timeout_ms),
        })
    }

    fn build_model(&self, label: &str) -> Result<MistralModel, ConfigError> {
        MistralModel::new(self.model_options(label)?)
            .map_err(|e| ConfigError::invalid("agent", e.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// [stt]
// ---------------------------------------------------------------------------------------------

/// A speech-to-text provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SttKind {
    /// Gladia live v2 (`[stt.gladia]`).
    #[default]
    Gladia,
    /// Gradium ASR (`[stt.gradium]`).
    Gradium,
}

/// `[stt]`: the provider, its fallbacks, and each provider's options.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SttProviderConfig {
    /// `gladia` (default) or `gradium`.
    pub provider: SttKind,
    /// Providers switched to, in order, when the current one fails (pending audio replayed).
    pub fallbacks: Vec<SttKind>,
    /// `[stt.gladia]`.
    pub gladia: GladiaConfig,
    /// `[stt.gradium]`.
    pub gradium: GradiumSttConfig,
}

impl SttProviderConfig {
    /// The provider then its fallbacks (duplicates removed).
    pub fn chain(&self) -> Vec<SttKind> {
        let mut out = vec![self.provider];
        for f in &self.fallbacks {
            if !out.contains(f) {
                out.push(*f);
            }
        }
        out
    }
}

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
    /// `language_config.languages` (empty: auto-detect).
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
    /// Silence sent at the end of a turn to force the final transcript (default: endpointing +
    /// 300 ms).
    pub finalize_silence_ms: Option<u64>,
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
    /// without work. Default `false`: opened when the call starts and kept open.
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
            languages: Vec::new(),
            code_switching: None,
            endpointing: None,
            maximum_duration_without_endpointing: None,
            custom_vocabulary: Vec::new(),
            partial_transcripts: false,
            settings: Map::new(),
            finalize_silence_ms: None,
            transcription_timeout_ms: 4000,
            connect_timeout_ms: 5000,
            max_retries: 3,
            retry_delay_ms: 1000,
            max_retry_delay_ms: 8000,
            keepalive_ms: 10_000,
            on_demand: false,
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

    fn key(&self, label: &str) -> Result<ApiKey, ConfigError> {
        resolve_key(&self.api_key, &self.api_key_env, label)
    }
}

/// Default `idle_close_ms` of on-demand sessions.
pub const DEFAULT_IDLE_CLOSE_MS: u64 = 20_000;
/// Default `max_session_age_ms` of Gradium sockets: a margin below the 300 s cap.
pub const DEFAULT_GRADIUM_MAX_AGE_MS: u64 = 240_000;

fn link_policy(
    retry: RetryPolicy,
    on_demand: bool,
    idle_close_ms: u64,
    max_age_ms: u64,
) -> LinkPolicy {
    let base = if on_demand {
        LinkPolicy::on_demand(retry, ms(idle_close_ms))
    } else {
        LinkPolicy::eager(retry)
    };
    base.with_max_age((max_age_ms > 0).then(|| ms(max_age_ms)))
}

fn resolve_key(key: &Option<ApiKey>, env: &str, label: &str) -> Result<ApiKey, ConfigError> {
    if let Some(k) = key {
        return Ok(k.clone());
    }
    ApiKey::from_env(env).ok_or_else(|| ConfigError::MissingKey {
        provider: label.to_owned(),
        env: env.to_owned(),
    })
}

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
    /// `json_config.delay_in_frames` (7–48, 80 ms each).
    pub delay_in_frames: Option<u32>,
    /// Other `json_config` keys, merged as given.
    pub json_config: Map<String, Value>,
    /// After the end of a turn, how long to wait for `flushed` before emitting what was heard.
    pub transcription_timeout_ms: u64,
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
    /// without work. Default `false`: opened when the call starts and kept open.
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
            connect_timeout_ms: 5000,
            max_retries: 3,
            retry_delay_ms: 1000,
            max_retry_delay_ms: 8000,
            on_demand: false,
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

    fn key(&self, label: &str) -> Result<ApiKey, ConfigError> {
        resolve_key(&self.api_key, &self.api_key_env, label)
    }
}

// ---------------------------------------------------------------------------------------------
// [tts]
// ---------------------------------------------------------------------------------------------

/// A text-to-speech provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtsKind {
    /// Gradium TTS (`[tts.gradium]`).
    #[default]
    Gradium,
    /// No TTS: answers are sent as text, followed by `SkipAnswer`.
    None,
}

/// `[tts]`: the provider, its fallbacks, and each provider's options.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsProviderConfig {
    /// `gradium` (default) or `none`.
    pub provider: TtsKind,
    /// Providers switched to, in order, when the current one fails (unspoken text re-spoken).
    pub fallbacks: Vec<TtsKind>,
    /// `[tts.gradium]`.
    pub gradium: GradiumTtsConfig,
}

impl TtsProviderConfig {
    /// The provider then its fallbacks.
    pub fn chain(&self) -> Vec<TtsKind> {
        let mut out = vec![self.provider];
        out.extend(self.fallbacks.iter().copied());
        out.retain(|k| *k != TtsKind::None);
        out
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
    /// without work. Default `false`: opened when the call starts and kept open.
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
            on_demand: false,
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

    fn key(&self, label: &str) -> Result<ApiKey, ConfigError> {
        resolve_key(&self.api_key, &self.api_key_env, label)
    }
}

// ---------------------------------------------------------------------------------------------
// [sovereignty]
// ---------------------------------------------------------------------------------------------

/// The EU data policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SovereigntyMode {
    /// Only EU endpoints, loopback and `allowed_hosts` (default).
    #[default]
    Eu,
    /// No check.
    Off,
}

/// `[sovereignty]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SovereigntyConfig {
    /// `eu` (default) or `off`.
    pub mode: SovereigntyMode,
    /// Hosts the operator vouches for (self-hosted models in their own EU infrastructure...):
    /// exact host names, or `*.example.com` for a domain and its subdomains.
    pub allowed_hosts: Vec<String>,
}

impl SovereigntyConfig {
    /// Whether `host` is allowed under `mode = "eu"`.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare == "localhost" || bare.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if ip.is_loopback() {
                return true;
            }
        }
        if EU_HOSTS.contains(&host.as_str()) {
            return true;
        }
        self.allowed_hosts.iter().any(|a| {
            let a = a.trim().to_ascii_lowercase();
            match a.strip_prefix("*.") {
                Some(domain) => host == domain || host.ends_with(&format!(".{domain}")),
                None => host == a,
            }
        })
    }

    fn check(&self, provider: &str, url: &Url) -> Result<(), SovereigntyError> {
        if self.mode == SovereigntyMode::Off {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default();
        if self.host_allowed(host) {
            Ok(())
        } else {
            Err(SovereigntyError {
                provider: provider.to_owned(),
                endpoint: url.to_string(),
                reason: format!("host {host:?} is not a known EU endpoint"),
            })
        }
    }
}

#[cfg(test)]
mod tests;
