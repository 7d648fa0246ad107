//! The `sft_data` stage: instruction data in the formats people have (chat
//! `messages`, prompt/response pairs under common field names, Self-Instruct's
//! `instances`) read from JSONL, CSV, Parquet or `sft_examples` Arrow files into the
//! `sft_examples` artifact, split into train and validation. A malformed
//! example (bad JSON, a message without a role, an unknown role, no assistant
//! turn, an empty response) becomes a reject naming its file, line and reason;
//! reading goes on.

use anyhow::Context;
use forja_core::artifacts::Artifact;
use forja_core::stage::{outputs, port, OutDir, OutputSpec, StageCtx};
use forja_core::{Message, Reject, SftExample};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// How records map to conversations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftFormat {
    /// `messages` when the record has it, else Self-Instruct `instances`, else fields.
    #[default]
    Auto,
    /// `{"messages": [{"role", "content"}, …]}`.
    Messages,
    /// Prompt, optional input and system, response under the configured field names.
    Fields,
    /// Self-Instruct tasks: `instruction` plus `instances: [{input, output}]`,
    /// one example per instance.
    SelfInstruct,
}

/// Parameters of `sft_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftDataConfig {
    pub format: SftFormat,
    /// Field names tried in order for the user prompt…
    pub prompt_fields: Vec<String>,
    /// …for extra input appended to the prompt after a blank line…
    pub input_fields: Vec<String>,
    /// …for the assistant's response…
    pub response_fields: Vec<String>,
    /// …and for a system message.
    pub system_fields: Vec<String>,
    /// A system message put before every conversation that has none.
    pub system_prompt: Option<String>,
    /// Share of examples held out for validation (seeded shuffle); 1.0 puts
    /// everything in `val` (evaluation-only data).
    pub val_fraction: f64,
    /// Keep at most this many examples (0: all), after the split's order.
    pub max_examples: usize,
    pub seed: Option<u64>,
}

impl Default for SftDataConfig {
    fn default() -> Self {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        Self {
            format: SftFormat::Auto,
            prompt_fields: v(&["prompt", "instruction", "question", "query"]),
            input_fields: v(&["input", "context"]),
            response_fields: v(&["response", "output", "answer", "completion"]),
            system_fields: v(&["system"]),
            system_prompt: None,
            val_fraction: 0.05,
            max_examples: 0,
            seed: None,
        }
    }
}

pub const TRAIN: OutputSpec = OutputSpec { name: "train", path: "train.arrow", kind: port::SFT_EXAMPLES };
pub const VAL: OutputSpec = OutputSpec { name: "val", path: "val.arrow", kind: port::SFT_EXAMPLES };
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };
pub const OUTPUTS: [OutputSpec; 4] = [TRAIN, VAL, REJECTS, outputs::REPORT];

const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Checks a conversation: known roles, non-empty contents, at least one
/// assistant turn.
pub fn check_messages(messages: &[Message]) -> Result<(), String> {
    if messages.is_empty() {
        return Err("no messages".into());
    }
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(format!("message {i} has role `{}` (expected system, user or assistant)", m.role));
        }
        if m.content.trim().is_empty() {
            let what = if m.role == "assistant" { "empty response" } else { "empty content" };
            return Err(format!("message {i} ({}): {what}", m.role));
        }
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message (nothing to learn)".into());
    }
    Ok(())
}

fn string_field(obj: &Map<String, Value>, names: &[String]) -> Option<String> {
    names.iter().find_map(|n| match obj.get(n) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(x)) => Some(x.to_string()),
        _ => None,
    })
}

fn messages_of(value: &Value) -> Result<Vec<Message>, String> {
    let list = value.as_array().ok_or("`messages` is not a list")?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").ok_or_else(|| format!("message {i} has no role"))?;
            let role = role.as_str().ok_or_else(|| format!("message {i}: role is not a string"))?;
            let content = m.get("content").and_then(Value::as_str).ok_or_else(|| format!("message {i} ({role}) has no string content"))?;
            Ok(Message { role: role.to_string(), content: content.to_string() })
        })
        .collect()
}

fn user_turn(prompt: &str, input: Option<&str>) -> String {
    match input.map(str::trim).filter(|i| !i.is_empty()) {
        Some(input) => format!("{prompt}\n\n{input}"),
        None => prompt.to_string(),
    }
}

