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
    wait_for_signal().await;
    println!("stopping");
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn arguments() {
        let c = Cli::parse_from(["sim"]);
        assert_eq!(
            c.sim.listen,
            "127.0.0.1:8090".parse::<SocketAddr>().unwrap()
        );
        assert!(c.sim.script.is_none() && !c.sim.zero_delay);
        let c = Cli::parse_from([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--script",
            "s.toml",
            "--zero-delay",
        ]);
        assert_eq!(c.sim.listen.port(), 0);
        assert_eq!(
            c.sim.script.as_deref(),
            Some(std::path::Path::new("s.toml"))
        );
        assert!(c.sim.zero_delay);
        assert!(Cli::try_parse_from(["sim", "--listen", "nowhere"]).is_err());
    }

    #[tokio::test]
    async fn a_missing_script_file_is_an_error() {
        let e = run(SimArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            script: Some("/nonexistent/sim.toml".into()),
            zero_delay: false,
        })
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/sim.toml"));
    }
}
