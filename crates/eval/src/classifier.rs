//! The `eval_classifier` stage: a sequence classifier (a fine-tuned BERT
//! folder) on labeled documents — every classification metric with
//! calibration, metrics per slice with the largest disparity and its
//! confidence interval, accuracy under text perturbations and under a
//! gradient-guided token-substitution attack (HotFlip), and integrated-gradient
//! attributions of predictions rendered as highlighted text.

use crate::attribution::{integrated_gradients, render_html, Attribution};
use crate::metrics::{self, classification, difference_interval, expected_calibration_error, log_loss, Classification};
use crate::perturb::Perturbation;
use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::metric::{self as m, split};
use forja_core::stage::{outputs, port, OutDir, OutputSpec, Stage, StageCtx};
use forja_core::{Document, MetricRow, Reject};
use forja_model::bert::encode_for_bert;
use forja_model::classifier::{load_classifier, BertClassifier};
use forja_model::parse_device;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Groups of documents to compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SliceConfig {
    /// A `meta` field whose values are the groups.
    pub field: Option<String>,
    /// Named groups of keywords: a document is in a group when its text holds
    /// one of them as a whole word (case-insensitive); documents in none of
    /// them form the group `(none)`.
    pub keywords: BTreeMap<String, Vec<String>>,
    /// Groups smaller than this are listed but left out of the disparity.
    pub min_size: usize,
}

impl Default for SliceConfig {
    fn default() -> Self {
        Self { field: None, keywords: BTreeMap::new(), min_size: 30 }
    }
}

/// Perturbations accuracy is measured under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RobustnessConfig {
    pub perturbations: Vec<Perturbation>,
    /// HotFlip budgets: tokens substituted per example (greedy, one at a time).
    pub hotflip: Vec<usize>,
    /// Examples attacked (a seeded sample of the test set; 0: all).
    pub max_examples: usize,
}

impl Default for RobustnessConfig {
    fn default() -> Self {
        Self {
            perturbations: vec![
                Perturbation::Typo(0.05),
                Perturbation::Typo(0.2),
                Perturbation::Case(0.5),
                Perturbation::WordDrop(0.1),
                Perturbation::WordDrop(0.3),
            ],
            hotflip: vec![1, 2],
            max_examples: 300,
        }
    }
}

/// Integrated-gradient explanations of some predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributionConfig {
    /// Examples explained: the first correct and the first wrong predictions, half each.
    pub examples: usize,
    /// Points of the path integral.
    pub steps: usize,
    /// Completeness tolerance: |Σ attributions − (F(x) − F(baseline))| ≤ tolerance · max(1, |F(x) − F(baseline)|).
    pub tolerance: f64,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self { examples: 6, steps: 64, tolerance: 0.05 }
    }
}

/// Parameters of `eval_classifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierEvalConfig {
    /// The `meta` field holding each document's label.
    pub label_field: String,
    /// Tokens per example, `[CLS]` and `[SEP]` included.
    pub max_length: usize,
    pub batch_size: usize,
    /// Score at most this many documents (0: all).
    pub max_examples: usize,
    pub slices: SliceConfig,
    pub robustness: RobustnessConfig,
    pub attributions: AttributionConfig,
    pub seed: Option<u64>,
    pub device: Option<String>,
}

impl Default for ClassifierEvalConfig {
    fn default() -> Self {
        Self {
            label_field: "label".into(),
            max_length: 64,
            batch_size: 64,
            max_examples: 0,
            slices: SliceConfig::default(),
            robustness: RobustnessConfig::default(),
            attributions: AttributionConfig::default(),
            seed: None,
            device: None,
        }
    }
}

/// One labeled test example.
#[derive(Debug, Clone)]
pub struct Example {
    pub text: String,
    pub ids: Vec<i64>,
    pub label: usize,
    /// Slices the example belongs to.
    pub groups: Vec<String>,
}

