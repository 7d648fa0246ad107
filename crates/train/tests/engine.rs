#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! The engine on a toy objective (linear regression) whose anomalies and
//! validation curve the tests script, and AdamW against closed forms.

use forja_core::artifacts::Artifact;
use forja_core::stage::StageCtx;
use forja_core::{MetricRow, TokenRow};
use forja_train::optim::lr_at;
use forja_train::{
    AdamW, DiagnosisConfig, Engine, EngineConfig, EngineOutputs, EvalScore, EvalSplit, IncidentKind, Objective, OptimConfig, OptimKind,
    ParamGroup, Policy, RunSpec, Schedule, TrainSummary,
};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// libtorch's RNG is global to the process: tests that seed it run one at a time.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy)]
enum Inject {
    Nan,
    Spike,
    /// Same loss value, gradient 1000× larger.
    Explode,
}

/// y = x·w* + noise-free, w* = [1, -2, 3, 0.5]; the model is `lin.weight` [4, 1]
/// and `lin.bias` [1].
struct Toy {
    w: Tensor,
    b: Tensor,
    inject: BTreeMap<u64, Inject>,
    /// Validation losses returned in turn, one per evaluation (when empty: the real loss).
    val_script: Vec<f64>,
    evals: usize,
}

impl Toy {
    fn new(vs: &nn::VarStore) -> Self {
        let root = vs.root() / "lin";
        Self {
            w: root.var("weight", &[4, 1], nn::Init::Const(0.0)),
            b: root.var("bias", &[1], nn::Init::Const(0.0)),
            inject: BTreeMap::new(),
            val_script: Vec::new(),
            evals: 0,
        }
    }

    fn batch(step: u64) -> (Tensor, Tensor) {
        let x = (Tensor::arange(32, (Kind::Float, Device::Cpu)).view([8, 4]) + step as f64).sin(); // [8, 4]
        let w_true = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).view([4, 1]);
        let y = x.matmul(&w_true); // [8, 1]
        (x, y)
    }

    fn loss_of(&self, step: u64) -> Tensor {
        let (x, y) = Self::batch(step);
        (x.matmul(&self.w) + &self.b - y).square().mean(Kind::Float)
    }
}

impl Objective for Toy {
    fn train_loss(&mut self, step: u64, _micro: u64) -> anyhow::Result<Tensor> {
        let loss = self.loss_of(step);
        Ok(match self.inject.get(&step) {
            Some(Inject::Nan) => loss * f64::NAN,
            Some(Inject::Spike) => loss * 1000.0 + 1000.0,
            Some(Inject::Explode) => &loss + (&self.w - self.w.detach()).sum(Kind::Float) * 1000.0,
            None => loss,
        })
    }

    fn eval_batch(&mut self, split: EvalSplit, i: u64) -> anyhow::Result<EvalScore> {
        if split == EvalSplit::Val && !self.val_script.is_empty() {
            let loss = self.val_script[self.evals];
            self.evals += 1;
            return Ok(EvalScore { loss, metrics: Vec::new() });
        }
        let real = self.loss_of(100 + i).double_value(&[]);
        Ok(EvalScore { loss: real, metrics: vec![("toy_metric", 1.0)] })
    }

    fn write_model(&self, vs: &nn::VarStore, dir: &Path) -> anyhow::Result<()> {
        vs.save(dir.join("model.safetensors"))?;
        Ok(())
    }

    fn batch_rows(&self, step: u64, _micro: u64) -> anyhow::Result<Vec<TokenRow>> {
        Ok(vec![TokenRow { doc_id: format!("step{step}"), ids: vec![step as u32] }])
    }

    fn tokens_per_micro(&self) -> f64 {
        8.0
    }
}

fn ctx() -> StageCtx {
    StageCtx { name: "toy".into(), seed: 1, device: "cpu".into(), config_hash: "t".into(), code_hash: "t" }
}

fn outputs(dir: &Path) -> EngineOutputs {
    EngineOutputs {
        model: dir.join("model"),
        metrics: dir.join("metrics.arrow"),
        plot: dir.join("loss.svg"),
        grad_plot: dir.join("grad_norms.svg"),
        report: dir.join("report.md"),
    }
}

