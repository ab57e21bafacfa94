//! The on-premise presets of `micdrop serve` (docs/local.md): `serve --local` (Whisper, espeak-ng
//! or Piper, an OpenAI-compatible model server on this machine, `[sovereignty] mode = "local"`)
//! with its start-up check of the model server, and the choice of the user's speech recognition
//! in `serve --sim` (scripted transcripts, else Whisper when a model is in the cache).

use std::time::Duration;

use micdrop_local::models::ModelsDir;
use micdrop_providers::config::{AgentKind, SovereigntyMode, SttKind, TtsKind};
use micdrop_server::config::Config;

/// The model server of `serve --local` when neither `--model-url` nor an OpenAI-compatible
/// `[agent] base_url` says otherwise: Ollama's OpenAI-compatible API.
pub const DEFAULT_MODEL_URL: &str = "http://127.0.0.1:11434/v1";

/// How long the start-up check waits for the model server (connect and answer).
pub const MODEL_SERVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Turns `config` into the local stack of `serve --local`:
///
/// - agent: OpenAI-compatible at `model_url`, else the config's `[agent] base_url` when its
///   provider is already `openai-compatible`, else [`DEFAULT_MODEL_URL`]; the model name from
///   `model`, else the config's (OpenAI-compatible agent only), else none yet (the start-up
///   check takes the first model the server lists). Other `[agent]` settings (temperature,
///   timeouts, fallbacks) are kept; a Mistral key variable is dropped.
/// - STT: Whisper with `[stt.whisper]` (default: `base`, French); remote fallbacks dropped.
/// - TTS: the configured `piper`, `espeak` or `none`, else espeak-ng with `[tts.espeak]`
///   (default voice `fr`); remote fallbacks dropped.
/// - `[sovereignty] mode = "local"`: anything left that is not on this machine (an agent
///   fallback, a webhook tool) is refused at start, naming it.
pub fn apply_local_preset(config: &mut Config, model_url: Option<&str>, model: Option<&str>) {
    let agent = &mut config.agent;
    let was_openai = agent.provider == AgentKind::OpenaiCompatible;
    agent.base_url = Some(match (model_url, was_openai, agent.base_url.take()) {
        (Some(url), _, _) => url.to_owned(),
        (None, true, Some(url)) => url,
        _ => DEFAULT_MODEL_URL.to_owned(),
    });
    agent.model = match (model, was_openai) {
        (Some(m), _) => Some(m.to_owned()),
        (None, true) => agent.model.take().filter(|m| !m.trim().is_empty()),
        (None, false) => None,
    };
    if !was_openai {
        agent.api_key_env = None;
        agent.api_key = None;
        // Mistral's own field: OpenAI-compatible servers reject it.
        agent.safe_prompt = None;
    }
    agent.provider = AgentKind::OpenaiCompatible;

    config.stt.provider = SttKind::Whisper;
    config.stt.fallbacks.retain(|k| *k == SttKind::Whisper);

    let local_tts = |k: &TtsKind| matches!(k, TtsKind::Espeak | TtsKind::Piper | TtsKind::None);
    if !local_tts(&config.tts.provider) {
        config.tts.provider = TtsKind::Espeak;
    }
    config.tts.fallbacks.retain(local_tts);

    config.sovereignty.mode = SovereigntyMode::Local;
}

/// What the start-up check found: the models the server lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelServer {
    /// The model ids of `GET {base_url}/models` (`data[].id`), in the server's order.
    pub models: Vec<String>,
}

/// The `/models` URL of an OpenAI-compatible base URL (root or `/v1`, as the agent's client
/// completes `chat/completions`).
pub fn models_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/models")
    } else {
        format!("{base}/v1/models")
    }
}

/// The advice printed when no model server answers.
fn start_one(base_url: &str) -> String {
    format!(
        "`micdrop serve --local` needs an OpenAI-compatible model server on this machine at \
         {base_url}. Start one, e.g. Ollama: `ollama serve` then `ollama pull mistral-small` \
         (it listens on 127.0.0.1:11434); or llama.cpp: `llama-server -m MODEL.gguf --host \
         127.0.0.1 --port 8081 --jinja`, then point micdrop at it with `--model-url \
         http://127.0.0.1:8081/v1` (or `[agent] provider = \"openai-compatible\"` and `base_url` \
         in the config). See docs/local.md"
    )
}

