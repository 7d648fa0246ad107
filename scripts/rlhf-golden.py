#!/usr/bin/env python3
"""Writes golden values for forja's RLHF losses (DPO, IPO, PPO's GAE and clipped losses, GRPO advantages),
computed the way TRL computes them, to fixtures/rlhf/golden.json. forja's Rust tests compare against it
(tolerance 1e-5).

  .venv/bin/python scripts/rlhf-golden.py [OUT_JSON]      (default fixtures/rlhf/golden.json)

Inputs are fixed: drawn from torch.Generator().manual_seed(0) (in the order below) or literal lists, all in
float64; every value is computed in float64 and written as a plain JSON number (ints for masks and token counts).
Re-running the script reproduces the file byte for byte.

Where the formulas come from (TRL 1.16.0 is the version in .venv; line numbers are of its installed sources):

"dpo"  DPOTrainer._compute_loss, trl/trainer/dpo_trainer.py (TRL 1.16.0). It needs a trainer and a model, so the
       formulas are re-implemented here on given sequence log-probs (sums over completion tokens):
         chosen_logratios = pc - rc, rejected_logratios = pr - rr           (dpo_trainer.py:1350-1351)
         delta_score = chosen_logratios - rejected_logratios                  (:1382; f_divergence_type reverse_kl, :1353-1355)
         sigmoid: losses = -logsigmoid(beta * delta_score)                    (:1388; label_smoothing is not used)
         chosen_rewards = beta * (pc - rc), rejected_rewards = beta * (pr - rr)  (:1582-1583)
         ipo: chosen_avg = (pc - rc) / max(chosen_tokens, 1),
              rejected_avg = (pr - rr) / max(rejected_tokens, 1)              (:1393-1402)
              losses = (chosen_avg - rejected_avg - 1/(2*beta))**2            (:1404)
       So TRL 1.16's IPO length-averages the *log-ratios*: policy and reference log-probs of a completion are both
       divided by that completion's own token count (the sum of its completion_mask row, i.e. completion tokens
       after truncation, the appended EOS included). chosen_tokens / rejected_tokens here play that role.
       Cross-check: the script then runs TRL's own DPOTrainer._compute_loss (unbound, on a stub trainer and a stub
       model whose per-token log-probs sum to the given sequence log-probs), one pair at a time, for "sigmoid" and
       "ipo", and asserts that its loss and its logged rewards/chosen, rewards/rejected equal the golden values.

"gae"  PPO's advantages. TRL 1.16.0 ships no PPO trainer any more (no trl/experimental/ppo, no masked_whiten);
       the last released code, copied here, is TRL v1.9.0 (tag commit a785283c0ea7395092fc5bd60fc38e7f4d972003),
       trl/experimental/ppo/ppo_trainer.py:
         masked_mean   :237-242, masked_var (unbiased, Bessel mask_sum/(mask_sum-1)) :245-261,
         masked_whiten (shift_mean=True, (x-mean)*rsqrt(var+1e-8)) :264-270,
         GAE loop :787-795, returns = advantages + values :796,
         advantages = masked_whiten(advantages, mask); masked_fill(~mask, 0) :797-798.
       B=3, T=5, right-padded mask with rows of lengths 5, 3, 1; rewards and values are 0 where mask is 0. The
       loop runs over all T positions (padding included), as TRL does; "advantages" is the raw (unwhitened) GAE
       and "returns" = advantages + values, both over the full [B, T] (they come out 0 at padding here because
       rewards and values are 0 there); "whitened" is masked_whiten(advantages, mask) with padding set to 0.
       gamma = 1.0 and lam = 0.95 are PPOConfig's defaults (v1.9.0 ppo_config.py:265-271).

"ppo"  PPO's clipped policy and value losses: same file, v1.9.0 ppo_trainer.py:829-854
         ratio = exp(logprobs - old_logprobs)
         pg_losses = -A * ratio; pg_losses2 = -A * clamp(ratio, 1-cliprange, 1+cliprange)
         pg_loss = masked_mean(max(pg_losses, pg_losses2), mask)
         pg_clipfrac = masked_mean((pg_losses2 > pg_losses).float(), mask)
         vpredclipped = clamp(vpred, old_values - cliprange_value, old_values + cliprange_value)
         vf_loss = 0.5 * masked_mean(max((vpred-returns)^2, (vpredclipped-returns)^2), mask)
         vf_clipfrac = masked_mean(((vpredclipped-returns)^2 > (vpred-returns)^2).float(), mask)
         loss = pg_loss + vf_coef * vf_loss
       One deviation from TRL: TRL masks the value terms with padding_mask_p1 (the response mask extended by one
       position, :767-769, :828, :837-839) and the policy terms with padding_mask; here one mask (lengths 5, 3, 1) is
       used for both. At padding the inputs are what TRL holds there: logprobs = old_logprobs = INVALID_LOGPROB
       (1.0, :69, :765, :824-826), advantages 0, vpred = old_values = 0, returns 0. cliprange 0.2, cliprange_value 0.2,
       vf_coef 0.1 are PPOConfig's defaults (v1.9.0 ppo_config.py:253-263). Inputs are drawn so that some ratios leave [0.8, 1.2] and some vpred
       leave old_values +- 0.2, so both clip fractions are strictly between 0 and 1 (asserted).

"grpo" GRPOTrainer._generate_and_score_completions, trl/trainer/grpo_trainer.py (TRL 1.16.0) with the default
       multi_objective_aggregation "sum_then_normalize" and one reward function:
         mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)            (:2765-2766)
         std  = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)                   (:2770-2771)
         advantages = rewards - mean                                                      (:2785)
         if scale_rewards != "none": advantages = advantages / (std + 1e-4)               (:2786-2787)
       nanstd is TRL's own function, imported from trl.trainer.utils (utils.py:1021): the *unbiased* std (Bessel
       correction count/(count-1)), NaN for a group of one. The epsilon is 1e-4, added to the std (not under a
       sqrt). "advantages_scaled" is scale_rewards="group" (GRPOConfig's default), "advantages_unscaled" is
       scale_rewards="none". 3 groups of G=4; the second group has all-equal rewards (std 0 -> advantages 0).
"""
import collections
import json
import os
import sys
import types
from importlib import metadata

