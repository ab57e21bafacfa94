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
    #[cfg(not(feature = "sim"))]
    let sim = None;
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
    app.run_until_signal().await?;
    Ok(())
}
