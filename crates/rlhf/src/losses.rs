//! The objectives' formulas, as pure tensor functions: DPO (and IPO, and a
//! length-normalised variant), generalised advantage estimation, masked
//! whitening, PPO's clipped policy and value losses, group-relative
//! advantages, and the adaptive KL coefficient. Each follows TRL's
//! implementation; `fixtures/rlhf/golden.json` (written by
//! `scripts/fixtures/rlhf-golden.py` with TRL) pins them to 1e-5.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which preference loss DPO minimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// Rafailov et al. 2023: `-log σ(β h)`, `h` the difference of log-ratios.
    #[default]
    Sigmoid,
    /// Azar et al. 2023: `(h - 1/(2β))²` on per-token mean log-probabilities.
    Ipo,
    /// The sigmoid loss on per-token mean log-probabilities (no reward for length).
    LengthNormalized,
}

/// Per-pair DPO terms.
pub struct DpoTerms {
    pub losses: Tensor,
    /// β (log π(chosen) − log π_ref(chosen)), the implicit reward.
    pub chosen_rewards: Tensor,
    pub rejected_rewards: Tensor,
}

/// Summed answer log-probabilities of a batch of pairs under the policy and
/// the reference, with the answers' token counts.
pub struct PairLogps<'a> {
    pub policy_chosen: &'a Tensor,
    pub policy_rejected: &'a Tensor,
    pub reference_chosen: &'a Tensor,
    pub reference_rejected: &'a Tensor,
    pub chosen_tokens: &'a Tensor,
    pub rejected_tokens: &'a Tensor,
}

/// The DPO loss of each pair.
pub fn dpo(kind: DpoLoss, beta: f64, p: &PairLogps) -> DpoTerms {
    let (pc, pr, rc, rr) = match kind {
        DpoLoss::Sigmoid => (
            p.policy_chosen.shallow_clone(),
            p.policy_rejected.shallow_clone(),
            p.reference_chosen.shallow_clone(),
            p.reference_rejected.shallow_clone(),
        ),
        DpoLoss::Ipo | DpoLoss::LengthNormalized => (
            p.policy_chosen / p.chosen_tokens,
            p.policy_rejected / p.rejected_tokens,
            p.reference_chosen / p.chosen_tokens,
            p.reference_rejected / p.rejected_tokens,
        ),
    };
    let logits = (&pc - &pr) - (&rc - &rr);
    let losses = match kind {
        DpoLoss::Sigmoid | DpoLoss::LengthNormalized => -(&logits * beta).log_sigmoid(),
        DpoLoss::Ipo => (&logits - 1.0 / (2.0 * beta)).square(),
    };
    DpoTerms { losses, chosen_rewards: (pc - rc) * beta, rejected_rewards: (pr - rr) * beta }
}

/// Mean of `x` where `mask` is 1.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    (x * mask).sum(Kind::Float) / mask.sum(Kind::Float)
}

/// Whitens `x` over the masked entries (mean 0, variance 1 with Bessel's
/// correction, as TRL's `masked_whiten`); masked-out entries become 0.
pub fn masked_whiten(x: &Tensor, mask: &Tensor) -> Tensor {
    let mean = masked_mean(x, mask);
    let centered = x - &mean;
    let n = mask.sum(Kind::Float);
    let var = masked_mean(&centered.square(), mask) * (&n / (&n - 1.0));
    (centered * (var + 1e-8).rsqrt()) * mask
}

/// Generalised advantage estimation (Schulman et al. 2016) over `[b, t]`
/// per-token rewards and values (0 after each answer): returns advantages and
/// returns (advantages + values), TRL's loop.
pub fn gae(rewards: &Tensor, values: &Tensor, gamma: f64, lam: f64) -> (Tensor, Tensor) {
    let t = rewards.size()[1];
    let mut last = Tensor::zeros_like(&rewards.select(1, 0));
    let mut reversed = Vec::with_capacity(t as usize);
    for i in (0..t).rev() {
        let next = if i + 1 < t { values.select(1, i + 1) } else { Tensor::zeros_like(&last) };
        let delta = rewards.select(1, i) + next * gamma - values.select(1, i);
        last = delta + &last * (gamma * lam);
        reversed.push(last.shallow_clone());
    }
    reversed.reverse();
    let adv = Tensor::stack(&reversed, 1);
    let returns = &adv + values;
    (adv, returns)
}