import torch
import torch.nn.functional as F
from trl.trainer.utils import nanstd  # TRL 1.16.0, trl/trainer/utils.py:1021

torch.set_default_dtype(torch.float64)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fixtures", "rlhf", "golden.json")
INVALID_LOGPROB = 1.0  # TRL v1.9.0 trl/experimental/ppo/ppo_trainer.py:69


def rnd(x, nd=6):
    """Round inputs to 6 decimals so that the JSON holds exactly the numbers the outputs were computed from."""
    return torch.round(x * 10**nd) / 10**nd


# ---- masked statistics: TRL v1.9.0 trl/experimental/ppo/ppo_trainer.py:237-270 ------------------------------
def masked_mean(values, mask, axis=None):
    if axis is not None:
        return (values * mask).sum(axis=axis) / mask.sum(axis=axis)
    return (values * mask).sum() / mask.sum()


def masked_var(values, mask, unbiased=True):
    mean = masked_mean(values, mask)
    centered_values = values - mean
    variance = masked_mean(centered_values**2, mask)
    if unbiased:
        mask_sum = mask.sum()
        assert mask_sum > 1
        variance = variance * (mask_sum / (mask_sum - 1))
    return variance


def masked_whiten(values, mask, shift_mean=True):
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


def dpo_section(g):
    beta = 0.1
    n = 8
    # Sequence log-probs (sums over completion tokens): negative, tens of nats; the policy drifts from the reference.
    ref_c = rnd(-(torch.rand(n, generator=g) * 60 + 5))
    ref_r = rnd(-(torch.rand(n, generator=g) * 60 + 5))
    pol_c = rnd(ref_c + torch.randn(n, generator=g) * 4)
    pol_r = rnd(ref_r + torch.randn(n, generator=g) * 4)
    chosen_tokens = torch.randint(1, 41, (n,), generator=g)
    rejected_tokens = torch.randint(1, 41, (n,), generator=g)

    # dpo_trainer.py:1350-1355, 1382, 1388 (reverse_kl: scores are the log-ratios)
    chosen_logratios = pol_c - ref_c
    rejected_logratios = pol_r - ref_r
    delta_score = chosen_logratios - rejected_logratios
    sig_losses = -F.logsigmoid(beta * delta_score)
    # dpo_trainer.py:1582-1583
    chosen_rewards = beta * chosen_logratios
    rejected_rewards = beta * rejected_logratios
    # dpo_trainer.py:1397-1404 (completion_mask.sum(dim=1).clamp(min=1.0) = token counts)
    chosen_avg = chosen_logratios / chosen_tokens.to(torch.float64).clamp(min=1.0)
    rejected_avg = rejected_logratios / rejected_tokens.to(torch.float64).clamp(min=1.0)
    ipo_losses = (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2
    return {
        "beta": beta,
        "policy_chosen_logps": pol_c.tolist(),
        "policy_rejected_logps": pol_r.tolist(),
        "reference_chosen_logps": ref_c.tolist(),
        "reference_rejected_logps": ref_r.tolist(),
        "chosen_tokens": chosen_tokens.tolist(),
        "rejected_tokens": rejected_tokens.tolist(),
        "sigmoid": {
            "losses": sig_losses.tolist(),
            "chosen_rewards": chosen_rewards.tolist(),
            "rejected_rewards": rejected_rewards.tolist(),
        },
        "ipo": {"losses": ipo_losses.tolist()},
    }


def check_dpo_against_trl(d):
    """Run TRL 1.16's real DPOTrainer._compute_loss on each pair (stub trainer/model) and compare to the golden."""
    from trl.trainer.dpo_trainer import DPOTrainer

    class Acc:
        device = torch.device("cpu")
        gather_for_metrics = gather = staticmethod(lambda x: x)

    def trl_loss(loss_type, i):
        nc, nr = d["chosen_tokens"][i], d["rejected_tokens"][i]
        L = 1 + max(nc, nr)  # one prompt token, then the completion
        completion_mask = torch.zeros(2, L, dtype=torch.long)
        completion_mask[0, 1:1 + nc] = 1
        completion_mask[1, 1:1 + nr] = 1
        log_probs = torch.zeros(2, L - 1)  # TRL sums these over the sequence: put each sum on one position
        log_probs[0, 0], log_probs[1, 0] = d["policy_chosen_logps"][i], d["policy_rejected_logps"][i]
        zeros = torch.zeros(2, L - 1)

        def model(**kw):
            return types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                         is_top1=zeros.bool())

        trainer = types.SimpleNamespace(
            model=types.SimpleNamespace(training=True), accelerator=Acc(), aux_loss_enabled=False, ld_alpha=None,
            precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
            beta=d["beta"], label_smoothing=0.0, use_weighting=False, _total_train_tokens=0, _tp_size=1,
            _metrics=collections.defaultdict(lambda: collections.defaultdict(list)))
        inputs = {
            "input_ids": torch.ones(2, L, dtype=torch.long), "attention_mask": torch.ones(2, L, dtype=torch.long),
            "completion_mask": completion_mask,
            "ref_chosen_logps": torch.tensor([d["reference_chosen_logps"][i]]),
            "ref_rejected_logps": torch.tensor([d["reference_rejected_logps"][i]]),
        }
        loss = DPOTrainer._compute_loss(trainer, model, inputs, False).item()
        m = trainer._metrics["train"]
        return loss, m["rewards/chosen"][0], m["rewards/rejected"][0]

    worst = 0.0
    for i in range(len(d["chosen_tokens"])):
        loss, rc, rr = trl_loss("sigmoid", i)
        worst = max(worst, abs(loss - d["sigmoid"]["losses"][i]), abs(rc - d["sigmoid"]["chosen_rewards"][i]),
                    abs(rr - d["sigmoid"]["rejected_rewards"][i]))
        worst = max(worst, abs(trl_loss("ipo", i)[0] - d["ipo"]["losses"][i]))
    assert worst < 1e-12, f"golden DPO/IPO differ from TRL's DPOTrainer._compute_loss by {worst}"
    print(f"dpo/ipo: TRL DPOTrainer._compute_loss agrees (max abs diff {worst:.1e})", file=sys.stderr)


