//! What every stage shares: its declared inputs and outputs, the context a run
//! gives it, and the command line of the stage binaries.
//!
//! A stage kind implements [`Stage`] (typed parameters and inputs, declared
//! outputs, `run`); the orchestrator and the stage's own binary both reach it
//! through the one adapter [`DynStage`], so they cannot drift.

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What flows through a port: an Arrow artifact of one kind, or one of the
/// file and folder kinds stages hand each other. Every input and output
/// declares its kind, and `forja check` refuses an `@stage.output` reference
/// whose kind the input does not accept, before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// An Arrow IPC artifact of one kind.
    Artifact(crate::schema::ArtifactKind),
    /// Files a reader parses as the user gives them (text, JSONL, CSV, Parquet, `.gz`/`.zst`).
    Files,
    /// JSON lines written by a stage (judgements, pairs, duplicate clusters).
    Jsonl,
    /// One JSON document (class weights, shard information).
    Json,
    /// A `tokenizer.json`.
    Tokenizer,
    /// A model folder (`config.json`, safetensors weights, tokenizer).
    Model,
    /// A Markdown report.
    Markdown,
    /// An SVG picture.
    Svg,
    /// The output folder of a `clean_shard` run.
    ShardDir,
    /// A shard's MinHash signatures (binary).
    Signatures,
    /// A GGUF model file (llama.cpp, ollama).
    Gguf,
}

impl PortKind {
    /// The kind's name in messages and the stage reference.
    pub fn name(self) -> &'static str {
        match self {
            Self::Artifact(a) => a.name(),
            Self::Files => "files",
            Self::Jsonl => "jsonl",
            Self::Json => "json",
            Self::Tokenizer => "tokenizer",
            Self::Model => "model folder",
            Self::Markdown => "markdown",
            Self::Svg => "svg",
            Self::ShardDir => "shard folder",
            Self::Signatures => "signatures",
            Self::Gguf => "gguf",
        }
    }

    /// Whether an input of kind `self` can read an output of kind `output`:
    /// the same kind, labeled documents where documents are read, and JSON
    /// lines where user files are read.
    pub fn accepts(self, output: PortKind) -> bool {
        use crate::schema::ArtifactKind as A;
        self == output || matches!((self, output), (Self::Artifact(A::Documents), Self::Artifact(A::Labeled)) | (Self::Files, Self::Jsonl))
    }
}

/// Short names of the port kinds, for declarations (`train: one[TOKENS]`).
pub mod port {
    use super::PortKind;
    use crate::schema::ArtifactKind as A;
    pub const DOCUMENTS: PortKind = PortKind::Artifact(A::Documents);
    pub const LABELED: PortKind = PortKind::Artifact(A::Labeled);
    pub const REJECTS: PortKind = PortKind::Artifact(A::Rejects);
    pub const TOKENS: PortKind = PortKind::Artifact(A::Tokens);
    pub const METRICS: PortKind = PortKind::Artifact(A::Metrics);
    pub const GENERATIONS: PortKind = PortKind::Artifact(A::Generations);
    pub const EMBEDDINGS: PortKind = PortKind::Artifact(A::Embeddings);
    pub const SFT_EXAMPLES: PortKind = PortKind::Artifact(A::SftExamples);
    pub const PREFERENCES: PortKind = PortKind::Artifact(A::Preferences);
    pub const RATINGS: PortKind = PortKind::Artifact(A::Ratings);
    pub const PAIR_LOGPS: PortKind = PortKind::Artifact(A::PairLogps);
    pub const FILES: PortKind = PortKind::Files;
    pub const JSONL: PortKind = PortKind::Jsonl;
    pub const JSON: PortKind = PortKind::Json;
    pub const TOKENIZER: PortKind = PortKind::Tokenizer;
    pub const MODEL: PortKind = PortKind::Model;
    pub const MARKDOWN: PortKind = PortKind::Markdown;
    pub const SVG: PortKind = PortKind::Svg;
    pub const SHARD_DIR: PortKind = PortKind::ShardDir;
    pub const SIGNATURES: PortKind = PortKind::Signatures;
    pub const GGUF: PortKind = PortKind::Gguf;
}

/// One declared input of a stage.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    pub name: &'static str,
    pub required: bool,
    /// Whether the input takes several files (globs allowed).
    pub many: bool,
    /// The kinds of output it reads.
    pub kinds: &'static [PortKind],
}

