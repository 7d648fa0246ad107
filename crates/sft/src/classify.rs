//! The `finetune_classifier` stage: a pretrained BERT encoder (e.g. the imported
//! all-MiniLM-L6-v2) plus a classification head, fine-tuned fully or with LoRA
//! on labeled documents, as an [`Objective`] of the training engine; then
//! scored on the test split (accuracy, macro precision / recall / F1, the
//! confusion matrix as a picture). The exported folder is a Hugging Face
//! `BertForSequenceClassification` (adapters merged).

use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::metric::{self, split};
use forja_core::stage::{outputs, port, FromInputs, OutDir, OutputSpec, StageCtx};
use forja_core::{Document, MetricRow, Reject, TokenRow};
use forja_model::bert::encode_for_bert;
use forja_model::bert::BertConfig;
use forja_model::checkpoint::{self, load_weights, TOKENIZER, WEIGHTS};
use forja_model::classifier::{load_classifier, BertClassifier, ClassifierConfig};
use forja_model::export::write_classifier;
use forja_model::LoraConfig;
use forja_tokenizer::Tokenizer;
use forja_train::batches::EpochBatches;
use forja_train::engine::StepHook;
use forja_train::{run_key, TrainSummary, TrainerConfig, TrainerSetup};
use forja_train::{Engine, EngineOutputs, EvalScore, EvalSplit, Objective, OptimConfig, ParamGroup, RunSpec};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// How classes are weighted in the loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeights {
    /// Every example counts the same.
    #[default]
    None,
    /// `n / (k · count(c))` (scikit-learn's "balanced"): rare intents weigh more.
    Balanced,
}

/// Data augmentation of training batches, a pure function of
/// `(seed, step, micro-batch, row)`: validation and test data are never augmented.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Probability of dropping each token between `[CLS]` and `[SEP]`.
    pub token_dropout: f64,
    /// Probability of a typo in each word (a letter swapped, dropped, added or
    /// replaced; no synonyms), applied to the text before tokenising.
    pub char_noise: f64,
}

/// What character noise needs: the training texts (parallel to the examples)
/// and the tokenizer to encode them again.
pub struct TextNoise<'a> {
    pub texts: Vec<String>,
    pub tokenizer: &'a Tokenizer,
    pub max_len: usize,
}

/// Parameters of `finetune_classifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierStageConfig {
    /// The `meta` field of each document holding its label.
    pub label_field: String,
    /// Share of each class of the training documents held out for validation
    /// (stratified).
    pub val_fraction: f64,
    /// Tokens per example, `[CLS]` and `[SEP]` included (longer ones are cut).
    pub max_length: usize,
    /// Dropout of the encoder and the head (the model's own when absent).
    pub dropout: Option<f64>,
    /// LoRA adapters on these encoder projections; the head is trained fully.
    pub lora: Option<LoraConfig>,
    /// Keep the word-embedding matrix frozen (fewer trained parameters, faster steps).
    pub freeze_embeddings: bool,
    pub class_weights: ClassWeights,
    /// Cross-entropy label smoothing.
    pub label_smoothing: f64,
    pub augment: Augment,
    /// The trainer settings (`batch_size`: examples per micro-batch; `epochs`
    /// sets `max_steps` when that is 0; validation covers every held-out example).
    pub train: TrainerConfig,
}

/// `finetune_classifier`'s trainer defaults: three epochs of batches of 32,
/// AdamW at 5e-5 with weight decay 0.01, every validation batch.
pub fn train_defaults() -> TrainerConfig {
    let d = TrainerConfig::default();
    TrainerConfig {
        max_steps: 0,
        epochs: 3.0,
        batch_size: 32,
        optim: OptimConfig { lr: 5e-5, min_lr: 0.0, warmup_steps: 0, weight_decay: 0.01, ..d.optim },
        eval_interval: 100,
        eval_iters: 0,
        checkpoint_interval: 100,
        log_interval: 10,
        ..d
    }
}

impl Default for ClassifierStageConfig {
    fn default() -> Self {
        Self {
            label_field: "label".into(),
            val_fraction: 0.1,
            max_length: 64,
            dropout: None,
            lora: None,
            freeze_embeddings: false,
            class_weights: ClassWeights::None,
            label_smoothing: 0.0,
            augment: Augment::default(),
            train: train_defaults(),
        }
    }
}

