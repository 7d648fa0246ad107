//! Int8 weights for decoders: per-output-channel symmetric quantization of
//! the projections and the output head (the kernels, which round each row of
//! activations to 16-bit integers and multiply integers, are in
//! `forja-kernels`), and the quantized model folder.
//!
//! A quantized folder is a model folder whose `model.safetensors` holds each
//! quantized weight `X.weight` as int8 beside `X.weight_scale` (float32,
//! shaped to broadcast against it: `[out, 1]` for `nn.Linear`'s `[out, in]`,
//! `[1, out]` for GPT-2's Conv1D `[in, out]`), and whose `config.json` says
//! so under `quantization_config`. Every loader dequantizes (`q · scale`), so
//! such a folder generates and exports as float32 weights with the int8
//! values; `forja serve`, and the `eval` stage on the CPU, run it on the int8
//! kernels. Embeddings, norms, biases and positions stay float32; a tied
//! embedding is quantized (it is the head).

use crate::checkpoint::{CONFIG, WEIGHTS};
use crate::layers::{block_matrix, Layout};
use crate::Arch;
use anyhow::{bail, Context};
use forja_kernels::{F32Matrix, Int8Matrix, Packed, Weight};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Suffix of a quantized weight's scales (`X.weight` → `X.weight_scale`).
pub const SCALE_SUFFIX: &str = "_scale";
/// `quantization_config.quant_method` of a quantized folder.
pub const METHOD: &str = "forja-int8";

/// How a model's weights are held for serving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// float32 (as trained).
    #[default]
    None,
    /// Int8 weights, per output channel (on the int8 kernels).
    Int8,
}

impl std::str::FromStr for Quantization {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "none" | "f32" => Ok(Self::None),
            "int8" => Ok(Self::Int8),
            other => bail!("unknown quantization `{other}` (none, int8)"),
        }
    }
}

/// A projection `y = x W (+ b)` on weights packed for `forja-kernels`
/// (int8 with per-channel scales, or float32); CPU only.
#[derive(Debug)]
pub struct PackedDense<E: Weight> {
    m: Packed<E>,
}

/// A projection on int8 weights.
pub type Int8Dense = PackedDense<i8>;
/// A projection on float32 weights packed once (no per-call packing by a BLAS).
pub type F32Dense = PackedDense<f32>;

impl F32Dense {
    /// Packs `weight` (in `layout`) with its optional `bias`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, layout: Layout) -> anyhow::Result<Self> {
        let w = out_in(&weight.to_kind(Kind::Float).to_device(Device::Cpu), layout).contiguous();
        let (n_out, n_in) = w.size2()?;
        let w: Vec<f32> = Vec::try_from(w.flatten(0, -1))?;
        let bias: Option<Vec<f32>> =
            bias.map(|b| Vec::try_from(b.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))).transpose()?;
        Ok(Self { m: F32Matrix::new(&w, bias.as_deref(), n_out as usize, n_in as usize)? })
    }
}

impl Int8Dense {
    /// Quantizes `weight` (in `layout`) with its optional `bias`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, layout: Layout) -> anyhow::Result<Self> {
        let (q, scale) = quantize(weight, layout)?;
        Self::from_quantized(&q, &scale, bias, layout)
    }

    /// Packs already quantized int8 weights `q` (in `layout`) with their
    /// `scale` (as [`quantize`] returns them).
    pub fn from_quantized(q: &Tensor, scale: &Tensor, bias: Option<&Tensor>, layout: Layout) -> anyhow::Result<Self> {
        let q = out_in(q, layout).to_device(Device::Cpu).contiguous();
        let (n_out, n_in) = q.size2()?;
        let q: Vec<i8> = Vec::try_from(q.flatten(0, -1))?;
        let scale: Vec<f32> = Vec::try_from(scale.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))?;
        let bias: Option<Vec<f32>> =
            bias.map(|b| Vec::try_from(b.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))).transpose()?;
        Ok(Self { m: Int8Matrix::new(&q, &scale, bias.as_deref(), n_out as usize, n_in as usize)? })
    }
}

