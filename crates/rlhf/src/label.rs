//! The `label` stage (`forja-rlhf label`): people compare two answers to a
//! prompt in a page on localhost and pick the better one; their judgements
//! become the `preferences` artifact.
//!
//! - Pairs come from a JSONL file (`{"id"?, "prompt", "a", "b"}`), or are
//!   generated: the answers of `model` and `model_b` (or two samples of
//!   `model`) to `prompts`, written to `pairs.jsonl` in the stage folder.
//! - Every judgement (and every undo) is one line appended to
//!   `judgements.jsonl` and flushed to disk before the answer is sent, so
//!   killing the server loses nothing; a restart replays the log (a line cut
//!   short by the kill is skipped).
//! - Each pair is shown to `per_pair` different annotators; several people
//!   label at once, each in an order of their own (pairs with fewer
//!   judgements first). Left and right are swapped per (pair, annotator), so
//!   position cannot bias the data. When every pair has its judgements the
//!   stage writes `preferences.arrow` (ties and "both bad" left out, counted)
//!   and a report with Cohen's kappa over pairs two people judged, then exits.
//! - The page shows model output as text only (`textContent`), never markup.

use crate::rl::{read_prompts, Prompt};
use crate::text::last_tokens;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use forja_core::artifacts::Artifact;
use forja_core::stage::{outputs, port, OutDir, OutputSpec, StageCtx};
use forja_core::{Preference, Reject};
use forja_model::generate::SamplingConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

const PAGE: &str = include_str!("../static/label.html");

/// Parameters of `label`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelConfig {
    pub host: String,
    pub port: u16,
    /// Different annotators per pair (2 or more gives an agreement figure).
    pub per_pair: usize,
    /// Serve until every pair is judged (false: build the artifact from the
    /// judgements so far and return).
    pub wait: bool,
    /// Pairs generated from `prompts` (0: all prompts).
    pub max_pairs: usize,
    /// How generated answers are sampled.
    pub sampling: SamplingConfig,
    pub device: Option<String>,
}

impl Default for LabelConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8765,
            per_pair: 1,
            wait: true,
            max_pairs: 0,
            sampling: SamplingConfig { temperature: 0.9, top_k: 50, top_p: 1.0, max_new_tokens: 64, seed: 1 },
            device: None,
        }
    }
}

forja_core::stage_inputs! {
    /// Inputs of `label`: a pairs file, or models and prompts.
    pub struct LabelInputs {
        /// Prompt/answer pairs to judge (JSONL).
        pairs: optional[FILES],
        model: optional[MODEL],
        model_b: optional[MODEL],
        /// Prompts: `preferences` or `sft_examples`.
        prompts: optional[PREFERENCES, SFT_EXAMPLES],
    }
}

pub const PREFERENCES: OutputSpec = OutputSpec { name: "preferences", path: "preferences.arrow", kind: port::PREFERENCES };
pub const JUDGEMENTS: OutputSpec = OutputSpec { name: "judgements", path: "judgements.jsonl", kind: port::JSONL };
pub const PAIRS: OutputSpec = OutputSpec { name: "pairs", path: "pairs.jsonl", kind: port::JSONL };
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };
pub const OUTPUTS: [OutputSpec; 5] = [PREFERENCES, JUDGEMENTS, PAIRS, REJECTS, outputs::REPORT];

/// Two answers to a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub id: String,
    pub prompt: String,
    pub a: String,
    pub b: String,
}

/// A judgement, in the pair's own terms (`a` / `b` as in the pairs file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    A,
    B,
    Tie,
    Bad,
}