/// Metrics of one slice.
#[derive(Debug, Clone, Serialize)]
pub struct SliceScore {
    pub name: String,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// The largest accuracy gap between two eligible slices.
#[derive(Debug, Clone, Serialize)]
pub struct Disparity {
    pub best: String,
    pub worst: String,
    pub gap: f64,
    /// 95% interval of the gap (Newcombe's hybrid score interval).
    pub interval: (f64, f64),
}

/// Accuracy under one perturbation.
#[derive(Debug, Clone, Serialize)]
pub struct RobustScore {
    pub key: String,
    pub name: String,
    pub accuracy: f64,
    /// Clean accuracy on the same examples minus `accuracy`.
    pub drop: f64,
}

/// What `eval_classifier` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierEval {
    pub labels: Vec<String>,
    pub scores: Classification,
    pub ece: f64,
    pub log_loss: f64,
    pub slices: Vec<SliceScore>,
    pub disparity: Option<Disparity>,
    pub robust_examples: usize,
    pub clean_accuracy_on_robust: f64,
    pub robustness: Vec<RobustScore>,
    pub attributions: Vec<ExplainedExample>,
    /// Test documents left out (no label, or one the model does not know).
    pub rejected: usize,
}

/// One explained prediction.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedExample {
    pub label: String,
    pub predicted: String,
    pub attribution: Attribution,
    pub complete: bool,
}

/// Outputs of `eval_classifier`.
pub const CONFUSION: OutputSpec = OutputSpec { name: "confusion", path: "confusion.svg", kind: port::SVG };
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };

/// Ids and attention mask `[b, longest]` of token rows padded with `pad`.
pub fn pad_batch(rows: &[&[i64]], pad: i64, device: Device) -> (Tensor, Tensor) {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for r in rows {
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(pad, width - r.len()));
        mask.extend(std::iter::repeat_n(1i64, r.len()));
        mask.extend(std::iter::repeat_n(0i64, width - r.len()));
    }
    let shape = [rows.len() as i64, width as i64];
    (Tensor::from_slice(&ids).view(shape).to(device), Tensor::from_slice(&mask).view(shape).to(device))
}

/// A classifier and what scoring it needs.
pub struct Scorer<'a> {
    pub model: &'a BertClassifier,
    pub pad: i64,
    pub batch_size: usize,
}

