//! `micdrop serve`: its arguments, and the server until SIGINT/SIGTERM.

use std::path::PathBuf;

use micdrop_server::App;
use micdrop_server::config::Config;

/// Options of `micdrop serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see the README).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080, or `[server] listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Run offline: in-process simulators of Mistral, Gladia and Gradium, reached through the
    /// real provider clients. No API key, no network.
    #[cfg(feature = "sim")]
    #[arg(long)]
    pub sim: bool,
    /// Simulator script (TOML with a `[sim]` section); default: the config's `[sim]` section.
    #[cfg(feature = "sim")]
    #[arg(long, requires = "sim")]
    pub sim_script: Option<PathBuf>,
    /// Run on this machine only: Whisper (`[stt.whisper]`, default base, French), espeak-ng (or
    /// the configured Piper voice), an OpenAI-compatible model server on loopback (default
    /// Ollama's http://127.0.0.1:11434/v1), `[sovereignty] mode = "local"`. Exits with a message
    /// if no model server answers (docs/local.md).
    #[arg(long, conflicts_with = "sim")]
    pub local: bool,
    /// With --local: the OpenAI-compatible model server (its root or /v1 URL).
    #[arg(long, requires = "local")]
    pub model_url: Option<String>,
    /// With --local: the model name (default: the config's, else the first the server lists).
    #[arg(long, requires = "local")]
    pub model: Option<String>,
}

/// Runs the server until SIGINT/SIGTERM, then stops it cleanly.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    #[cfg(feature = "sim")]
    let sim = if args.sim {
        Some(match &args.sim_script {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                micdrop_sim::SimScript::from_toml_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => config.sim.clone().unwrap_or_default(),
        })
    } else {
        None
    };
    #[cfg(feature = "sim")]
    if let Some(script) = &sim {
        let explicit_whisper = config.stt.provider == micdrop_providers::config::SttKind::Whisper;
        let speech = crate::local::choose_sim_speech(
            &mut config,
            script.transcripts.len(),
            &micdrop_local::models::ModelsDir::from_env(),
        );
        // An explicit `[stt] provider = "whisper"` without its model fails below, naming it.
        if !(explicit_whisper && matches!(speech, crate::local::SimSpeech::Described(_))) {
            eprintln!("{}", speech.describe(&config.stt.whisper.language));
        }
    }
    #[cfg(not(feature = "sim"))]
    let sim = None;
    if args.local {
        crate::local::apply_local_preset(
            &mut config,
            args.model_url.as_deref(),
            args.model.as_deref(),
        );
        // The policy first: the check below must not reach a host that is not this one.
        config.providers().check_sovereignty()?;
        let base_url = config.agent.base_url.clone().unwrap_or_default();
        let key = config
            .agent
            .api_key_env
            .as_deref()
            .filter(|e| !e.trim().is_empty())
            .and_then(|e| std::env::var(e).ok());
        let server = crate::local::check_model_server(
            &base_url,
            key.as_deref(),
            crate::local::MODEL_SERVER_TIMEOUT,
        )
        .await?;
        let (model, warning) =
            crate::local::choose_model(config.agent.model.as_deref(), &server, &base_url)?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        let tts = match config.tts.provider {
            micdrop_providers::config::TtsKind::Piper => {
                format!("Piper ({})", config.tts.piper.voice)
            }
            micdrop_providers::config::TtsKind::None => "none (text answers)".to_owned(),
            _ => format!("espeak-ng ({})", config.tts.espeak.voice),
        };
        eprintln!(
            "local: model {model} at {base_url}; speech-to-text Whisper ({}, {}); text-to-speech \
             {tts}; [sovereignty] mode = \"local\"",
            config.stt.whisper.model, config.stt.whisper.language
        );
        config.agent.model = Some(model);
    }
    // The handlers go in before the banner: a signal sent as soon as the server is announced
    // must drain it, not kill it.
    let signals = micdrop_server::drain::Signals::new()?;
    let app = App::start(config, sim).await?;
    let addr = app.server.local_addr();
    eprintln!(
        "micdrop listening: web page http://{addr}/  WebSocket ws://{addr}{}{}",
        app.path,
        if app.simulated() {
            "  (simulated providers)"
        } else {
            ""
        }
    );
    // SIGTERM/SIGINT: drain (see docs/deploy.md); a second signal ends at once.
    app.run_until(signals).await;
    Ok(())
}