impl Choice {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "a" => Some(Self::A),
            "b" => Some(Self::B),
            "tie" => Some(Self::Tie),
            "bad" => Some(Self::Bad),
            _ => None,
        }
    }

    /// What the screen's left/right choice means once the sides are swapped.
    fn unswap(self, swapped: bool) -> Self {
        match (self, swapped) {
            (Self::A, true) => Self::B,
            (Self::B, true) => Self::A,
            (c, _) => c,
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum LogLine {
    Judged { t: u64, annotator: String, pair: String, choice: Choice, swapped: bool },
    Undone { t: u64, annotator: String, undo: String },
}

#[derive(Debug, Clone)]
struct Judgement {
    annotator: String,
    pair: usize,
    choice: Choice,
}

/// Whether `annotator` sees pair `id` with its answers swapped.
fn swapped(id: &str, annotator: &str) -> bool {
    let h = forja_core::hash::hash_bytes(format!("{id}\u{0}{annotator}").as_bytes());
    u8::from_str_radix(&h[..2], 16).unwrap_or(0) % 2 == 1
}

/// The server's state: pairs, live judgements, the open log.
struct Labels {
    pairs: Vec<Pair>,
    index: HashMap<String, usize>,
    live: Vec<Judgement>,
    /// Live judgements per pair, and the pairs each annotator judged (kept
    /// with `live`, so a request costs one pass over the pairs).
    counts: Vec<usize>,
    by_annotator: HashMap<String, HashSet<usize>>,
    log: std::fs::File,
    per_pair: usize,
}

impl Labels {
    fn judged_by(&self, pair: usize, annotator: &str) -> bool {
        self.by_annotator.get(annotator).is_some_and(|s| s.contains(&pair))
    }

    /// Pairs still open to `annotator`: not judged by them, short of judgements.
    fn open_to<'a>(&'a self, annotator: &'a str) -> impl Iterator<Item = usize> + 'a {
        (0..self.pairs.len()).filter(move |&p| self.counts[p] < self.per_pair && !self.judged_by(p, annotator))
    }

    /// The pair to show `annotator` next: fewest judgements first, then in an
    /// order of the annotator's own, so people labelling at once mostly get
    /// different pairs.
    fn next_for(&self, annotator: &str) -> Option<usize> {
        self.open_to(annotator)
            .min_by_key(|&p| (self.counts[p], forja_core::hash::hash_bytes(format!("{annotator}\u{0}{}", self.pairs[p].id).as_bytes())))
    }

    fn progress(&self, annotator: &str) -> serde_json::Value {
        let judged = self.by_annotator.get(annotator).map_or(0, HashSet::len);
        serde_json::json!({ "judged": judged, "total": judged + self.open_to(annotator).count() })
    }

    fn complete(&self) -> bool {
        self.counts.iter().all(|&c| c >= self.per_pair)
    }

    /// Appends a line and flushes it to disk.
    fn append(&mut self, line: &LogLine) -> std::io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        text.push('\n');
        self.log.write_all(text.as_bytes())?;
        self.log.flush()?;
        self.log.sync_data()
    }

    fn apply(&mut self, line: LogLine) {
        match line {
            LogLine::Judged { annotator, pair, choice, .. } => {
                if let Some(&p) = self.index.get(&pair) {
                    if self.by_annotator.entry(annotator.clone()).or_default().insert(p) {
                        self.counts[p] += 1;
                        self.live.push(Judgement { annotator, pair: p, choice });
                    }
                }
            }
            LogLine::Undone { annotator, undo, .. } => {
                if let Some(i) = self.live.iter().rposition(|j| j.annotator == annotator && self.pairs[j.pair].id == undo) {
                    let j = self.live.remove(i);
                    self.counts[j.pair] -= 1;
                    if let Some(s) = self.by_annotator.get_mut(&annotator) {
                        s.remove(&j.pair);
                    }
                }
            }
        }
    }
}

type Shared = Arc<(Mutex<Labels>, tokio::sync::Notify)>;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// A checked annotator name.
fn annotator_name(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("annotator: a name is needed");
    }
    if name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err("annotator: at most 64 printable characters");
    }
    Ok(name.to_string())
}

#[derive(Deserialize)]
struct NextQuery {
    annotator: Option<String>,
}

async fn next(State(s): State<Shared>, Query(q): Query<NextQuery>) -> Response {
    let name = match annotator_name(q.annotator.as_deref().unwrap_or("")) {
        Ok(n) => n,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let l = s.0.lock().unwrap_or_else(|e| e.into_inner());
    let progress = l.progress(&name);
    match l.next_for(&name) {
        None => Json(serde_json::json!({ "done": true, "progress": progress })).into_response(),
        Some(p) => {
            let pair = &l.pairs[p];
            let (left, right) = if swapped(&pair.id, &name) { (&pair.b, &pair.a) } else { (&pair.a, &pair.b) };
            Json(serde_json::json!({
                "done": false,
                "pair": { "id": pair.id, "prompt": pair.prompt, "a": left, "b": right },
                "progress": progress,
            }))
            .into_response()
        }
    }
}

#[derive(Deserialize)]
struct JudgeBody {
    annotator: String,
    pair: String,
    choice: String,
}

async fn judge(State(s): State<Shared>, body: Result<Json<JudgeBody>, axum::extract::rejection::JsonRejection>) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {}", e.body_text())),
    };
    let name = match annotator_name(&body.annotator) {
        Ok(n) => n,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let Some(choice) = Choice::parse(&body.choice) else {
        return error(StatusCode::BAD_REQUEST, format!("choice: expected a, b, tie or bad, got `{}`", body.choice));
    };
    let mut l = s.0.lock().unwrap_or_else(|e| e.into_inner());
    let Some(&p) = l.index.get(&body.pair) else {
        return error(StatusCode::NOT_FOUND, format!("pair: no pair `{}`", body.pair));
    };
    if l.judged_by(p, &name) {
        return error(StatusCode::CONFLICT, format!("pair `{}` is already judged by {name}", body.pair));
    }
    let sw = swapped(&body.pair, &name);
    let line = LogLine::Judged { t: now_ms(), annotator: name.clone(), pair: body.pair.clone(), choice: choice.unswap(sw), swapped: sw };
    if let Err(e) = l.append(&line) {
        tracing::error!("writing the judgement log: {e}");
        return error(StatusCode::SERVICE_UNAVAILABLE, "the judgement could not be saved; try again");
    }
    l.apply(line);
    let progress = l.progress(&name);
    if l.complete() {
        s.1.notify_one();
    }
    Json(serde_json::json!({ "ok": true, "progress": progress })).into_response()
}