impl Scorer<'_> {
    fn device(&self) -> Device {
        self.model.bert.word_embeddings.ws.device()
    }

    fn collate(&self, rows: &[&[i64]]) -> (Tensor, Tensor) {
        pad_batch(rows, self.pad, self.device())
    }

    /// Class probabilities of each row (batched by length).
    pub fn probs(&self, rows: &[Vec<i64>]) -> anyhow::Result<Vec<Vec<f64>>> {
        let _guard = tch::no_grad_guard();
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let mut out = vec![Vec::new(); rows.len()];
        for chunk in order.chunks(self.batch_size.max(1)) {
            let batch: Vec<&[i64]> = chunk.iter().map(|&i| rows[i].as_slice()).collect();
            let (ids, mask) = self.collate(&batch);
            let p = self.model.forward(&ids, &mask, false)?.softmax(-1, Kind::Double).to(Device::Cpu);
            for (k, &i) in chunk.iter().enumerate() {
                out[i] = Vec::<f64>::try_from(p.get(k as i64))?;
            }
        }
        Ok(out)
    }

    /// Predicted classes of each row.
    pub fn predict(&self, rows: &[Vec<i64>]) -> anyhow::Result<Vec<usize>> {
        Ok(self.probs(rows)?.iter().map(|p| metrics::argmax(p).0).collect())
    }

    /// HotFlip (Ebrahimi et al. 2018): `flips` times, the token substitution
    /// with the largest first-order increase of the loss of the true label,
    /// `(e_new − e_old) · ∂loss/∂e_old`, over every position not yet flipped
    /// and every token not in `banned` (special tokens). Returns the attacked rows.
    pub fn hotflip(&self, rows: &[Vec<i64>], labels: &[usize], flips: usize, banned: &[bool]) -> anyhow::Result<Vec<Vec<i64>>> {
        let emb = self.model.bert.word_embeddings.ws.detach(); // [V, h]
        let vocab = emb.size()[0];
        anyhow::ensure!(banned.len() as i64 == vocab, "banned list of {} for a vocabulary of {vocab}", banned.len());
        let banned_t = Tensor::from_slice(banned).to(self.device()); // [V]
        let mut out: Vec<Vec<i64>> = rows.to_vec();
        for start in (0..rows.len()).step_by(16) {
            let idx: Vec<usize> = (start..(start + 16).min(rows.len())).collect();
            let batch: Vec<&[i64]> = idx.iter().map(|&i| rows[i].as_slice()).collect();
            let (mut ids, mask) = self.collate(&batch);
            let (b, t) = (ids.size()[0], ids.size()[1]);
            let y = Tensor::from_slice(&idx.iter().map(|&i| labels[i] as i64).collect::<Vec<_>>()).to(self.device());
            let mut flipped = Tensor::zeros([b, t], (Kind::Bool, self.device()));
            for _ in 0..flips {
                let words = emb.index_select(0, &ids.view([-1])).view([b, t, -1]).set_requires_grad(true);
                let logits = self.model.forward_from_words(&words, &mask, false)?;
                let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0);
                let g = Tensor::run_backward(&[loss], &[&words], false, false).into_iter().next().context("no gradient")?;
                let _guard = tch::no_grad_guard();
                let gain = g.matmul(&emb.tr()) - (&g * words.detach()).sum_dim_intlist([2i64].as_slice(), true, Kind::Float); // [b, t, V]
                let fixed = banned_t.index_select(0, &ids.view([-1])).view([b, t]).logical_or(&flipped).logical_or(&mask.eq(0));
                // A token is never "replaced" by itself.
                let same = Tensor::zeros([b, t, vocab], (Kind::Bool, self.device())).scatter_value(2, &ids.unsqueeze(2), 1);
                let gain = gain
                    .masked_fill(&fixed.unsqueeze(2), f64::NEG_INFINITY)
                    .masked_fill(&banned_t.view([1, 1, vocab]), f64::NEG_INFINITY)
                    .masked_fill(&same, f64::NEG_INFINITY)
                    .view([b, t * vocab]);
                let best = gain.argmax(-1, false); // [b]
                let has = gain.max_dim(-1, false).0.isfinite();
                let (pos, tok) = (best.divide_scalar_mode(vocab, "floor"), best.remainder(vocab));
                let rows_t = Tensor::arange(b, (Kind::Int64, self.device()));
                let old = ids.index(&[Some(&rows_t), Some(&pos)]);
                let new = tok.where_self(&has, &old);
                ids = ids.index_put(&[Some(&rows_t), Some(&pos)], &new, false);
                flipped = flipped.index_put(&[Some(&rows_t), Some(&pos)], &has, false);
            }
            let ids = ids.to(Device::Cpu);
            for (k, &i) in idx.iter().enumerate() {
                let row: Vec<i64> = Vec::<i64>::try_from(ids.get(k as i64))?;
                out[i] = row[..rows[i].len()].to_vec();
            }
        }
        Ok(out)
    }

    /// Integrated gradients of the logit of `class` for one row, from a
    /// baseline where every token but the special ones (`banned`) is the
    /// padding token.
    pub fn explain(&self, row: &[i64], class: usize, steps: usize, banned: &[bool]) -> anyhow::Result<(Vec<f64>, f64, f64)> {
        let emb = self.model.bert.word_embeddings.ws.detach();
        let dev = self.device();
        let ids = Tensor::from_slice(row).to(dev);
        let base_ids: Vec<i64> = row.iter().map(|&t| if banned.get(t as usize).copied().unwrap_or(false) { t } else { self.pad }).collect();
        let input = emb.index_select(0, &ids);
        let baseline = emb.index_select(0, &Tensor::from_slice(&base_ids).to(dev));
        let t = row.len() as i64;
        let f = |x: &Tensor| -> anyhow::Result<Tensor> {
            let mask = Tensor::ones([x.size()[0], t], (Kind::Int64, dev));
            Ok(self.model.forward_from_words(x, &mask, false)?.select(1, class as i64))
        };
        integrated_gradients(&f, &input, &baseline, steps, 16)
    }
}

