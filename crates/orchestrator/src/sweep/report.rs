//! What a sweep writes: `trials.arrow`, the ranked Markdown report, one scatter plot
//! per parameter and the best configuration as a runnable pipeline file.

use super::process::{relative, set_params, ProcessRunner};
use super::spec::{Domain, SearchSpec, Status, TrialResult};
use crate::pipeline::parse;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub(super) fn fmt_value(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "no value".into()
    }
}

pub(super) fn fmt_params(p: &BTreeMap<String, toml::Value>) -> String {
    p.iter().map(|(k, v)| format!("{k}={}", fmt_toml(v))).collect::<Vec<_>>().join(", ")
}

fn fmt_toml(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(f) => format!("{f:.4e}").replace("e0", ""),
        other => other.to_string(),
    }
}

/// `trials.arrow`, `report.md`, one plot per parameter, `best.toml`.
pub(super) fn write_outputs(
    spec: &SearchSpec,
    results: &[TrialResult],
    best: Option<usize>,
    dir: &Path,
    runner: &ProcessRunner,
) -> Result<()> {
    write_table(&dir.join("trials.arrow"), spec, results)?;
    let mut plots = Vec::new();
    for name in spec.params.keys() {
        let log = matches!(spec.params[name], Domain::LogUniform(_));
        let points: Vec<(f64, f64)> = results
            .iter()
            .map(|r| (numeric(r.trial.params.get(name)).map_or(f64::NAN, |x| if log { x.log10() } else { x }), r.value))
            .collect();
        let x_label = if log { format!("log10({name})") } else { name.clone() };
        if let Some(svg) = forja_render::scatter_chart(&format!("{} against {name}", spec.metric), &x_label, &spec.metric, &points, best) {
            let file = format!("{}.svg", name.replace(['.', '/'], "_"));
            forja_core::fsutil::atomic_write(&dir.join(&file), svg.as_bytes())?;
            plots.push(file);
        }
    }
    let best_file = match best {
        Some(i) => {
            let t = &results[i].trial;
            let name = runner.table.get("pipeline").and_then(|p| p.get("name")).and_then(|n| n.as_str()).unwrap_or("sweep");
            let mut table = runner.table.clone();
            set_params(&mut table, &t.params)?;
            if let Some(h) = table.get_mut("pipeline").and_then(|p| p.as_table_mut()) {
                h.insert("name".into(), toml::Value::String(format!("{name}-best")));
                h.insert("root".into(), toml::Value::String(relative(&runner.base, dir).display().to_string()));
                h.remove("out_dir");
            }
            let text = format!(
                "# The best configuration of `forja sweep` (trial {}, {} = {:.6}): {}\n\n{}",
                t.id,
                spec.metric,
                results[i].value,
                fmt_params(&t.params),
                toml::to_string(&table)?
            );
            let file = dir.join("best.toml");
            parse(&file, &text, runner.registry, &[])?;
            forja_core::fsutil::atomic_write(&file, text.as_bytes())?;
            Some(file)
        }
        None => None,
    };
    let report = report_md(spec, results, best, &plots, best_file.as_deref());
    forja_core::fsutil::atomic_write(&dir.join("report.md"), report.as_bytes())?;
    Ok(())
}