#[derive(Deserialize)]
struct UndoBody {
    annotator: String,
}

async fn undo(State(s): State<Shared>, body: Result<Json<UndoBody>, axum::extract::rejection::JsonRejection>) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {}", e.body_text())),
    };
    let name = match annotator_name(&body.annotator) {
        Ok(n) => n,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let mut l = s.0.lock().unwrap_or_else(|e| e.into_inner());
    let Some(last) = l.live.iter().rposition(|j| j.annotator == name) else {
        let progress = l.progress(&name);
        return Json(serde_json::json!({ "undone": null, "progress": progress })).into_response();
    };
    let id = l.pairs[l.live[last].pair].id.clone();
    let line = LogLine::Undone { t: now_ms(), annotator: name.clone(), undo: id.clone() };
    if let Err(e) = l.append(&line) {
        tracing::error!("writing the judgement log: {e}");
        return error(StatusCode::SERVICE_UNAVAILABLE, "the undo could not be saved; try again");
    }
    l.apply(line);
    let progress = l.progress(&name);
    Json(serde_json::json!({ "undone": id, "progress": progress })).into_response()
}

/// Reads a pairs file; malformed lines become rejects.
pub fn read_pairs(path: &Path, rejects: &mut Vec<Reject>) -> anyhow::Result<Vec<Pair>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        id: Option<String>,
        prompt: String,
        a: String,
        b: String,
    }
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let file = path.display().to_string();
    let mut out: Vec<Pair> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = match serde_json::from_str::<Raw>(line) {
            Ok(r) => r,
            Err(e) => {
                rejects.push(Reject::new(
                    &file,
                    i as u64 + 1,
                    format!("not a pair record ({{\"id\"?, \"prompt\", \"a\", \"b\"}}): {e}"),
                    line,
                ));
                continue;
            }
        };
        let id = r.id.unwrap_or_else(|| format!("p{}", i + 1));
        if !seen.insert(id.clone()) {
            rejects.push(Reject::new(&file, i as u64 + 1, format!("duplicate pair id `{id}`"), line));
        } else if r.a.trim() == r.b.trim() {
            rejects.push(Reject::new(&file, i as u64 + 1, "the two answers are identical", line));
        } else {
            out.push(Pair { id, prompt: r.prompt, a: r.a, b: r.b });
        }
    }
    Ok(out)
}

/// Answers of `model` and `model_b` (or a second sample of `model`) to
/// prompts; a prompt whose two answers are the same is a reject.
fn generate_pairs(cfg: &LabelConfig, inputs: &LabelInputs, device: tch::Device, rejects: &mut Vec<Reject>) -> anyhow::Result<Vec<Pair>> {
    let (Some(model), Some(prompts_file)) = (&inputs.model, &inputs.prompts) else {
        anyhow::bail!("label needs a `pairs` file, or a `model` and `prompts` to generate pairs from");
    };
    let mut prompts: Vec<Prompt> = read_prompts(prompts_file)?;
    if cfg.max_pairs > 0 {
        prompts.truncate(cfg.max_pairs);
    }
    let answers = |dir: &Path, seed: u64| -> anyhow::Result<Vec<String>> {
        let policy = crate::common::load_policy(dir, device, None, Some(0.0), forja_model::Precision::F32)?;
        let block = policy.cfg.block_size as usize;
        let ids: Vec<Vec<u32>> =
            prompts.iter().map(|p| Ok(last_tokens(policy.fmt.prompt_ids(&p.text)?, block / 2))).collect::<anyhow::Result<_>>()?;
        let sampling = SamplingConfig { seed, ..cfg.sampling.clone() };
        crate::common::generate_answers(&policy.model, &policy.fmt, &ids, &sampling)?.iter().map(|a| policy.fmt.answer_text(a)).collect()
    };
    let a = answers(model, cfg.sampling.seed)?;
    let b = answers(inputs.model_b.as_deref().unwrap_or(model), cfg.sampling.seed.wrapping_add(7919))?;
    let source = prompts_file.display().to_string();
    let mut pairs = Vec::new();
    for (i, (p, (a, b))) in prompts.iter().zip(a.into_iter().zip(b)).enumerate() {
        if a == b {
            rejects.push(Reject::new(&source, i as u64 + 1, "both models gave the same answer: nothing to compare", &p.text));
        } else {
            pairs.push(Pair { id: format!("p{}", i + 1), prompt: p.text.clone(), a, b });
        }
    }
    Ok(pairs)
}

