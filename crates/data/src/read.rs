//! Readers: plain text, JSONL and CSV (polars). Each yields [`RawRecord`]s and sends
//! every unreadable record to the rejects with its file, position and reason.

use anyhow::{bail, Context};
use forja_core::Reject;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Input format; `auto` picks by extension (`.jsonl`/`.json` → JSONL, `.csv` → CSV, else text).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Auto,
    Text,
    Jsonl,
    Csv,
}

/// How plain text is cut into records.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TextUnit {
    /// One record per file.
    File,
    /// One record per blank-line-separated paragraph.
    #[default]
    Paragraph,
    /// One record per line.
    Line,
}

/// Reader settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadConfig {
    pub format: Format,
    /// Field (JSONL) or column (CSV) holding the text.
    pub text_field: String,
    /// Record unit of plain text.
    pub unit: TextUnit,
    /// CSV field separator (one byte).
    pub csv_separator: char,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self { format: Format::Auto, text_field: "text".into(), unit: TextUnit::Paragraph, csv_separator: ',' }
    }
}

/// A record as read, before cleaning.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// The file it came from.
    pub file: String,
    /// 1-based line (text, JSONL) or data record (CSV, header excluded).
    pub position: u64,
    pub text: String,
    /// Other fields, as a JSON object.
    pub meta: serde_json::Map<String, serde_json::Value>,
}

/// What reading produced.
#[derive(Debug, Default)]
pub struct ReadOutput {
    pub records: Vec<RawRecord>,
    pub rejects: Vec<Reject>,
}

impl ReadOutput {
    fn reject(&mut self, file: &str, position: u64, reason: impl Into<String>, raw: &str) {
        self.rejects.push(Reject::new(file, position, reason, raw));
    }
}

/// Reads one file into `out`. Errors are for the file as a whole (missing,
/// unreadable, CSV without the text column); bad records become rejects.
pub fn read_file(path: &Path, cfg: &ReadConfig, out: &mut ReadOutput) -> anyhow::Result<()> {
    let format = match cfg.format {
        Format::Auto => match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl" | "json" | "ndjson") => Format::Jsonl,
            Some("csv") => Format::Csv,
            _ => Format::Text,
        },
        f => f,
    };
    match format {
        Format::Csv => read_csv(path, cfg, out),
        Format::Jsonl => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            read_jsonl(&path.display().to_string(), &bytes, &cfg.text_field, out);
            Ok(())
        }
        Format::Text | Format::Auto => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            read_text(&path.display().to_string(), &bytes, cfg.unit, out);
            Ok(())
        }
    }
}

/// Splits bytes into lines (without `\n`), numbered from 1.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let empty = bytes.is_empty();
    body.split(|&b| b == b'\n').enumerate().filter(move |_| !empty).map(|(i, l)| (i as u64 + 1, l))
}

/// The line as text, or `None` after rejecting it for invalid UTF-8.
fn utf8_line<'a>(file: &str, no: u64, line: &'a [u8], out: &mut ReadOutput) -> Option<&'a str> {
    match std::str::from_utf8(line) {
        Ok(l) => Some(l),
        Err(e) => {
            let reason = format!("invalid UTF-8 at byte {} of the line", e.valid_up_to());
            out.reject(file, no, reason, &String::from_utf8_lossy(line));
            None
        }
    }
}

/// Plain text: lines with invalid UTF-8 are rejected one by one; the rest form
/// records by `unit`.
pub fn read_text(file: &str, bytes: &[u8], unit: TextUnit, out: &mut ReadOutput) {
    let mut current: Option<(u64, String)> = None;
    let flush = |current: &mut Option<(u64, String)>, out: &mut ReadOutput| {
        if let Some((position, text)) = current.take() {
            out.records.push(RawRecord { file: file.into(), position, text, meta: Default::default() });
        }
    };
    for (no, line) in lines(bytes) {
        let Some(line) = utf8_line(file, no, line, out) else { continue };
        match unit {
            TextUnit::Line => {
                current = Some((no, line.to_string()));
                flush(&mut current, out);
            }
            TextUnit::Paragraph if line.trim().is_empty() => flush(&mut current, out),
            TextUnit::Paragraph | TextUnit::File => match &mut current {
                Some((_, text)) => {
                    text.push('\n');
                    text.push_str(line);
                }
                None => current = Some((no, line.to_string())),
            },
        }
    }
    flush(&mut current, out);
}