fn cfg(policy: Policy) -> EngineConfig {
    EngineConfig {
        optim: OptimConfig { lr: 0.05, min_lr: 0.05, warmup_steps: 0, weight_decay: 0.0, grad_clip: 0.0, ..Default::default() },
        max_steps: 30,
        eval_interval: 10,
        eval_iters: 1,
        checkpoint_interval: 5,
        log_interval: 5,
        diagnosis: DiagnosisConfig { policy, warmup_steps: 3, ..Default::default() },
        ..Default::default()
    }
}

/// Trains `obj` in `dir` with `cfg`; returns the summary or the error.
fn train(cfg: &EngineConfig, dir: &Path, make: impl FnOnce(&nn::VarStore) -> Box<dyn Objective>) -> anyhow::Result<TrainSummary> {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut obj = make(&vs);
    let groups = ParamGroup::decay_split(&vs, cfg.optim.weight_decay);
    let ctx = ctx();
    let mut engine = Engine::new(cfg, &mut vs, groups, RunSpec { seed: 1, run_key: "key".into(), ctx: &ctx, out_dir: dir })?;
    engine.run(obj.as_mut(), &outputs(dir), &mut |_| ControlFlow::Continue(()))
}

fn final_weight(dir: &Path) -> Vec<f32> {
    let t = Tensor::read_safetensors(dir.join("model/model.safetensors")).unwrap();
    let w = &t.iter().find(|(n, _)| n == "lin.weight").unwrap().1;
    Vec::<f32>::try_from(&w.view([-1])).unwrap()
}

#[test]
fn the_loss_falls_and_the_outputs_are_written() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = train(&cfg(Policy::Skip), dir.path(), |vs| Box::new(Toy::new(vs))).unwrap();
    assert_eq!(s.steps, 30);
    assert!(s.incidents.is_empty(), "{:?}", s.incidents);
    let m = MetricRow::read(&dir.path().join("metrics.arrow")).unwrap();
    let batch: Vec<f64> = m.iter().filter(|r| r.name == "batch_loss").map(|r| r.value).collect();
    assert!(batch[29] < 0.2 * batch[0], "first {} last {}", batch[0], batch[29]);
    assert!(m.iter().any(|r| r.name == "layer_grad_norm" && r.split == "lin" && r.step == 5), "per-layer gradient norms are logged");
    assert!(m.iter().any(|r| r.name == "toy_metric" && r.split == "val"), "objective metrics are recorded");
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("| steps | 30 |") && report.contains("None: every step"), "{report}");
    assert!(std::fs::read_to_string(dir.path().join("loss.svg")).unwrap().contains("<polyline"));
    let grads = std::fs::read_to_string(dir.path().join("grad_norms.svg")).unwrap();
    assert!(grads.contains("<polyline") && grads.contains(">lin</text>"), "one line per layer, labelled");
}

#[test]
fn early_stopping_exports_the_best_weights_not_the_last() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = EngineConfig { eval_interval: 5, early_stopping_patience: 2, max_steps: 40, ..cfg(Policy::Skip) };
    // Validations at 5, 10 (best), 15, 20: patience 2 stops at 20.
    let s = train(&c, dir.path(), |vs| {
        let mut toy = Toy::new(vs);
        toy.val_script = vec![3.0, 1.0, 2.0, 2.5, 9.0];
        Box::new(toy)
    })
    .unwrap();
    assert!(s.early_stopped);
    assert_eq!((s.steps, s.best_step, s.best_val_loss), (20, Some(10), 1.0));
    // The weights at step 10: the same run stopped there.
    let at10 = tempfile::tempdir().unwrap();
    let c10 = EngineConfig { max_steps: 10, keep_best: false, ..c.clone() };
    train(&c10, at10.path(), |vs| {
        let mut toy = Toy::new(vs);
        toy.val_script = vec![3.0, 1.0];
        Box::new(toy)
    })
    .unwrap();
    assert_eq!(final_weight(dir.path()), final_weight(at10.path()));
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("best validation (step 10)"), "{report}");
}

fn toy_with(inject: &[(u64, Inject)]) -> impl FnOnce(&nn::VarStore) -> Box<dyn Objective> + '_ {
    move |vs| {
        let mut toy = Toy::new(vs);
        toy.inject = inject.iter().copied().collect();
        Box::new(toy)
    }
}