/// Slices of an example: its `field` value and the keyword groups its text matches.
fn groups_of(doc: &Document, cfg: &SliceConfig) -> Vec<String> {
    let mut groups = Vec::new();
    if let Some(field) = &cfg.field {
        groups.push(doc.meta_field(field).map_or_else(|_| format!("{field}=(missing)"), |v| format!("{field}={v}")));
    }
    if !cfg.keywords.is_empty() {
        let words: std::collections::HashSet<String> =
            doc.text.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
        let hits: Vec<String> = cfg
            .keywords
            .iter()
            .filter(|(_, kws)| kws.iter().any(|k| words.contains(&k.to_lowercase())))
            .map(|(name, _)| name.clone())
            .collect();
        if hits.is_empty() {
            groups.push("(none)".into());
        } else {
            groups.extend(hits);
        }
    }
    groups
}

/// Per-slice scores (sorted by name) and the largest accuracy gap among slices of `min_size` or more.
pub fn slice_scores(examples: &[Example], pred: &[usize], n_classes: usize, min_size: usize) -> (Vec<SliceScore>, Option<Disparity>) {
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        for g in &e.groups {
            members.entry(g.as_str()).or_default().push(i);
        }
    }
    let slices: Vec<SliceScore> = members
        .into_iter()
        .map(|(name, idx)| {
            let pairs: Vec<(usize, usize)> = idx.iter().map(|&i| (examples[i].label, pred[i])).collect();
            let c = classification(&pairs, n_classes);
            let correct = pairs.iter().filter(|(t, p)| t == p).count();
            SliceScore { name: name.to_string(), n: idx.len(), correct, accuracy: c.accuracy, macro_f1: c.f1.macro_ }
        })
        .collect();
    let eligible: Vec<&SliceScore> = slices.iter().filter(|s| s.n >= min_size.max(1)).collect();
    let best = eligible.iter().max_by(|a, b| a.accuracy.total_cmp(&b.accuracy));
    let worst = eligible.iter().min_by(|a, b| a.accuracy.total_cmp(&b.accuracy));
    let disparity = match (best, worst) {
        (Some(b), Some(w)) if eligible.len() >= 2 => Some(Disparity {
            best: b.name.clone(),
            worst: w.name.clone(),
            gap: b.accuracy - w.accuracy,
            interval: difference_interval(b.correct as f64, b.n as f64, w.correct as f64, w.n as f64),
        }),
        _ => None,
    };
    (slices, disparity)
}

/// Tokens that are never flipped to or attributed to: `[PAD]`, `[CLS]`, `[unused0]`, ...
fn special_tokens(tok: &forja_tokenizer::Tokenizer, vocab: usize) -> anyhow::Result<Vec<bool>> {
    (0..vocab)
        .map(|i| {
            let t = tok.id_to_token(i as u32).unwrap_or_default();
            Ok(t.is_empty() || (t.starts_with('[') && t.ends_with(']') && t.len() > 2))
        })
        .collect()
}

/// A sample of `n` indices of `0..len` (all when `n` is 0 or ≥ len), sorted, from `seed`.
fn sample(len: usize, n: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut idx: Vec<usize> = (0..len).collect();
    if n > 0 && n < len {
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n);
        idx.sort_unstable();
    }
    idx
}

