#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use forja::pipeline::{load, parse, Override};
use forja::registry;
use forja::run::{run_plan, RunOptions};
use forja_core::artifacts::Artifact;
use forja_core::manifest::StageStatus;
use forja_core::{MetricRow, Reject};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_text() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tinyshakespeare/input.txt");
    std::fs::read_to_string(p).unwrap()[..40_000].to_string()
}

/// A tiny end-to-end pipeline over a slice of Tiny Shakespeare plus a JSONL file
/// with one bad line.
fn write_pipeline(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("corpus.txt"), fixture_text()).unwrap();
    std::fs::write(dir.join("extra.jsonl"), "{\"text\": \"KING: a line from jsonl\"}\n{broken\n").unwrap();
    let toml = r#"
[pipeline]
name = "tiny"
seed = 5

[[stage]]
name = "clean"
kind = "clean"
inputs = { files = ["corpus.txt", "*.jsonl"] }
# A table defined only by a dotted header parses (no [stage.params] before it).
[stage.params.split]
mode = "tail"
val_fraction = 0.1

[[stage]]
name = "tok"
kind = "train_tokenizer"
inputs = { corpus = ["@clean.train"] }
params = { kind = "char", special_tokens = [] }

[[stage]]
name = "ids"
kind = "tokenize"
inputs = { tokenizer = "@tok.tokenizer", train = "@clean.train", val = "@clean.val" }
params = { doc_separator = "\n\n" }

[[stage]]
name = "lm"
kind = "pretrain"
inputs = { tokenizer = "@tok.tokenizer", train = "@ids.train", val = "@ids.val" }
[stage.params]
model = { block_size = 16, n_layer = 1, n_head = 2, n_embd = 16 }
[stage.params.train]
batch_size = 4
max_steps = 6
eval_interval = 3
eval_iters = 2
checkpoint_interval = 3
threads = 1

[[stage]]
name = "eval"
kind = "eval"
inputs = { model = "@lm.model", split = "@ids.val" }
params = { max_tokens = 500, prompts = ["KING"], sampling = { max_new_tokens = 10 } }
"#;
    let path = dir.join("tiny.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn statuses(m: &forja_core::manifest::RunManifest) -> Vec<(String, StageStatus)> {
    m.stages.iter().map(|s| (s.name.clone(), s.status)).collect()
}

