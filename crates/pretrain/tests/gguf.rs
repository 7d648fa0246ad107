#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! GGUF export (`export_gguf`) read back by the ggml project's own reader
//! (PyPI `gguf`, through `scripts/checks/gguf-check.py`): metadata, tokenizer
//! and every tensor, for the GPT-2 and Llama blocks, in f32, f16 and q8_0.

mod common;

use common::{root, tensor};
use forja_model::checkpoint::write_model_files;
use forja_model::gguf::{write_gguf, GgufDtype};
use forja_model::{Arch, Gpt, GptConfig};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Tensor};

/// A byte-level BPE of 300 tokens trained on Shakespeare.
fn bpe() -> forja_tokenizer::Tokenizer {
    let text = std::fs::read_to_string(root().join("fixtures/tinyshakespeare/input.txt")).unwrap();
    let cfg = forja_tokenizer::TokenizerConfig { vocab_size: 300, ..Default::default() };
    forja_tokenizer::train(text[..40_000].split("\n\n"), &cfg).unwrap()
}

/// A random model folder of `cfg` (vocabulary: the tokenizer's); its variables by name.
fn folder(dir: &Path, cfg: &GptConfig, tok: &forja_tokenizer::Tokenizer) -> (GptConfig, HashMap<String, Tensor>) {
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = GptConfig { vocab_size: tok.vocab_size() as i64, ..cfg.clone() };
    Gpt::new(&vs.root(), &cfg).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    write_model_files(dir, &vs, &cfg, tok).unwrap();
    (cfg, vs.variables())
}