/// Checks that an OpenAI-compatible server answers `GET {base_url}/models` within `timeout`,
/// with the bearer key `key` if any. The error says what answered (or did not), what to start
/// and how to point elsewhere.
pub async fn check_model_server(
    base_url: &str,
    key: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<ModelServer> {
    let url = models_url(base_url);
    let client = reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()?;
    let mut request = client.get(&url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                format!("no answer within {} s", timeout.as_secs_f64())
            } else if e.is_connect() {
                "connection refused or unreachable".to_owned()
            } else {
                e.to_string()
            };
            anyhow::bail!(
                "no model server answers at {base_url} (GET {url}: {why}). {}",
                start_one(base_url)
            );
        }
    };
    let status = response.status();
    if !status.is_success() {
        let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
            " (it wants a key: set `[agent] api_key_env` to the variable holding it)"
        } else {
            " (is it an OpenAI-compatible API? Ollama's is at /v1)"
        };
        anyhow::bail!(
            "the model server at {base_url} answered GET {url} with {status}{hint}. {}",
            start_one(base_url)
        );
    }
    let body: serde_json::Value = response.json().await.map_err(|e| {
        anyhow::anyhow!(
            "the model server at {base_url} answered GET {url} with something that is not the \
             OpenAI models list ({e}). {}",
            start_one(base_url)
        )
    })?;
    let models = body["data"]
        .as_array()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the model server at {base_url} answered GET {url} without a `data` list: not an \
                 OpenAI-compatible API. {}",
                start_one(base_url)
            )
        })?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    Ok(ModelServer { models })
}

/// Whether the server lists `model` (Ollama lists `mistral-small:latest` for `mistral-small`).
pub fn lists(server: &ModelServer, model: &str) -> bool {
    server
        .models
        .iter()
        .any(|m| m == model || m.strip_suffix(":latest") == Some(model))
}

/// The model of `serve --local`: the configured one (a warning if the server does not list it:
/// llama.cpp's server answers to any name), else the first one listed; none listed and none
/// configured is an error naming `ollama pull`.
pub fn choose_model(
    configured: Option<&str>,
    server: &ModelServer,
    base_url: &str,
) -> anyhow::Result<(String, Option<String>)> {
    match configured {
        Some(m) if lists(server, m) || server.models.is_empty() => Ok((m.to_owned(), None)),
        Some(m) => Ok((
            m.to_owned(),
            Some(format!(
                "the model server at {base_url} does not list the model `{m}` (it lists: {}); \
                 requests may fail (Ollama: `ollama pull {m}`)",
                server.models.join(", ")
            )),
        )),
        None => match server.models.first() {
            Some(first) => Ok((first.clone(), None)),
            None => anyhow::bail!(
                "the model server at {base_url} lists no model: pull one (Ollama: `ollama pull \
                 mistral-small`), or name it with `--model NAME` or `[agent] model`"
            ),
        },
    }
}

/// How `serve --sim` hears the user, said at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimSpeech {
    /// `[sim] transcripts`: the simulated STT reads them, one per turn (tests).
    Scripted(usize),
    /// Whisper, in-process: the model's name and file.
    Whisper(String, std::path::PathBuf),
    /// No transcripts and no Whisper model: the simulated STT describes what it hears.
    Described(String),
}

/// Chooses the user's speech recognition of `serve --sim` and sets `config.stt` accordingly:
/// scripted transcripts always win; otherwise Whisper (`[stt.whisper]`, default `base` in
/// French) when its model is in `models`; otherwise the simulated STT, which describes the
/// speech it hears (`(1.2 seconds of speech)`).
pub fn choose_sim_speech(config: &mut Config, transcripts: usize, models: &ModelsDir) -> SimSpeech {
    if transcripts > 0 {
        if config.stt.provider == SttKind::Whisper {
            // Scripted transcripts come from the simulated STT: Gladia's, reached by its client.
            config.stt.provider = SttKind::Gladia;
            config.stt.fallbacks.clear();
        }
        return SimSpeech::Scripted(transcripts);
    }
    let model = config.stt.whisper.model.clone();
    match models.whisper_model(&model) {
        Ok(path) => {
            config.stt.provider = SttKind::Whisper;
            config.stt.fallbacks.clear();
            SimSpeech::Whisper(model, path)
        }
        Err(e) => SimSpeech::Described(e.to_string()),
    }
}