#[test]
fn a_pipeline_runs_end_to_end_then_skips_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_pipeline(dir.path());
    let reg = registry();
    let plan = load(&file, &reg, &[]).unwrap();
    let first = run_plan(&plan, &RunOptions::default()).unwrap();
    assert!(first.stages.iter().all(|s| s.status == StageStatus::Ran), "{:?}", statuses(&first));
    let out = dir.path().join("runs/tiny");
    assert!(out.join("manifest.json").exists() && out.join("report.md").exists());
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["stages"][3]["outputs"]["model"]["blake3"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["stages"][0]["inputs"].as_object().unwrap().len(), 2, "both input files hashed");

    let rejects = Reject::read(&out.join("clean/rejects.arrow")).unwrap();
    assert!(rejects.iter().any(|r| r.source.ends_with("extra.jsonl") && r.position == 2 && r.reason.starts_with("invalid JSON")));
    let metrics = MetricRow::read(&out.join("metrics.arrow")).unwrap();
    assert!(metrics.iter().any(|m| m.stage == "lm" && m.name == "loss" && m.split == "val" && m.step == 6));
    assert!(metrics.iter().any(|m| m.stage == "eval" && m.name == "perplexity" && m.value > 1.0));

    // Every stage's footprint is recorded, positive, and totalled in the report and the card.
    for s in &first.stages {
        let f = forja_meter::Footprint::read(&out.join(&s.name)).unwrap_or_else(|| panic!("{}: no footprint.json", s.name));
        assert!(f.wall_s > 0.0 && f.cpu_s > 0.0 && f.energy_wh > 0.0 && f.co2e_g > 0.0, "{f:?}");
        assert_eq!(f.kind, s.kind);
    }
    let lm_flops = forja_meter::Footprint::read(&out.join("lm")).unwrap().flops;
    assert!(lm_flops > 6.0 * 6.0 * 4.0 * 16.0 * 1000.0, "6 steps of 4×16 tokens through > 1000 parameters: {lm_flops}");
    assert!(metrics.iter().any(|m| m.stage == "lm" && m.name == "co2e_g" && m.value > 0.0));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Footprint") && report.contains("| **total** |") && report.contains("GPT-3"), "{report}");
    let card = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        card.contains("id=\"footprint\"") && card.contains("id=\"stage-lm\"") && card.contains("<svg"),
        "the card inlines the loss curves"
    );
    assert!(!card.contains("<script") && !card.contains("<img"), "no script, no external picture");
    // The card in headless Chromium: no console error, no script, no external
    // resource, every artifact link resolves (scripts/checks/card-page-check.py).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let check = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/checks/card-page-check.py"))
        .arg(out.join("report.html"))
        .args(["--expect", "Footprint", "--expect", "Overfitting", "--attributions"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success() && text.contains("card-page-check: ok"), "{text}");

    let second = run_plan(&load(&file, &reg, &[]).unwrap(), &RunOptions::default()).unwrap();
    assert!(second.stages.iter().all(|s| s.status == StageStatus::Skipped), "{:?}", statuses(&second));

    // A changed parameter reruns its stage and what depends on it, nothing upstream.
    let set: Override = "lm.train.max_steps=7".parse().unwrap();
    let third = run_plan(&load(&file, &reg, &[set]).unwrap(), &RunOptions::default()).unwrap();
    let ran: Vec<_> = third.stages.iter().filter(|s| s.status == StageStatus::Ran).map(|s| s.name.as_str()).collect();
    assert_eq!(ran, vec!["lm", "eval"]);

    // --force reruns a stage whose key is unchanged.
    let forced = RunOptions { force: ["tok".to_string()].into_iter().collect(), ..Default::default() };
    let fourth = run_plan(&load(&file, &reg, &[]).unwrap(), &forced).unwrap();
    assert_eq!(fourth.stages[1].status, StageStatus::Ran);
    assert_eq!(fourth.stages[0].status, StageStatus::Skipped);

    // A changed input file invalidates the cache: the key covers input contents.
    std::fs::write(dir.path().join("extra.jsonl"), "{\"text\": \"another line\"}\n").unwrap();
    let fifth = run_plan(&load(&file, &reg, &[]).unwrap(), &RunOptions::default()).unwrap();
    assert_eq!(fifth.stages[0].status, StageStatus::Ran);

    // A tampered output is noticed, and its stage reruns.
    std::fs::write(out.join("eval/report.md"), "edited").unwrap();
    let sixth = run_plan(&load(&file, &reg, &[]).unwrap(), &RunOptions::default()).unwrap();
    assert_eq!(sixth.stages.last().unwrap().status, StageStatus::Ran);
}

fn check_err(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "some text").unwrap();
    let file = dir.path().join("p.toml");
    match parse(&file, toml, &registry(), &[]) {
        Ok(_) => panic!("expected an error for:\n{toml}"),
        Err(e) => format!("{e:#}"),
    }
}

const HEAD: &str = "[pipeline]\nname = \"x\"\n";