#[test]
fn skip_drops_a_nan_batch_and_a_spike_and_trains_on() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = train(&cfg(Policy::Skip), dir.path(), toy_with(&[(7, Inject::Nan), (15, Inject::Spike)])).unwrap();
    assert_eq!(s.steps, 30);
    let kinds: Vec<(u64, IncidentKind)> = s.incidents.iter().map(|i| (i.step, i.kind)).collect();
    assert_eq!(kinds, vec![(8, IncidentKind::NonFiniteLoss), (16, IncidentKind::LossSpike)]);
    assert!(s.incidents.iter().all(|i| i.layer.as_deref() == Some("lin")), "{:?}", s.incidents);
    assert!(final_weight(dir.path()).iter().all(|w| w.is_finite()));
    let saved = TokenRow::read(&dir.path().join("incidents/step-000008.tokens.arrow")).unwrap();
    assert_eq!(saved[0].ids, vec![7], "the offending batch is saved");
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("| 8 | non_finite_loss | lin |") && report.contains("| 16 | loss_spike | lin |"), "{report}");
    let m = MetricRow::read(&dir.path().join("metrics.arrow")).unwrap();
    assert_eq!(m.iter().filter(|r| r.name == "incident").count(), 2);
    assert!(!m.iter().any(|r| r.name == "batch_loss" && r.step == 8), "no update at the skipped step");
}

#[test]
fn an_exploding_gradient_with_a_normal_loss_is_caught() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = train(&cfg(Policy::Skip), dir.path(), toy_with(&[(9, Inject::Explode)])).unwrap();
    let kinds: Vec<(u64, IncidentKind)> = s.incidents.iter().map(|i| (i.step, i.kind)).collect();
    assert_eq!(kinds, vec![(10, IncidentKind::ExplodingGradient)]);
    let i = &s.incidents[0];
    assert!(i.value > 20.0 * i.reference.unwrap(), "{i:?}");
    assert_eq!(i.layer.as_deref(), Some("lin"));
}

#[test]
fn rollback_restores_the_checkpoint_lowers_the_rate_and_skips_the_batch() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = train(&cfg(Policy::Rollback), dir.path(), toy_with(&[(12, Inject::Spike)])).unwrap();
    assert_eq!(s.steps, 30);
    assert_eq!(s.incidents.len(), 1, "{:?}", s.incidents);
    assert_eq!(s.incidents[0].kind, IncidentKind::LossSpike);
    assert!(s.incidents[0].action.contains("rolled back"));
    let m = MetricRow::read(&dir.path().join("metrics.arrow")).unwrap();
    let lr_at = |step: u64| m.iter().find(|r| r.name == "lr" && r.step == step).map(|r| r.value);
    assert_eq!(lr_at(10), Some(0.05));
    assert_eq!(lr_at(11), Some(0.025), "steps after the rollback (to step 10) run at half the rate");
    assert_eq!(lr_at(13), None, "the offending batch (step 13) is skipped");
    assert_eq!(m.iter().filter(|r| r.name == "batch_loss" && r.step == 11).count(), 1, "the rolled-back steps are not doubled");
    assert!(final_weight(dir.path()).iter().all(|w| w.is_finite()));
}

#[test]
fn stop_ends_the_stage_with_an_error_naming_the_step_and_layer() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let err = train(&cfg(Policy::Stop), dir.path(), toy_with(&[(4, Inject::Nan)])).unwrap_err().to_string();
    assert!(err.contains("step 5") && err.contains("non finite loss") && err.contains("layer `lin`"), "{err}");
    assert!(!dir.path().join("model").exists());
    assert!(dir.path().join("incidents/incidents.json").exists());
}

#[test]
fn adamw_matches_pytorch_on_a_constant_gradient() {
    // With a constant gradient, Adam's bias-corrected step is lr * sign(g); decoupled
    // decay multiplies by (1 - lr * wd) first. Two steps from p = [1, -2] (a matrix):
    // 1 * 0.99 - 0.1 = 0.89, 0.89 * 0.99 - 0.1 = 0.7811; -2 * 0.99 - 0.1 = -2.08, -2.1592.
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root().var("w", &[1, 2], nn::Init::Const(0.0));
    tch::no_grad(|| p.shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, -2.0]).view([1, 2])));
    let mut opt = AdamW::new(ParamGroup::decay_split(&vs, 0.1)).unwrap();
    let cfg = OptimConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, ..Default::default() };
    for _ in 0..2 {
        let loss = (&p * Tensor::from_slice(&[0.5f32, 0.25]).view([1, 2])).sum(Kind::Float);
        loss.backward();
        opt.step(&cfg, cfg.lr);
        opt.zero_grad();
    }
    let got = Vec::<f32>::try_from(&p.view([-1])).unwrap();
    assert!((got[0] - 0.7811).abs() < 1e-4 && (got[1] + 2.1592).abs() < 1e-4, "{got:?}");
}

