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
//! voice_id = "b35yykvVppLXyw_l"     # Elise (French)
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
pub use crate::gladia::{GladiaConfig, GladiaRegion};
pub use crate::gradium::{GradiumRegion, GradiumSttConfig, GradiumTtsConfig};
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
/// Default Gradium voice: Elise (`b35yykvVppLXyw_l`), a warm French (fr-FR) female voice of
/// Gradium's flagship catalogue, matching the French text rules (`rewrite_rules = "fr"`). Leo
/// (`axlOaUiFyOZhy4nv`) is its male counterpart; `YTpq7expH9539ERJ` (Emma, used in Gradium's
/// examples) is US English.
pub const GRADIUM_DEFAULT_VOICE: &str = "b35yykvVppLXyw_l";

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
    /// An invalid value of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An endpoint that `[sovereignty] mode = "eu"` or `"local"` refuses (`reason` says why and
/// what to do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider} endpoint {endpoint} is not allowed by [sovereignty]: {reason}")]
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
        for (label, section) in self.sections() {
            section.check_policy(&label, &self.sovereignty)?;
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
        let sims = SimEndpoints {
            gladia: gladia_base.to_owned(),
            gradium: gradium_base.to_owned(),
            mistral: mistral_base.to_owned(),
        };
        point_agent(
            &mut self.agent,
            mistral_base,
            &Some(ApiKey::new("sim-mistral-key")),
        );
        for section in self.stt.sections_mut() {
            section.point_to_simulators(&sims);
        }
        if let Some(tts) = &mut self.tts {
            for section in tts.sections_mut() {
                section.point_to_simulators(&sims);
            }
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
                let label = format!("stt {}", kind.name());
                if let Some(section) = self.stt.section(kind) {
                    list.push(section.build(&self.context(&label))?);
                }
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
                    let label = format!("tts {}", kind.name());
                    if let Some(section) = t.section(kind) {
                        list.push(section.build(&self.context(&label))?);
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

    fn context<'a>(&'a self, label: &'a str) -> BuildContext<'a> {
        BuildContext {
            label,
            sovereignty: &self.sovereignty,
        }
    }

    /// The speech providers in use (chains of `[stt]` and `[tts]`), labelled `stt gladia`...
    fn sections(&self) -> Vec<(String, &dyn ProviderSection)> {
        let mut out: Vec<(String, &dyn ProviderSection)> = Vec::new();
        for kind in self.stt.chain() {
            if let Some(s) = self.stt.section(kind) {
                out.push((format!("stt {}", kind.name()), upcast_stt(s)));
            }
        }
        if let Some(t) = &self.tts {
            for kind in t.chain() {
                if let Some(s) = t.section(kind) {
                    out.push((format!("tts {}", kind.name()), upcast_tts(s)));
                }
            }
        }
        out
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
        out.extend(
            self.sections()
                .into_iter()
                .filter_map(|(_, s)| s.key_need()),
        );
        out
    }

    fn labelled_endpoints(&self) -> Vec<(String, Url)> {
        let mut out = Vec::new();
        for (label, a) in self.agent.flatten() {
            if let Ok(u) = a.base_url() {
                out.push((label, u));
            }
        }
        for (label, s) in self.sections() {
            for u in s.endpoints() {
                out.push((label.clone(), u));
            }
        }
        out
    }
}

fn upcast_stt(s: &dyn SttSection) -> &dyn ProviderSection {
    s
}

fn upcast_tts(s: &dyn TtsSection) -> &dyn ProviderSection {
    s
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

/// A key a provider needs: its environment variable, and the key set by code if any.
#[derive(Debug, Clone)]
pub struct KeyNeed {
    /// The environment variable.
    pub env: String,
    /// A key set by code (counts as set).
    pub key: Option<ApiKey>,
}

impl KeyNeed {
    /// The key of a section with `api_key_env` and `api_key`.
    pub fn new(env: &str, key: &Option<ApiKey>) -> Self {
        Self {
            env: env.to_owned(),
            key: key.clone(),
        }
    }
}

pub(crate) fn parse_url(field: &str, value: &str) -> Result<Url, ConfigError> {
    Url::parse(value)
        .map_err(|e| ConfigError::invalid(field, format!("invalid URL {value:?}: {e}")))
}

pub(crate) fn ms(v: u64) -> Duration {
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

/// What a kind of chat API brings: its name, wire dialect and defaults. [`AgentKind::spec`] is
/// the one place that lists them: adding a kind is a variant and a line there.
#[derive(Debug, Clone, Copy)]
struct AgentSpec {
    name: &'static str,
    dialect: Dialect,
    /// The environment variable of the key (`None`: no key unless `api_key_env` is set).
    key_env: Option<&'static str>,
    /// `None`: `base_url` is required.
    base_url: Option<&'static str>,
    /// `None`: `model` is required.
    model: Option<&'static str>,
}

impl AgentKind {
    fn spec(self) -> AgentSpec {
        match self {
            AgentKind::Mistral => AgentSpec {
                name: "mistral",
                dialect: Dialect::Mistral,
                key_env: Some(MISTRAL_KEY_ENV),
                base_url: Some(MISTRAL_BASE_URL),
                model: Some(MISTRAL_DEFAULT_MODEL),
            },
            AgentKind::OpenaiCompatible => AgentSpec {
                name: "openai-compatible",
                dialect: Dialect::OpenAi,
                key_env: None,
                base_url: None,
                model: None,
            },
        }
    }
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
        self.provider.spec().name
    }

    /// The error of a key this kind needs and the config lacks.
    fn required(&self, key: &str) -> ConfigError {
        ConfigError::invalid(
            format!("agent.{key}"),
            format!("required for provider = \"{}\"", self.kind_name()),
        )
    }

    fn key_env(&self) -> Option<String> {
        match &self.api_key_env {
            Some(e) if e.trim().is_empty() => None,
            Some(e) => Some(e.clone()),
            None => self.provider.spec().key_env.map(str::to_owned),
        }
    }

    fn base_url(&self) -> Result<Url, ConfigError> {
        match (&self.base_url, self.provider.spec().base_url) {
            (Some(u), _) => parse_url("agent.base_url", u),
            (None, Some(default)) => parse_url("agent.base_url", default),
            (None, None) => Err(self.required("base_url")),
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
        let model = match (&self.model, self.provider.spec().model) {
            (Some(m), _) if !m.trim().is_empty() => m.clone(),
            (_, Some(default)) => default.into(),
            (_, None) => return Err(self.required("model")),
        };
        Ok(MistralOptions {
            name: self.kind_name().into(),
            dialect: self.provider.spec().dialect,
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

/// What the registry needs from a provider's section (`[stt.gladia]`, `[tts.gradium]`, ...).
/// Each vendor module implements it for its own config type, next to the provider.
pub trait ProviderSection: std::fmt::Debug + Send + Sync {
    /// The key it needs (`None`: no key, e.g. a local provider).
    fn key_need(&self) -> Option<KeyNeed>;

    /// Every endpoint it reaches (for the policy check and the per-call log; invalid URLs are
    /// left out here and reported by `build`). Empty for an in-process provider.
    fn endpoints(&self) -> Vec<Url>;

    /// Checks beyond the endpoints' hosts (e.g. Gladia's `region`). `label` names the provider
    /// in errors (`stt gladia`).
    fn check_policy(
        &self,
        label: &str,
        policy: &SovereigntyConfig,
    ) -> Result<(), SovereigntyError> {
        let _ = (label, policy);
        Ok(())
    }

    /// Points the provider at the local simulators with a fake key (`micdrop serve --sim`);
    /// providers without a simulator keep their configuration.
    fn point_to_simulators(&mut self, sims: &SimEndpoints) {
        let _ = sims;
    }
}

/// A speech-to-text section: builds its provider.
pub trait SttSection: ProviderSection {
    /// Builds the provider.
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn SpeechToText>, ConfigError>;
}

/// A text-to-speech section: builds its provider.
pub trait TtsSection: ProviderSection {
    /// Builds the provider.
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn TextToSpeech>, ConfigError>;
}

/// What a section gets to build its provider.
#[derive(Debug)]
pub struct BuildContext<'a> {
    /// The provider's label in errors (`stt gladia`).
    pub label: &'a str,
    /// The data policy.
    pub sovereignty: &'a SovereigntyConfig,
}

impl BuildContext<'_> {
    /// The section's key (set by code, or from its environment variable).
    pub fn key(&self, section: &dyn ProviderSection) -> Result<ApiKey, ConfigError> {
        match section.key_need() {
            Some(n) => resolve_key(&n.key, &n.env, self.label),
            None => Err(ConfigError::invalid(self.label, "no API key needed")),
        }
    }
}

/// Base URLs of the local simulators (see [`ProvidersConfig::point_to_simulators`]).
#[derive(Debug, Clone)]
pub struct SimEndpoints {
    /// Gladia API root.
    pub gladia: String,
    /// Gradium base (`ws://…/api`).
    pub gradium: String,
    /// Mistral base (`http://…/v1`).
    pub mistral: String,
}

/// Declares a capability's providers: the `kind` enum (TOML names), the section holding one
/// field per provider, and the registry (`section`, `sections_mut`). Adding a provider is one
/// line here plus its vendor module (its config type implementing the capability's section
/// trait).
macro_rules! registry {
    (
        $(#[$kind_meta:meta])* kind $kind:ident;
        $(#[$cfg_meta:meta])* section $cfg:ident: $section:ident, $cap:literal;
        $(#[$extra_meta:meta])* extra { $($extra:tt)* }
        $( $(#[$doc:meta])* $variant:ident = $name:literal => $field:ident: $ty:ty, )*
    ) => {
        $(#[$kind_meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        pub enum $kind {
            $( $(#[$doc])* #[serde(rename = $name)] $variant, )*
            $($extra)*
        }

        $(#[$cfg_meta])*
        #[derive(Debug, Clone, PartialEq, Default, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $cfg {
            /// The provider.
            pub provider: $kind,
            /// Providers switched to, in order, when the current one fails.
            pub fallbacks: Vec<$kind>,
            $(
                #[doc = concat!("`[", $cap, ".", $name, "]`.")]
                pub $field: $ty,
            )*
        }

        impl $cfg {
            /// The section of provider `kind` (the registry).
            pub fn section(&self, kind: $kind) -> Option<&dyn $section> {
                match kind {
                    $( $kind::$variant => Some(&self.$field), )*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }

            /// Every provider's section.
            pub fn sections_mut(&mut self) -> Vec<&mut dyn $section> {
                vec![$( &mut self.$field ),*]
            }
        }

        impl $kind {
            /// The TOML name.
            pub fn name(self) -> &'static str {
                match self {
                    $( $kind::$variant => $name, )*
                    #[allow(unreachable_patterns)]
                    _ => "none",
                }
            }
        }
    };
}

registry! {
    /// A speech-to-text provider.
    kind SttKind;
    /// `[stt]`: the provider (`gladia` by default), its fallbacks (pending audio replayed), and
    /// each provider's options.
    section SttProviderConfig: SttSection, "stt";
    extra {}
    /// Gladia live v2 (`[stt.gladia]`).
    Gladia = "gladia" => gladia: GladiaConfig,
    /// Gradium ASR (`[stt.gradium]`).
    Gradium = "gradium" => gradium: GradiumSttConfig,
    /// Whisper in-process (`[stt.whisper]`, docs/local.md).
    Whisper = "whisper" => whisper: crate::local::WhisperConfig,
}

// The registry macro cannot mark the default variant.
#[allow(clippy::derivable_impls)]
impl Default for SttKind {
    fn default() -> Self {
        SttKind::Gladia
    }
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

/// Default `idle_close_ms` of on-demand sessions.
pub const DEFAULT_IDLE_CLOSE_MS: u64 = 20_000;
/// Default `max_session_age_ms` of Gradium sockets: a margin below the 300 s cap.
pub const DEFAULT_GRADIUM_MAX_AGE_MS: u64 = 240_000;

pub(crate) fn link_policy(
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

pub(crate) fn resolve_key(
    key: &Option<ApiKey>,
    env: &str,
    label: &str,
) -> Result<ApiKey, ConfigError> {
    if let Some(k) = key {
        return Ok(k.clone());
    }
    ApiKey::from_env(env).ok_or_else(|| ConfigError::MissingKey {
        provider: label.to_owned(),
        env: env.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// [tts]
// ---------------------------------------------------------------------------------------------

registry! {
    /// A text-to-speech provider.
    kind TtsKind;
    /// `[tts]`: the provider (`gradium` by default, `none` for text-only answers), its
    /// fallbacks (unspoken text re-spoken), and each provider's options.
    section TtsProviderConfig: TtsSection, "tts";
    extra {
        /// No TTS: answers are sent as text, followed by `SkipAnswer`.
        #[serde(rename = "none")]
        None,
    }
    /// Gradium TTS (`[tts.gradium]`).
    Gradium = "gradium" => gradium: GradiumTtsConfig,
    /// espeak-ng (`[tts.espeak]`, docs/local.md).
    Espeak = "espeak" => espeak: crate::local::EspeakConfig,
    /// A Piper voice (`[tts.piper]`, docs/local.md).
    Piper = "piper" => piper: crate::local::PiperConfig,
}

#[allow(clippy::derivable_impls)]
impl Default for TtsKind {
    fn default() -> Self {
        TtsKind::Gradium
    }
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
    /// Nothing leaves the host: every endpoint must be loopback (`127.0.0.0/8`, `::1`,
    /// `localhost`) or the provider in-process (Whisper, espeak, Piper). `allowed_hosts` does
    /// not apply.
    Local,
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
        if is_local_host(host) {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
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
        if self.mode == SovereigntyMode::Local {
            return if is_local_host(host) {
                Ok(())
            } else {
                Err(SovereigntyError {
                    provider: provider.to_owned(),
                    endpoint: url.to_string(),
                    reason: format!(
                        "host {host:?} is not local (mode = \"local\" allows loopback and \
                         in-process providers only). Run the service on this machine, or set \
                         mode = \"eu\""
                    ),
                })
            };
        }
        if self.host_allowed(host) {
            Ok(())
        } else {
            Err(SovereigntyError {
                provider: provider.to_owned(),
                endpoint: url.to_string(),
                reason: format!(
                    "host {host:?} is not a known EU endpoint (mode = \"eu\"). Choose an EU \
                     endpoint, add the host to [sovereignty] allowed_hosts, or set mode = \"off\""
                ),
            })
        }
    }
}

/// Whether `host` is this machine: `localhost` (and `*.localhost`) or a loopback address.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare == "localhost" || bare.ends_with(".localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
