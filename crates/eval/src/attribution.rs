//! Integrated gradients (Sundararajan, Taly & Yan 2017) over token
//! embeddings: how much each input token moved a model's output (a class
//! logit, the logit of a language model's next token) away from a baseline
//! input, with the completeness check — the attributions sum to
//! `F(input) − F(baseline)` up to the error of the path integral — and the
//! rendering of attributions as highlighted text.

use forja_render::html_escape;
use serde::Serialize;
use tch::{Kind, Tensor};

/// Attributions of one output to the tokens of one input.
#[derive(Debug, Clone, Serialize)]
pub struct Attribution {
    /// Tokens as displayed.
    pub tokens: Vec<String>,
    /// One score per token: its share of `f_input − f_baseline`.
    pub scores: Vec<f64>,
    pub f_input: f64,
    pub f_baseline: f64,
    /// Points of the path integral (midpoint rule).
    pub steps: usize,
}

impl Attribution {
    /// `|Σ scores − (F(input) − F(baseline))|`.
    pub fn completeness_error(&self) -> f64 {
        (self.scores.iter().sum::<f64>() - (self.f_input - self.f_baseline)).abs()
    }

    /// Whether the completeness error is within `tolerance · max(1, |F(input) − F(baseline)|)`.
    pub fn complete_within(&self, tolerance: f64) -> bool {
        self.completeness_error() <= tolerance * (self.f_input - self.f_baseline).abs().max(1.0)
    }
}

/// Integrated gradients of `f` (a batch of inputs `[m, t, h]` → one output per
/// row `[m]`) from `baseline` to `input` (both `[t, h]`), with `steps` points
/// of the midpoint rule, at most `chunk` points per forward pass. Returns
/// (per-token attributions, F(input), F(baseline)).
pub fn integrated_gradients(
    f: &dyn Fn(&Tensor) -> anyhow::Result<Tensor>,
    input: &Tensor,
    baseline: &Tensor,
    steps: usize,
    chunk: usize,
) -> anyhow::Result<(Vec<f64>, f64, f64)> {
    anyhow::ensure!(steps > 0, "integrated gradients need at least 1 step");
    anyhow::ensure!(input.size() == baseline.size() && input.dim() == 2, "input and baseline must both be [t, h]");
    let input = input.detach().to_kind(Kind::Float);
    let baseline = baseline.detach().to_kind(Kind::Float);
    let delta = &input - &baseline;
    let (f_input, f_baseline) = tch::no_grad(|| -> anyhow::Result<(f64, f64)> {
        let ends = Tensor::stack(&[&input, &baseline], 0);
        let out = f(&ends)?;
        Ok((out.double_value(&[0]), out.double_value(&[1])))
    })?;
    let mut grad_sum = Tensor::zeros_like(&input);
    let alphas: Vec<f64> = (0..steps).map(|k| (k as f64 + 0.5) / steps as f64).collect();
    for part in alphas.chunks(chunk.max(1)) {
        let a = Tensor::from_slice(part).to_kind(Kind::Float).to(input.device()).view([-1, 1, 1]);
        let points = (baseline.unsqueeze(0) + a * delta.unsqueeze(0)).set_requires_grad(true);
        let out = f(&points)?.sum(Kind::Float);
        let grads = Tensor::run_backward(&[out], &[&points], false, false);
        let g = grads.into_iter().next().ok_or_else(|| anyhow::anyhow!("no gradient with respect to the inputs"))?;
        grad_sum += g.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    }
    let scores = (delta * grad_sum / steps as f64).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    Ok((Vec::<f64>::try_from(scores.to_kind(Kind::Double))?, f_input, f_baseline))
}

/// The tokens as highlighted HTML: one `<span class="attr">` per token, red
/// for a positive attribution and blue for a negative one, the stronger the
/// larger `|score|` against the largest of the row; the score in `title`.
/// Token text is escaped, so model input can never become markup.
pub fn render_html(a: &Attribution) -> String {
    let max = a.scores.iter().fold(0f64, |m, s| m.max(s.abs())).max(1e-12);
    let spans: Vec<String> = a
        .tokens
        .iter()
        .zip(&a.scores)
        .map(|(tok, &s)| {
            let alpha = (s.abs() / max).clamp(0.0, 1.0) * 0.8;
            let rgb = if s >= 0.0 { "214,39,40" } else { "31,119,180" };
            format!(
                "<span class=\"attr\" title=\"{s:+.4}\" style=\"background:rgba({rgb},{alpha:.2});padding:0 2px;border-radius:2px\">{}</span>",
                html_escape(tok)
            )
        })
        .collect();
    spans.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linear_function_is_attributed_exactly() {
        // F(x) = Σ w ⊙ x: IG is (x − x') ⊙ w per token, whatever the steps.
        let w = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0, 0.0, 1.0]).view([3, 2]);
        let f = |x: &Tensor| -> anyhow::Result<Tensor> { Ok((x * &w).sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float)) };
        let x = Tensor::from_slice(&[1.0f32, 1.0, 2.0, 0.0, -1.0, 4.0]).view([3, 2]);
        let (scores, fx, fb) = integrated_gradients(&f, &x, &Tensor::zeros([3, 2], tch::kind::FLOAT_CPU), 4, 3).unwrap_or_default();
        let want = [-1.0, 1.0, 4.0];
        for (s, w) in scores.iter().zip(want) {
            assert!((s - w).abs() < 1e-5, "{scores:?}");
        }
        assert!((fx - 4.0).abs() < 1e-5 && fb.abs() < 1e-9);
        let a = Attribution { tokens: vec!["<b>".into(), "b".into(), "c".into()], scores, f_input: fx, f_baseline: fb, steps: 4 };
        assert!(a.complete_within(1e-5));
        let html = render_html(&a);
        assert_eq!(html.matches("class=\"attr\"").count(), 3);
        assert!(html.contains("&lt;b&gt;") && !html.contains("<b>"), "token text is escaped: {html}");
    }

    #[test]
    fn a_nonlinear_function_meets_completeness_with_enough_steps() {
        let f = |x: &Tensor| -> anyhow::Result<Tensor> {
            Ok(x.tanh().pow_tensor_scalar(2).sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float))
        };
        let x = Tensor::from_slice(&[0.5f32, -1.5, 2.0, 0.3]).view([2, 2]);
        let (scores, fx, fb) = integrated_gradients(&f, &x, &Tensor::zeros([2, 2], tch::kind::FLOAT_CPU), 64, 16).unwrap_or_default();
        let a = Attribution { tokens: vec!["a".into(), "b".into()], scores, f_input: fx, f_baseline: fb, steps: 64 };
        assert!(a.complete_within(1e-3), "error {}", a.completeness_error());
    }
}
