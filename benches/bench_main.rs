//! criterion benchmarks, one module per stage: `cargo bench -p forja-benches`.
//! Throughput is reported per input byte (data) or per token (model, pretrain).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::PathBuf;

fn shakespeare() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tinyshakespeare/input.txt");
    std::fs::read_to_string(p).expect("fixtures/tinyshakespeare/input.txt")
}

mod data {
    use super::*;
    use forja_data::clean::normalize;
    use forja_data::read::{read_text, ReadOutput, TextUnit};
    use forja_data::tokenizer::{self, TokenizerConfig};
    use forja_data::web::{process, Outcome, Preset, Rules};

    pub fn benches(c: &mut Criterion) {
        let text = shakespeare();
        let mut g = c.benchmark_group("data");
        g.sample_size(10);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("read+normalize tinyshakespeare (paragraphs)", |b| {
            b.iter(|| {
                let mut out = ReadOutput::default();
                read_text("input.txt", text.as_bytes(), TextUnit::Paragraph, &mut out);
                out.records.iter().map(|r| normalize(&r.text).len()).sum::<usize>()
            })
        });
        let chars = tokenizer::char_tokenizer(std::iter::once(text.as_str()), &[]).expect("char tokenizer");
        g.bench_function("char tokenize tinyshakespeare", |b| b.iter(|| chars.encode(&text).map(|v| v.len())));
        let cfg = TokenizerConfig { vocab_size: 512, ..Default::default() };
        let bpe = tokenizer::train(text.split("\n\n"), &cfg).expect("bpe");
        g.bench_function("bpe-512 tokenize tinyshakespeare", |b| b.iter(|| bpe.encode(&text).map(|v| v.len())));
        g.finish();

        // The per-document web chain (preset=web: language ID, Gopher, C4,
        // the DCLM-tuned verdict, PII) on the 1,000 C4 documents, one thread.
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/c4-sample/c4_sample.jsonl");
        let c4: Vec<String> = std::fs::read_to_string(p)
            .expect("fixtures/c4-sample/c4_sample.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["text"].as_str().map(str::to_string))
            .collect();
        let rules = Rules::default();
        let on = rules.enabled(Preset::Web);
        let none = std::collections::HashSet::new();
        let mut g = c.benchmark_group("data");
        g.sample_size(10);
        g.throughput(Throughput::Bytes(c4.iter().map(String::len).sum::<usize>() as u64));
        g.bench_function("web chain per document, C4 sample", |b| {
            b.iter(|| c4.iter().filter(|d| matches!(process(d, 1, &rules, &on, &none), Outcome::Kept(_))).count())
        });
        g.finish();
    }
}

mod pretrain {
    use super::*;
    use forja_core::stage::StageCtx;
    use forja_model::checkpoint::write_model_files;
    use forja_model::{Gpt, GptConfig};
    use forja_pretrain::objectives::{CausalLm, Streams};
    use forja_train::batches::TokenStream;
    use forja_train::ModelWriter;
    use forja_train::{Engine, EngineConfig, OptimConfig, ParamGroup, RunSpec};
    use tch::{nn, Device};