impl<E: Weight> PackedDense<E> {
    /// Bytes of the packed weights, scales and bias.
    pub fn bytes(&self) -> usize {
        self.m.bytes()
    }

    /// # Shapes
    /// `[.., in]` → `[.., out]` (float32, on the CPU)
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (input, mut shape) = host_floats(x);
        let y = self.apply(&input);
        shape.pop();
        shape.push(self.m.n_out() as i64);
        Tensor::from_slice(&y).view(shape.as_slice())
    }

    /// The product on host floats: `x` is whole rows of `in`, the result the
    /// same rows of `out`.
    ///
    /// # Panics
    /// When `x` is not whole rows of `in`.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; x.len() / self.m.n_in().max(1) * self.m.n_out()];
        self.m.matmul(x, &mut y);
        y
    }
}

/// The floats of `x` (float32 on the CPU, in order) and its shape, in one
/// copy. Each libtorch call costs microseconds at decoding sizes: converts
/// only when needed.
pub fn host_floats(x: &Tensor) -> (Vec<f32>, Vec<i64>) {
    let mut x = if x.kind() == Kind::Float { x.shallow_clone() } else { x.to_kind(Kind::Float) };
    if x.device() != Device::Cpu {
        x = x.to_device(Device::Cpu);
    }
    if !x.is_contiguous() {
        x = x.contiguous();
    }
    let n = x.numel();
    let mut out = vec![0f32; n];
    x.copy_data(&mut out, n);
    (out, x.size())
}

/// The weight as `[out, in]` (a Conv1D `[in, out]` is transposed).
fn out_in(w: &Tensor, layout: Layout) -> Tensor {
    match layout {
        Layout::OutIn => w.shallow_clone(),
        Layout::InOut => w.tr(),
    }
}

/// Per-output-channel int8 of `w` (2-D, in `layout`): the int8 tensor in the
/// same layout and the scales shaped to broadcast against it.
pub fn quantize(w: &Tensor, layout: Layout) -> anyhow::Result<(Tensor, Tensor)> {
    let (a, b) = w.size2().map_err(|_| anyhow::anyhow!("only matrices are quantized, got shape {:?}", w.size()))?;
    let oi = out_in(&w.to_kind(Kind::Float).to_device(Device::Cpu), layout).contiguous();
    let (n_out, n_in) = oi.size2()?;
    let values: Vec<f32> = Vec::try_from(oi.flatten(0, -1))?;
    let (q, scale) = forja_kernels::quantize_rows(&values, n_out as usize, n_in as usize)?;
    let q = Tensor::from_slice(&q).view([n_out, n_in]);
    let scale = Tensor::from_slice(&scale);
    Ok(match layout {
        Layout::OutIn => (q, scale.view([a, 1])),
        Layout::InOut => (q.tr().contiguous(), scale.view([1, b])),
    })
}

/// `q · scale` in float32.
pub fn dequantize(q: &Tensor, scale: &Tensor) -> Tensor {
    q.to_kind(Kind::Float) * scale.to_kind(Kind::Float)
}

/// Replaces every `X.weight` stored as int8 with `X.weight_scale` beside it by
/// its float32 value (`q · scale`), dropping the scales. An int8 weight
/// without scales, or scales that do not broadcast, is an error naming it.
pub fn dequantize_all(tensors: &mut HashMap<String, Tensor>, file: &Path) -> anyhow::Result<()> {
    let scales: Vec<String> = tensors.keys().filter(|n| n.ends_with(SCALE_SUFFIX)).cloned().collect();
    for scale_name in scales {
        let name = scale_name.trim_end_matches(SCALE_SUFFIX).to_string();
        let (Some(q), Some(scale)) = (tensors.get(&name), tensors.get(&scale_name)) else {
            bail!("{}: `{scale_name}` has no weight `{name}` beside it", file.display());
        };
        let (qs, ss) = (q.size(), scale.size());
        let broadcasts = qs.len() == 2 && ss.len() == 2 && ((ss[0] == qs[0] && ss[1] == 1) || (ss[0] == 1 && ss[1] == qs[1]));
        if q.kind() != Kind::Int8 || !broadcasts {
            bail!(
                "{}: `{name}` ({:?} {qs:?}) with scales {ss:?} is not an int8 matrix with one scale per output channel",
                file.display(),
                q.kind()
            );
        }
        let w = dequantize(q, scale);
        tensors.remove(&scale_name);
        tensors.insert(name, w);
    }
    if let Some((name, _)) = tensors.iter().find(|(_, t)| t.kind() == Kind::Int8) {
        bail!("{}: `{name}` is int8 without `{name}{SCALE_SUFFIX}`", file.display());
    }
    Ok(())
}

