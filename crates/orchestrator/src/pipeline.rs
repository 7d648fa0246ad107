//! Pipeline files, parsed in two steps: raw TOML (serde, with spans) becomes a
//! checked [`Plan`], so nothing runs on an invalid pipeline. Every error names the
//! file and line.

use anyhow::{anyhow, bail, Result};
use forja_core::stage::{expand_glob, DynStage, InputSpec};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    pipeline: RawHeader,
    #[serde(rename = "stage", default)]
    stages: Vec<Spanned<RawStage>>,
    /// Read by `forja sweep` (`crate::sweep`); `forja run` runs the base pipeline.
    #[serde(default)]
    #[allow(dead_code)]
    search: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    /// Folder that relative paths start from, relative to the pipeline file's folder.
    #[serde(default)]
    root: Option<String>,
    /// Output folder (relative to `root`); default `runs/NAME`.
    #[serde(default)]
    out_dir: Option<String>,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_device")]
    device: String,
    /// How energy becomes CO2e in the footprint of every stage.
    #[serde(default)]
    footprint: Option<forja_meter::FootprintConfig>,
    /// Local ranks for each training stage (`forja run --nproc` overrides it).
    #[serde(default = "default_nproc")]
    nproc: usize,
}

fn default_nproc() -> usize {
    1
}

fn default_seed() -> u64 {
    1337
}

fn default_device() -> String {
    "cpu".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    inputs: BTreeMap<String, Spanned<RawInput>>,
    #[serde(default)]
    /// Not `Spanned`: toml cannot give the span of a table that only dotted
    /// headers define (`[stage.params.split]` without `[stage.params]`);
    /// errors point into the stage's span instead.
    params: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawInput {
    One(String),
    Many(Vec<String>),
}

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// Files on disk (globs expanded, checked to exist).
    Files(Vec<PathBuf>),
    /// The output `output` of stage `stage` (`@stage.output` in the file).
    Output { stage: String, output: String },
}

/// A checked stage.
#[derive(Clone)]
pub struct PlannedStage {
    pub name: String,
    pub stage: &'static dyn DynStage,
    pub inputs: BTreeMap<String, Vec<InputSource>>,
    pub params: serde_json::Value,
}

/// A checked pipeline: stages in an order where every stage comes after those it reads.
pub struct Plan {
    pub name: String,
    pub file: PathBuf,
    pub out_dir: PathBuf,
    pub seed: u64,
    pub device: String,
    pub footprint: forja_meter::FootprintConfig,
    /// Local ranks for each training stage (`[pipeline] nproc`).
    pub nproc: usize,
    pub stages: Vec<PlannedStage>,
}

/// A parameter override from the command line: `stage.key.sub=value`.
#[derive(Debug, Clone)]
pub struct Override {
    pub stage: String,
    pub path: Vec<String>,
    pub value: toml::Value,
}

impl std::str::FromStr for Override {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (key, raw) = s.split_once('=').ok_or_else(|| anyhow!("--set `{s}`: expected STAGE.PARAM=VALUE"))?;
        let mut parts: Vec<String> = key.split('.').map(str::to_string).collect();
        if parts.len() < 2 || parts.iter().any(String::is_empty) {
            bail!("--set `{s}`: expected STAGE.PARAM=VALUE");
        }
        let stage = parts.remove(0);
        // TOML syntax when it parses (numbers, booleans, arrays, quoted strings), else a bare string.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Self { stage, path: parts, value })
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// What checking a pipeline needs to hand: the file (for messages and spans), its
/// stages, the known stage kinds, the folder paths start from, and overrides.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    all: &'a [Spanned<RawStage>],
    names: HashMap<String, usize>,
    registry: &'a [&'static dyn DynStage],
    base: PathBuf,
    overrides: &'a [Override],
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}:{}: {msg}", self.file.display(), line_of(self.text, span.start))
    }

    /// The line where a stage's parameters begin: `params = ...` or `[stage.params...]`.
    fn params_span(&self, span: &Range<usize>) -> Range<usize> {
        let found = self.key_span(span, "params");
        if found != *span {
            return found;
        }
        match self.text[span.clone()].find("[stage.params") {
            Some(i) => span.start + i..span.start + i + 1,
            None => span.clone(),
        }
    }

    /// Line of `key` inside `span` (for errors about one parameter).
    fn key_span(&self, span: &Range<usize>, key: &str) -> Range<usize> {
        let body = &self.text[span.clone()];
        let mut offset = span.start;
        for line in body.split_inclusive('\n') {
            let t = line.trim_start();
            if t.starts_with(key) && t[key.len()..].trim_start().starts_with(['=', '.']) {
                return offset..offset + line.len();
            }
            offset += line.len();
        }
        span.clone()
    }
}

/// Every problem `forja check` found in a pipeline file, each naming the file
/// and line; shown one per line.
#[derive(Debug)]
pub struct CheckErrors(pub Vec<String>);

impl std::fmt::Display for CheckErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} errors:", many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CheckErrors {}