#[test]
fn invalid_pipelines_are_refused_with_the_line() {
    let unknown_param = format!("{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"clean\"\ninputs = {{ files = [\"a.txt\"] }}\n[stage.params]\nsplit = {{ val_fraction = 0.1 }}\nmin_charz = 3\n");
    let e = check_err(&unknown_param);
    assert!(e.contains("p.toml:10:") && e.contains("unknown key `min_charz`"), "{e}");

    let unknown_kind = format!("{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"cleen\"\n");
    let e = check_err(&unknown_kind);
    assert!(e.contains("p.toml:6:") && e.contains("unknown stage kind `cleen`"), "{e}");

    let unknown_top = format!("{HEAD}colour = \"red\"\n");
    let e = check_err(&unknown_top);
    assert!(e.contains("p.toml:3:") && e.contains("unknown field `colour`"), "{e}");

    let missing_file = format!("{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"clean\"\ninputs = {{ files = [\"nope.txt\"] }}\n");
    let e = check_err(&missing_file);
    assert!(e.contains("p.toml:7:") && e.contains("nope.txt does not exist"), "{e}");

    let missing_input = format!("{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"clean\"\n");
    let e = check_err(&missing_input);
    assert!(e.contains("p.toml:4:") && e.contains("needs input `files`"), "{e}");

    let bad_ref = format!("{HEAD}\n[[stage]]\nname = \"t\"\nkind = \"train_tokenizer\"\ninputs = {{ corpus = [\"@clean.train\"] }}\n");
    let e = check_err(&bad_ref);
    assert!(e.contains("p.toml:7:") && e.contains("no stage named `clean`"), "{e}");

    let bad_output = format!("{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"clean\"\ninputs = {{ files = [\"a.txt\"] }}\n\n[[stage]]\nname = \"t\"\nkind = \"train_tokenizer\"\ninputs = {{ corpus = [\"@c.trian\"] }}\n");
    let e = check_err(&bad_output);
    assert!(e.contains("p.toml:12:") && e.contains("has no output `trian`"), "{e}");

    let cycle = format!(
        "{HEAD}\n[[stage]]\nname = \"a\"\nkind = \"sft_data\"\ninputs = {{ files = [\"@b.train\"] }}\n\n[[stage]]\nname = \"b\"\nkind = \"sft_data\"\ninputs = {{ files = [\"@a.train\"] }}\n"
    );
    let e = check_err(&cycle);
    assert!(e.contains("cycle among stages: a -> b"), "{e}");

    let bad_value = format!("{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"clean\"\ninputs = {{ files = [\"a.txt\"] }}\nparams = {{ read = {{ format = \"xml\" }} }}\n");
    let e = check_err(&bad_value);
    assert!(e.contains("p.toml:8:") && e.contains("unknown variant `xml`"), "{e}");
}

#[test]
fn check_reports_every_error_of_a_file_with_its_line() {
    let toml = format!(
        "{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"clean\"\ninputs = {{ files = [\"nope.txt\"] }}\n\n\
         [[stage]]\nname = \"k\"\nkind = \"cleen\"\n\n\
         [[stage]]\nname = \"t\"\nkind = \"train_tokenizer\"\ninputs = {{ corpus = [\"@c.trian\"] }}\n[stage.params]\nvocab_sise = 3\n"
    );
    let e = check_err(&toml);
    assert!(e.starts_with("4 errors:"), "{e}");
    for (line, what) in [
        ("p.toml:7:", "nope.txt does not exist"),
        ("p.toml:11:", "unknown stage kind `cleen`"),
        ("p.toml:16:", "has no output `trian`"),
        ("p.toml:18:", "unknown key `vocab_sise`"),
    ] {
        assert!(e.lines().any(|l| l.contains(line) && l.contains(what)), "missing `{line} … {what}` in:\n{e}");
    }
}

#[test]
fn an_input_of_the_wrong_kind_is_refused_naming_both_kinds() {
    let toml = format!(
        "{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"clean\"\ninputs = {{ files = [\"a.txt\"] }}\n\n\
         [[stage]]\nname = \"t\"\nkind = \"train_tokenizer\"\ninputs = {{ corpus = [\"@c.train\"] }}\n\n\
         [[stage]]\nname = \"lm\"\nkind = \"pretrain\"\ninputs = {{ tokenizer = \"@t.tokenizer\", train = \"@c.train\", val = \"@c.val\" }}\n"
    );
    let e = check_err(&toml);
    assert!(e.contains("p.toml:17:") && e.contains("input `train` of stage `lm` reads tokens, but `@c.train` is documents"), "{e}");
    assert!(e.contains("input `val` of stage `lm` reads tokens, but `@c.val` is documents"), "{e}");
    // Labeled documents are documents; a model folder is not a tokenizer.
    let toml = format!(
        "{HEAD}\n[[stage]]\nname = \"c\"\nkind = \"clean\"\ninputs = {{ files = [\"a.txt\"] }}\n\n\
         [[stage]]\nname = \"i\"\nkind = \"import_model\"\ninputs = {{ model = \"a.txt\" }}\n\n\
         [[stage]]\nname = \"ids\"\nkind = \"tokenize\"\ninputs = {{ tokenizer = \"@i.model\", train = \"@c.train\" }}\n"
    );
    let e = check_err(&toml);
    assert!(e.contains("input `tokenizer` of stage `ids` reads tokenizer, but `@i.model` is model folder"), "{e}");
    assert!(!e.contains("`@c.train`"), "documents feed tokenize: {e}");
}