    /// One optimiser step of nanoGPT's Tiny Shakespeare CPU configuration,
    /// through the engine's own step.
    pub fn benches(c: &mut Criterion) {
        let ids: Vec<i64> = shakespeare().bytes().map(i64::from).collect();
        let stream = || TokenStream::from_ids(&ids, Device::Cpu).expect("stream");
        let cfg = GptConfig { vocab_size: 256, block_size: 64, n_layer: 4, n_head: 4, n_embd: 128, ..Default::default() };
        tch::manual_seed(0);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(&vs.root(), &cfg).expect("model");
        let tokenizer = forja_tokenizer::char_tokenizer(std::iter::once("ab"), &[]).expect("tokenizer");
        let write: ModelWriter = Box::new(|vs, dir| write_model_files(dir, vs, &cfg, &tokenizer));
        let data = Streams { train: stream(), val: stream(), batch_size: 12, block: 64, grad_accum: 1, seed: 0 };
        let mut obj = CausalLm { model: &model, data, write };
        let ecfg = EngineConfig { optim: OptimConfig { lr: 1e-3, ..Default::default() }, max_steps: u64::MAX, ..Default::default() };
        let groups = ParamGroup::decay_split(&vs, 0.1);
        let ctx = StageCtx { name: "bench".into(), seed: 0, device: "cpu".into(), config_hash: String::new(), code_hash: "" };
        let scratch = std::env::temp_dir();
        let spec = RunSpec { seed: 0, run_key: String::new(), ctx: &ctx, out_dir: &scratch };
        let mut engine = Engine::new(&ecfg, &mut vs, groups, spec).expect("engine");
        let mut g = c.benchmark_group("pretrain");
        g.sample_size(20);
        g.throughput(Throughput::Elements(12 * 64));
        let mut step = 0u64;
        g.bench_function("gpt 4x128 step, batch 12x64", |b| {
            b.iter(|| {
                step += 1;
                engine.train_step(&mut obj, step, 1e-3, false).map(|_| ())
            })
        });
        g.finish();
    }
}

mod generate {
    use super::*;
    use forja_model::{generate, Gpt, GptConfig, SamplingConfig};
    use tch::{nn, Device};

    /// Sampling 64 tokens with the KV cache.
    pub fn benches(c: &mut Criterion) {
        let cfg = GptConfig { vocab_size: 256, block_size: 128, n_layer: 4, n_head: 4, n_embd: 128, ..Default::default() };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(&vs.root(), &cfg).expect("model");
        let s = SamplingConfig { max_new_tokens: 64, ..Default::default() };
        let mut g = c.benchmark_group("model");
        g.sample_size(10);
        g.throughput(Throughput::Elements(64));
        g.bench_function("generate 64 tokens (kv cache)", |b| b.iter(|| generate(&model, &[1, 2, 3], None, &s).map(|v| v.len())));
        g.finish();
    }
}

mod encoder {
    use super::*;
    use forja_model::bert::{mean_pool, Bert, BertConfig};
    use forja_model::lstm::{LstmConfig, LstmLm, LSTM_MODEL_TYPE};
    use forja_model::LanguageModel;
    use tch::{nn, Device, Kind, Tensor};

    /// A BERT forward pass with mean pooling (the `embed` stage's work per batch),
    /// and an LSTM language model's forward and backward.
    pub fn benches(c: &mut Criterion) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let bert = Bert::new(&(vs.root() / "bert"), &BertConfig::sized(2048, 128, 4, 4, 128, 0.0), None).expect("bert");
        let ids = Tensor::randint(2048, [32, 64], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([32, 64], (Kind::Int64, Device::Cpu));
        let mut g = c.benchmark_group("model");
        g.sample_size(10);
        g.throughput(Throughput::Elements(32));
        g.bench_function("bert 4x128 embed 32 sequences of 64 tokens", |b| {
            b.iter(|| tch::no_grad(|| mean_pool(&bert.forward(&ids, None, Some(&mask), false).expect("forward"), &mask).size()))
        });
        let cfg = LstmConfig { model_type: LSTM_MODEL_TYPE.into(), vocab_size: 66, n_embd: 192, n_layer: 2, dropout: 0.0, block_size: 64 };
        let lstm_vs = nn::VarStore::new(Device::Cpu);
        let lstm = LstmLm::new(&lstm_vs.root(), &cfg).expect("lstm");
        let x = Tensor::randint(66, [12, 64], (Kind::Int64, Device::Cpu));
        g.throughput(Throughput::Elements(12 * 64));
        g.bench_function("lstm 2x192 forward+backward, batch 12x64", |b| {
            b.iter(|| {
                let loss = lstm.loss(&x, &x, true).expect("loss");
                loss.backward();
                loss.double_value(&[])
            })
        });
        g.finish();
    }
}

criterion_group!(benches, data::benches, pretrain::benches, generate::benches, encoder::benches);
criterion_main!(benches);