#[test]
fn a_zero_learning_rate_leaves_the_weights_as_they_are() {
    // A schedule may end at min_lr 0, and a zero rate is how one evaluates
    // through a trainer: the update must be a no-op, not 0 / 0 = NaN where a
    // gradient is zero.
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root().var("w", &[1, 2], nn::Init::Const(1.0));
    let mut opt = AdamW::new(ParamGroup::decay_split(&vs, 0.1)).unwrap();
    let cfg = OptimConfig { lr: 0.0, ..Default::default() };
    for _ in 0..2 {
        (&p * Tensor::from_slice(&[0.5f32, 0.0]).view([1, 2])).sum(Kind::Float).backward();
        opt.step(&cfg, 0.0);
        opt.zero_grad();
    }
    assert_eq!(Vec::<f32>::try_from(&p.view([-1])).unwrap(), [1.0, 1.0]);
}

#[test]
fn parameter_groups_have_their_own_rate_and_decay_and_the_rest_stays_frozen() {
    let vs = nn::VarStore::new(Device::Cpu);
    let a = vs.root().var("a", &[1, 1], nn::Init::Const(1.0));
    let b = vs.root().var("b", &[1, 1], nn::Init::Const(1.0));
    let frozen = vs.root().var("frozen", &[1, 1], nn::Init::Const(1.0));
    let groups = vec![
        ParamGroup { name: "a".into(), params: vec![("a".into(), a.shallow_clone())], lr_scale: 1.0, weight_decay: 0.0, muon: false },
        ParamGroup { name: "b".into(), params: vec![("b".into(), b.shallow_clone())], lr_scale: 10.0, weight_decay: 0.5, muon: false },
    ];
    let mut opt = AdamW::new(groups).unwrap();
    assert_eq!(opt.numel(), 2);
    let cfg = OptimConfig { lr: 0.01, ..Default::default() };
    ((&a + &b + &frozen).sum(Kind::Float)).backward();
    opt.step(&cfg, cfg.lr);
    // a: 1 - 0.01; b: 1 * (1 - 0.1 * 0.5) - 0.1.
    assert!((a.double_value(&[0, 0]) - 0.99).abs() < 1e-6);
    assert!((b.double_value(&[0, 0]) - 0.85).abs() < 1e-6, "{}", b.double_value(&[0, 0]));
    assert_eq!(frozen.double_value(&[0, 0]), 1.0);
    assert!(
        AdamW::new(vec![ParamGroup::all("x", vec![("a".into(), a.shallow_clone()), ("a".into(), a)], 0.0)]).is_err(),
        "a parameter twice"
    );
}

#[test]
fn gradient_clipping_bounds_the_global_norm() {
    let vs = nn::VarStore::new(Device::Cpu);
    let a = vs.root().var("a", &[2], nn::Init::Const(1.0));
    let b = vs.root().var("b", &[1], nn::Init::Const(1.0));
    let mut opt = AdamW::new(ParamGroup::decay_split(&vs, 0.0)).unwrap();
    ((&a * 3.0).sum(Kind::Float) + (&b * 4.0).sum(Kind::Float)).backward();
    let norm = opt.clip_grad_norm(1.0);
    assert!((norm - (9.0f64 + 9.0 + 16.0).sqrt()).abs() < 1e-5, "{norm}");
    let after = (a.grad().square().sum(Kind::Float) + b.grad().square().sum(Kind::Float)).sqrt().double_value(&[]);
    assert!((after - 1.0).abs() < 1e-4, "{after}");
    let per = opt.param_grad_norms().unwrap();
    assert_eq!(opt.param_names(), vec!["a", "b"]);
    assert!((per[0] - 3.0 * 2f64.sqrt() / norm).abs() < 1e-4 && (per[1] - 4.0 / norm).abs() < 1e-4, "{per:?}");
}

