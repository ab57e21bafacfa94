//! The `serve` command.

use std::path::PathBuf;

/// Options of `micdrop serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn serve(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("the server is being built")
}