impl InputSpec {
    /// Whether this input reads outputs of `kind`.
    pub fn accepts(&self, kind: PortKind) -> bool {
        self.kinds.iter().any(|k| k.accepts(kind))
    }

    /// The accepted kinds, for messages: `tokens` or `documents | labeled`.
    pub fn kinds_text(&self) -> String {
        self.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(" | ")
    }
}

/// One declared output: a file or folder inside the stage's output folder.
/// A stage declares each output once, as a constant, and writes to
/// [`OutDir::path`] of that constant, so the name and the file cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSpec {
    pub name: &'static str,
    pub path: &'static str,
    pub kind: PortKind,
}

/// Outputs that the orchestrator reads across stages (run metrics, report links).
pub mod outputs {
    use super::OutputSpec;
    /// A `metrics` artifact; the run concatenates every stage's.
    pub const METRICS: OutputSpec = OutputSpec { name: "metrics", path: "metrics.arrow", kind: super::port::METRICS };
    /// A Markdown report, linked from the run report.
    pub const REPORT: OutputSpec = OutputSpec { name: "report", path: "report.md", kind: super::port::MARKDOWN };
    /// Loss curves as SVG, linked from the run report.
    pub const PLOT: OutputSpec = OutputSpec { name: "plot", path: "loss.svg", kind: super::port::SVG };
}

/// What a run tells a stage.
#[derive(Debug, Clone)]
pub struct StageCtx {
    /// The stage's name in the pipeline (written into metrics and artifact metadata).
    pub name: String,
    pub seed: u64,
    /// `cpu` or `cuda` (or `cuda:N`).
    pub device: String,
    /// Hash of the stage's parameters, written into artifact metadata.
    pub config_hash: String,
    /// Hash of the code the stage runs (see [`Stage::CODE_HASH`]).
    pub code_hash: &'static str,
}

/// Resolved input paths by input name.
#[derive(Debug, Clone, Default)]
pub struct StageInputs(pub BTreeMap<String, Vec<PathBuf>>);

impl StageInputs {
    /// The single path of a required input.
    pub fn one(&self, name: &str) -> anyhow::Result<&Path> {
        match self.0.get(name).map(Vec::as_slice) {
            Some([p]) => Ok(p),
            Some([]) | None => bail!("missing input `{name}`"),
            Some(many) => bail!("input `{name}` takes one path, got {}", many.len()),
        }
    }