/// The conversations of one record (Self-Instruct tasks give one per instance).
pub fn conversations(obj: &Map<String, Value>, cfg: &SftDataConfig) -> Result<Vec<Vec<Message>>, String> {
    let format = match cfg.format {
        SftFormat::Auto if obj.contains_key("messages") => SftFormat::Messages,
        SftFormat::Auto if obj.contains_key("instances") => SftFormat::SelfInstruct,
        SftFormat::Auto => SftFormat::Fields,
        f => f,
    };
    let system = string_field(obj, &cfg.system_fields).or_else(|| cfg.system_prompt.clone());
    let with_system = |mut msgs: Vec<Message>| {
        if let Some(s) = &system {
            if msgs.first().is_none_or(|m| m.role != "system") {
                msgs.insert(0, Message { role: "system".into(), content: s.clone() });
            }
        }
        msgs
    };
    let pair = |user: String, response: String| {
        with_system(vec![Message { role: "user".into(), content: user }, Message { role: "assistant".into(), content: response }])
    };
    let convs = match format {
        SftFormat::Messages => vec![with_system(messages_of(obj.get("messages").ok_or("no `messages` field")?)?)],
        SftFormat::SelfInstruct => {
            let instruction = string_field(obj, &cfg.prompt_fields).ok_or("no instruction field")?;
            let instances = obj.get("instances").and_then(Value::as_array).ok_or("no `instances` list")?;
            if instances.is_empty() {
                return Err("`instances` is empty".into());
            }
            instances
                .iter()
                .map(|inst| {
                    let inst = inst.as_object().ok_or("an instance is not an object")?;
                    let output = string_field(inst, &cfg.response_fields).ok_or("an instance has no output")?;
                    Ok(pair(user_turn(&instruction, string_field(inst, &cfg.input_fields).as_deref()), output))
                })
                .collect::<Result<_, String>>()?
        }
        SftFormat::Fields | SftFormat::Auto => {
            let names = |v: &[String]| v.join(", ");
            let prompt =
                string_field(obj, &cfg.prompt_fields).ok_or_else(|| format!("no prompt field (tried {})", names(&cfg.prompt_fields)))?;
            let response = string_field(obj, &cfg.response_fields)
                .ok_or_else(|| format!("no response field (tried {})", names(&cfg.response_fields)))?;
            vec![pair(user_turn(&prompt, string_field(obj, &cfg.input_fields).as_deref()), response)]
        }
    };
    for c in &convs {
        check_messages(c)?;
    }
    Ok(convs)
}

/// Examples read so far and the records rejected.
#[derive(Default)]
pub struct SftRead {
    pub examples: Vec<SftExample>,
    pub rejects: Vec<Reject>,
}

impl SftRead {
    fn add(&mut self, file: &str, position: u64, raw: &str, obj: &Map<String, Value>, cfg: &SftDataConfig) {
        match conversations(obj, cfg) {
            Ok(convs) => {
                let n = convs.len();
                for (k, messages) in convs.into_iter().enumerate() {
                    let source = if n > 1 { format!("{file}:{position}#{k}") } else { format!("{file}:{position}") };
                    let id = forja_core::hash::hash_json(&serde_json::json!(messages));
                    self.examples.push(SftExample { id, messages, source });
                }
            }
            Err(reason) => self.rejects.push(Reject::new(file, position, reason, raw)),
        }
    }
}