/// Whether `name` (of `shape`) is quantized in a decoder of `arch`: the
/// blocks' projections and the output head (the tied embedding when the
/// model has no separate head).
pub fn quantized_tensor(arch: Arch, tied: bool, name: &str, shape: &[i64]) -> Option<Layout> {
    if name == crate::gpt::LM_HEAD || (tied && name == arch.embedding_name()) {
        return Some(Layout::OutIn);
    }
    block_matrix(name, shape)
}

/// What quantizing a folder did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeSummary {
    pub tensors: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Writes the decoder folder `src` as a quantized folder `dst`: the weights
/// [`quantized_tensor`] names as int8 with their scales, the rest as they
/// are; the other files copied, `config.json` with `quantization_config`.
pub fn write_quantized_folder(src: &Path, dst: &Path) -> anyhow::Result<QuantizeSummary> {
    let cfg = crate::checkpoint::read_config(src)?;
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join(CONFIG))?)?;
    anyhow::ensure!(raw.get("quantization_config").is_none(), "{}: the folder is quantized already", src.display());
    let weights_file = src.join(WEIGHTS);
    let named = Tensor::read_safetensors(&weights_file).with_context(|| format!("reading weights {}", weights_file.display()))?;
    std::fs::create_dir_all(dst)?;
    let mut out = Vec::with_capacity(named.len());
    let mut quantized = 0;
    for (name, t) in named {
        match quantized_tensor(cfg.arch, cfg.tie_word_embeddings, &name, &t.size()) {
            Some(layout) => {
                let (q, scale) = quantize(&t, layout).with_context(|| format!("{}: `{name}`", weights_file.display()))?;
                out.push((format!("{name}{SCALE_SUFFIX}"), scale));
                out.push((name, q));
                quantized += 1;
            }
            None => out.push((name, t)),
        }
    }
    anyhow::ensure!(quantized > 0, "{}: no projection to quantize", weights_file.display());
    out.sort_by(|a, b| a.0.cmp(&b.0));
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if path.is_file() && name != WEIGHTS && name != CONFIG {
            std::fs::copy(&path, dst.join(&name)).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    let mut config = raw;
    config["quantization_config"] = serde_json::json!({
        "quant_method": METHOD, "bits": 8, "symmetric": true, "granularity": "per-channel", "weight_only": true,
        "scales": format!("`NAME{SCALE_SUFFIX}` beside each int8 `NAME`, float32, broadcasting against it"),
    });
    std::fs::write(dst.join(CONFIG), serde_json::to_string_pretty(&config)?)?;
    let weights_out = dst.join(WEIGHTS);
    Tensor::write_safetensors(&out, &weights_out).with_context(|| format!("writing {}", weights_out.display()))?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(QuantizeSummary { tensors: quantized, bytes_before: size(&weights_file), bytes_after: size(&weights_out) })
}

/// The quantization a folder's `config.json` records (`None` when plain).
pub fn folder_quantization(dir: &Path) -> anyhow::Result<Quantization> {
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(CONFIG)).with_context(|| format!("reading {}", dir.join(CONFIG).display()))?)
            .with_context(|| format!("parsing {}", dir.join(CONFIG).display()))?;
    match raw.get("quantization_config").map(|q| q["quant_method"].as_str()) {
        None => Ok(Quantization::None),
        Some(Some(METHOD)) => Ok(Quantization::Int8),
        Some(other) => {
            bail!("{}: quantization_config.quant_method {other:?} is not one forja reads ({METHOD})", dir.join(CONFIG).display())
        }
    }
}