#[test]
fn learning_rate_warms_up_then_decays_to_the_floor() {
    let cfg = OptimConfig { lr: 1.0, min_lr: 0.1, warmup_steps: 10, ..Default::default() };
    assert!((lr_at(&cfg, 0, 100) - 1.0 / 11.0).abs() < 1e-12);
    assert!((lr_at(&cfg, 10, 100) - 1.0).abs() < 1e-12);
    assert!((lr_at(&cfg, 55, 100) - 0.55).abs() < 1e-12, "halfway: the mean of lr and min_lr");
    assert!((lr_at(&cfg, 100, 100) - 0.1).abs() < 1e-12);
    assert_eq!(lr_at(&cfg, 500, 100), 0.1);
}

#[test]
fn the_thread_setting_of_a_stage_does_not_leak() {
    let before = tch::get_num_threads();
    {
        let _g = forja_train::ThreadsGuard::set(1);
        assert_eq!(tch::get_num_threads(), 1);
    }
    assert_eq!(tch::get_num_threads(), before);
}

#[test]
fn a_layer_whose_gradient_vanishes_is_reported_once_and_training_goes_on() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = train(&cfg(Policy::Stop), dir.path(), |vs| {
        // A parameter the loss never touches: its gradient is zero.
        let _dead = (vs.root() / "dead").var("weight", &[3, 3], nn::Init::Const(0.5));
        Box::new(Toy::new(vs))
    })
    .unwrap();
    assert_eq!(s.steps, 30, "a vanishing gradient is reported, not acted on");
    let vanishing: Vec<_> = s.incidents.iter().filter(|i| i.kind == IncidentKind::VanishingGradient).collect();
    assert_eq!(vanishing.len(), 1, "{:?}", s.incidents);
    assert_eq!((vanishing[0].step, vanishing[0].layer.as_deref()), (5, Some("dead")));
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("| 5 | vanishing_gradient | dead |"), "{report}");
}

/// A `[rows, cols]` matrix of `values` as nested JSON.
fn json_matrix(t: &Tensor) -> serde_json::Value {
    let (r, c) = t.size2().unwrap();
    let flat = Vec::<f32>::try_from(&t.reshape([-1])).unwrap();
    serde_json::json!((0..r as usize).map(|i| flat[i * c as usize..(i + 1) * c as usize].to_vec()).collect::<Vec<_>>())
}