/// Reads one file (JSONL, CSV, Parquet or an `sft_examples` Arrow file, by
/// extension; Parquet rows may hold `messages` as a list of structs).
/// Only a file that cannot be read at all is an error.
pub fn read_sft_file(path: &Path, cfg: &SftDataConfig, out: &mut SftRead) -> anyhow::Result<()> {
    let file = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("arrow") => {
            for (i, ex) in SftExample::read(path)?.into_iter().enumerate() {
                match check_messages(&ex.messages) {
                    Ok(()) => out.examples.push(ex),
                    Err(reason) => out.rejects.push(Reject::new(&file, i as u64 + 1, reason, &serde_json::json!(ex.messages).to_string())),
                }
            }
        }
        Some("parquet") => {
            for (row, obj) in forja_data::read::read_parquet_objects(path, &mut out.rejects)? {
                let raw = Value::Object(obj.clone()).to_string();
                out.add(&file, row, &raw, &obj, cfg);
            }
        }
        Some("csv") => {
            // The data stage's CSV reader (quoting, ragged rows as rejects); the
            // prompt column is its text, the other columns its meta.
            let prompt = cfg.prompt_fields.first().cloned().unwrap_or_else(|| "prompt".into());
            let read_cfg =
                forja_data::read::ReadConfig { format: forja_data::read::Format::Csv, text_field: prompt.clone(), ..Default::default() };
            let mut raw = forja_data::read::ReadOutput::default();
            forja_data::read::read_file(path, &read_cfg, &mut raw)?;
            out.rejects.extend(raw.rejects);
            for r in raw.records {
                let mut obj = r.meta.clone();
                obj.insert(prompt.clone(), Value::String(r.text.clone()));
                out.add(&file, r.position, &r.text, &obj, cfg);
            }
        }
        Some("jsonl" | "json" | "ndjson") => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {file}"))?;
            let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes); // a UTF-8 byte-order mark
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let no = i as u64 + 1;
                let Ok(line) = std::str::from_utf8(line) else {
                    out.rejects.push(Reject::new(&file, no, "invalid UTF-8", &String::from_utf8_lossy(line)));
                    continue;
                };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(obj)) => out.add(&file, no, line, &obj, cfg),
                    Ok(_) => out.rejects.push(Reject::new(&file, no, "expected a JSON object", line)),
                    Err(e) => out.rejects.push(Reject::new(&file, no, format!("invalid JSON: {e}"), line)),
                }
            }
        }
        _ => anyhow::bail!("{file}: unsupported SFT input (expected .jsonl, .csv, .parquet or an sft_examples .arrow file)"),
    }
    Ok(())
}

/// What `sft_data` wrote.
#[derive(Debug, Serialize)]
pub struct SftDataReport {
    pub files: Vec<String>,
    pub examples: usize,
    pub duplicates: usize,
    pub train: usize,
    pub val: usize,
    pub rejected: usize,
}

/// Reads `files`, drops exact duplicate conversations, splits; writes the outputs.
pub fn run_sft_data(cfg: &SftDataConfig, files: &[PathBuf], out: &OutDir, ctx: &StageCtx) -> anyhow::Result<SftDataReport> {
    anyhow::ensure!((0.0..=1.0).contains(&cfg.val_fraction), "val_fraction must be in [0, 1], got {}", cfg.val_fraction);
    anyhow::ensure!(!files.is_empty(), "sft_data: no input files");
    let mut read = SftRead::default();
    for f in files {
        read_sft_file(f, cfg, &mut read)?;
    }
    let mut seen = std::collections::HashSet::new();
    let before = read.examples.len();
    read.examples.retain(|e| seen.insert(e.id.clone()));
    let duplicates = before - read.examples.len();
    let seed = cfg.seed.unwrap_or(ctx.seed);
    let mut examples = read.examples;
    examples.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    if cfg.max_examples > 0 {
        examples.truncate(cfg.max_examples);
    }
    let n_val = (examples.len() as f64 * cfg.val_fraction).round() as usize;
    let train = examples.split_off(n_val);
    let val = examples;
    SftExample::write(&out.path(&TRAIN), &ctx.name, &ctx.config_hash, &train)?;
    SftExample::write(&out.path(&VAL), &ctx.name, &ctx.config_hash, &val)?;
    Reject::write(&out.path(&REJECTS), &ctx.name, &ctx.config_hash, &read.rejects)?;
    let report = SftDataReport {
        files: files.iter().map(|f| f.display().to_string()).collect(),
        examples: before,
        duplicates,
        train: train.len(),
        val: val.len(),
        rejected: read.rejects.len(),
    };
    let mut md = format!(
        "# SFT data\n\nFiles: {}\n\n| | count |\n|---|---|\n| examples read | {} |\n| exact duplicates dropped | {} |\n| train | {} |\n| val | {} |\n| rejected | {} |\n",
        report.files.join(", "),
        report.examples,
        report.duplicates,
        report.train,
        report.val,
        report.rejected
    );
    if !read.rejects.is_empty() {
        md += "\nFirst rejects:\n\n| source | position | reason |\n|---|---|---|\n";
        for r in read.rejects.iter().take(20) {
            md += &format!("| {} | {} | {} |\n", r.source, r.position, r.reason.replace('|', "\\|"));
        }
    }
    forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), md.as_bytes())?;
    println!("{}: {} train / {} val examples, {} rejected, {} duplicates", ctx.name, report.train, report.val, report.rejected, duplicates);
    Ok(report)
}