B, T = 3, 5
LENGTHS = [5, 3, 1]
MASK = torch.tensor([[1 if t < L else 0 for t in range(T)] for L in LENGTHS], dtype=torch.long)


def gae_section(g):
    gamma, lam = 1.0, 0.95
    mask = MASK.to(torch.float64)
    rewards = rnd(torch.randn(B, T, generator=g) * 0.5) * mask
    values = rnd(torch.randn(B, T, generator=g) * 0.5) * mask
    # TRL v1.9.0 ppo_trainer.py:787-798
    lastgaelam = 0
    advantages_reversed = []
    gen_length = T
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    whitened = masked_whiten(advantages, mask.bool())
    whitened = torch.masked_fill(whitened, ~mask.bool(), 0)
    return {
        "gamma": gamma,
        "lam": lam,
        "rewards": rewards.tolist(),
        "values": values.tolist(),
        "mask": MASK.tolist(),
        "advantages": advantages.tolist(),
        "returns": returns.tolist(),
        "whitened": whitened.tolist(),
    }


def ppo_section(g):
    cliprange, cliprange_value, vf_coef = 0.2, 0.2, 0.1
    m = MASK.bool()
    old_logprobs = rnd(-(torch.rand(B, T, generator=g) * 4 + 0.1))
    logprobs = rnd(old_logprobs + torch.randn(B, T, generator=g) * 0.35)
    advantages = rnd(torch.randn(B, T, generator=g))
    old_values = rnd(torch.randn(B, T, generator=g) * 0.5)
    vpred = rnd(old_values + torch.randn(B, T, generator=g) * 0.3)
    returns = rnd(old_values + torch.randn(B, T, generator=g) * 0.5)
    # What TRL holds at padding (v1.9.0 ppo_trainer.py:765-769, 798, 824-828: logprobs INVALID_LOGPROB, values/vpred 0)
    logprobs = logprobs.masked_fill(~m, INVALID_LOGPROB)
    old_logprobs = old_logprobs.masked_fill(~m, INVALID_LOGPROB)
    advantages = advantages.masked_fill(~m, 0)
    old_values = old_values.masked_fill(~m, 0)
    vpred = vpred.masked_fill(~m, 0)
    returns = returns.masked_fill(~m, 0)

    # TRL v1.9.0 ppo_trainer.py:829-854 (one mask for policy and value terms, see docstring)
    vpredclipped = torch.clamp(vpred, old_values - cliprange_value, old_values + cliprange_value)
    vf_losses1 = torch.square(vpred - returns)
    vf_losses2 = torch.square(vpredclipped - returns)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * masked_mean(vf_loss_max, m)
    vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).to(torch.float64), m)
    logprobs_diff = logprobs - old_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = masked_mean(pg_loss_max, m)
    loss = pg_loss + vf_coef * vf_loss
    pg_clipfrac = masked_mean((pg_losses2 > pg_losses).to(torch.float64), m)

    # The fixture must exercise both clips (and not clip everything).
    assert 0 < pg_clipfrac.item() < 1, pg_clipfrac
    assert 0 < vf_clipfrac.item() < 1, vf_clipfrac
    assert (logprobs_diff[m].abs() > 0.3).any()
    assert ((vpred - old_values)[m].abs() > cliprange_value).any()
    return {
        "cliprange": cliprange,
        "cliprange_value": cliprange_value,
        "vf_coef": vf_coef,
        "logprobs": logprobs.tolist(),
        "old_logprobs": old_logprobs.tolist(),
        "advantages": advantages.tolist(),
        "mask": MASK.tolist(),
        "vpred": vpred.tolist(),
        "old_values": old_values.tolist(),
        "returns": returns.tolist(),
        "pg_loss": pg_loss.item(),
        "pg_clipfrac": pg_clipfrac.item(),
        "vf_loss": vf_loss.item(),
        "vf_clipfrac": vf_clipfrac.item(),
        "loss": loss.item(),
    }