fn numeric(v: Option<&toml::Value>) -> Option<f64> {
    match v? {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Boolean(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The ranked Markdown table.
pub fn report_md(spec: &SearchSpec, results: &[TrialResult], best: Option<usize>, plots: &[String], best_file: Option<&Path>) -> String {
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (results[a].value, results[b].value);
        match (x.is_finite(), y.is_finite()) {
            (true, true) if spec.better(x, y) => std::cmp::Ordering::Less,
            (true, true) if spec.better(y, x) => std::cmp::Ordering::Greater,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => a.cmp(&b),
        }
    });
    let names: Vec<&String> = spec.params.keys().collect();
    let total_steps: u64 = results.iter().map(|r| r.steps).sum();
    let mut md = format!(
        "# Sweep\n\nMethod {:?}; metric `{}` ({} split, {:?}; a trial's value is the best along its validation curve); {} trials, {} training steps in all.\n\n",
        spec.method,
        spec.metric,
        spec.split,
        spec.goal,
        results.len(),
        total_steps
    );
    md += &format!(
        "| rank | trial | {} | {} | steps | status | wall s |\n",
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" | "),
        spec.metric
    );
    md += &format!("|---|---|{}---|---|---|---|\n", "---|".repeat(names.len()));
    for (rank, &i) in order.iter().enumerate() {
        let r = &results[i];
        let vals: Vec<String> = names.iter().map(|n| r.trial.params.get(*n).map_or("-".into(), fmt_toml)).collect();
        let mark = if Some(i) == best { " **best**" } else { "" };
        let reused = if r.reused { " (reused)" } else { "" };
        md += &format!(
            "| {} | {}{mark} | {} | {} | {} | {}{reused} | {:.1} |\n",
            rank + 1,
            r.trial.id,
            vals.join(" | "),
            fmt_value(r.value),
            r.steps,
            r.status.label(),
            r.wall_s
        );
    }
    for r in results {
        if let Status::Failed { error } = &r.status {
            md += &format!("\nTrial {} failed: {error}\n", r.trial.id);
        }
    }
    if let Some(f) = best_file {
        md += &format!("\nBest configuration, runnable: `forja run {}`\n", f.display());
    }
    md += "\n";
    for p in plots {
        md += &format!("![{p}]({p})\n\n");
    }
    md
}

/// `trials.arrow`: one row per trial; a column per parameter (float when
/// every value is a number, else text), the value, steps, status, time, and
/// the parameters as JSON.
fn write_table(path: &Path, spec: &SearchSpec, results: &[TrialResult]) -> Result<()> {
    use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let mut fields = vec![Field::new("trial", DataType::UInt64, false)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from_iter_values(results.iter().map(|r| r.trial.id as u64)))];
    for name in spec.params.keys() {
        let values: Vec<Option<&toml::Value>> = results.iter().map(|r| r.trial.params.get(name)).collect();
        if values.iter().all(|v| numeric(*v).is_some()) {
            fields.push(Field::new(format!("param.{name}"), DataType::Float64, true));
            cols.push(Arc::new(Float64Array::from(values.iter().map(|v| numeric(*v)).collect::<Vec<_>>())));
        } else {
            fields.push(Field::new(format!("param.{name}"), DataType::Utf8, true));
            cols.push(Arc::new(StringArray::from(values.iter().map(|v| v.map(fmt_toml)).collect::<Vec<_>>())));
        }
    }
    fields.push(Field::new("value", DataType::Float64, false));
    cols.push(Arc::new(Float64Array::from_iter_values(results.iter().map(|r| r.value))));
    fields.push(Field::new("steps", DataType::UInt64, false));
    cols.push(Arc::new(UInt64Array::from_iter_values(results.iter().map(|r| r.steps))));
    fields.push(Field::new("status", DataType::Utf8, false));
    cols.push(Arc::new(StringArray::from_iter_values(results.iter().map(|r| r.status.label()))));
    fields.push(Field::new("wall_s", DataType::Float64, false));
    cols.push(Arc::new(Float64Array::from_iter_values(results.iter().map(|r| r.wall_s))));
    fields.push(Field::new("params", DataType::Utf8, false));
    cols.push(Arc::new(StringArray::from_iter_values(results.iter().map(|r| serde_json::to_string(&r.trial.params).unwrap_or_default()))));
    let mut meta = std::collections::HashMap::new();
    meta.insert("forja.kind".to_string(), "trials".to_string());
    meta.insert("forja.metric".to_string(), spec.metric.clone());
    let schema = Arc::new(Schema::new(fields).with_metadata(meta));
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    forja_core::fsutil::atomic_write_with(path, |w| {
        let to_io = |e: arrow_schema::ArrowError| std::io::Error::other(e.to_string());
        let mut writer = arrow_ipc::writer::FileWriter::try_new(w, &schema).map_err(to_io)?;
        writer.write(&batch).map_err(to_io)?;
        writer.finish().map_err(to_io)
    })
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
