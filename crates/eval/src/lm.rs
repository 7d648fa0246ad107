//! Language-model evaluations beyond loss: attributions of the next token to
//! the prompt's tokens, and exact match of generated answers.

use crate::attribution::{integrated_gradients, render_html, Attribution};
use crate::metrics::{exact_match as em, final_number};
use crate::QaConfig;
use anyhow::Context;
use forja_core::{Generation, Reject};
use forja_model::checkpoint::LoadedModel;
use forja_model::{generate, AnyModel, Gpt, SamplingConfig};
use forja_tokenizer::Tokenizer;
use std::path::Path;
use tch::Tensor;

/// Integrated gradients of the logit of the greedy next token of `prompt`
/// over its token embeddings, from an all-zero baseline.
pub fn explain_next_token(g: &Gpt, tok: &Tokenizer, prompt: &str, steps: usize) -> anyhow::Result<Option<(String, Attribution)>> {
    let mut ids: Vec<i64> = tok.encode(prompt)?.into_iter().map(i64::from).collect();
    let block = g.cfg.block_size as usize;
    if ids.is_empty() {
        return Ok(None);
    }
    if ids.len() > block {
        ids.drain(..ids.len() - block);
    }
    let dev = g.device();
    let x = g.token_embeds(&Tensor::from_slice(&ids).to(dev)).detach();
    let t = ids.len() as i64;
    let next = tch::no_grad(|| -> anyhow::Result<i64> {
        Ok(g.logits_from_embeds(&x.unsqueeze(0))?.get(0).get(t - 1).argmax(-1, false).int64_value(&[]))
    })?;
    let f = |pts: &Tensor| -> anyhow::Result<Tensor> { Ok(g.logits_from_embeds(pts)?.select(1, t - 1).select(1, next)) };
    let (scores, f_input, f_baseline) = integrated_gradients(&f, &x, &x.zeros_like(), steps, 16)?;
    let tokens = ids.iter().map(|&i| tok.decode(&[i as u32]).unwrap_or_default()).collect();
    let next_text = tok.decode(&[next as u32])?;
    Ok(Some((next_text, Attribution { tokens, scores, f_input, f_baseline, steps })))
}

/// The report section of next-token attributions for each prompt.
pub fn next_token_attributions(g: &Gpt, tok: &Tokenizer, prompts: &[String], steps: usize) -> anyhow::Result<String> {
    let mut md = format!(
        "\n## Attributions\n\nIntegrated gradients of the logit of the greedy next token over the prompt's token embeddings, from an all-zero baseline, {steps} midpoint steps. Red raised the logit, blue lowered it.\n\n"
    );
    for p in prompts {
        let Some((next, a)) = explain_next_token(g, tok, p, steps)? else { continue };
        md += &format!(
            "- prompt `{:?}` → next token `{:?}`: F(x) {:.3}, F(baseline) {:.3}, Σ attributions {:.3}, completeness error {:.4}\n\n  <p class=\"attribution\">{}</p>\n\n",
            p,
            next,
            a.f_input,
            a.f_baseline,
            a.scores.iter().sum::<f64>(),
            a.completeness_error(),
            render_html(&a)
        );
    }
    Ok(md)
}

/// What exact match measured.
pub struct QaResult {
    pub exact_match: f64,
    pub asked: usize,
    /// Lines of the file left out, each with its reason (bad JSON, no
    /// numeric reference).
    pub rejects: Vec<Reject>,
    pub generations: Vec<Generation>,
}

impl QaResult {
    pub fn markdown(&self, file: &Path, cfg: &QaConfig) -> String {
        let mut md = format!(
            "\n## Exact match\n\n`{}`: **{:.4}** on {} questions ({} line(s) left out: see `rejects.arrow`). Prompt: `{:?}`; greedy, at most {} new tokens, cut at {:?}; the final number of an answer (after `####` if present, else the last number) is compared with the reference's.\n\n",
            file.display(),
            self.exact_match,
            self.asked,
            self.rejects.len(),
            cfg.prompt,
            cfg.max_new_tokens,
            cfg.stop
        );
        for g in self.generations.iter().take(3) {
            md += &format!("```text\n{}{}\n```\n\n", g.prompt, g.completion);
        }
        md
    }
}

#[derive(serde::Deserialize)]
struct Qa {
    question: String,
    answer: String,
}

/// Asks the model the questions of `file` and scores its final numbers.
pub fn exact_match(loaded: &LoadedModel, file: &Path, cfg: &QaConfig) -> anyhow::Result<QaResult> {
    let AnyModel::Gpt(g) = &loaded.model else {
        anyhow::bail!("exact match generates answers with a GPT; this model is `{}`", loaded.model.model_type())
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let (mut answers, mut refs, mut generations, mut rejects) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let source = file.display().to_string();
    let sampling = SamplingConfig { temperature: 0.0, max_new_tokens: cfg.max_new_tokens, ..SamplingConfig::default() };
    let block = g.cfg.block_size as usize;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if cfg.max_examples > 0 && answers.len() >= cfg.max_examples {
            break;
        }
        let qa: Qa = match serde_json::from_str(line) {
            Ok(qa) => qa,
            Err(e) => {
                rejects.push(Reject::new(&source, i as u64 + 1, format!("not a {{question, answer}} object: {e}"), line));
                continue;
            }
        };
        if final_number(&qa.answer).is_none() {
            rejects.push(Reject::new(&source, i as u64 + 1, "the reference answer holds no number", line));
            continue;
        }
        let prompt = cfg.prompt.replace("{question}", &qa.question);
        let mut ids = loaded.tokenizer.encode(&prompt)?;
        let room = block.saturating_sub(cfg.max_new_tokens.min(block / 2)).max(1);
        if ids.len() > room {
            ids.drain(..ids.len() - room);
        }
        let new_ids = generate(g, &ids, None, &sampling)?;
        let mut completion = loaded.tokenizer.decode(&new_ids)?;
        if let Some(cut) = cfg.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| completion.find(s.as_str())).min() {
            completion.truncate(cut);
        }
        answers.push(completion.clone());
        refs.push(qa.answer);
        generations.push(Generation { prompt, completion, model: "exact_match".into(), reward: None });
    }
    Ok(QaResult { exact_match: em(&answers, &refs), asked: answers.len(), rejects, generations })
}