/// Reads and checks a pipeline file against the known `stages`, applying `overrides`.
pub fn load(file: &Path, registry: &[&'static dyn DynStage], overrides: &[Override]) -> Result<Plan> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    parse(file, &text, registry, overrides)
}

/// Checks a pipeline given as text (`file` is for messages and relative paths).
/// Every error of the file is reported at once ([`CheckErrors`]), except that
/// a file that is not valid TOML (or not a pipeline's shape) stops at that.
pub fn parse(file: &Path, text: &str, registry: &[&'static dyn DynStage], overrides: &[Override]) -> Result<Plan> {
    let raw: RawPipeline = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => anyhow!("{}:{}: {}", file.display(), line_of(text, span.start), e.message()),
        None => anyhow!("{}: {}", file.display(), e.message()),
    })?;
    let base = lexical_clean(&file.parent().unwrap_or(Path::new(".")).join(raw.pipeline.root.as_deref().unwrap_or(".")));
    let out_dir = base.join(raw.pipeline.out_dir.clone().unwrap_or_else(|| format!("runs/{}", raw.pipeline.name)));
    let (name, seed, device) = (raw.pipeline.name.clone(), raw.pipeline.seed, raw.pipeline.device.clone());
    let footprint = raw.pipeline.footprint.unwrap_or_else(forja_meter::FootprintConfig::from_env);
    let nproc = raw.pipeline.nproc;
    if nproc == 0 {
        return Err(CheckErrors(vec![format!("{}: [pipeline] nproc must be at least 1", file.display())]).into());
    }

    let mut cx = Ctx { file, text, all: &raw.stages, names: HashMap::new(), registry, base, overrides };
    let mut errors = Vec::new();
    for (i, s) in raw.stages.iter().enumerate() {
        let name = s.get_ref().name.get_ref();
        if cx.names.insert(name.clone(), i).is_some() {
            errors.push(cx.err(s.get_ref().name.span(), format!("duplicate stage name `{name}`")).to_string());
        }
    }
    for o in overrides {
        if !cx.names.contains_key(&o.stage) {
            errors.push(format!("--set: no stage named `{}` in {}", o.stage, file.display()));
        }
    }
    if raw.stages.is_empty() {
        errors.push(format!("{}: the pipeline has no [[stage]]", file.display()));
    }

    let mut planned = Vec::new();
    for s in &raw.stages {
        match cx.check_stage(s) {
            Ok(p) => planned.push(p),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(CheckErrors(errors).into());
    }
    let order = topo_order(&planned, &raw.stages, &cx).map_err(|e| CheckErrors(vec![e.to_string()]))?;
    let stages = order.into_iter().map(|i| planned[i].clone()).collect();
    Ok(Plan { name, file: file.to_path_buf(), out_dir, seed, device, footprint, nproc, stages })
}

impl Ctx<'_> {
    /// Checks one stage, returning every problem found in it.
    fn check_stage(&self, s: &Spanned<RawStage>) -> std::result::Result<PlannedStage, Vec<String>> {
        let registry = self.registry;
        let raw = s.get_ref();
        let name = raw.name.get_ref().clone();
        let kind = raw.kind.get_ref();
        let Some(stage) = registry.iter().find(|r| r.kind() == kind).copied() else {
            let known: Vec<_> = registry.iter().map(|r| r.kind()).collect();
            return Err(vec![self.err(raw.kind.span(), format!("unknown stage kind `{kind}` (known: {})", known.join(", "))).to_string()]);
        };
        let mut errors = Vec::new();

        // Parameters: the file's table, then command-line overrides, then the stage's own check.
        let mut table = raw.params.clone().unwrap_or_default();
        for o in self.overrides.iter().filter(|o| o.stage == name) {
            set_path(&mut table, &o.path, o.value.clone());
        }
        let params = match serde_json::to_value(&table) {
            Ok(p) => p,
            Err(e) => return Err(vec![self.err(s.span(), format!("stage `{name}`: {e}")).to_string()]),
        };
        if let Err(e) = stage.check(&params) {
            // The stage's text: from its header to the next `[[stage]]` (or the end).
            let start = s.span().start;
            let end = self.text[start + 1..].find("\n[[stage]]").map_or(self.text.len(), |i| start + 1 + i);
            let span = self.param_span(&(start..end), &e.path);
            errors.push(self.err(span, format!("stage `{name}`: {e}")).to_string());
        }

        let mut inputs = BTreeMap::new();
        for (input, value) in &raw.inputs {
            let Some(spec) = stage.inputs().iter().find(|i| i.name == input) else {
                let known: Vec<_> = stage.inputs().iter().map(|i| i.name).collect();
                errors.push(
                    self.err(value.span(), format!("stage `{name}` ({kind}) has no input `{input}` (inputs: {})", known.join(", ")))
                        .to_string(),
                );
                continue;
            };
            let items = match value.get_ref() {
                RawInput::One(v) => vec![v.clone()],
                RawInput::Many(v) => v.clone(),
            };
            if items.len() != 1 && !spec.many {
                errors.push(self.err(value.span(), format!("input `{input}` of stage `{name}` takes one path")).to_string());
                continue;
            }
            let mut sources = Vec::new();
            for item in items {
                match self.resolve_input(value.span(), &name, &item, spec) {
                    Ok(src) => sources.push(src),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            inputs.insert(input.clone(), sources);
        }
        for spec in stage.inputs().iter().filter(|i| i.required) {
            if !raw.inputs.contains_key(spec.name) {
                errors.push(self.err(s.span(), format!("stage `{name}` ({kind}) needs input `{}`", spec.name)).to_string());
            }
        }
        if errors.is_empty() {
            Ok(PlannedStage { name, stage, inputs, params })
        } else {
            Err(errors)
        }
    }

    /// The line of the parameter at `path` inside a stage's text: the deepest
    /// key of the path found there (as `key =`, `key.sub =` or a `[stage.params.key]`
    /// header), else where the parameters begin.
    fn param_span(&self, stage: &Range<usize>, path: &[String]) -> Range<usize> {
        let mut span = self.params_span(stage);
        let mut within = span.start..stage.end;
        for key in path.iter().filter(|k| k.parse::<usize>().is_err()) {
            let header = format!(".{key}]");
            let found = self.key_span(&within, key);
            let found = if found != within {
                found
            } else {
                match self.text[within.clone()].find(&header) {
                    Some(i) => within.start + i..within.start + i + 1,
                    None => break,
                }
            };
            span = found.clone();
            within = found.start..stage.end;
        }
        span
    }

    /// Resolves one input item: `@stage.output` (whose kind the input must
    /// accept), or files (globs expanded, checked to exist).
    fn resolve_input(&self, span: Range<usize>, stage_name: &str, item: &str, spec: &InputSpec) -> Result<InputSource> {
        if let Some(reference) = item.strip_prefix('@') {
            let (from, output) =
                reference.split_once('.').ok_or_else(|| self.err(span.clone(), format!("`{item}`: a reference is `@STAGE.OUTPUT`")))?;
            let idx = *self.names.get(from).ok_or_else(|| self.err(span.clone(), format!("`{item}`: no stage named `{from}`")))?;
            if from == stage_name {
                bail!(self.err(span, format!("stage `{stage_name}` reads its own output `{item}`")));
            }
            let from_kind = self.all[idx].get_ref().kind.get_ref();
            if let Some(st) = self.registry.iter().find(|r| r.kind() == from_kind) {
                let Some(out) = st.outputs().iter().find(|o| o.name == output) else {
                    let outs: Vec<_> = st.outputs().iter().map(|o| o.name).collect();
                    bail!(self.err(
                        span,
                        format!("`{item}`: stage `{from}` ({from_kind}) has no output `{output}` (outputs: {})", outs.join(", "))
                    ));
                };
                if !spec.accepts(out.kind) {
                    bail!(self.err(
                        span,
                        format!(
                            "input `{}` of stage `{stage_name}` reads {}, but `{item}` is {} (output `{output}` of {from_kind})",
                            spec.name,
                            spec.kinds_text(),
                            out.kind.name()
                        )
                    ));
                }
            }
            return Ok(InputSource::Output { stage: from.to_string(), output: output.to_string() });
        }
        let pattern = self.base.join(item);
        let pattern = pattern.to_string_lossy();
        let paths = if spec.many { expand_glob(&pattern) } else { Ok(vec![PathBuf::from(pattern.as_ref())]) }
            .map_err(|e| self.err(span.clone(), format!("stage `{stage_name}`: {e:#}")))?;
        for p in &paths {
            if !p.exists() {
                bail!(self.err(span, format!("stage `{stage_name}`: input file {} does not exist", p.display())));
            }
        }
        Ok(InputSource::Files(paths))
    }
}

/// Removes `.` and resolves `..` against the preceding folder, without touching the disk.
pub(crate) fn lexical_clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

pub(crate) fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
            if !entry.is_table() {
                *entry = toml::Value::Table(Default::default());
            }
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
    }
}

/// Orders stages so that each runs after the stages it reads (file order among
/// independent ones); a cycle is an error naming its stages.
fn topo_order(stages: &[PlannedStage], raw: &[Spanned<RawStage>], cx: &Ctx) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> = stages
        .iter()
        .map(|s| {
            s.inputs
                .values()
                .flatten()
                .filter_map(|src| match src {
                    InputSource::Output { stage, .. } => index.get(stage.as_str()).copied(),
                    InputSource::Files(_) => None,
                })
                .collect()
        })
        .collect();
    let mut done = vec![false; stages.len()];
    let mut order = Vec::with_capacity(stages.len());
    while order.len() < stages.len() {
        let next = (0..stages.len()).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
        match next {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..stages.len()).filter(|&i| !done[i]).map(|i| stages[i].name.as_str()).collect();
                let first = (0..stages.len()).find(|&i| !done[i]).unwrap_or(0);
                bail!(cx.err(raw[first].span(), format!("cycle among stages: {}", stuck.join(" -> "))));
            }
        }
    }
    Ok(order)
}