impl SimSpeech {
    /// The line printed at start.
    pub fn describe(&self, language: &str) -> String {
        match self {
            SimSpeech::Scripted(n) => format!(
                "sim: the user's speech is transcribed from the {n} scripted [sim] transcripts"
            ),
            SimSpeech::Whisper(model, path) => format!(
                "sim: the user's speech is transcribed by Whisper ({model}, language {language}, \
                 {}), in-process",
                path.display()
            ),
            SimSpeech::Described(why) => format!(
                "sim: no [sim] transcripts and no Whisper model ({why}): the simulated STT only \
                 describes the speech it hears (\"(1.2 seconds of speech)\")"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, "test.toml").unwrap()
    }

    #[test]
    fn the_local_preset_replaces_remote_providers_and_keeps_local_ones() {
        let mut c = config("");
        apply_local_preset(&mut c, None, None);
        assert_eq!(c.agent.provider, AgentKind::OpenaiCompatible);
        assert_eq!(c.agent.base_url.as_deref(), Some(DEFAULT_MODEL_URL));
        assert_eq!(c.agent.model, None, "chosen from the server's list");
        assert_eq!(c.stt.provider, SttKind::Whisper);
        assert_eq!(c.stt.whisper.model, "base");
        assert_eq!(c.stt.whisper.language, "fr");
        assert_eq!(c.tts.provider, TtsKind::Espeak);
        assert_eq!(c.tts.espeak.voice, "fr");
        assert_eq!(c.sovereignty.mode, SovereigntyMode::Local);
        c.providers().check_sovereignty().unwrap();

        // A configured OpenAI-compatible agent and Piper are kept; the flags win.
        let text = "[agent]\nprovider = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:8081/v1\"\nmodel = \"qwen\"\ntemperature = 0.2\n\
                    [stt]\nfallbacks = [\"gradium\"]\n[tts]\nprovider = \"piper\"\nfallbacks = [\"gradium\", \"espeak\"]\n";
        let mut c = config(text);
        apply_local_preset(&mut c, None, None);
        assert_eq!(
            c.agent.base_url.as_deref(),
            Some("http://127.0.0.1:8081/v1")
        );
        assert_eq!(c.agent.model.as_deref(), Some("qwen"));
        assert_eq!(c.agent.temperature, Some(0.2));
        assert!(c.stt.fallbacks.is_empty());
        assert_eq!(c.tts.provider, TtsKind::Piper);
        assert_eq!(c.tts.fallbacks, [TtsKind::Espeak]);
        let mut c = config(text);
        apply_local_preset(&mut c, Some("http://localhost:9000"), Some("llama"));
        assert_eq!(c.agent.base_url.as_deref(), Some("http://localhost:9000"));
        assert_eq!(c.agent.model.as_deref(), Some("llama"));

        // A remote fallback is not silently kept: the policy names it.
        let mut c = config(
            "[[agent.fallbacks]]\nprovider = \"openai-compatible\"\nbase_url = \"https://llm.example.eu/v1\"\nmodel = \"m\"\n",
        );
        apply_local_preset(&mut c, None, None);
        let e = c.providers().check_sovereignty().unwrap_err().to_string();
        assert!(
            e.contains("llm.example.eu") && e.contains("not local"),
            "{e}"
        );
    }

    #[test]
    fn the_models_url_follows_the_agents_rule() {
        assert_eq!(
            models_url("http://127.0.0.1:11434/v1"),
            "http://127.0.0.1:11434/v1/models"
        );
        assert_eq!(
            models_url("http://127.0.0.1:11434/v1/"),
            "http://127.0.0.1:11434/v1/models"
        );
        assert_eq!(
            models_url("http://127.0.0.1:8081"),
            "http://127.0.0.1:8081/v1/models"
        );
    }

    #[test]
    fn the_model_is_the_configured_one_or_the_first_listed() {
        let server = ModelServer {
            models: vec!["mistral-small:latest".into(), "qwen2.5:7b".into()],
        };
        let url = DEFAULT_MODEL_URL;
        assert_eq!(
            choose_model(None, &server, url).unwrap(),
            ("mistral-small:latest".into(), None)
        );
        assert_eq!(
            choose_model(Some("mistral-small"), &server, url).unwrap(),
            ("mistral-small".into(), None)
        );
        let (m, warning) = choose_model(Some("llama3.1"), &server, url).unwrap();
        assert_eq!(m, "llama3.1");
        let warning = warning.unwrap();
        assert!(
            warning.contains("llama3.1") && warning.contains("qwen2.5:7b"),
            "{warning}"
        );
        let empty = ModelServer { models: Vec::new() };
        let e = choose_model(None, &empty, url).unwrap_err().to_string();
        assert!(e.contains("ollama pull"), "{e}");
        assert_eq!(
            choose_model(Some("any"), &empty, url).unwrap(),
            ("any".into(), None)
        );
    }

    #[test]
    fn sim_speech_scripted_first_then_whisper_from_the_cache() {
        let empty = tempfile::tempdir().unwrap();
        let models = ModelsDir::new(empty.path());
        let mut c = config("");
        assert_eq!(
            choose_sim_speech(&mut c, 2, &models),
            SimSpeech::Scripted(2)
        );
        assert_eq!(c.stt.provider, SttKind::Gladia);
        let mut c = config("[stt]\nprovider = \"whisper\"\n");
        assert_eq!(
            choose_sim_speech(&mut c, 1, &models),
            SimSpeech::Scripted(1)
        );
        assert_eq!(
            c.stt.provider,
            SttKind::Gladia,
            "transcripts take precedence"
        );
        let mut c = config("");
        let SimSpeech::Described(why) = choose_sim_speech(&mut c, 0, &models) else {
            panic!()
        };
        assert!(why.contains("micdrop models pull whisper-base"), "{why}");
        assert_eq!(c.stt.provider, SttKind::Gladia);
        // A model file given by path counts as "in the cache".
        let file = empty.path().join("ggml-x.bin");
        std::fs::write(&file, b"ggml").unwrap();
        let mut c = config(&format!(
            "[stt.whisper]\nmodel = {:?}\n",
            file.to_str().unwrap()
        ));
        assert!(matches!(
            choose_sim_speech(&mut c, 0, &models),
            SimSpeech::Whisper(_, p) if p == file
        ));
        assert_eq!(c.stt.provider, SttKind::Whisper);
    }
}
