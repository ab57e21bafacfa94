//! The `micdrop` command: a thin binary over the micdrop-rs crates.

use clap::{Parser, Subcommand};

mod bench;
mod call;
mod live;
mod local;
mod models;
mod serve;
#[cfg(feature = "sim")]
mod sim;

/// micdrop-rs: real-time voice conversations with AI, on a sovereign EU stack.
#[derive(Debug, Parser)]
#[command(name = "micdrop", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (production).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the call server (WebSocket at /call, web page at /).
    Serve(serve::ServeArgs),
    /// Run local simulators of Gladia, Gradium and Mistral (see docs/simulators.md).
    #[cfg(feature = "sim")]
    Sim(sim::SimArgs),
    /// Call a server: speak a WAV, a text or a scenario, print the conversation.
    Call(call::CallArgs),
    /// Load test: N simulated callers against a server (default: in-process, simulated providers).
    Bench(bench::BenchArgs),
    /// Local models (Whisper, Piper voices, onnxruntime): list, pull (see docs/local.md).
    Models(models::ModelsArgs),
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_env("MICDROP_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter_max = filter.max_level_hint();
    // Colours only on a terminal: log files and collectors get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Dependencies never log below info, whatever the filter says: at debug/trace they log
    // headers, frames and URLs with keys and tokens (docs/security.md).
    let filter = micdrop_server::logging::log_filter(filter);
    // The trace spans, exported over OTLP when `[telemetry] otlp_endpoint` is set (whatever
    // MICDROP_LOG says: the log filter applies to the log lines only).
    let registry = tracing_subscriber::registry().with(micdrop_server::traces::layer());
    match format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .init(),
    }
    // After `init`, which opens the `log` facade to every level.
    micdrop_server::logging::cap_log_facade(filter_max);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve::serve(args).await,
        #[cfg(feature = "sim")]
        Command::Sim(args) => sim::run(args).await,
        Command::Call(args) => call::call(args).await,
        Command::Bench(args) => bench::bench(args).await,
        Command::Models(args) => models::run(args).await,
    }
}