forja_core::stage_inputs! {
    /// Inputs of `finetune_classifier`.
    pub struct ClassifierInputs {
        /// A BERT model folder (imported or forja's).
        model: one[MODEL],
        /// Labeled documents to train on (`labeled`, or `documents` with the label in `meta`).
        train: one[DOCUMENTS],
        /// Labeled documents to score the final model on.
        test: optional[DOCUMENTS],
        /// Loss weight per label, `{"label": weight}` (the `clean` stage's
        /// `class_weights.json` for labeled data); overrides `class_weights`.
        class_weights: optional[JSON],
    }
}

pub use forja_train::trainer::{engine_outputs, GRAD_PLOT, MODEL};
pub const CONFUSION: OutputSpec = OutputSpec { name: "confusion", path: "confusion.svg", kind: port::SVG };
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };
pub const OUTPUTS: [OutputSpec; 7] = [MODEL, outputs::METRICS, outputs::PLOT, GRAD_PLOT, outputs::REPORT, CONFUSION, REJECTS];

/// One tokenised, labeled example.
#[derive(Debug, Clone)]
pub struct Example {
    pub ids: Vec<i64>,
    pub label: i64,
}

/// A labeled document as read.
struct LabeledDoc {
    text: String,
    label: String,
}

/// Reads labeled documents; documents without a label go to `rejects`.
fn read_labeled(path: &Path, field: &str, rejects: &mut Vec<Reject>) -> anyhow::Result<Vec<LabeledDoc>> {
    let docs = Document::read(path)?;
    let mut out = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        match d.meta_field(field) {
            Ok(label) => out.push(LabeledDoc { text: d.text.clone(), label }),
            Err(reason) => rejects.push(Reject::new(&format!("{} ({})", path.display(), d.source), i as u64 + 1, reason, &d.text)),
        }
    }
    Ok(out)
}