#[test]
fn a_trainer_setting_under_its_old_key_names_the_new_one() {
    let toml = format!(
        "{HEAD}\n[[stage]]\nname = \"lm\"\nkind = \"pretrain\"\ninputs = {{ tokenizer = \"a.txt\", train = \"a.txt\", val = \"a.txt\" }}\n[stage.params]\nmax_steps = 5\n"
    );
    let e = check_err(&toml);
    assert!(e.contains("p.toml:9:") && e.contains("unknown key `max_steps` (it is now `train.max_steps`)"), "{e}");
    let toml = format!(
        "{HEAD}\n[[stage]]\nname = \"d\"\nkind = \"dpo\"\ninputs = {{ model = \"a.txt\", train = \"a.txt\" }}\n[stage.params]\nbeta = 0.2\nloop = {{ max_steps = 5 }}\n"
    );
    let e = check_err(&toml);
    assert!(e.contains("p.toml:10:") && e.contains("unknown key `loop` (it is now `train`)"), "{e}");
    let toml = format!(
        "{HEAD}\n[[stage]]\nname = \"d\"\nkind = \"sft\"\ninputs = {{ model = \"a.txt\", train = \"a.txt\" }}\n[stage.params.train]\nmax_step = 5\n"
    );
    let e = check_err(&toml);
    assert!(e.contains("p.toml:9:") && e.contains("max_step"), "{e}");
}

#[test]
fn stages_run_in_dependency_order_whatever_the_file_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "x").unwrap();
    let toml = format!("{HEAD}\n[[stage]]\nname = \"t\"\nkind = \"train_tokenizer\"\ninputs = {{ corpus = [\"@c.train\"] }}\n\n[[stage]]\nname = \"c\"\nkind = \"clean\"\ninputs = {{ files = [\"a.txt\"] }}\n");
    let plan = parse(&dir.path().join("p.toml"), &toml, &registry(), &[]).unwrap();
    let names: Vec<_> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["c", "t"]);
}

#[test]
fn overrides_parse_toml_values_and_name_existing_stages() {
    let o: Override = "lm.optim.lr=0.002".parse().unwrap();
    assert_eq!((o.stage.as_str(), o.path.clone(), o.value.as_float()), ("lm", vec!["optim".to_string(), "lr".to_string()], Some(0.002)));
    let s: Override = "clean.read.unit=line".parse().unwrap();
    assert_eq!(s.value.as_str(), Some("line"));
    assert!("noequals".parse::<Override>().is_err());
    assert!("nodot=1".parse::<Override>().is_err());
}

#[test]
fn the_binaries_report_errors_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[pipeline]\nname = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_forja")).args(["check", bad.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.toml:2:") && !stderr.contains("panicked"), "{stderr}");

    // `forja stage` runs one stage alone, like the stage binaries.
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"hello\"}\nnot json\n").unwrap();
    let out_dir = dir.path().join("clean");
    let out = Command::new(env!("CARGO_BIN_EXE_forja"))
        .args(["stage", "clean", "--input", &format!("files={}", input.display()), "--set", "split.val_fraction=0.0", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rejects = Reject::read(&out_dir.join("rejects.arrow")).unwrap();
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].position, 2);
}