#[test]
fn muon_updates_hidden_matrices_as_the_reference_and_adamw_the_rest() {
    let _g = serial();
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    // A wide and a tall matrix inside a block (Muon), an embedding and a bias (AdamW).
    let wide = (&root / "model" / "layers" / 0 / "q_proj").var("weight", &[4, 12], nn::Init::Randn { mean: 0.0, stdev: 0.5 });
    let tall = (&root / "model" / "layers" / 0 / "down_proj").var("weight", &[12, 4], nn::Init::Randn { mean: 0.0, stdev: 0.5 });
    let emb = (&root / "model" / "embed_tokens").var("weight", &[6, 4], nn::Init::Randn { mean: 0.0, stdev: 0.5 });
    let bias = (&root / "model" / "layers" / 0).var("bias", &[4], nn::Init::Const(0.5));
    let cfg = OptimConfig { kind: OptimKind::Muon, lr: 0.01, muon_lr: 0.05, muon_weight_decay: 0.1, ..Default::default() };
    let groups = ParamGroup::for_optimizer(ParamGroup::decay_split(&vs, 0.0), &cfg);
    let muon: Vec<Vec<&str>> = groups.iter().filter(|g| g.muon).map(|g| g.params.iter().map(|(n, _)| n.as_str()).collect()).collect();
    assert_eq!(muon, vec![vec!["model.layers.0.down_proj.weight", "model.layers.0.q_proj.weight"]]);
    let start = [wide.copy(), tall.copy()];
    let (emb0, bias0) = (emb.copy(), bias.copy());
    let mut opt = AdamW::new(groups).unwrap();
    let mut grads = Vec::new();
    for step in 0..3 {
        let x = Tensor::randn([4], (Kind::Float, Device::Cpu));
        let loss = (wide.matmul(&Tensor::ones([12], (Kind::Float, Device::Cpu))) * &x).sum(Kind::Float)
            + (tall.matmul(&x) * (step + 1) as f64).square().sum(Kind::Float)
            + emb.sum(Kind::Float)
            + (&bias * &x).sum(Kind::Float);
        loss.backward();
        grads.push(vec![json_matrix(&wide.grad()), json_matrix(&tall.grad())]);
        opt.step(&cfg, cfg.lr);
        opt.zero_grad();
    }
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in.json"), tmp.path().join("out.json"));
    let spec = serde_json::json!({
        "params": [json_matrix(&start[0]), json_matrix(&start[1])], "grads": grads,
        "lr": 0.05, "weight_decay": 0.1, "momentum": 0.95, "ns_steps": 5,
    });
    std::fs::write(&input, spec.to_string()).unwrap();
    let root_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root_dir.join(".venv/bin/python");
    let run = std::process::Command::new(&python)
        .arg(root_dir.join("scripts/checks/muon-check.py"))
        .args([&input, &output])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup --test)", python.display()));
    assert!(run.status.success(), "muon-check failed: {}", String::from_utf8_lossy(&run.stderr));
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(output).unwrap()).unwrap();
    for (i, p) in [&wide, &tall].into_iter().enumerate() {
        let rows: Vec<Vec<f32>> = serde_json::from_value(want["params"][i].clone()).unwrap();
        let want = Tensor::from_slice(&rows.concat()).view(p.size().as_slice());
        let d = (p - &want).abs().max().double_value(&[]);
        assert!(d < 1e-5, "matrix {i}: max |forja - reference Muon| = {d}");
        assert!((p - &start[i]).abs().max().double_value(&[]) > 1e-2, "matrix {i} moved");
    }
    // AdamW moved the embedding by about lr per step (sign of a constant gradient).
    let moved = (&emb0 - &emb).mean(Kind::Float).double_value(&[]);
    assert!((moved - 0.03).abs() < 1e-3, "embedding moved {moved}");
    assert!((&bias0 - &bias).abs().max().double_value(&[]) > 1e-3);
    // The checkpointed state names Muon's buffers as such.
    let names: Vec<String> = opt.state_tensors(&mut |_, _| Ok(())).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.layers.0.q_proj.weight.momentum_buffer".to_string()), "{names:?}");
    assert!(names.contains(&"model.embed_tokens.weight.exp_avg_sq".to_string()), "{names:?}");
}

#[test]
fn newton_schulz_brings_singular_values_near_one() {
    let _g = serial();
    tch::manual_seed(9);
    // Rectangular (a random square matrix has singular values near zero that
    // five iterations do not lift, in the reference too).
    for shape in [[16i64, 48], [48, 16]] {
        let g = Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 3.0;
        let x = forja_train::optim::newton_schulz5(&g, 5);
        let (_, s, _) = x.svd(true, false);
        let (lo, hi) = (s.min().double_value(&[]), s.max().double_value(&[]));
        assert!(lo > 0.5 && hi < 1.3, "{shape:?}: singular values in [{lo}, {hi}]");
    }
}

#[test]
fn wsd_holds_the_rate_then_decays_linearly_over_the_last_share() {
    let cfg = OptimConfig { lr: 1.0, min_lr: 0.0, warmup_steps: 0, schedule: Schedule::Wsd, decay_frac: 0.2, ..Default::default() };
    assert_eq!(lr_at(&cfg, 0, 100), 1.0);
    assert_eq!(lr_at(&cfg, 79, 100), 1.0);
    assert!((lr_at(&cfg, 90, 100) - 0.5).abs() < 1e-12);
    assert_eq!(lr_at(&cfg, 100, 100), 0.0);
}

#[test]
fn sharded_muon_parts_hold_whole_matrices() {
    // Parameters of 100, 20, 300 and 80 scalars: parts cut only at their starts.
    let starts = [0i64, 100, 120, 420];
    let parts = forja_train::optim::shard_parts_at(500, 2, &starts);
    assert_eq!(parts, vec![(0, 120), (120, 380)], "the cut nearest to 250 among 0, 100, 120, 420");
    let parts = forja_train::optim::shard_parts_at(500, 3, &starts);
    assert_eq!(parts.iter().map(|p| p.1).sum::<i64>(), 500);
    assert!(parts.iter().all(|(lo, _)| starts.contains(lo) || *lo == 500), "{parts:?}");
}