/// Holds out `fraction` of each class (at least one example of every class
/// with two or more), deterministically from `seed`. Returns (train, val).
pub fn stratified_split(labels: &[i64], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (_, mut idx) in by_class {
        idx.shuffle(&mut rng);
        let n_val =
            if fraction > 0.0 && idx.len() >= 2 { ((idx.len() as f64 * fraction).round() as usize).clamp(1, idx.len() - 1) } else { 0 };
        val.extend_from_slice(&idx[..n_val]);
        train.extend_from_slice(&idx[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Class weights `n / (k · count)` over `examples` (classes never seen weigh 1).
pub fn balanced_weights(examples: &[Example], n_classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; n_classes];
    for e in examples {
        counts[e.label as usize] += 1;
    }
    let n = examples.len() as f64;
    counts.iter().map(|&c| if c == 0 { 1.0 } else { n / (n_classes as f64 * c as f64) }).collect()
}

/// Loss weights per label index from a `{"label": weight}` file; every label
/// of the training set must have a positive, finite weight.
pub fn weights_from_file(path: &Path, labels: &[String]) -> anyhow::Result<Vec<f64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let map: BTreeMap<String, f64> =
        serde_json::from_str(&text).with_context(|| format!("{}: expected an object of label → weight", path.display()))?;
    labels
        .iter()
        .map(|l| match map.get(l) {
            Some(&w) if w.is_finite() && w > 0.0 => Ok(w),
            Some(w) => anyhow::bail!("{}: weight of `{l}` is {w}, not a positive number", path.display()),
            None => anyhow::bail!("{}: no weight for label `{l}` of the training set", path.display()),
        })
        .collect()
}

/// Padded `[b, t]` ids and mask and `[b]` labels of `rows`.
fn collate(rows: &[&Example], pad: i64, device: Device) -> (Tensor, Tensor, Tensor) {
    let ids: Vec<&[i64]> = rows.iter().map(|e| e.ids.as_slice()).collect();
    let (ids, mask) = forja_eval::classifier::pad_batch(&ids, pad, device);
    let labels: Vec<i64> = rows.iter().map(|e| e.label).collect();
    (ids, mask, Tensor::from_slice(&labels).to(device))
}

/// The classification objective: shuffled epochs of the training examples.
pub struct Classify<'a> {
    pub model: &'a BertClassifier,
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub batches: EpochBatches,
    pub pad: i64,
    pub weights: Option<Tensor>,
    pub label_smoothing: f64,
    pub augment: Augment,
    pub seed: u64,
    /// Needed when `augment.char_noise` > 0.
    pub noise: Option<TextNoise<'a>>,
    pub write: forja_train::ModelWriter<'a>,
}

impl Classify<'_> {
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        logits.cross_entropy_loss(labels, self.weights.as_ref(), tch::Reduction::Mean, -100, self.label_smoothing)
    }

    fn fixed_batch(&self, split: EvalSplit, i: u64) -> Vec<&Example> {
        let data = if split == EvalSplit::Val { &self.val } else { &self.train };
        data[self.batches.fixed(i, data.len())].iter().collect()
    }

    fn device(&self) -> Device {
        self.model.bert.word_embeddings.ws.device()
    }

    /// Training example `i` as row `k` of micro-batch `(step, micro)`, augmented.
    fn augmented(&self, i: usize, step: u64, micro: u64, k: usize) -> anyhow::Result<Example> {
        let a = self.augment;
        let row_seed = self.seed.wrapping_mul(1_000_003).wrapping_add(step.wrapping_mul(1009) + micro * 101 + k as u64);
        let mut ex = self.train[i].clone();
        if let (true, Some(n)) = (a.char_noise > 0.0, &self.noise) {
            let text = forja_eval::perturb::char_noise(&n.texts[i], a.char_noise, row_seed);
            ex.ids = encode_for_bert(n.tokenizer, &text, n.max_len)?.into_iter().map(i64::from).collect();
        }
        if a.token_dropout > 0.0 && ex.ids.len() > 3 {
            let mut rng = ChaCha8Rng::seed_from_u64(row_seed ^ 0xd50f);
            let last = ex.ids.len() - 1;
            let kept: Vec<i64> = ex
                .ids
                .iter()
                .enumerate()
                .filter(|&(j, _)| j == 0 || j == last || !rand::Rng::random_bool(&mut rng, a.token_dropout.clamp(0.0, 1.0)))
                .map(|(_, &t)| t)
                .collect();
            if kept.len() > 2 {
                ex.ids = kept;
            }
        }
        Ok(ex)
    }
}

impl Objective for Classify<'_> {
    fn train_loss(&mut self, step: u64, micro: u64) -> anyhow::Result<Tensor> {
        let idx = self.batches.indices(step, micro);
        let owned: Vec<Example> = if self.augment == Augment::default() {
            Vec::new()
        } else {
            idx.iter().enumerate().map(|(k, &i)| self.augmented(i, step, micro, k)).collect::<anyhow::Result<_>>()?
        };
        let rows: Vec<&Example> = if owned.is_empty() { idx.into_iter().map(|i| &self.train[i]).collect() } else { owned.iter().collect() };
        let (ids, mask, labels) = collate(&rows, self.pad, self.device());
        let logits = self.model.forward(&ids, &mask, true)?;
        Ok(self.loss(&logits, &labels))
    }

    fn eval_batch(&mut self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        let rows = self.fixed_batch(split, i);
        anyhow::ensure!(!rows.is_empty(), "no {} examples to evaluate", split.name());
        let (ids, mask, labels) = collate(&rows, self.pad, self.device());
        let logits = self.model.forward(&ids, &mask, false)?;
        let loss = self.loss(&logits, &labels).double_value(&[]);
        let acc = logits.argmax(-1, false).eq_tensor(&labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        Ok(EvalScore { loss, metrics: vec![(metric::ACCURACY, acc)] })
    }

    fn has_val(&self) -> bool {
        !self.val.is_empty()
    }

    fn write_model(&self, vs: &nn::VarStore, dir: &Path) -> anyhow::Result<()> {
        (self.write)(vs, dir)
    }

    fn batch_rows(&self, step: u64, micro: u64) -> anyhow::Result<Vec<TokenRow>> {
        Ok(self
            .batches
            .peek(step, micro)
            .into_iter()
            .map(|i| TokenRow { doc_id: format!("train{i}"), ids: self.train[i].ids.iter().map(|&t| t as u32).collect() })
            .collect())
    }

    fn tokens_per_micro(&self) -> f64 {
        let mean = self.train.iter().map(|e| e.ids.len()).sum::<usize>() as f64 / self.train.len().max(1) as f64;
        mean * self.batches.batch_size as f64
    }
}