#[test]
fn a_failing_stage_is_recorded_and_its_successors_do_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_pipeline(dir.path());
    let reg = registry();
    // A context longer than the validation split cannot be trained.
    let too_long: Override = "lm.model.block_size=100000".parse().unwrap();
    let err = run_plan(&load(&file, &reg, &[too_long]).unwrap(), &RunOptions::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("stage `lm` (pretrain) failed") && msg.contains("fewer than block_size + 1"), "{msg}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/tiny/manifest.json")).unwrap()).unwrap();
    let stages = manifest["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4, "eval never started");
    assert_eq!(stages[3]["status"], "failed");
    assert!(stages[3]["error"].as_str().unwrap().contains("block_size"));
    assert!(!dir.path().join("runs/tiny/eval").exists());

    // Fixed, the run reuses the stages that succeeded and runs the rest.
    let fixed = run_plan(&load(&file, &reg, &[]).unwrap(), &RunOptions::default()).unwrap();
    assert_eq!(
        statuses(&fixed).into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
        vec![StageStatus::Skipped, StageStatus::Skipped, StageStatus::Skipped, StageStatus::Ran, StageStatus::Ran]
    );
    assert!(dir.path().join("runs/tiny/lm/loss.svg").exists());
}

/// A stage whose run panics, as libtorch errors surface through tch.
struct Panics;

impl forja_core::stage::FromInputs for Panics {
    const SPECS: &'static [forja_core::stage::InputSpec] = &[];
    fn from_inputs(_: &forja_core::stage::StageInputs) -> anyhow::Result<Self> {
        Ok(Panics)
    }
    fn named_paths(&self) -> Vec<(&'static str, Option<&std::path::Path>)> {
        Vec::new()
    }
}

impl forja_core::stage::Stage for Panics {
    const KIND: &'static str = "panics";
    const ABOUT: &'static str = "panics when run";
    const OUTPUTS: &'static [forja_core::stage::OutputSpec] = &[forja_core::stage::outputs::REPORT];
    const CODE_HASH: &'static str = "test";
    type Params = serde_json::Value;
    type Inputs = Panics;

    fn run(
        &self,
        _: &serde_json::Value,
        _: &Panics,
        _: &forja_core::stage::OutDir,
        _: &forja_core::stage::StageCtx,
    ) -> anyhow::Result<Vec<forja_core::stage::OutputSpec>> {
        panic!("libtorch says no: shape '[2, 3]' is invalid for input of size 5");
    }
}

#[test]
fn a_stage_that_panics_is_recorded_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{HEAD}\n[[stage]]\nname = \"p\"\nkind = \"panics\"\n");
    let file = dir.path().join("p.toml");
    let registry: Vec<&'static dyn forja_core::stage::DynStage> = vec![&Panics];
    let plan = parse(&file, &toml, &registry, &[]).unwrap();
    let err = format!("{:#}", run_plan(&plan, &RunOptions::default()).unwrap_err());
    assert!(err.contains("stage `panics` panicked: libtorch says no"), "{err}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/x/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["stages"][0]["status"], "failed");
    assert!(manifest["stages"][0]["error"].as_str().unwrap().contains("shape '[2, 3]'"));
}

#[test]
fn every_trainer_takes_its_settings_under_train() {
    let trainers = ["pretrain", "sft", "finetune_classifier", "reward_model", "dpo", "ppo", "grpo"];
    for kind in trainers {
        let stage = *registry().iter().find(|s| s.kind() == kind).unwrap();
        let given = serde_json::json!({ "train": { "max_steps": 3, "optim": { "lr": 0.01 }, "threads": 1 } });
        stage.check(&given).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let defaults = stage.defaults().unwrap();
        assert!(defaults["train"]["max_steps"].is_u64() && defaults["train"]["optim"]["lr"].is_f64(), "{kind}: {defaults}");
        let old = stage.check(&serde_json::json!({ "max_steps": 3 })).expect_err(kind);
        assert_eq!(old.suggestion().as_deref(), Some("train.max_steps"), "{kind}: {old}");
    }
}