/// JSONL: one JSON object per non-blank line, text in `text_field`.
pub fn read_jsonl(file: &str, bytes: &[u8], text_field: &str, out: &mut ReadOutput) {
    for (no, line) in lines(bytes) {
        let Some(line) = utf8_line(file, no, line, out) else { continue };
        if line.trim().is_empty() {
            continue;
        }
        let mut obj = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(other) => {
                out.reject(file, no, format!("expected a JSON object, found {}", json_type(&other)), line);
                continue;
            }
            Err(e) => {
                out.reject(file, no, format!("invalid JSON: {e}"), line);
                continue;
            }
        };
        match obj.remove(text_field) {
            Some(serde_json::Value::String(text)) => out.records.push(RawRecord { file: file.into(), position: no, text, meta: obj }),
            Some(serde_json::Value::Null) | None => out.reject(file, no, format!("missing text field `{text_field}`"), line),
            Some(other) => out.reject(file, no, format!("text field `{text_field}` is {}, not a string", json_type(&other)), line),
        }
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A CSV record whose field count differs from the header's.
#[derive(Debug, PartialEq, Eq)]
pub struct RaggedRecord {
    /// 1-based line where the record starts.
    pub line: u64,
    /// 1-based data record (header excluded).
    pub record: u64,
    pub found: usize,
    pub expected: usize,
}

/// Finds the first record with more or fewer fields than the header (RFC 4180
/// quoting: separators and newlines inside quotes belong to the field), to point
/// at it when polars refuses a file.
pub fn first_ragged_record(bytes: &[u8], separator: u8) -> Option<RaggedRecord> {
    let (mut fields, mut in_quotes, mut line, mut start_line, mut record) = (1usize, false, 1u64, 1u64, 0u64);
    let mut expected = None;
    let mut empty_line = true;
    // Each byte, then `None` for the end of the file (which ends the last record).
    for b in bytes.iter().copied().map(Some).chain([None]) {
        match b {
            Some(b'"') => {
                in_quotes = !in_quotes;
                empty_line = false;
            }
            Some(c) if c == separator && !in_quotes => {
                fields += 1;
                empty_line = false;
            }
            Some(b'\n') if in_quotes => line += 1,
            Some(b'\n') | None => {
                if !empty_line {
                    match expected {
                        None => expected = Some(fields),
                        Some(n) => {
                            record += 1;
                            if fields != n {
                                return Some(RaggedRecord { line: start_line, record, found: fields, expected: n });
                            }
                        }
                    }
                }
                line += 1;
                start_line = line;
                fields = 1;
                empty_line = true;
            }
            Some(b'\r') => {}
            Some(_) => empty_line = false,
        }
    }
    None
}

/// CSV through polars, every column read as text. Missing text values are
/// rejected per record; invalid UTF-8 is decoded lossily and the record rejected.
pub fn read_csv(path: &Path, cfg: &ReadConfig, out: &mut ReadOutput) -> anyhow::Result<()> {
    use polars::prelude::{CsvEncoding, CsvReadOptions, SerReader, StringChunked};
    let file = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("reading {file}"))?;
    // U+FFFD in the output marks a lossy decode only if the file held none itself.
    let had_replacement_char = bytes.windows(3).any(|w| w == [0xEF, 0xBF, 0xBD]);
    let separator = u8::try_from(cfg.csv_separator)
        .ok()
        .filter(u8::is_ascii)
        .with_context(|| format!("csv_separator `{}` must be one ASCII character", cfg.csv_separator))?;
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .map_parse_options(|o| o.with_separator(separator).with_encoding(CsvEncoding::LossyUtf8))
        .into_reader_with_file_handle(std::io::Cursor::new(bytes.as_slice()))
        .finish()
        .map_err(|e| match first_ragged_record(&bytes, separator) {
            Some(r) => {
                anyhow::anyhow!("{file}: line {} (record {}) has {} fields where the header has {}", r.line, r.record, r.found, r.expected)
            }
            None => anyhow::anyhow!("{file}: not readable as CSV: {e}"),
        })?;
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    if !names.iter().any(|n| n == &cfg.text_field) {
        bail!("{file}: no text column `{}` (found columns: {})", cfg.text_field, names.join(", "));
    }
    let columns: Vec<(String, &StringChunked)> = names
        .iter()
        .map(|n| {
            let c = df.column(n).with_context(|| format!("{file}: column `{n}`"))?;
            Ok((n.clone(), c.str().with_context(|| format!("{file}: column `{n}` is not text"))?))
        })
        .collect::<anyhow::Result<_>>()?;
    for row in 0..df.height() {
        let position = row as u64 + 1;
        let mut meta = serde_json::Map::new();
        let mut text = None;
        let mut lossy = false;
        for (name, col) in &columns {
            let value = col.get(row);
            lossy |= !had_replacement_char && value.is_some_and(|v| v.contains('\u{FFFD}'));
            if name == &cfg.text_field {
                text = value.map(str::to_string);
            } else {
                meta.insert(name.clone(), value.map_or(serde_json::Value::Null, |v| v.into()));
            }
        }
        let raw = serde_json::to_string(&meta).unwrap_or_default();
        match text {
            _ if lossy => out.reject(&file, position, "invalid UTF-8 in record", &format!("{text:?} {raw}")),
            None => out.reject(&file, position, format!("missing value in text column `{}`", cfg.text_field), &raw),
            Some(text) => out.records.push(RawRecord { file: file.clone(), position, text, meta }),
        }
    }
    Ok(())
}

/// The rows of a Parquet file as JSON objects with their 1-based row numbers,
/// read row group by row group: a row group that cannot be decoded becomes one
/// reject (file, its first row, reason) and reading goes on with the next. Only
/// a file that cannot be opened as Parquet at all is an error, naming it.
pub fn read_parquet_objects(
    path: &Path,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<Vec<(u64, serde_json::Map<String, serde_json::Value>)>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file_name = path.display().to_string();
    let open = || -> anyhow::Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {file_name}"))?;
        ParquetRecordBatchReaderBuilder::try_new(file).with_context(|| format!("{file_name}: not a readable Parquet file"))
    };
    let meta = open()?.metadata().clone();
    let mut out = Vec::new();
    let mut first_row = 1u64;
    for group in 0..meta.num_row_groups() {
        let rows = meta.row_group(group).num_rows().max(0) as u64;
        let decoded = (|| -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
            let mut objects = Vec::new();
            for batch in open()?.with_row_groups(vec![group]).build()? {
                let mut lines = Vec::new();
                let mut writer = arrow_json::LineDelimitedWriter::new(&mut lines);
                writer.write(&batch?)?;
                writer.finish()?;
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    objects.push(serde_json::from_slice(line)?);
                }
            }
            Ok(objects)
        })();
        match decoded {
            Ok(objects) => out.extend(objects.into_iter().enumerate().map(|(i, o)| (first_row + i as u64, o))),
            Err(e) => rejects.push(Reject::new(&file_name, first_row, format!("row group {group} ({rows} rows) unreadable: {e:#}"), "")),
        }
        first_row += rows;
    }
    Ok(out)
}
