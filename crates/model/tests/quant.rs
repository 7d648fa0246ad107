#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Weight-only int8: a model quantized in memory computes what its quantized
//! folder loads as (float32 from `q · scale`), close to the float32 model,
//! for GPT-2's block (tied head) and the Llama block (untied head, QK-norm,
//! soft-capped logits).

use forja_model::quant::{folder_quantization, write_quantized_folder};
use forja_model::{load_gpt, save_model, Activation, Arch, Gpt, GptConfig, LoraConfig, Quantization};
use forja_tokenizer::char_tokenizer;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

fn variants() -> Vec<GptConfig> {
    let gpt2 = GptConfig { vocab_size: 11, block_size: 16, n_layer: 2, n_head: 2, n_embd: 24, dropout: 0.0, ..Default::default() };
    let llama = GptConfig { arch: Arch::Llama, n_head: 4, n_kv_head: 2, n_embd: 32, tie_word_embeddings: false, ..gpt2.clone() };
    let speedrun = GptConfig { qk_norm: true, activation: Some(Activation::Relu2), logit_softcap: 15.0, ..llama.clone() };
    vec![gpt2, llama, speedrun]
}

fn saved(cfg: &GptConfig, dir: &Path) {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    Gpt::new(&vs.root(), cfg).unwrap();
    let tok = char_tokenizer(["abcdefghij"].into_iter(), &[]).unwrap();
    save_model(dir, &vs, cfg, &tok).unwrap();
}