/// Scores of a classifier on labeled examples (`forja_eval::metrics`, as scikit-learn).
pub use forja_eval::metrics::Classification as ClassScores;

/// Classification metrics of `(true, predicted)` pairs over `n` classes.
pub fn score(pairs: &[(usize, usize)], n: usize) -> ClassScores {
    forja_eval::metrics::classification(pairs, n)
}

/// Predicted class of each example (batched by length; `forja_eval`'s scorer).
pub fn predict(model: &BertClassifier, examples: &[Example], batch_size: usize, pad: i64) -> anyhow::Result<Vec<usize>> {
    let rows: Vec<Vec<i64>> = examples.iter().map(|e| e.ids.clone()).collect();
    forja_eval::classifier::Scorer { model, pad, batch_size }.predict(&rows)
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierSummary {
    pub train: TrainSummary,
    pub test: Option<ClassScores>,
    pub labels: Vec<String>,
}

/// Trains and scores; writes every output of the stage under `out`.
pub fn run(cfg: &ClassifierStageConfig, inputs: &ClassifierInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<ClassifierSummary> {
    run_with_hook(cfg, inputs, out, ctx, &mut |_| std::ops::ControlFlow::Continue(()))
}

/// [`run`] with a hook after every step (tests stop a run there, as a crash would).
pub fn run_with_hook(
    cfg: &ClassifierStageConfig,
    inputs: &ClassifierInputs,
    out: &OutDir,
    ctx: &StageCtx,
    hook: StepHook,
) -> anyhow::Result<ClassifierSummary> {
    anyhow::ensure!((0.0..1.0).contains(&cfg.val_fraction), "val_fraction must be in [0, 1), got {}", cfg.val_fraction);
    anyhow::ensure!(cfg.max_length >= 2, "max_length must be at least 2 ([CLS] and [SEP])");
    let TrainerSetup { seed, device_name, device, .. } = &cfg.train.setup(ctx)?;
    let (seed, device) = (*seed, *device);
    let found = checkpoint::model_type(&inputs.model)?;
    anyhow::ensure!(found == "bert", "finetune_classifier needs a BERT encoder; {} is `{found}`", inputs.model.display());
    let mut bert_cfg: BertConfig = checkpoint::read_bert_config(&inputs.model)?;
    if let Some(p) = cfg.dropout {
        anyhow::ensure!((0.0..1.0).contains(&p), "dropout must be in [0, 1), got {p}");
        (bert_cfg.hidden_dropout_prob, bert_cfg.attention_probs_dropout_prob) = (p, p);
    }
    let tokenizer = Tokenizer::load(&inputs.model.join(TOKENIZER))?;

    // Labeled data: labels are the training set's, sorted.
    let mut rejects = Vec::new();
    let train_docs = read_labeled(&inputs.train, &cfg.label_field, &mut rejects)?;
    let labels: Vec<String> = train_docs.iter().map(|d| d.label.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    anyhow::ensure!(
        labels.len() >= 2,
        "{}: needs at least 2 labels in `{}`, found {}",
        inputs.train.display(),
        cfg.label_field,
        labels.len()
    );
    let index: BTreeMap<&str, i64> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i as i64)).collect();
    let max_len = cfg.max_length.min(bert_cfg.max_position_embeddings as usize);
    let encode = |d: &LabeledDoc, label: i64| -> anyhow::Result<Example> {
        Ok(Example { ids: encode_for_bert(&tokenizer, &d.text, max_len)?.into_iter().map(i64::from).collect(), label })
    };
    let all: Vec<Example> = train_docs.iter().map(|d| encode(d, index[d.label.as_str()])).collect::<anyhow::Result<_>>()?;
    let (train_idx, val_idx) = stratified_split(&all.iter().map(|e| e.label).collect::<Vec<_>>(), cfg.val_fraction, seed);
    let train: Vec<Example> = train_idx.iter().map(|&i| all[i].clone()).collect();
    let val: Vec<Example> = val_idx.iter().map(|&i| all[i].clone()).collect();
    let test = match &inputs.test {
        Some(path) => {
            let mut test = Vec::new();
            for (i, d) in read_labeled(path, &cfg.label_field, &mut rejects)?.into_iter().enumerate() {
                match index.get(d.label.as_str()) {
                    Some(&l) => test.push(encode(&d, l)?),
                    None => rejects.push(Reject::new(
                        &path.display().to_string(),
                        i as u64 + 1,
                        format!("label `{}` does not occur in the training documents", d.label),
                        &d.text,
                    )),
                }
            }
            Some(test)
        }
        None => None,
    };
    Reject::write(&out.path(&REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;

    // Model: encoder (and pooler) from the folder, a fresh head.
    let clf_cfg = ClassifierConfig::new(&bert_cfg, &labels);
    tch::manual_seed(seed as i64);
    let mut vs = nn::VarStore::new(device);
    let mut model = BertClassifier::new(&vs.root(), &clf_cfg, cfg.lora.as_ref())?;
    model.bert.precision = cfg.train.precision;
    load_weights(&mut vs, &inputs.model.join(WEIGHTS), &|n| {
        n.starts_with("classifier.") || n.starts_with("bert.pooler.") || n.contains(".lora_")
    })
    .with_context(|| format!("initialising from {}", inputs.model.display()))?;
    let groups = param_groups(cfg, &vs);

    let steps_per_epoch = train.len().div_ceil(cfg.train.batch_size * cfg.train.global_accum() as usize) as u64;
    let write: forja_train::ModelWriter = Box::new(|vs, dir| write_classifier(dir, vs, &clf_cfg, cfg.lora.as_ref(), &tokenizer));
    let pad = bert_cfg.pad_token_id;
    let weights = match (&inputs.class_weights, cfg.class_weights) {
        (Some(path), _) => Some(weights_from_file(path, &labels)?),
        (None, ClassWeights::None) => None,
        (None, ClassWeights::Balanced) => Some(balanced_weights(&train, labels.len())),
    };
    let mut obj = Classify {
        model: &model,
        batches: EpochBatches::new(train.len(), cfg.train.batch_size, cfg.train.global_accum(), seed),
        train,
        val,
        pad,
        weights: weights.as_ref().map(|w| Tensor::from_slice(w).to_kind(Kind::Float).to(device)),
        label_smoothing: cfg.label_smoothing,
        augment: cfg.augment,
        seed,
        noise: (cfg.augment.char_noise > 0.0).then(|| TextNoise {
            texts: train_idx.iter().map(|&i| train_docs[i].text.clone()).collect(),
            tokenizer: &tokenizer,
            max_len,
        }),
        write,
    };
    // Validation covers every held-out example.
    let engine_cfg = cfg.train.engine(cfg.train.steps_for(obj.train.len()), obj.batches.covering(obj.val.len()));
    let max_steps = engine_cfg.max_steps;
    let run_key = run_key(cfg, seed, device_name, &inputs.named_paths(), ctx)?;
    let spec = RunSpec { seed, run_key, ctx, out_dir: out.dir() };
    let outputs = engine_outputs(out);
    println!(
        "{}: {} labels, {} train / {} val / {} test examples, {max_steps} steps ({steps_per_epoch} per epoch)",
        ctx.name,
        labels.len(),
        obj.train.len(),
        obj.val.len(),
        test.as_ref().map_or(0, Vec::len)
    );
    let train_summary = Engine::new(&engine_cfg, &mut vs, groups, spec)?.run(&mut obj, &outputs, hook)?;
    drop(obj);

    // The exported model (best weights) on the test split.
    let test_scores = match &test {
        Some(test) if !test.is_empty() => {
            let loaded = load_classifier(&outputs.model, device)?;
            let pred = predict(&loaded.model, test, cfg.train.batch_size.max(64), pad)?;
            let pairs: Vec<(usize, usize)> = test.iter().zip(pred).map(|(e, p)| (e.label as usize, p)).collect();
            Some(score(&pairs, labels.len()))
        }
        _ => None,
    };
    finish_outputs(out, ctx, &outputs, &labels, &train_summary, test_scores.as_ref(), weights.is_some())?;
    if let Some(s) = &test_scores {
        println!(
            "{}: test accuracy {:.4}, macro F1 {:.4} ({} examples)",
            ctx.name,
            s.accuracy,
            s.f1.macro_,
            test.as_ref().map_or(0, Vec::len)
        );
    }
    Ok(ClassifierSummary { train: train_summary, test: test_scores, labels })
}

/// Which parameters train: LoRA adapters and the head (LoRA), everything but
/// the word embeddings (`freeze_embeddings`), or everything.
fn param_groups(cfg: &ClassifierStageConfig, vs: &nn::VarStore) -> Vec<ParamGroup> {
    let wd = cfg.train.optim.weight_decay;
    let head = |n: &str| n.starts_with("classifier.") || n.starts_with("bert.pooler.");
    if cfg.lora.is_some() {
        ParamGroup::train_only(vs, |n| n.contains(".lora_") || head(n), wd)
    } else if cfg.freeze_embeddings {
        ParamGroup::train_only(vs, |n| !n.starts_with("bert.embeddings.word_embeddings"), wd)
    } else {
        ParamGroup::decay_split(vs, wd)
    }
}

/// Adds the test scores to `metrics.arrow` and `report.md`; draws the confusion matrix.
#[allow(clippy::too_many_arguments)]
fn finish_outputs(
    out: &OutDir,
    ctx: &StageCtx,
    outputs: &EngineOutputs,
    labels: &[String],
    train: &TrainSummary,
    test: Option<&ClassScores>,
    weighted: bool,
) -> anyhow::Result<()> {
    let confusion = out.path(&CONFUSION);
    let mut report = std::fs::read_to_string(&outputs.report).unwrap_or_default();
    report += &format!("\n## Classifier\n\nLabels: {}. Class-weighted loss: {weighted}.\n\n", labels.len());
    let Some(s) = test else {
        let empty = vec![vec![0u64; labels.len()]; labels.len()];
        forja_core::fsutil::atomic_write(&confusion, forja_render::confusion_heatmap("no test split", labels, &empty).as_bytes())?;
        report += "No test split was given.\n";
        forja_core::fsutil::atomic_write(&outputs.report, report.as_bytes())?;
        return Ok(());
    };
    let mut metrics = MetricRow::read(&outputs.metrics)?;
    for (name, v) in [
        (metric::ACCURACY, s.accuracy),
        (metric::MACRO_PRECISION, s.precision.macro_),
        (metric::MACRO_RECALL, s.recall.macro_),
        (metric::MACRO_F1, s.f1.macro_),
    ] {
        metrics.push(MetricRow::new(&ctx.name, train.steps, name, v, split::TEST));
    }
    MetricRow::write(&outputs.metrics, &ctx.name, &ctx.config_hash, &metrics)?;
    let title = format!("{}: test confusion matrix (accuracy {:.2}%)", ctx.name, 100.0 * s.accuracy);
    forja_core::fsutil::atomic_write(&confusion, forja_render::confusion_heatmap(&title, labels, &s.confusion).as_bytes())?;
    report += &format!(
        "### Test split\n\n| metric | value |\n|---|---|\n| accuracy | {:.4} |\n| macro precision | {:.4} |\n| macro recall | {:.4} |\n| macro F1 | {:.4} |\n\n![confusion matrix]({})\n\n",
        s.accuracy, s.precision.macro_, s.recall.macro_, s.f1.macro_, CONFUSION.path
    );
    let mut worst: Vec<(usize, &forja_eval::metrics::ClassScore)> =
        s.labels.iter().copied().zip(&s.per_class).filter(|(_, c)| c.support > 0).collect();
    worst.sort_by(|a, b| a.1.f1.total_cmp(&b.1.f1));
    report += "Weakest classes:\n\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n";
    for (c, k) in worst.into_iter().take(10) {
        report += &format!("| {} | {:.3} | {:.3} | {:.3} | {} |\n", labels[c], k.precision, k.recall, k.f1, k.support);
    }
    forja_core::fsutil::atomic_write(&outputs.report, report.as_bytes())?;
    Ok(())
}
