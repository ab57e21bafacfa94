//! The `micdrop sim` command: runs the three simulators until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use micdrop_sim::{SimScript, Simulators};

/// Options of `micdrop sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// TOML script: its `[sim]` table (a `serve` configuration file works too).
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Set every artificial delay to zero.
    #[arg(long)]
    pub zero_delay: bool,
}

/// Runs the simulators until Ctrl-C (or SIGTERM), printing their base URLs.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let mut script = match &args.script {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            SimScript::from_toml_str(&text)?
        }
        None => SimScript::default(),
    };
    if args.zero_delay {
        script = script.zero_delay();
    }
    // Handlers before the banner: a signal right after it stops the simulators cleanly.
    let mut signals = micdrop_server::drain::Signals::new()?;
    let sim = Simulators::start(args.listen, script)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("micdrop simulators listening on {}", sim.addr());
    println!(
        "gladia   {}   (POST /v2/live, header x-gladia-key)",
        sim.gladia_base_url()
    );
    println!(
        "gradium  {}   (TTS {0}/speech/tts, STT {0}/speech/asr, header x-api-key)",
        sim.gradium_base_url()
    );
    println!(
        "mistral  {}   (POST {0}/chat/completions, Authorization: Bearer)",
        sim.mistral_base_url()
    );
    signals.recv().await;
    println!("stopping");
    sim.shutdown().await;
    Ok(())
}