/// Runs the evaluation and writes every output under `out`.
pub fn run(cfg: &ClassifierEvalConfig, inputs: &ClassifierEvalInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<ClassifierEval> {
    anyhow::ensure!(cfg.max_length >= 2, "max_length must be at least 2 ([CLS] and [SEP])");
    let seed = cfg.seed.unwrap_or(ctx.seed);
    let device = parse_device(cfg.device.as_deref().unwrap_or(&ctx.device))?;
    let mut loaded = load_classifier(&inputs.model, device)?;
    loaded.vs.freeze();
    let labels = loaded.labels.clone();
    let index: BTreeMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let max_len = cfg.max_length.min(loaded.model.bert.cfg.max_position_embeddings as usize);

    let mut rejects = Vec::new();
    let mut examples = Vec::new();
    let docs = Document::read(&inputs.test)?;
    for (i, d) in docs.iter().enumerate() {
        let label = d.meta_field(&cfg.label_field).and_then(|l| {
            index.get(l.as_str()).copied().ok_or_else(|| format!("label `{l}` is not one of the model's {} labels", labels.len()))
        });
        match label {
            Ok(label) => {
                let ids = encode_for_bert(&loaded.tokenizer, &d.text, max_len)?.into_iter().map(i64::from).collect();
                examples.push(Example { text: d.text.clone(), ids, label, groups: groups_of(d, &cfg.slices) });
            }
            Err(reason) => rejects.push(Reject::new(&inputs.test.display().to_string(), i as u64 + 1, reason, &d.text)),
        }
    }
    if cfg.max_examples > 0 && examples.len() > cfg.max_examples {
        let keep = sample(examples.len(), cfg.max_examples, seed);
        examples = keep.into_iter().map(|i| examples[i].clone()).collect();
    }
    anyhow::ensure!(!examples.is_empty(), "{}: no labeled document to score ({} rejected)", inputs.test.display(), rejects.len());
    Reject::write(&out.path(&REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;

    let scorer = Scorer { model: &loaded.model, pad: loaded.model.bert.cfg.pad_token_id, batch_size: cfg.batch_size };
    let rows: Vec<Vec<i64>> = examples.iter().map(|e| e.ids.clone()).collect();
    let truth: Vec<usize> = examples.iter().map(|e| e.label).collect();
    let probs = scorer.probs(&rows)?;
    let pred: Vec<usize> = probs.iter().map(|p| metrics::argmax(p).0).collect();
    let pairs: Vec<(usize, usize)> = truth.iter().copied().zip(pred.iter().copied()).collect();
    let scores = classification(&pairs, labels.len());
    let n_params: f64 = loaded.vs.variables().values().map(|t| t.numel() as f64).sum();
    let tokens: usize = rows.iter().map(Vec::len).sum();
    forja_meter::add_flops(2.0 * n_params * tokens as f64);
    let mean_len = tokens as f64 / rows.len() as f64;
    println!("{}: accuracy {:.4}, macro F1 {:.4} on {} examples", ctx.name, scores.accuracy, scores.f1.macro_, examples.len());

    let (slices, disparity) = slice_scores(&examples, &pred, labels.len(), cfg.slices.min_size);
    let banned = special_tokens(&loaded.tokenizer, loaded.model.bert.cfg.vocab_size as usize)?;
    let (robust_examples, clean_accuracy_on_robust, robustness) =
        robustness(&scorer, &examples, &pred, cfg, seed, &banned, &loaded.tokenizer, max_len)?;
    let attributions = explain_some(&scorer, &examples, &pred, &labels, &cfg.attributions, &banned, &loaded.tokenizer)?;
    // The other passes, at the mean length: a forward pass per perturbed or
    // attacked example, forward and backward (×3) per HotFlip step and per
    // integrated-gradient point.
    let r = &cfg.robustness;
    let flip_steps: usize = r.hotflip.iter().map(|f| f + 1).sum();
    let passes = robust_examples as f64 * (r.perturbations.len() as f64 + 3.0 * flip_steps as f64)
        + attributions.len() as f64 * 3.0 * (cfg.attributions.steps as f64 + 2.0);
    forja_meter::add_flops(2.0 * n_params * mean_len * passes);

    let result = ClassifierEval {
        ece: expected_calibration_error(&probs, &truth),
        log_loss: log_loss(&probs, &truth),
        labels,
        scores,
        slices,
        disparity,
        robust_examples,
        clean_accuracy_on_robust,
        robustness,
        attributions,
        rejected: rejects.len(),
    };
    write_outputs(&result, out, ctx, &inputs.model, &cfg.attributions)?;
    Ok(result)
}

/// Accuracy under each perturbation and each HotFlip budget, on a seeded sample.
#[allow(clippy::too_many_arguments)]
fn robustness(
    scorer: &Scorer,
    examples: &[Example],
    pred: &[usize],
    cfg: &ClassifierEvalConfig,
    seed: u64,
    banned: &[bool],
    tok: &forja_tokenizer::Tokenizer,
    max_len: usize,
) -> anyhow::Result<(usize, f64, Vec<RobustScore>)> {
    let r = &cfg.robustness;
    if r.perturbations.is_empty() && r.hotflip.is_empty() {
        return Ok((0, f64::NAN, Vec::new()));
    }
    let idx = sample(examples.len(), r.max_examples, seed ^ 0x5eed);
    let truth: Vec<usize> = idx.iter().map(|&i| examples[i].label).collect();
    let acc = |p: &[usize]| p.iter().zip(&truth).filter(|(a, b)| a == b).count() as f64 / truth.len().max(1) as f64;
    let clean = acc(&idx.iter().map(|&i| pred[i]).collect::<Vec<_>>());
    let mut out = Vec::new();
    for (k, p) in r.perturbations.iter().enumerate() {
        let rows: Vec<Vec<i64>> = idx
            .iter()
            .map(|&i| {
                let text = p.apply(&examples[i].text, seed.wrapping_mul(1_000_003).wrapping_add((k * 1_000_000 + i) as u64));
                Ok(encode_for_bert(tok, &text, max_len)?.into_iter().map(i64::from).collect())
            })
            .collect::<anyhow::Result<_>>()?;
        let a = acc(&scorer.predict(&rows)?);
        out.push(RobustScore { key: p.key(), name: p.name(), accuracy: a, drop: clean - a });
    }
    let rows: Vec<Vec<i64>> = idx.iter().map(|&i| examples[i].ids.clone()).collect();
    for &flips in &r.hotflip {
        let attacked = scorer.hotflip(&rows, &truth, flips, banned)?;
        let a = acc(&scorer.predict(&attacked)?);
        let name = format!("HotFlip, {flips} token{} substituted", if flips == 1 { "" } else { "s" });
        out.push(RobustScore { key: format!("hotflip@{flips}"), name, accuracy: a, drop: clean - a });
    }
    Ok((idx.len(), clean, out))
}

/// Explains the first correct and the first wrong predictions (half each).
fn explain_some(
    scorer: &Scorer,
    examples: &[Example],
    pred: &[usize],
    labels: &[String],
    cfg: &AttributionConfig,
    banned: &[bool],
    tok: &forja_tokenizer::Tokenizer,
) -> anyhow::Result<Vec<ExplainedExample>> {
    let right: Vec<usize> = (0..examples.len()).filter(|&i| pred[i] == examples[i].label).take(cfg.examples.div_ceil(2)).collect();
    let wrong: Vec<usize> = (0..examples.len()).filter(|&i| pred[i] != examples[i].label).take(cfg.examples / 2).collect();
    let mut out = Vec::new();
    for i in right.into_iter().chain(wrong) {
        let e = &examples[i];
        let (scores, f_input, f_baseline) = scorer.explain(&e.ids, pred[i], cfg.steps, banned)?;
        let tokens = e.ids.iter().map(|&t| tok.id_to_token(t as u32).unwrap_or_default()).collect();
        let attribution = Attribution { tokens, scores, f_input, f_baseline, steps: cfg.steps };
        let complete = attribution.complete_within(cfg.tolerance);
        out.push(ExplainedExample { label: labels[e.label].clone(), predicted: labels[pred[i]].clone(), attribution, complete });
    }
    Ok(out)
}

fn write_outputs(r: &ClassifierEval, out: &OutDir, ctx: &StageCtx, model: &Path, attr: &AttributionConfig) -> anyhow::Result<()> {
    let s = &r.scores;
    let mut rows = Vec::new();
    let mut push = |name: &str, v: f64, sp: &str| rows.push(MetricRow::new(&ctx.name, 0, name, v, sp));
    for (name, v) in [
        (m::ACCURACY, s.accuracy),
        (m::MACRO_PRECISION, s.precision.macro_),
        (m::MACRO_RECALL, s.recall.macro_),
        (m::MACRO_F1, s.f1.macro_),
        (m::MICRO_F1, s.f1.micro),
        (m::WEIGHTED_F1, s.f1.weighted),
        (m::ECE, r.ece),
        (m::LOG_LOSS, r.log_loss),
    ] {
        push(name, v, split::TEST);
    }
    for sl in &r.slices {
        push(m::SLICE_ACCURACY, sl.accuracy, &format!("slice:{}", sl.name));
    }
    if let Some(d) = &r.disparity {
        push(m::MAX_DISPARITY, d.gap, split::TEST);
    }
    for rb in &r.robustness {
        push(m::ROBUST_ACCURACY, rb.accuracy, &format!("perturb:{}", rb.key));
    }
    if let Some(worst) = r.attributions.iter().map(|a| a.attribution.completeness_error()).max_by(f64::total_cmp) {
        push(m::IG_COMPLETENESS_ERROR, worst, split::TEST);
    }
    MetricRow::write(&out.path(&outputs::METRICS), &ctx.name, &ctx.config_hash, &rows)?;
    let title = format!("{}: confusion matrix (accuracy {:.2}%)", ctx.name, 100.0 * s.accuracy);
    forja_core::fsutil::atomic_write(&out.path(&CONFUSION), forja_render::confusion_heatmap(&title, &r.labels, &s.confusion).as_bytes())?;
    forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), report_md(r, ctx, model, attr).as_bytes())?;
    Ok(())
}

fn report_md(r: &ClassifierEval, ctx: &StageCtx, model: &Path, attr: &AttributionConfig) -> String {
    let s = &r.scores;
    let mut md = format!(
        "# Classifier evaluation `{}`\n\nModel: `{}`; {} examples, {} classes; {} test document(s) left out (no label, or a label the model does not know: `{}`).\n\n",
        ctx.name,
        model.display(),
        s.n,
        r.labels.len(),
        r.rejected,
        REJECTS.path
    );
    md += "| metric | macro | micro | weighted |\n|---|---|---|---|\n";
    md += &format!("| precision | {:.4} | {:.4} | {:.4} |\n", s.precision.macro_, s.precision.micro, s.precision.weighted);
    md += &format!("| recall | {:.4} | {:.4} | {:.4} |\n", s.recall.macro_, s.recall.micro, s.recall.weighted);
    md += &format!("| F1 | {:.4} | {:.4} | {:.4} |\n\n", s.f1.macro_, s.f1.micro, s.f1.weighted);
    md += &format!(
        "Accuracy **{:.4}**; expected calibration error {:.4} ({} bins); log loss {:.4}.\n\n![confusion matrix]({})\n\n",
        s.accuracy,
        r.ece,
        metrics::ECE_BINS,
        r.log_loss,
        CONFUSION.path
    );
    md += "## Per-class metrics\n\nSorted by F1, weakest first.\n\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n";
    let mut per: Vec<(usize, &metrics::ClassScore)> = s.labels.iter().copied().zip(&s.per_class).collect();
    per.sort_by(|a, b| a.1.f1.total_cmp(&b.1.f1));
    for (c, k) in per {
        md += &format!("| {} | {:.3} | {:.3} | {:.3} | {} |\n", r.labels[c], k.precision, k.recall, k.f1, k.support);
    }
    md += &slices_md(r);
    md += &robustness_md(r);
    md += &attributions_md(r, attr);
    md
}

fn slices_md(r: &ClassifierEval) -> String {
    let mut md = "\n## Slices\n\n".to_string();
    if r.slices.is_empty() {
        return md + "No slices were defined (`slices.field` or `slices.keywords`).\n";
    }
    md += "| slice | examples | accuracy | macro F1 |\n|---|---|---|---|\n";
    for sl in &r.slices {
        let mark = match &r.disparity {
            Some(d) if d.best == sl.name => " ▲ best",
            Some(d) if d.worst == sl.name => " ▼ worst",
            _ => "",
        };
        md += &format!("| {}{mark} | {} | {:.4} | {:.4} |\n", sl.name, sl.n, sl.accuracy, sl.macro_f1);
    }
    md += &match &r.disparity {
        Some(d) => format!(
            "\n**Largest disparity: {:.1} points of accuracy** between `{}` and `{}` (95% interval {:.1} to {:.1} points, Newcombe's hybrid score interval){}.\n",
            100.0 * d.gap,
            d.best,
            d.worst,
            100.0 * d.interval.0,
            100.0 * d.interval.1,
            if d.interval.0 > 0.0 { "; the interval excludes 0" } else { "; the interval includes 0, so the gap may be chance" }
        ) + "The interval treats the two slices as independent samples and this pair as chosen in advance; it is the most extreme of all the pairs, and keyword slices can share documents, so read it as a description, not a test.\n",
        None => "\nFewer than two slices are large enough to compare.\n".into(),
    };
    md
}

fn robustness_md(r: &ClassifierEval) -> String {
    let mut md = "\n## Robustness\n\n".to_string();
    if r.robustness.is_empty() {
        return md + "No perturbation was asked for.\n";
    }
    md += &format!(
        "On {} examples (clean accuracy {:.4}). HotFlip substitutes, one at a time, the token whose replacement most increases the loss of the true label to first order (gradient-guided; special tokens excluded).\n\n| perturbation | accuracy | drop from clean |\n|---|---|---|\n",
        r.robust_examples, r.clean_accuracy_on_robust
    );
    for rb in &r.robustness {
        md += &format!("| {} | {:.4} | {:.4} |\n", rb.name, rb.accuracy, rb.drop);
    }
    md
}

fn attributions_md(r: &ClassifierEval, attr: &AttributionConfig) -> String {
    let mut md = "\n## Attributions\n\n".to_string();
    if r.attributions.is_empty() {
        return md + "No example was explained.\n";
    }
    md += &format!(
        "Integrated gradients of the predicted class's logit over the word embeddings, from a baseline where every token but the special ones (`[CLS]`, `[SEP]`, `[UNK]`, …: they keep their embedding, so their attribution is 0) is `[PAD]`, {} midpoint steps. Red raised the logit, blue lowered it. Completeness: |Σ attributions − (F(x) − F(baseline))| ≤ {} · max(1, |F(x) − F(baseline)|).\n\n",
        attr.steps, attr.tolerance
    );
    for e in &r.attributions {
        let a = &e.attribution;
        md += &format!(
            "- true `{}`, predicted `{}`: F(x) {:.3}, F(baseline) {:.3}, Σ attributions {:.3}, error {:.4} ({})\n\n  <p class=\"attribution\">{}</p>\n\n",
            e.label,
            e.predicted,
            a.f_input,
            a.f_baseline,
            a.scores.iter().sum::<f64>(),
            a.completeness_error(),
            if e.complete { "within tolerance" } else { "**outside tolerance: raise `attributions.steps`**" },
            render_html(a)
        );
    }
    md
}

forja_core::stage_inputs! {
    /// Inputs of `eval_classifier`.
    pub struct ClassifierEvalInputs {
        /// A sequence-classifier folder.
        model: one[MODEL],
        /// Labeled documents (`labeled`, or `documents` with the label in `meta`).
        test: one[DOCUMENTS],
    }
}

/// The `eval_classifier` stage.
pub struct EvalClassifier;

impl Stage for EvalClassifier {
    const KIND: &'static str = "eval_classifier";
    const ABOUT: &'static str =
        "a sequence classifier on labeled documents: all metrics with calibration, slices and disparity, robustness (perturbations, HotFlip), integrated-gradient attributions";
    const OUTPUTS: &'static [OutputSpec] = &[outputs::METRICS, outputs::REPORT, CONFUSION, REJECTS];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = ClassifierEvalConfig;
    type Inputs = ClassifierEvalInputs;

    fn run(
        &self,
        cfg: &ClassifierEvalConfig,
        inputs: &ClassifierEvalInputs,
        out: &OutDir,
        ctx: &StageCtx,
    ) -> anyhow::Result<Vec<OutputSpec>> {
        run(cfg, inputs, out, ctx)?;
        Ok(Self::OUTPUTS.to_vec())
    }
}