/// PPO's clipped policy loss and the fraction of tokens where clipping bit.
pub fn ppo_policy(logps: &Tensor, old_logps: &Tensor, adv: &Tensor, mask: &Tensor, clip: f64) -> (Tensor, Tensor) {
    let ratio = (logps - old_logps).exp();
    let l1 = -adv * &ratio;
    let l2 = -adv * ratio.clamp(1.0 - clip, 1.0 + clip);
    let loss = masked_mean(&l1.maximum(&l2), mask);
    let frac = masked_mean(&l2.gt_tensor(&l1).to_kind(Kind::Float), mask);
    (loss, frac)
}

/// PPO's clipped value loss (½ mean of the larger squared error) and the
/// fraction of tokens where clipping bit.
pub fn ppo_value(vpred: &Tensor, old_values: &Tensor, returns: &Tensor, mask: &Tensor, clip: f64) -> (Tensor, Tensor) {
    let clipped = vpred.clamp_tensor(Some(old_values - clip), Some(old_values + clip));
    let l1 = (vpred - returns).square();
    let l2 = (clipped - returns).square();
    let loss = masked_mean(&l1.maximum(&l2), mask) * 0.5;
    let frac = masked_mean(&l2.gt_tensor(&l1).to_kind(Kind::Float), mask);
    (loss, frac)
}

/// Group-relative advantages (GRPO, Shao et al. 2024): each reward minus its
/// group's mean, divided by the group's standard deviation (unbiased) + 1e-4
/// when `scale`. Rewards come in consecutive groups of `group`.
pub fn group_advantages(rewards: &[f64], group: usize, scale: bool) -> Vec<f64> {
    rewards
        .chunks(group.max(1))
        .flat_map(|g| {
            let n = g.len() as f64;
            let mean = g.iter().sum::<f64>() / n;
            let std = if g.len() > 1 { (g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
            g.iter().map(move |r| if scale { (r - mean) / (std + 1e-4) } else { r - mean })
        })
        .collect()
}

/// The KL penalty's coefficient: fixed, or adapted towards a target KL
/// (Ziegler et al. 2019): `coef *= 1 + clip(kl / target − 1, ±0.2) · n / horizon`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlController {
    pub coef: f64,
    /// Target KL per answer; `None` keeps `coef` fixed.
    pub target: Option<f64>,
    pub horizon: f64,
}

impl KlController {
    /// Adapts after a rollout of `n` answers whose mean KL was `kl`.
    pub fn update(&mut self, kl: f64, n: usize) {
        if let Some(target) = self.target.filter(|t| *t > 0.0) {
            let err = (kl / target - 1.0).clamp(-0.2, 0.2);
            self.coef *= 1.0 + err * n as f64 / self.horizon.max(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_advantages_by_hand() {
        let a = group_advantages(&[1.0, 0.0, 1.0, 0.0, 2.0, 2.0], 2, false);
        assert_eq!(a, [0.5, -0.5, 0.5, -0.5, 0.0, 0.0]);
        let s = group_advantages(&[1.0, 0.0], 2, true);
        let std = 0.5f64.sqrt();
        assert!((s[0] - 0.5 / (std + 1e-4)).abs() < 1e-12);
    }

    #[test]
    fn kl_controller_moves_towards_its_target() {
        let mut k = KlController { coef: 0.1, target: Some(6.0), horizon: 100.0 };
        k.update(12.0, 10);
        assert!((k.coef - 0.1 * 1.02).abs() < 1e-12);
        k.update(0.0, 10);
        assert!(k.coef < 0.1 * 1.02);
        let mut fixed = KlController { coef: 0.1, target: None, horizon: 100.0 };
        fixed.update(50.0, 10);
        assert_eq!(fixed.coef, 0.1);
    }
}