/// Writes `dir` as GGUF in `dtype` and reads it back with the `gguf` package.
fn export_and_read(dir: &Path, dtype: GgufDtype) -> Value {
    let file = dir.with_extension(format!("{dtype:?}.gguf"));
    write_gguf(dir, &file, dtype).unwrap();
    let out = dir.with_extension("json");
    let python = root().join(".venv/bin/python");
    let run = std::process::Command::new(&python)
        .arg(root().join("scripts/checks/gguf-check.py"))
        .args([&file, &out])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup --test)", python.display()));
    assert!(run.status.success(), "gguf-check failed: {}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// The tensor `name` of the file, dequantized, checked to be `want` within
/// the tolerance of its type.
fn check(read: &Value, name: &str, want: &Tensor, ty: &str) {
    let t = &read["tensors"][name];
    assert_eq!(t["type"], ty, "{name}");
    let got = tensor(&t["values"]);
    assert_eq!(got.size(), want.size(), "{name}: shape");
    let diff = (&got - want).abs().max().double_value(&[]);
    let tol = match ty {
        "F32" => 0.0,
        "F16" => 1e-3 * want.abs().max().double_value(&[]),
        // Half a quantization step d = max|x| / 127, plus 127 · d times the f16
        // scale's relative rounding (2^-11): d · (0.5 + 127 / 2048).
        _ => want.abs().max().double_value(&[]) / 127.0 * (0.5 + 127.0 / 2048.0) + 1e-7,
    };
    assert!(diff <= tol, "{name} ({ty}): max |gguf - forja| = {diff} > {tol}");
}

#[test]
fn a_gpt2_folder_is_written_with_llama_cpp_names_tokenizer_and_weights() {
    let tok = bpe();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gpt");
    let base = GptConfig { block_size: 32, n_layer: 2, n_head: 2, n_embd: 32, ..Default::default() };
    let (cfg, vars) = folder(&dir, &base, &tok);
    for (dtype, ty) in [(GgufDtype::F32, "F32"), (GgufDtype::F16, "F16"), (GgufDtype::Q8_0, "Q8_0")] {
        let read = export_and_read(&dir, dtype);
        let m = &read["metadata"];
        assert_eq!(read["version"], 3);
        assert_eq!(m["general.architecture"], "gpt2");
        assert_eq!(m["gpt2.context_length"], 32);
        assert_eq!(m["gpt2.embedding_length"], 32);
        assert_eq!(m["gpt2.feed_forward_length"], 128);
        assert_eq!(m["gpt2.block_count"], 2);
        assert_eq!(m["gpt2.attention.head_count"], 2);
        assert_eq!(m["tokenizer.ggml.model"], "gpt2");
        // The tokenizer: every token by id, <|endoftext|> a control token, the merges.
        let tokens: Vec<String> = serde_json::from_value(m["tokenizer.ggml.tokens"].clone()).unwrap();
        assert_eq!(tokens.len(), tok.vocab_size());
        for (id, t) in tokens.iter().enumerate() {
            assert_eq!(tok.token_to_id(t), Some(id as u32), "token {id} `{t}`");
        }
        let eot = tok.token_to_id(forja_tokenizer::EOT).unwrap() as usize;
        assert_eq!(m["tokenizer.ggml.token_type"][eot], 3);
        assert_eq!(m["tokenizer.ggml.token_type"][eot + 1], 1);
        assert_eq!(m["tokenizer.ggml.eos_token_id"], eot);
        let merges = m["tokenizer.ggml.merges"].as_array().unwrap();
        assert_eq!(merges.len(), tok.vocab_size() - 257, "one merge per learned token");
        // Weights: 1-D tensors stay f32, Conv1D weights transposed to [out, in].
        check(&read, "token_embd.weight", &vars["transformer.wte.weight"], ty);
        check(&read, "position_embd.weight", &vars["transformer.wpe.weight"], ty);
        check(&read, "blk.1.attn_qkv.weight", &vars["transformer.h.1.attn.c_attn.weight"].tr(), ty);
        check(&read, "blk.1.attn_qkv.bias", &vars["transformer.h.1.attn.c_attn.bias"], "F32");
        check(&read, "blk.0.ffn_down.weight", &vars["transformer.h.0.mlp.c_proj.weight"].tr(), ty);
        check(&read, "blk.0.attn_norm.weight", &vars["transformer.h.0.ln_1.weight"], "F32");
        check(&read, "output_norm.bias", &vars["transformer.ln_f.bias"], "F32");
        let n_tensors = read["tensors"].as_object().unwrap().len();
        assert_eq!(n_tensors, 2 + cfg.n_layer as usize * 12 + 2, "tied head: no output.weight");
    }
}

/// llama.cpp's row order of a query/key projection, written out independently
/// of the exporter: head h's rows (rotate-half: pairs (i, i + hd/2)) become
/// interleaved (pairs (2i, 2i + 1)).
fn interleave(w: &Tensor, heads: i64) -> Tensor {
    let hd = w.size()[0] / heads;
    let mut rows = Vec::new();
    for h in 0..heads {
        for i in 0..hd / 2 {
            rows.push(h * hd + i);
            rows.push(h * hd + hd / 2 + i);
        }
    }
    w.index_select(0, &Tensor::from_slice(&rows))
}

#[test]
fn a_llama_folder_gets_llama_cpp_names_hyperparameters_and_rotary_layout() {
    let tok = bpe();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llama");
    let base = GptConfig {
        arch: Arch::Llama,
        block_size: 32,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 64,
        intermediate_size: 96,
        rope_theta: 50_000.0,
        tie_word_embeddings: false,
        ..Default::default()
    };
    let (_cfg, vars) = folder(&dir, &base, &tok);
    for (dtype, ty) in [(GgufDtype::F32, "F32"), (GgufDtype::Q8_0, "Q8_0")] {
        let read = export_and_read(&dir, dtype);
        let m = &read["metadata"];
        assert_eq!(m["general.architecture"], "llama");
        assert_eq!(m["llama.attention.head_count"], 4);
        assert_eq!(m["llama.attention.head_count_kv"], 2);
        assert_eq!(m["llama.feed_forward_length"], 96);
        assert_eq!(m["llama.rope.freq_base"], 50_000.0);
        assert_eq!(m["llama.rope.dimension_count"], 16);
        check(&read, "token_embd.weight", &vars["model.embed_tokens.weight"], ty);
        check(&read, "output.weight", &vars["lm_head.weight"], ty);
        check(&read, "blk.0.attn_q.weight", &interleave(&vars["model.layers.0.self_attn.q_proj.weight"], 4), ty);
        check(&read, "blk.1.attn_k.weight", &interleave(&vars["model.layers.1.self_attn.k_proj.weight"], 2), ty);
        check(&read, "blk.1.attn_v.weight", &vars["model.layers.1.self_attn.v_proj.weight"], ty);
        check(&read, "blk.0.ffn_gate.weight", &vars["model.layers.0.mlp.gate_proj.weight"], ty);
        check(&read, "blk.0.ffn_norm.weight", &vars["model.layers.0.post_attention_layernorm.weight"], "F32");
        check(&read, "output_norm.weight", &vars["model.norm.weight"], "F32");
        // down_proj's rows are 96 long: a multiple of 32, quantized too.
        check(&read, "blk.1.ffn_down.weight", &vars["model.layers.1.mlp.down_proj.weight"], ty);
    }
    // The file's type is recorded (llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0 = 7).
    assert_eq!(export_and_read(&dir, GgufDtype::Q8_0)["metadata"]["general.file_type"], 7);
}

#[test]
fn what_llama_cpp_cannot_run_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    // A character tokenizer is not llama.cpp's byte-level BPE.
    let chars = forja_tokenizer::char_tokenizer(std::iter::once("abcdef"), &[]).unwrap();
    let dir = tmp.path().join("char");
    folder(&dir, &GptConfig { block_size: 16, n_layer: 1, n_head: 2, n_embd: 16, ..Default::default() }, &chars);
    let err = format!("{:#}", write_gguf(&dir, &tmp.path().join("a.gguf"), GgufDtype::F32).unwrap_err());
    assert!(err.contains("byte-level BPE"), "{err}");
    assert!(!tmp.path().join("a.gguf").exists());
    // QK-norm has no llama.cpp counterpart in the llama architecture.
    let dir = tmp.path().join("qk");
    let cfg = GptConfig { arch: Arch::Llama, block_size: 16, n_layer: 1, n_head: 2, n_embd: 16, qk_norm: true, ..Default::default() };
    folder(&dir, &cfg, &bpe());
    let err = format!("{:#}", write_gguf(&dir, &tmp.path().join("b.gguf"), GgufDtype::F32).unwrap_err());
    assert!(err.contains("qk_norm"), "{err}");
}