    /// The single path of an optional input.
    pub fn optional(&self, name: &str) -> anyhow::Result<Option<&Path>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(_) => self.one(name).map(Some),
        }
    }

    /// All paths of an input.
    pub fn many(&self, name: &str) -> &[PathBuf] {
        self.0.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A stage's typed inputs, built from the resolved paths. Declared with
/// [`stage_inputs!`](crate::stage_inputs), which writes each input's name once
/// and generates the declarations, the struct, this impl and the named paths.
pub trait FromInputs: Sized {
    /// The declared inputs, in order.
    const SPECS: &'static [InputSpec];
    fn from_inputs(inputs: &StageInputs) -> anyhow::Result<Self>;
    /// Every input's name and path(s) (`None` for an absent optional input), in
    /// declaration order: what a trainer's resume key hashes.
    fn named_paths(&self) -> Vec<(&'static str, Option<&Path>)>;
}

/// Declares a stage's inputs once: the struct of typed paths, its
/// [`FromInputs::SPECS`], `from_inputs` and `named_paths`. Each field is
/// `NAME: ARITY[KIND, ...]` with ARITY `one` (a required path), `optional`
/// (`Option<PathBuf>`) or `many` (a required list, globs allowed), and the
/// accepted kinds named from [`port`](crate::stage::port):
///
/// ```
/// forja_core::stage_inputs! {
///     /// Inputs of a trainer.
///     pub struct TrainInputs {
///         /// The tokenizer.
///         tokenizer: one[TOKENIZER],
///         train: one[TOKENS],
///         init: optional[MODEL],
///     }
/// }
/// ```
#[macro_export]
macro_rules! stage_inputs {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $arity:ident [ $($kind:ident),+ $(,)? ] ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: $crate::stage_inputs!(@ty $arity), )+
        }

        impl $crate::stage::FromInputs for $name {
            const SPECS: &'static [$crate::stage::InputSpec] = &[
                $( $crate::stage::InputSpec {
                    name: stringify!($field),
                    required: $crate::stage_inputs!(@required $arity),
                    many: $crate::stage_inputs!(@many $arity),
                    kinds: &[$($crate::stage::port::$kind),+],
                }, )+
            ];

            fn from_inputs(inputs: &$crate::stage::StageInputs) -> $crate::stage::InputResult<Self> {
                Ok(Self { $( $field: $crate::stage_inputs!(@get $arity, inputs, stringify!($field)), )+ })
            }

            fn named_paths(&self) -> Vec<(&'static str, Option<&std::path::Path>)> {
                let mut paths = Vec::new();
                $( $crate::stage_inputs!(@push $arity, paths, stringify!($field), self.$field); )+
                paths
            }
        }
    };
    (@ty one) => { std::path::PathBuf };
    (@ty optional) => { Option<std::path::PathBuf> };
    (@ty many) => { Vec<std::path::PathBuf> };
    (@required optional) => { false };
    (@required $other:ident) => { true };
    (@many many) => { true };
    (@many $other:ident) => { false };
    (@get one, $inputs:ident, $n:expr) => { $inputs.one($n)?.to_path_buf() };
    (@get optional, $inputs:ident, $n:expr) => { $inputs.optional($n)?.map(std::path::Path::to_path_buf) };
    (@get many, $inputs:ident, $n:expr) => { $inputs.many($n).to_vec() };
    (@push one, $v:ident, $n:expr, $f:expr) => { $v.push(($n, Some($f.as_path()))) };
    (@push optional, $v:ident, $n:expr, $f:expr) => { $v.push(($n, $f.as_deref())) };
    (@push many, $v:ident, $n:expr, $f:expr) => { $v.extend($f.iter().map(|p| ($n, Some(p.as_path())))) };
}

/// The result type of generated `from_inputs` (so stage crates need not name anyhow).
pub type InputResult<T> = anyhow::Result<T>;

/// The output folder of a running stage.
#[derive(Debug, Clone)]
pub struct OutDir {
    dir: PathBuf,
}

impl OutDir {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// Where a declared output lives.
    pub fn path(&self, spec: &OutputSpec) -> PathBuf {
        self.dir.join(spec.path)
    }

    /// The folder itself (for files that are not outputs: checkpoints, incidents).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A stage kind, typed: its parameters, its inputs, the outputs it declares,
/// and its entry point. [`DynStage`] adapts every `Stage` to the JSON/CLI side.
pub trait Stage: Send + Sync + 'static {
    const KIND: &'static str;
    const ABOUT: &'static str;
    const OUTPUTS: &'static [OutputSpec];
    /// Hash of the code this stage runs: its crate and the workspace crates it
    /// depends on, computed at build time (`forja-buildhash`). Keys the cache, so
    /// a rebuild that does not touch this code keeps the stage's results.
    const CODE_HASH: &'static str;
    /// The parameters. A stage's file or command line gives some of them; the
    /// rest keep the stage's own defaults, nested tables merged key by key
    /// ([`params::over`](crate::params::over)), so `train = { max_steps = 5 }`
    /// keeps the trainer's other `train` defaults.
    type Params: serde::de::DeserializeOwned + serde::Serialize + Default;
    type Inputs: FromInputs;
    /// Whether the stage trains on several ranks when a launcher starts it
    /// so (`torchrun`, `srun`, `forja run --nproc`): rank 0 writes the
    /// outputs; the others write into a scratch folder, removed after.
    const DISTRIBUTED: bool = false;

