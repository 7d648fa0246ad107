//! forja's RLHF formulas against TRL's on fixed inputs: `fixtures/rlhf/golden.json`,
//! written by `scripts/fixtures/rlhf-golden.py` (tolerance 1e-5).

use forja_rlhf::losses::{self, DpoLoss, PairLogps};
use serde_json::Value;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-5;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/rlhf/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden.json")).expect("JSON")
}

fn vec1(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn t1(v: &Value) -> Tensor {
    Tensor::from_slice(&vec1(v))
}

fn t2(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = v.as_array().expect("rows").iter().map(vec1).collect();
    let cols = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat()).view([-1, cols])
}

fn close(got: &Tensor, want: &Tensor, what: &str) {
    let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs().max().double_value(&[]);
    assert!(diff < TOL, "{what}: max difference {diff:e} from TRL's\n got  {got}\n want {want}");
}

fn scalar(got: &Tensor, want: &Value, what: &str) {
    let (g, w) = (got.double_value(&[]), want.as_f64().expect("number"));
    assert!((g - w).abs() < TOL, "{what}: {g} vs TRL's {w}");
}

#[test]
fn dpo_and_ipo_losses_match_trl() {
    let g = golden();
    let d = &g["dpo"];
    let beta = d["beta"].as_f64().expect("beta");
    let (pc, pr, rc, rr) = (
        t1(&d["policy_chosen_logps"]),
        t1(&d["policy_rejected_logps"]),
        t1(&d["reference_chosen_logps"]),
        t1(&d["reference_rejected_logps"]),
    );
    let (lc, lr) = (t1(&d["chosen_tokens"]), t1(&d["rejected_tokens"]));
    let p = PairLogps {
        policy_chosen: &pc,
        policy_rejected: &pr,
        reference_chosen: &rc,
        reference_rejected: &rr,
        chosen_tokens: &lc,
        rejected_tokens: &lr,
    };
    let s = losses::dpo(DpoLoss::Sigmoid, beta, &p);
    close(&s.losses, &t1(&d["sigmoid"]["losses"]), "sigmoid losses");
    close(&s.chosen_rewards, &t1(&d["sigmoid"]["chosen_rewards"]), "chosen rewards");
    close(&s.rejected_rewards, &t1(&d["sigmoid"]["rejected_rewards"]), "rejected rewards");
    let ipo = losses::dpo(DpoLoss::Ipo, beta, &p);
    close(&ipo.losses, &t1(&d["ipo"]["losses"]), "ipo losses");
}

#[test]
fn gae_and_whitening_match_trl() {
    let g = golden();
    let a = &g["gae"];
    let (rewards, values, mask) = (t2(&a["rewards"]), t2(&a["values"]), t2(&a["mask"]));
    let (adv, ret) = losses::gae(&rewards, &values, a["gamma"].as_f64().expect("gamma"), a["lam"].as_f64().expect("lam"));
    close(&adv, &t2(&a["advantages"]), "advantages");
    close(&ret, &t2(&a["returns"]), "returns");
    close(&losses::masked_whiten(&adv, &mask), &t2(&a["whitened"]), "whitened advantages");
}

#[test]
fn ppo_losses_match_trl() {
    let g = golden();
    let p = &g["ppo"];
    let mask = t2(&p["mask"]);
    let (pg, pg_clip) =
        losses::ppo_policy(&t2(&p["logprobs"]), &t2(&p["old_logprobs"]), &t2(&p["advantages"]), &mask, p["cliprange"].as_f64().expect("c"));
    scalar(&pg, &p["pg_loss"], "pg_loss");
    scalar(&pg_clip, &p["pg_clipfrac"], "pg_clipfrac");
    let (vf, vf_clip) =
        losses::ppo_value(&t2(&p["vpred"]), &t2(&p["old_values"]), &t2(&p["returns"]), &mask, p["cliprange_value"].as_f64().expect("cv"));
    scalar(&vf, &p["vf_loss"], "vf_loss");
    scalar(&vf_clip, &p["vf_clipfrac"], "vf_clipfrac");
    scalar(&(pg + vf * p["vf_coef"].as_f64().expect("vf_coef")), &p["loss"], "loss");
}

#[test]
fn group_relative_advantages_match_trl() {
    let g = golden();
    let r = &g["grpo"];
    let rewards = vec1(&r["rewards"]);
    let group = r["group_size"].as_u64().expect("group") as usize;
    for (scale, key) in [(true, "advantages_scaled"), (false, "advantages_unscaled")] {
        let got = losses::group_advantages(&rewards, group, scale);
        for (i, (a, b)) in got.iter().zip(vec1(&r[key])).enumerate() {
            assert!((a - b).abs() < TOL, "{key}[{i}]: {a} vs TRL's {b}");
        }
    }
}