fn logits(m: &Gpt, ids: &[i64]) -> Tensor {
    m.forward(&Tensor::from_slice(ids).view([1, -1]), false, None).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn an_int8_model_computes_what_its_quantized_folder_holds_and_stays_close_to_float32() {
    let ids = [1, 5, 2, 9, 3, 3, 7, 0, 4];
    for cfg in variants() {
        let tmp = tempfile::tempdir().unwrap();
        let (plain, quant) = (tmp.path().join("f32"), tmp.path().join("int8"));
        saved(&cfg, &plain);
        let summary = write_quantized_folder(&plain, &quant).unwrap();
        let per_block = if cfg.arch.is_llama() { 4 } else { 2 } + if cfg.gated() { 3 } else { 2 };
        assert_eq!(summary.tensors, per_block * cfg.n_layer as usize + 1, "{:?}: projections and the head", cfg.arch);
        assert!(summary.bytes_after < summary.bytes_before, "{summary:?}");
        assert_eq!(folder_quantization(&quant).unwrap(), Quantization::Int8);
        assert_eq!(folder_quantization(&plain).unwrap(), Quantization::None);
        assert!(tmp.path().join("int8/tokenizer.json").exists());

        // The file: int8 weights in their own layout, scales broadcasting against them.
        let file: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(quant.join("model.safetensors")).unwrap().into_iter().collect();
        let (w, s) = if cfg.arch.is_llama() {
            ("model.layers.0.self_attn.q_proj.weight", vec![cfg.n_embd, 1])
        } else {
            ("transformer.h.0.attn.c_attn.weight", vec![1, 3 * cfg.n_embd])
        };
        assert_eq!(file[w].kind(), Kind::Int8, "{w}");
        assert_eq!(file[&format!("{w}_scale")].size(), s, "{w}_scale");
        let norm = if cfg.arch.is_llama() { "model.norm.weight" } else { "transformer.ln_f.weight" };
        assert_eq!(file[norm].kind(), Kind::Float, "norms stay float32");

        let (_vs0, f32_model, _) = load_gpt(&plain, Device::Cpu).unwrap();
        let (_vs1, mut int8, _) = load_gpt(&plain, Device::Cpu).unwrap();
        let stats = int8.quantize(Quantization::Int8).unwrap();
        assert_eq!(stats.projections, summary.tensors);
        let (_vs2, from_folder, _) = load_gpt(&quant, Device::Cpu).unwrap();
        let (a, b, c) = (logits(&int8, &ids), logits(&from_folder, &ids), logits(&f32_model, &ids));
        let kernel_vs_folder = max_abs(&(&a - &b));
        assert!(kernel_vs_folder < 1e-4, "{:?}: int8 kernels vs the folder's float32: {kernel_vs_folder}", cfg.arch);
        let vs_f32 = max_abs(&(&a - &c)) / max_abs(&c);
        assert!(vs_f32 > 0.0 && vs_f32 < 0.03, "{:?}: int8 vs float32 logits differ by {vs_f32} of their range", cfg.arch);
        // Quantizing twice is a no-op; a quantized folder is not quantized again.
        assert_eq!(int8.quantize(Quantization::Int8).unwrap().projections, 0);
        let again = write_quantized_folder(&quant, &tmp.path().join("again")).unwrap_err().to_string();
        assert!(again.contains("quantized already"), "{again}");
    }
}

#[test]
fn a_model_with_lora_adapters_is_refused_until_they_are_merged() {
    let cfg = variants().remove(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let lora = LoraConfig { targets: vec!["c_attn".into()], ..Default::default() };
    let mut m = Gpt::with_lora(&vs.root(), &cfg, Some(&lora)).unwrap();
    let err = m.quantize(Quantization::Int8).unwrap_err().to_string();
    assert!(err.contains("transformer.h.0.attn.c_attn") && err.contains("LoRA"), "{err}");
}

#[test]
fn an_int8_weight_without_its_scales_is_an_error_naming_it() {
    let cfg = variants().remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let (plain, quant) = (tmp.path().join("f32"), tmp.path().join("int8"));
    saved(&cfg, &plain);
    write_quantized_folder(&plain, &quant).unwrap();
    let file = quant.join("model.safetensors");
    let kept: Vec<(String, Tensor)> =
        Tensor::read_safetensors(&file).unwrap().into_iter().filter(|(n, _)| n != "transformer.h.1.mlp.c_fc.weight_scale").collect();
    Tensor::write_safetensors(&kept, &file).unwrap();
    let err = format!("{:#}", load_gpt(&quant, Device::Cpu).err().unwrap());
    assert!(err.contains("transformer.h.1.mlp.c_fc.weight") && err.contains("model.safetensors"), "{err}");
}

#[test]
fn packed_float32_weights_compute_the_float32_model() {
    let ids = [1, 5, 2, 9, 3, 3, 7, 0, 4];
    for cfg in variants() {
        let tmp = tempfile::tempdir().unwrap();
        saved(&cfg, tmp.path());
        let (_vs0, plain, _) = load_gpt(tmp.path(), Device::Cpu).unwrap();
        let (_vs1, mut packed, _) = load_gpt(tmp.path(), Device::Cpu).unwrap();
        packed.pack_f32().unwrap();
        assert_eq!(packed.decodes_on_host(), !cfg.qk_norm, "{:?}", cfg.arch);
        let err = packed.quantize(Quantization::Int8).unwrap_err().to_string();
        assert!(err.contains("packed already"), "{err}");
        let (a, b) = (logits(&plain, &ids), logits(&packed, &ids));
        let diff = max_abs(&(&a - &b));
        assert!(diff < 1e-4, "{:?}: packed float32 vs libtorch: {diff}", cfg.arch);
        // One row alone gives the same logits as in a batch of rows.
        let last = packed.forward(&Tensor::from_slice(&ids[..1]).view([1, 1]), false, None).unwrap();
        assert!(last.allclose(&b.narrow(1, 0, 1), 0.0, 1e-6, false), "{:?}: the first position alone", cfg.arch);
    }
}

/// Paged decoding of two sequences (a prefill, then one token per row per
/// step) on `m`: the last hidden state of every step, in order.
fn paged_decode(m: &Gpt) -> Vec<Tensor> {
    use forja_model::paged::{PagedCache, PagedRow};
    let mut cache = PagedCache::new(m, 8, 4).unwrap();
    let (ta, tb) = ([0u32, 1, 2, 3], [4u32, 5, 6, 7]);
    let (pa, pb) = ([1u32, 5, 2], [9u32, 3, 3, 7, 0]);
    let mut out = vec![m
        .hidden_paged(&[PagedRow { blocks: &ta, start: 0, tokens: &pa }, PagedRow { blocks: &tb, start: 0, tokens: &pb }], &mut cache)
        .unwrap()];
    for s in 0..6 {
        let (x, y) = ([(s % 10) as u32], [((s * 3) % 10) as u32]);
        let rows = [PagedRow { blocks: &ta, start: pa.len() + s, tokens: &x }, PagedRow { blocks: &tb, start: pb.len() + s, tokens: &y }];
        out.push(m.hidden_paged(&rows, &mut cache).unwrap());
    }
    out
}

#[test]
fn decoding_steps_on_the_host_compute_what_libtorch_computes() {
    // GPT-2's block with both its activations; the Llama block (rotary
    // embeddings, grouped-query attention) gated with SiLU and ungated with
    // ReLU²; each float32 packed and int8.
    let (gpt2, llama) = (variants()[0].clone(), variants()[1].clone());
    let configs = [
        GptConfig { activation: Some(Activation::Gelu), ..gpt2.clone() },
        GptConfig { activation: Some(Activation::GeluNew), ..gpt2 },
        llama.clone(),
        GptConfig { activation: Some(Activation::Relu2), ..llama },
    ];
    for cfg in configs {
        let act = (cfg.arch, cfg.activation);
        let tmp = tempfile::tempdir().unwrap();
        saved(&cfg, &tmp.path().join("f32"));
        write_quantized_folder(&tmp.path().join("f32"), &tmp.path().join("int8")).unwrap();
        for (name, dir, quantize) in [("float32", "f32", false), ("int8", "int8", true)] {
            let (_vs0, plain, _) = load_gpt(&tmp.path().join(dir), Device::Cpu).unwrap();
            let (_vs1, mut fast, _) = load_gpt(&tmp.path().join(dir), Device::Cpu).unwrap();
            if quantize {
                fast.quantize(Quantization::Int8).unwrap();
            } else {
                fast.pack_f32().unwrap();
            }
            assert!(fast.decodes_on_host() && !plain.decodes_on_host(), "{act:?} {name}");
            for (step, (a, b)) in paged_decode(&plain).iter().zip(paged_decode(&fast)).enumerate() {
                let diff = max_abs(&(a - &b));
                assert!(diff < 1e-4, "{act:?} {name} step {step}: host decoding vs libtorch: {diff}");
            }
        }
    }
}