    /// Runs the stage; returns the outputs it wrote (every declared one).
    fn run(&self, params: &Self::Params, inputs: &Self::Inputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>>;
}

/// A stage seen from the JSON/CLI side (object-safe): parameters as JSON,
/// inputs as resolved paths. Implemented for every [`Stage`].
pub trait DynStage: Send + Sync {
    fn kind(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn inputs(&self) -> &'static [InputSpec];
    fn outputs(&self) -> &'static [OutputSpec];
    fn code_hash(&self) -> &'static str;
    /// Whether a launcher may start it as several ranks ([`Stage::DISTRIBUTED`]).
    fn distributed(&self) -> bool;
    /// The parameters' defaults (what an empty table means), for the stage reference.
    fn defaults(&self) -> Option<serde_json::Value>;
    /// Checks parameters without running (unknown keys, bad values), naming
    /// the key path of the problem.
    fn check(&self, params: &serde_json::Value) -> Result<(), crate::params::ParamError>;
    /// Runs the stage. A panic inside it (libtorch raises through panics) becomes
    /// an error, and every declared output must exist afterwards.
    /// `footprint` says how the stage's measured energy becomes CO2e.
    fn run_json(
        &self,
        params: &serde_json::Value,
        inputs: &StageInputs,
        out_dir: &Path,
        ctx: &StageCtx,
        footprint: &forja_meter::FootprintConfig,
    ) -> anyhow::Result<Vec<OutputSpec>>;
}

impl dyn DynStage {
    pub fn output_path(&self, out_dir: &Path, name: &str) -> Option<PathBuf> {
        self.outputs().iter().find(|o| o.name == name).map(|o| out_dir.join(o.path))
    }
}

impl<S: Stage> DynStage for S {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn about(&self) -> &'static str {
        S::ABOUT
    }
    fn inputs(&self) -> &'static [InputSpec] {
        <S::Inputs as FromInputs>::SPECS
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        S::OUTPUTS
    }
    fn code_hash(&self) -> &'static str {
        S::CODE_HASH
    }
    fn distributed(&self) -> bool {
        S::DISTRIBUTED
    }
    fn defaults(&self) -> Option<serde_json::Value> {
        serde_json::to_value(S::Params::default()).ok()
    }
    fn check(&self, params: &serde_json::Value) -> Result<(), crate::params::ParamError> {
        crate::params::over(&S::Params::default(), params.clone()).map(drop)
    }
    fn run_json(
        &self,
        params: &serde_json::Value,
        inputs: &StageInputs,
        out_dir: &Path,
        ctx: &StageCtx,
        footprint: &forja_meter::FootprintConfig,
    ) -> anyhow::Result<Vec<OutputSpec>> {
        let params: S::Params =
            crate::params::over(&S::Params::default(), params.clone()).with_context(|| format!("parameters of stage `{}`", S::KIND))?;
        let inputs = S::Inputs::from_inputs(inputs).with_context(|| format!("inputs of stage `{}`", S::KIND))?;
        let (rank, world) = crate::launch::Launch::rank_and_world();
        if world > 1 && !S::DISTRIBUTED {
            bail!("stage `{}` does not train on several ranks; run it once, without a launcher (this is rank {rank} of {world})", S::KIND);
        }
        if rank > 0 {
            return run_as_helper_rank(self, &params, &inputs, out_dir, ctx, rank);
        }
        let out = OutDir::new(out_dir);
        let ctx = StageCtx { code_hash: S::CODE_HASH, ..ctx.clone() };
        let meter = forja_meter::Meter::start();
        let written = run_caught(self, &params, &inputs, &out, &ctx)?;
        for spec in S::OUTPUTS {
            let path = out.path(spec);
            if !written.contains(spec) || !path.exists() {
                bail!("stage `{}` did not write its output `{}` ({})", S::KIND, spec.name, path.display());
            }
        }
        let footprint = meter.finish(&ctx.name, S::KIND, footprint);
        record_footprint(&footprint, &out, &ctx, &written)?;
        Ok(written)
    }
}

static SHARED_OUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The stage folder rank 0 writes, seen from a rank other than 0 (which
/// writes into a scratch folder of its own): where its training reads the
/// checkpoint every rank resumes from. `None` on rank 0 and alone.
pub fn shared_out_dir() -> Option<&'static Path> {
    SHARED_OUT.get().map(PathBuf::as_path)
}