def grpo_section():
    G = 4
    rewards = torch.tensor([
        0.9, 0.1, 0.4, 0.75,     # mixed
        0.5, 0.5, 0.5, 0.5,      # all equal: std 0, advantages 0
        1.0, 0.0, 0.0, 1.0,      # binary (pass/fail) rewards
    ])
    # trl/trainer/grpo_trainer.py:2765-2787 (TRL 1.16.0)
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, G), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(G, dim=0)
    std_rewards = nanstd(rewards.view(-1, G), dim=1)
    std_rewards = std_rewards.repeat_interleave(G, dim=0)
    advantages_unscaled = rewards - mean_grouped_rewards          # scale_rewards="none"
    advantages_scaled = advantages_unscaled / (std_rewards + 1e-4)  # scale_rewards="group" (default)
    # nanstd is the unbiased std: check against torch's
    assert torch.allclose(std_rewards.view(-1, G)[:, 0], rewards.view(-1, G).std(1, unbiased=True))
    return {
        "group_size": G,
        "rewards": rewards.tolist(),
        "advantages_scaled": advantages_scaled.tolist(),
        "advantages_unscaled": advantages_unscaled.tolist(),
    }


def main():
    g = torch.Generator().manual_seed(0)
    golden = {
        "dpo": dpo_section(g),
        "gae": gae_section(g),
        "ppo": ppo_section(g),
        "grpo": grpo_section(),
    }
    check_dpo_against_trl(golden["dpo"])
    os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT} (trl {metadata.version('trl')}, torch {torch.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
