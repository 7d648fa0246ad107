//! The `align_eval` stage: how aligned models compare with the model they
//! started from.
//!
//! Each model and the reference (the SFT model) answer the same held-out
//! prompts (sampled at temperature 1 by default, so the answers are draws of
//! each policy). A judge — a reward model trained on pairs none of the
//! models saw — scores every answer: a model wins a prompt when its answer
//! scores above the reference's (a tie counts half). The KL from the
//! reference is estimated on the model's own answers,
//! `E_y~π [log π(y|x) − log π_ref(y|x)]`. The report puts win rates (with a
//! 95% Wilson interval), mean judge rewards, KL and answer lengths side by
//! side, and shows answers next to each other.

use crate::logps::{self, Seq};
use crate::reward;
use crate::rl::{one_line, read_prompts, Prompt};
use crate::text::{last_tokens, Formatter};
use forja_core::artifacts::Artifact;
use forja_core::stage::{outputs, port, OutDir, OutputSpec, StageCtx};
use forja_core::{Generation, MetricRow};
use forja_model::generate::SamplingConfig;
use forja_model::Gpt;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Parameters of `align_eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlignEvalConfig {
    /// Prompts answered (the first ones of `prompts`).
    pub prompts: usize,
    /// Prompts per generation batch.
    pub batch_size: usize,
    pub sampling: SamplingConfig,
    /// Prompts shown side by side in the report.
    pub show: usize,
    pub device: Option<String>,
    pub threads: i32,
}

impl Default for AlignEvalConfig {
    fn default() -> Self {
        Self {
            prompts: 64,
            batch_size: 16,
            sampling: SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, max_new_tokens: 64, seed: 7 },
            show: 4,
            device: None,
            threads: 0,
        }
    }
}

forja_core::stage_inputs! {
    /// Inputs of `align_eval`.
    pub struct AlignEvalInputs {
        /// The model the others started from (the SFT model).
        reference: one[MODEL],
        /// Aligned models.
        models: many[MODEL],
        /// A reward model trained on held-out pairs.
        judge: one[MODEL],
        /// Prompts: `preferences` or `sft_examples`.
        prompts: one[PREFERENCES, SFT_EXAMPLES],
    }
}

pub const SAMPLES: OutputSpec = OutputSpec { name: "samples", path: "samples.arrow", kind: port::GENERATIONS };
pub const OUTPUTS: [OutputSpec; 3] = [outputs::METRICS, outputs::REPORT, SAMPLES];

/// Metric names (the split names the model).
pub const WIN_RATE: &str = "win_rate";
pub const KL: &str = "kl_from_reference";
pub const JUDGE_REWARD: &str = "judge_reward";
pub const ANSWER_LENGTH: &str = "answer_length";

/// A model's answers with their ids.
struct Answers {
    seqs: Vec<Seq>,
    texts: Vec<String>,
}

fn answer_all(model: &Gpt, fmt: &Formatter, prompts: &[Prompt], cfg: &AlignEvalConfig) -> anyhow::Result<Answers> {
    let block = model.cfg.block_size as usize;
    let (mut seqs, mut texts) = (Vec::new(), Vec::new());
    for (c, chunk) in prompts.chunks(cfg.batch_size.max(1)).enumerate() {
        let ids: Vec<Vec<u32>> =
            chunk.iter().map(|p| Ok(last_tokens(fmt.prompt_ids(&p.text)?, block / 2))).collect::<anyhow::Result<_>>()?;
        let sampling = SamplingConfig { seed: cfg.sampling.seed.wrapping_add(c as u64 * 1000), ..cfg.sampling.clone() };
        let answers = crate::common::generate_answers(model, fmt, &ids, &sampling)?;
        for (prompt, answer) in ids.into_iter().zip(answers) {
            texts.push(fmt.answer_text(&answer)?);
            seqs.push(Seq { prompt, answer });
        }
    }
    Ok(Answers { seqs, texts })
}

/// The 95% Wilson interval of a proportion `p` over `n` trials.
pub fn wilson(p: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let (z, n) = (1.96f64, n as f64);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    (centre - half, centre + half)
}

/// One model's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ModelScore {
    pub model: String,
    pub win_rate: f64,
    pub kl: f64,
    pub judge_reward: f64,
    pub answer_length: f64,
}

pub fn run(cfg: &AlignEvalConfig, inputs: &AlignEvalInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<ModelScore>> {
    anyhow::ensure!(!inputs.models.is_empty(), "align_eval needs at least one model in `models`");
    let device = forja_model::parse_device(cfg.device.as_deref().unwrap_or(&ctx.device))?;
    let _threads = forja_train::ThreadsGuard::set(cfg.threads);
    let mut prompts = read_prompts(&inputs.prompts)?;
    prompts.truncate(cfg.prompts.max(1));
    anyhow::ensure!(!prompts.is_empty(), "{}: no prompts", inputs.prompts.display());
    let judge = reward::load(&inputs.judge, device)?;
    let prompt_texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let score = |texts: &[String]| judge.score_answers(&prompt_texts, texts, cfg.batch_size);
    let ref_policy = crate::common::load_policy(&inputs.reference, device, None, Some(0.0), forja_model::Precision::F32)?;
    let ref_answers = answer_all(&ref_policy.model, &ref_policy.fmt, &prompts, cfg)?;
    let ref_scores = score(&ref_answers.texts)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let length = |a: &Answers| a.seqs.iter().map(|s| s.answer.len()).sum::<usize>() as f64 / a.seqs.len().max(1) as f64;
    let label =
        |p: &Path| p.parent().and_then(|d| d.file_name()).map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());

    let mut gens: Vec<Generation> = Vec::new();
    let mut push_gens = |name: &str, a: &Answers, s: &[f64]| {
        for ((p, t), r) in prompts.iter().zip(&a.texts).zip(s) {
            gens.push(Generation { prompt: p.text.clone(), completion: t.clone(), model: name.to_string(), reward: Some(*r as f32) });
        }
    };
    let ref_name = label(&inputs.reference);
    push_gens(&ref_name, &ref_answers, &ref_scores);
    let mut scores = vec![ModelScore {
        model: ref_name.clone(),
        win_rate: 0.5,
        kl: 0.0,
        judge_reward: mean(&ref_scores),
        answer_length: length(&ref_answers),
    }];
    // Each model's answers and judge rewards, for the side-by-side section.
    let mut side: Vec<(String, Vec<String>, Vec<f64>)> = vec![(ref_name.clone(), ref_answers.texts.clone(), ref_scores.clone())];
    for m in &inputs.models {
        let policy = crate::common::load_policy(m, device, None, Some(0.0), forja_model::Precision::F32)?;
        anyhow::ensure!(
            policy.fmt.tokenizer.vocab_size() == ref_policy.fmt.tokenizer.vocab_size(),
            "{} and the reference {} have different tokenizers: the KL between them is undefined",
            m.display(),
            inputs.reference.display()
        );
        let answers = answer_all(&policy.model, &policy.fmt, &prompts, cfg)?;
        let s = score(&answers.texts)?;
        let wins: f64 = s
            .iter()
            .zip(&ref_scores)
            .map(|(a, b)| {
                if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                }
            })
            .sum();
        let lp = logps::sequence_logps(&policy.model, &answers.seqs, cfg.batch_size)?;
        let lr = logps::sequence_logps(&ref_policy.model, &answers.seqs, cfg.batch_size)?;
        let kl = mean(&lp.iter().zip(&lr).map(|(a, b)| a - b).collect::<Vec<_>>());
        let name = label(m);
        push_gens(&name, &answers, &s);
        scores.push(ModelScore {
            model: name.clone(),
            win_rate: wins / prompts.len() as f64,
            kl,
            judge_reward: mean(&s),
            answer_length: length(&answers),
        });
        side.push((name, answers.texts, s));
    }
    Generation::write(&out.path(&SAMPLES), &ctx.name, &ctx.config_hash, &gens)?;
    let mut rows = Vec::new();
    for s in &scores {
        for (name, v) in [(WIN_RATE, s.win_rate), (KL, s.kl), (JUDGE_REWARD, s.judge_reward), (ANSWER_LENGTH, s.answer_length)] {
            rows.push(MetricRow::new(&ctx.name, 0, name, v, &s.model));
        }
    }
    MetricRow::write(&out.path(&outputs::METRICS), &ctx.name, &ctx.config_hash, &rows)?;
    let n = prompts.len();
    let mut md = format!(
        "# Alignment evaluation `{}`\n\n{n} held-out prompts from `{}`, answered by each model (temperature {}, at most {} new tokens); judge: `{}` (a reward model trained on pairs no policy saw). A win is a prompt where the model's answer scores above the reference's (ties count half).\n\n| model | win rate vs `{ref_name}` | 95% interval | mean judge reward | KL from `{ref_name}` (nats per answer) | mean answer tokens |\n|---|---|---|---|---|---|\n",
        ctx.name,
        inputs.prompts.display(),
        cfg.sampling.temperature,
        cfg.sampling.max_new_tokens,
        inputs.judge.display()
    );
    for s in &scores {
        let (lo, hi) = wilson(s.win_rate, n);
        let (win, interval) = if s.model == ref_name {
            ("(reference)".to_string(), "-".to_string())
        } else {
            (format!("{:.3}", s.win_rate), format!("{lo:.3}–{hi:.3}"))
        };
        md += &format!("| {} | {win} | {interval} | {:.4} | {:.3} | {:.1} |\n", s.model, s.judge_reward, s.kl, s.answer_length);
    }
    md += "\n## Side by side\n\n";
    for (i, p) in prompts.iter().take(cfg.show).enumerate() {
        md += &format!("**Prompt {}:** {}\n\n", i + 1, one_line(&p.text));
        for (name, texts, rewards) in &side {
            let r = rewards[i];
            md += &format!("- **{name}** (judge {r:.3}): {}\n", one_line(&texts[i]));
        }
        md += "\n";
    }
    forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), md.as_bytes())?;
    for s in &scores[1..] {
        println!("{}: {} win rate {:.3} vs {ref_name}, KL {:.3}", ctx.name, s.model, s.win_rate, s.kl);
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_by_hand() {
        let (lo, hi) = wilson(0.5, 100);
        assert!((lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3, "{lo} {hi}");
        let (lo, hi) = wilson(1.0, 10);
        assert!(hi <= 1.0 + 1e-12 && lo > 0.6);
    }
}