/// A rank other than 0 trains as rank 0 does but keeps nothing: it writes
/// into `OUT/.ranks/RANK`, removed afterwards, and reads checkpoints from OUT.
fn run_as_helper_rank<S: Stage>(
    stage: &S,
    params: &S::Params,
    inputs: &S::Inputs,
    out_dir: &Path,
    ctx: &StageCtx,
    rank: usize,
) -> anyhow::Result<Vec<OutputSpec>> {
    let scratch = out_dir.join(".ranks").join(rank.to_string());
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| format!("clearing {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let _ = SHARED_OUT.set(out_dir.to_path_buf());
    let ctx = StageCtx { code_hash: S::CODE_HASH, ..ctx.clone() };
    let result = run_caught(stage, params, inputs, &OutDir::new(&scratch), &ctx);
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir(out_dir.join(".ranks")); // when no other rank is still in it
    result
}

/// Runs the stage; a panic inside it (libtorch raises through panics) becomes
/// an error naming the stage.
fn run_caught<S: Stage>(
    stage: &S,
    params: &S::Params,
    inputs: &S::Inputs,
    out: &OutDir,
    ctx: &StageCtx,
) -> anyhow::Result<Vec<OutputSpec>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.run(params, inputs, out, ctx))) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied());
            bail!("stage `{}` panicked: {}", S::KIND, msg.unwrap_or("(no message)"))
        }
    }
}

/// Writes a stage's footprint as `footprint.json` in its folder, as metric
/// rows (`wall_s`, `cpu_s`, `flops`, `energy_wh`, `co2e_g`; split `-`) when
/// it has a `metrics` output, and as a section of its report when it has one.
fn record_footprint(f: &forja_meter::Footprint, out: &OutDir, ctx: &StageCtx, written: &[OutputSpec]) -> anyhow::Result<()> {
    use crate::artifacts::Artifact;
    use crate::metric;
    crate::fsutil::atomic_write(&out.dir().join(forja_meter::FOOTPRINT_FILE), serde_json::to_string_pretty(f)?.as_bytes())?;
    if written.contains(&outputs::METRICS) {
        let path = out.path(&outputs::METRICS);
        let mut rows = crate::MetricRow::read(&path)?;
        let step = rows.iter().map(|r| r.step).max().unwrap_or(0);
        for (name, v) in [
            (metric::WALL_S, f.wall_s),
            (metric::CPU_S, f.cpu_s),
            (metric::FLOPS, f.flops),
            (metric::ENERGY_WH, f.energy_wh),
            (metric::CO2E_G, f.co2e_g),
        ] {
            rows.push(crate::MetricRow::new(&ctx.name, step, name, v, metric::split::NONE));
        }
        crate::MetricRow::write(&path, &ctx.name, &ctx.config_hash, &rows)?;
    }
    if written.contains(&outputs::REPORT) {
        let path = out.path(&outputs::REPORT);
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text += &footprint_markdown(f);
        crate::fsutil::atomic_write(&path, text.as_bytes())?;
    }
    Ok(())
}

/// The footprint section of a stage report.
pub fn footprint_markdown(f: &forja_meter::Footprint) -> String {
    format!(
        "\n## Footprint\n\n| wall time | CPU time | FLOPs | energy | CO2e |\n|---|---|---|---|---|\n| {:.2} s | {:.2} s | {:.3e} | {} Wh | {} g |\n\nEnergy: {}; PUE {}; grid {} gCO2e/kWh.\n",
        f.wall_s,
        f.cpu_s,
        f.flops,
        forja_meter::fmt_amount(f.energy_wh),
        forja_meter::fmt_amount(f.co2e_g),
        f.energy_source,
        f.pue,
        f.grid_g_per_kwh
    )
}

/// Parses `key=value` into a JSON value; `value` is read as JSON when it parses
/// (numbers, booleans, arrays), else as a string. Dotted keys nest: `a.b=1`.
pub fn set_param(params: &mut serde_json::Value, assignment: &str) -> anyhow::Result<()> {
    let (key, raw) = assignment.split_once('=').with_context(|| format!("`{assignment}`: expected KEY=VALUE"))?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_string()));
    let mut node = params;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = serde_json::Value::Object(Default::default());
        }
        let map = node.as_object_mut().context("parameters are an object")?;
        if i + 1 == parts.len() {
            map.insert(part.to_string(), value);
            return Ok(());
        }
        node = map.entry(part.to_string()).or_insert_with(|| serde_json::json!({}));
    }
    bail!("`{assignment}`: empty key")
}