/// Cohen's kappa of the first two annotators of each pair judged twice:
/// `(observed − chance) / (1 − chance)`, with the agreement and the pairs.
pub fn cohens_kappa(first: &[Choice], second: &[Choice]) -> Option<(f64, f64, usize)> {
    let n = first.len().min(second.len());
    if n == 0 {
        return None;
    }
    let po = first.iter().zip(second).filter(|(a, b)| a == b).count() as f64 / n as f64;
    let share = |v: &[Choice], c: Choice| v.iter().filter(|x| **x == c).count() as f64 / n as f64;
    let pe: f64 = [Choice::A, Choice::B, Choice::Tie, Choice::Bad].iter().map(|&c| share(&first[..n], c) * share(&second[..n], c)).sum();
    let kappa = if (1.0 - pe).abs() < 1e-12 {
        if po == 1.0 {
            1.0
        } else {
            0.0
        }
    } else {
        (po - pe) / (1.0 - pe)
    };
    Some((kappa, po, n))
}

/// Writes `preferences.arrow` and the report from the live judgements.
fn write_results(l: &Labels, source: &str, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<usize> {
    let mut prefs = Vec::new();
    let mut by_choice: BTreeMap<Choice, usize> = BTreeMap::new();
    let mut by_annotator: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &l.live {
        let p = &l.pairs[j.pair];
        *by_choice.entry(j.choice).or_default() += 1;
        *by_annotator.entry(j.annotator.as_str()).or_default() += 1;
        let (chosen, rejected) = match j.choice {
            Choice::A => (&p.a, &p.b),
            Choice::B => (&p.b, &p.a),
            Choice::Tie | Choice::Bad => continue,
        };
        prefs.push(Preference {
            prompt: p.prompt.clone(),
            chosen: chosen.clone(),
            rejected: rejected.clone(),
            annotator: j.annotator.clone(),
            source: format!("label:{source}:{}", p.id),
        });
    }
    Preference::write(&out.path(&PREFERENCES), &ctx.name, &ctx.config_hash, &prefs)?;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for p in 0..l.pairs.len() {
        let js: Vec<&Judgement> = l.live.iter().filter(|j| j.pair == p).collect();
        if js.len() >= 2 {
            first.push(js[0].choice);
            second.push(js[1].choice);
        }
    }
    let judged = l.counts.iter().filter(|&&c| c > 0).count();
    let mut md = format!(
        "# Preference labels `{}`\n\n| | |\n|---|---|\n| pairs | {} |\n| pairs judged | {judged} |\n| judgements | {} |\n| preferences written (A or B better) | {} |\n",
        ctx.name,
        l.pairs.len(),
        l.live.len(),
        prefs.len()
    );
    for (c, n) in &by_choice {
        md += &format!(
            "| judged {} | {n} |\n",
            match c {
                Choice::A => "A better",
                Choice::B => "B better",
                Choice::Tie => "tie",
                Choice::Bad => "both bad",
            }
        );
    }
    md += "\n| annotator | judgements |\n|---|---|\n";
    for (a, n) in &by_annotator {
        md += &format!("| {} | {n} |\n", a.replace('|', "\\|"));
    }
    md += &match cohens_kappa(&first, &second) {
        Some((k, po, n)) => format!(
            "\nCohen's kappa: {k:.3} (raw agreement {po:.3} over {n} pairs judged by two annotators; categories A, B, tie, both bad)\n"
        ),
        None => "\nCohen's kappa: - (no pair was judged by two annotators; set per_pair = 2)\n".into(),
    };
    forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), md.as_bytes())?;
    Ok(prefs.len())
}

/// Loads pairs and the log, serves until done (or returns at once without
/// `wait`), writes the results.
pub fn run(cfg: &LabelConfig, inputs: &LabelInputs, out: &OutDir, ctx: &StageCtx) -> anyhow::Result<usize> {
    anyhow::ensure!(cfg.per_pair >= 1, "per_pair must be >= 1");
    let mut rejects = Vec::new();
    let pairs_file = out.path(&PAIRS);
    let (pairs, source) = match &inputs.pairs {
        Some(f) => (read_pairs(f, &mut rejects)?, f.display().to_string()),
        // Generated pairs are kept, so a restart labels the same ones.
        None if pairs_file.exists() => (read_pairs(&pairs_file, &mut rejects)?, pairs_file.display().to_string()),
        None => {
            let device = forja_model::parse_device(cfg.device.as_deref().unwrap_or(&ctx.device))?;
            let generated = generate_pairs(cfg, inputs, device, &mut rejects)?;
            let text: String = generated.iter().map(|p| serde_json::to_string(p).map(|s| s + "\n")).collect::<Result<_, _>>()?;
            forja_core::fsutil::atomic_write(&pairs_file, text.as_bytes())?;
            (generated, inputs.model.as_ref().map_or_else(String::new, |m| m.display().to_string()))
        }
    };
    if inputs.pairs.is_some() {
        let text: String = pairs.iter().map(|p| serde_json::to_string(p).map(|s| s + "\n")).collect::<Result<_, _>>()?;
        forja_core::fsutil::atomic_write(&pairs_file, text.as_bytes())?;
    }
    Reject::write(&out.path(&REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;
    anyhow::ensure!(!pairs.is_empty(), "no pairs to label ({} rejected)", rejects.len());
    let log_path = out.path(&JUDGEMENTS);
    let previous = std::fs::read_to_string(&log_path).unwrap_or_default();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", log_path.display()))?;
    let index = pairs.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
    let counts = vec![0; pairs.len()];
    let mut labels = Labels { pairs, index, live: Vec::new(), counts, by_annotator: HashMap::new(), log, per_pair: cfg.per_pair };
    for (i, line) in previous.lines().enumerate() {
        match serde_json::from_str::<LogLine>(line) {
            Ok(l) => labels.apply(l),
            Err(e) => tracing::warn!("{}:{}: skipped an unreadable judgement ({e})", log_path.display(), i + 1),
        }
    }
    if cfg.wait && !labels.complete() {
        let shared: Shared = Arc::new((Mutex::new(labels), tokio::sync::Notify::new()));
        serve(cfg, shared.clone())?;
        let l = Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("the server still holds the labels"))?.0;
        labels = l.into_inner().unwrap_or_else(|e| e.into_inner());
    }
    let n = write_results(&labels, &source, out, ctx)?;
    println!("{}: {} judgements, {n} preferences written", ctx.name, labels.live.len());
    Ok(n)
}

/// Serves the page and the API until every pair has its judgements.
fn serve(cfg: &LabelConfig, shared: Shared) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let app = Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/api/next", get(next))
            .route("/api/judge", post(judge))
            .route("/api/undo", post(undo))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
            .with_state(shared.clone());
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        println!(
            "label: open http://{addr}/ to compare answers (each pair by {} annotator(s)); Ctrl-C stops, nothing is lost",
            cfg.per_pair
        );
        let done = shared.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = done.1.notified() => println!("label: every pair has its judgements"),
                    _ = tokio::signal::ctrl_c() => println!("label: interrupted; the judgements so far are saved"),
                }
            })
            .await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappa_by_hand() {
        use Choice::*;
        // Perfect agreement with varied labels: 1.
        assert_eq!(cohens_kappa(&[A, B, A], &[A, B, A]).map(|k| k.0), Some(1.0));
        // po = 0.5; pe = 0.5·0.5 + 0.5·0.5 = 0.5 → 0.
        let (k, po, n) = cohens_kappa(&[A, A, B, B], &[A, B, A, B]).expect("pairs");
        assert_eq!((k, po, n), (0.0, 0.5, 4));
        assert!(cohens_kappa(&[], &[]).is_none());
    }

    #[test]
    fn swaps_are_stable_and_undone() {
        assert_eq!(swapped("p1", "ana"), swapped("p1", "ana"));
        let flips = (0..64).filter(|i| swapped(&format!("p{i}"), "ana")).count();
        assert!((16..48).contains(&flips), "{flips} of 64 swapped");
        assert_eq!(Choice::A.unswap(true), Choice::B);
        assert_eq!(Choice::Tie.unswap(true), Choice::Tie);
    }
}