/// Command line of a stage binary: `BIN KIND --input NAME=PATH ... --set KEY=VALUE ... --out DIR`.
#[derive(Debug, clap::Parser)]
pub struct StageArgs {
    /// Stage kind to run.
    pub kind: String,
    /// An input, NAME=PATH (repeat a name for several paths; globs allowed where the input takes many).
    #[arg(long = "input", short = 'i')]
    pub inputs: Vec<String>,
    /// A parameter, KEY=VALUE (dotted keys nest).
    #[arg(long = "set", short = 's')]
    pub params: Vec<String>,
    /// Parameters as a JSON object (read before the `--set`s, which override it).
    #[arg(long = "params")]
    pub params_file: Option<PathBuf>,
    /// Output folder.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Name recorded as the stage's in its outputs (default: the kind), e.g. the
    /// pipeline's name for it when a scheduler runs the step by hand.
    #[arg(long)]
    pub name: Option<String>,
    /// Shard `I/N` of a sharded stage (`clean_shard`): sets its `shard` parameter.
    #[arg(long)]
    pub shard: Option<String>,
}

/// Runs one stage of `stages` from parsed [`StageArgs`].
pub fn run_from_args(stages: &[&dyn DynStage], args: &StageArgs) -> anyhow::Result<()> {
    let stage = *stages.iter().find(|s| s.kind() == args.kind).with_context(|| {
        let kinds: Vec<_> = stages.iter().map(|s| s.kind()).collect();
        format!("unknown stage kind `{}` (known: {})", args.kind, kinds.join(", "))
    })?;
    let mut params = match &args.params_file {
        None => serde_json::json!({}),
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading --params {}", f.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("--params {}: not JSON", f.display()))?;
            anyhow::ensure!(v.is_object(), "--params {}: not a JSON object", f.display());
            v
        }
    };
    for p in &args.params {
        set_param(&mut params, p)?;
    }
    if let Some(shard) = &args.shard {
        params["shard"] = serde_json::Value::String(shard.clone());
    }
    stage.check(&params).with_context(|| format!("parameters of stage `{}`", stage.kind()))?;
    let mut inputs = StageInputs::default();
    for i in &args.inputs {
        let (name, path) = i.split_once('=').with_context(|| format!("--input `{i}`: expected NAME=PATH"))?;
        let spec =
            stage.inputs().iter().find(|s| s.name == name).with_context(|| format!("stage `{}` has no input `{name}`", stage.kind()))?;
        let paths = if spec.many { expand_glob(path)? } else { vec![PathBuf::from(path)] };
        inputs.0.entry(name.to_string()).or_default().extend(paths);
    }
    for spec in stage.inputs().iter().filter(|s| s.required) {
        if !inputs.0.contains_key(spec.name) {
            bail!("stage `{}` needs input `{}`", stage.kind(), spec.name);
        }
    }
    let ctx = StageCtx {
        name: args.name.clone().unwrap_or_else(|| stage.kind().to_string()),
        seed: args.seed,
        device: args.device.clone(),
        config_hash: crate::hash::hash_json(&params),
        code_hash: stage.code_hash(),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    // A stage binary run by hand reads the footprint settings from the
    // environment (`FORJA_GRID_G_PER_KWH`, `FORJA_PUE`, `FORJA_WATTS_PER_CORE`).
    let footprint = forja_meter::FootprintConfig::from_env();
    stage.run_json(&params, &inputs, &args.out, &ctx, &footprint).map(drop)
}

/// Expands a glob into the sorted paths it matches; a plain path is returned as is.
/// A pattern that matches nothing is an error.
pub fn expand_glob(pattern: &str) -> anyhow::Result<Vec<PathBuf>> {
    if !pattern.contains(['*', '?', '[']) {
        return Ok(vec![PathBuf::from(pattern)]);
    }
    let mut paths = Vec::new();
    for entry in glob::glob(pattern).with_context(|| format!("bad glob `{pattern}`"))? {
        paths.push(entry.with_context(|| format!("reading a match of `{pattern}`"))?);
    }
    paths.sort();
    if paths.is_empty() {
        bail!("`{pattern}` matches no file");
    }
    Ok(paths)
}

/// `main` of a stage binary: parses [`StageArgs`], runs the stage, prints the
/// error chain and exits non-zero on failure.
pub fn stage_main(stages: &[&dyn DynStage]) -> std::process::ExitCode {
    use clap::Parser;
    init_logging();
    match run_from_args(stages, &StageArgs::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Initialises `tracing` logs to stderr (`RUST_LOG`, default `info`).
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).finish();
    // Already set (e.g. by an embedding program): keep theirs.
    let _ignored = tracing::subscriber::set_global_default(subscriber);
}
