//! Readers: plain text, JSONL, CSV and Parquet, each also `.gz` / `.zst`
//! compressed, streamed in chunks of records (bounded memory). Each yields
//! [`RawRecord`]s and sends every unreadable record to the rejects with its
//! file, position and reason; a UTF-8 byte-order mark is stripped.

use anyhow::Context;
use forja_core::Reject;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Input format; `auto` picks by extension (`.jsonl`/`.json` → JSONL, `.csv` → CSV,
/// `.parquet` → Parquet, else text), looking through `.gz` / `.zst`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Auto,
    Text,
    Jsonl,
    Csv,
    Parquet,
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
    /// 1-based line (text, JSONL; for CSV the line where the record starts) or
    /// row (Parquet).
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

/// Records handed to the caller at a time by [`read_file_chunked`].
pub const CHUNK_RECORDS: usize = 2048;

/// Compression of an input file, from its last extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The file's compression and the extension that names its format (the one
/// before `.gz` / `.zst`), lowercased.
pub fn compression_and_extension(path: &Path) -> (Compression, Option<String>) {
    let ext = |p: &Path| p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let compression = match ext(path).as_deref() {
        Some("gz" | "gzip") => Compression::Gzip,
        Some("zst" | "zstd") => Compression::Zstd,
        _ => Compression::None,
    };
    match compression {
        Compression::None => (compression, ext(path)),
        _ => (compression, ext(Path::new(path.file_stem().unwrap_or_default()))),
    }
}

/// The format `cfg` asks for, or the one the (inner) extension names.
pub fn detect_format(path: &Path, cfg: &ReadConfig) -> Format {
    match cfg.format {
        Format::Auto => match compression_and_extension(path).1.as_deref() {
            Some("jsonl" | "json" | "ndjson") => Format::Jsonl,
            Some("csv") => Format::Csv,
            Some("parquet") => Format::Parquet,
            _ => Format::Text,
        },
        f => f,
    }
}

/// Opens a file for streaming, decompressing `.gz` (every member) and `.zst`.
pub fn open_decoded(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let raw = BufReader::with_capacity(1 << 20, file);
    Ok(match compression_and_extension(path).0 {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(BufReader::with_capacity(1 << 20, flate2::bufread::MultiGzDecoder::new(raw))),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            1 << 20,
            zstd::stream::read::Decoder::with_buffer(raw).with_context(|| format!("{}: not a zstd stream", path.display()))?,
        )),
    })
}

/// Reads one file into `out`. Errors are for the file as a whole (missing,
/// unreadable, not the format at all, CSV without the text column); bad
/// records become rejects.
pub fn read_file(path: &Path, cfg: &ReadConfig, out: &mut ReadOutput) -> anyhow::Result<()> {
    read_file_chunked(path, cfg, usize::MAX, &mut |chunk| {
        out.records.extend(chunk.records);
        out.rejects.extend(chunk.rejects);
        Ok(())
    })
}

/// Reads one file as a stream, handing `sink` at most `chunk_records` records
/// at a time (with the rejects found among them), in file order: memory stays
/// bounded by the chunk whatever the file's size.
pub fn read_file_chunked(
    path: &Path,
    cfg: &ReadConfig,
    chunk_records: usize,
    sink: &mut dyn FnMut(ReadOutput) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = path.display().to_string();
    let mut chunker = Chunker { chunk_records, sink, out: ReadOutput::default() };
    match detect_format(path, cfg) {
        Format::Parquet => read_parquet(path, &cfg.text_field, &mut chunker)?,
        Format::Csv => read_csv_stream(&file, open_decoded(path)?, cfg, &mut chunker)?,
        Format::Jsonl => {
            read_lines(&file, open_decoded(path)?, &mut chunker, &mut |no, line, c| jsonl_line(&file, no, line, &cfg.text_field, c))?
        }
        Format::Text | Format::Auto => read_text_stream(&file, open_decoded(path)?, cfg.unit, &mut chunker)?,
    }
    chunker.flush()
}

/// Collects records and rejects and hands them on in chunks.
pub struct Chunker<'a> {
    chunk_records: usize,
    sink: &'a mut dyn FnMut(ReadOutput) -> anyhow::Result<()>,
    out: ReadOutput,
}

impl Chunker<'_> {
    fn record(&mut self, r: RawRecord) -> anyhow::Result<()> {
        self.out.records.push(r);
        self.maybe_flush()
    }
    fn reject(&mut self, file: &str, position: u64, reason: impl Into<String>, raw: &str) {
        self.out.reject(file, position, reason, raw);
    }
    /// Hands the chunk on once it holds `chunk_records` records and rejects.
    fn maybe_flush(&mut self) -> anyhow::Result<()> {
        if self.out.records.len() + self.out.rejects.len() >= self.chunk_records {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.out.records.is_empty() && self.out.rejects.is_empty() {
            return Ok(());
        }
        (self.sink)(std::mem::take(&mut self.out))
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What [`read_lines`] calls with each line and its number.
type LineFn<'f> = dyn FnMut(u64, &[u8], &mut Chunker) -> anyhow::Result<()> + 'f;

/// Streams lines (without `\n`, numbered from 1; a UTF-8 byte-order mark at
/// the start of the file stripped) to `each`. A read error (a truncated or
/// corrupt compressed stream) becomes a reject at the line it hit, and the rest
/// of the file is lost: the stream cannot be resumed past it.
fn read_lines(file: &str, mut reader: Box<dyn BufRead + Send>, chunker: &mut Chunker, each: &mut LineFn) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    let mut no = 0u64;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                no += 1;
                let mut line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                if no == 1 {
                    line = line.strip_prefix(BOM).unwrap_or(line);
                }
                each(no, line, chunker)?;
                chunker.maybe_flush()?;
            }
            Err(e) => {
                let reason =
                    format!("the stream breaks off here (truncated or corrupt compressed data: {e}); the rest of the file is unreadable");
                chunker.reject(file, no + 1, reason, &String::from_utf8_lossy(&buf));
                return Ok(());
            }
        }
    }
}

/// The line as text, or `None` after rejecting it for invalid UTF-8.
fn utf8_line<'a>(file: &str, no: u64, line: &'a [u8], out: &mut Chunker) -> Option<&'a str> {
    match std::str::from_utf8(line) {
        Ok(l) => Some(l),
        Err(e) => {
            let reason = format!("invalid UTF-8 at byte {} of the line", e.valid_up_to());
            out.reject(file, no, reason, &String::from_utf8_lossy(line));
            None
        }
    }
}

/// Plain text from memory; see [`read_text_stream`].
pub fn read_text(file: &str, bytes: &[u8], unit: TextUnit, out: &mut ReadOutput) {
    let reader = Box::new(std::io::Cursor::new(bytes.to_vec()));
    collect(out, |c| read_text_stream(file, reader, unit, c));
}

/// JSONL from memory; see [`jsonl_line`].
pub fn read_jsonl(file: &str, bytes: &[u8], text_field: &str, out: &mut ReadOutput) {
    let reader = Box::new(std::io::Cursor::new(bytes.to_vec()));
    collect(out, |c| read_lines(file, reader, c, &mut |no, line, c| jsonl_line(file, no, line, text_field, c)));
}

fn collect(out: &mut ReadOutput, read: impl FnOnce(&mut Chunker) -> anyhow::Result<()>) {
    let mut sink = |chunk: ReadOutput| {
        out.records.extend(chunk.records);
        out.rejects.extend(chunk.rejects);
        Ok(())
    };
    let mut chunker = Chunker { chunk_records: usize::MAX, sink: &mut sink, out: ReadOutput::default() };
    // In-memory readers do not fail and the sink above never errs.
    let _infallible = read(&mut chunker).and_then(|()| chunker.flush());
}

/// Plain text: lines with invalid UTF-8 are rejected one by one; the rest form
/// records by `unit`.
fn read_text_stream(file: &str, reader: Box<dyn BufRead + Send>, unit: TextUnit, chunker: &mut Chunker) -> anyhow::Result<()> {
    let mut current: Option<(u64, String)> = None;
    let flush = |current: &mut Option<(u64, String)>, c: &mut Chunker| match current.take() {
        Some((position, text)) => c.record(RawRecord { file: file.into(), position, text, meta: Default::default() }),
        None => Ok(()),
    };
    read_lines(file, reader, chunker, &mut |no, line, c| {
        let Some(line) = utf8_line(file, no, line, c) else { return Ok(()) };
        match unit {
            TextUnit::Line => {
                current = Some((no, line.to_string()));
                flush(&mut current, c)?;
            }
            TextUnit::Paragraph if line.trim().is_empty() => flush(&mut current, c)?,
            TextUnit::Paragraph | TextUnit::File => match &mut current {
                Some((_, text)) => {
                    text.push('\n');
                    text.push_str(line);
                }
                None => current = Some((no, line.to_string())),
            },
        }
        Ok(())
    })?;
    flush(&mut current, chunker)
}

/// JSONL: one JSON object per non-blank line, text in `text_field`.
fn jsonl_line(file: &str, no: u64, line: &[u8], text_field: &str, c: &mut Chunker) -> anyhow::Result<()> {
    let Some(line) = utf8_line(file, no, line, c) else { return Ok(()) };
    if line.trim().is_empty() {
        return Ok(());
    }
    let obj = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(other) => {
            c.reject(file, no, format!("expected a JSON object, found {}", json_type(&other)), line);
            return Ok(());
        }
        Err(e) => {
            c.reject(file, no, format!("invalid JSON: {e}"), line);
            return Ok(());
        }
    };
    object_record(file, no, obj, text_field, line, c)
}

/// A record from a JSON object (a JSONL line, a Parquet row): the text field,
/// the other fields as meta.
fn object_record(
    file: &str,
    no: u64,
    mut obj: serde_json::Map<String, serde_json::Value>,
    text_field: &str,
    raw: &str,
    c: &mut Chunker,
) -> anyhow::Result<()> {
    match obj.remove(text_field) {
        Some(serde_json::Value::String(text)) => c.record(RawRecord { file: file.into(), position: no, text, meta: obj })?,
        Some(serde_json::Value::Null) | None => c.reject(file, no, format!("missing text field `{text_field}`"), raw),
        Some(other) => c.reject(file, no, format!("text field `{text_field}` is {}, not a string", json_type(&other)), raw),
    }
    Ok(())
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

/// The most lines a quoted CSV field may span before its quote counts as
/// unclosed (the record is rejected and reading resumes on its next line).
pub const CSV_MAX_RECORD_LINES: usize = 1000;

/// Splits one CSV record (RFC 4180: separators and newlines inside double
/// quotes belong to the field, `""` is a quote) into fields.
pub fn csv_fields(record: &str, separator: char) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut in_quotes = false;
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        let field = fields.last_mut().expect("fields is never empty");
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' if in_quotes => in_quotes = false,
            '"' if field.is_empty() => in_quotes = true,
            c if c == separator && !in_quotes => fields.push(String::new()),
            '\r' if !in_quotes && chars.peek().is_none() => {}
            c => field.push(c),
        }
    }
    fields
}

/// Whether a quoted field is still open after `s`, read as [`csv_fields`]
/// reads it (a quote opens a field only as its first character; `""` inside
/// quotes is a quote), `open` being the state at the start of `s`.
fn opens_quote(s: &str, mut open: bool, separator: char) -> bool {
    let mut field_empty = !open;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if open {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    open = false;
                    field_empty = false;
                }
            }
        } else if c == separator {
            field_empty = true;
        } else if c == '"' && field_empty {
            open = true;
        } else {
            field_empty = false;
        }
    }
    open
}

/// CSV, streamed record by record. The first record is the header. A record
/// with more or fewer fields than the header, an unclosed quote (a quoted field
/// that runs to the end of the file or past [`CSV_MAX_RECORD_LINES`] lines), a
/// missing text value or invalid UTF-8 is a reject naming its first line; after
/// a bad multi-line record reading resumes on the line after its first, so one
/// stray quote costs one record. A file without the text column is an error.
fn read_csv_stream(file: &str, reader: Box<dyn BufRead + Send>, cfg: &ReadConfig, chunker: &mut Chunker) -> anyhow::Result<()> {
    let separator = cfg.csv_separator;
    anyhow::ensure!(separator.is_ascii() && separator != '"', "csv_separator `{separator}` must be one ASCII character other than `\"`");
    // Lines are pulled into `pending` and records built from its front, so a
    // bad multi-line record can give its later lines back.
    let mut pending: std::collections::VecDeque<(u64, Result<String, String>)> = Default::default();
    let mut header: Option<(Vec<String>, usize)> = None;
    let mut lines = LineSource { reader, no: 0, file, finished: false };
    loop {
        chunker.maybe_flush()?;
        if pending.is_empty() && !fill(&mut lines, &mut pending, chunker)? {
            return Ok(());
        }
        let Some((start, first)) = pending.pop_front() else { return Ok(()) };
        // Invalid UTF-8 is decoded lossily to find the record's end, then the
        // whole record is rejected.
        let mut bad_utf8 = first.is_err();
        let first = first.unwrap_or_else(|raw| raw);
        if first.trim().is_empty() {
            continue;
        }
        // Gather the record's lines while a quote is open.
        let mut record = first.clone();
        let mut open = opens_quote(&record, false, separator);
        let mut used = Vec::new();
        while open && used.len() < CSV_MAX_RECORD_LINES && !lines.finished {
            if used.len() == pending.len() && !fill(&mut lines, &mut pending, chunker)? {
                break;
            }
            let (no, line) = pending[used.len()].clone();
            used.push(no);
            let line = line.unwrap_or_else(|raw| {
                bad_utf8 = true;
                raw
            });
            record.push('\n');
            record.push_str(&line);
            open = opens_quote(&line, open, separator);
        }
        if open {
            chunker.reject(file, start, "unclosed quote: the quoted field never ends; reading resumes on the next line", &first);
            continue; // the lines looked at stay in `pending`
        }
        // The record is complete: its lines are consumed whatever happens next.
        pending.drain(..used.len());
        let fields = csv_fields(&record, separator);
        let Some((names, text_col)) = &header else {
            let names: Vec<String> = fields.iter().map(|f| f.trim().to_string()).collect();
            let text_col = names
                .iter()
                .position(|n| n == &cfg.text_field)
                .with_context(|| format!("{file}: no text column `{}` (found columns: {})", cfg.text_field, names.join(", ")))?;
            header = Some((names, text_col));
            continue;
        };
        if fields.len() != names.len() {
            let spans = if used.is_empty() { String::new() } else { format!(" (a record spanning {} lines)", used.len() + 1) };
            let reason = format!("line {start}{spans} has {} fields where the header has {}", fields.len(), names.len());
            chunker.reject(file, start, reason, &record);
            continue;
        }
        if bad_utf8 {
            chunker.reject(file, start, "invalid UTF-8 in record", &record);
            continue;
        }
        let mut meta = serde_json::Map::new();
        let mut text = None;
        for (i, (name, value)) in names.iter().zip(fields).enumerate() {
            if i == *text_col {
                text = Some(value);
            } else {
                meta.insert(name.clone(), if value.is_empty() { serde_json::Value::Null } else { value.into() });
            }
        }
        match text.filter(|t| !t.is_empty()) {
            Some(text) => chunker.record(RawRecord { file: file.into(), position: start, text, meta })?,
            None => chunker.reject(file, start, format!("missing value in text column `{}`", cfg.text_field), &record),
        }
    }
}

/// Lines of a stream, numbered, BOM stripped; see [`read_lines`] for errors.
struct LineSource<'a> {
    reader: Box<dyn BufRead + Send>,
    no: u64,
    file: &'a str,
    /// The stream ended or broke off: it is not read again (a broken decoder
    /// would report the same error twice).
    finished: bool,
}

/// Pulls the next line into `pending`; `false` at the end of the stream (or
/// after a read error, which becomes a reject).
fn fill(
    src: &mut LineSource,
    pending: &mut std::collections::VecDeque<(u64, Result<String, String>)>,
    chunker: &mut Chunker,
) -> anyhow::Result<bool> {
    if src.finished {
        return Ok(false);
    }
    let mut buf = Vec::new();
    match src.reader.read_until(b'\n', &mut buf) {
        Ok(0) => {
            src.finished = true;
            Ok(false)
        }
        Ok(_) => {
            src.no += 1;
            let mut line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            line = line.strip_suffix(b"\r").unwrap_or(line);
            if src.no == 1 {
                line = line.strip_prefix(BOM).unwrap_or(line);
            }
            let line = String::from_utf8(line.to_vec()).map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            pending.push_back((src.no, line));
            Ok(true)
        }
        Err(e) => {
            let reason =
                format!("the stream breaks off here (truncated or corrupt compressed data: {e}); the rest of the file is unreadable");
            chunker.reject(src.file, src.no + 1, reason, &String::from_utf8_lossy(&buf));
            src.finished = true;
            Ok(false)
        }
    }
}

/// Parquet rows as records: the text column as text, the others as meta.
fn read_parquet(path: &Path, text_field: &str, chunker: &mut Chunker) -> anyhow::Result<()> {
    let file = path.display().to_string();
    let mut rejects = Vec::new();
    for_each_parquet_group(path, &mut rejects, &mut |rows| {
        for (no, obj) in rows {
            object_record(&file, no, obj, text_field, "", chunker)?;
        }
        Ok(())
    })?;
    for r in rejects {
        chunker.out.rejects.push(r);
    }
    Ok(())
}

/// The rows of a Parquet file as JSON objects with their 1-based row numbers;
/// see [`for_each_parquet_group`].
pub fn read_parquet_objects(
    path: &Path,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<Vec<(u64, serde_json::Map<String, serde_json::Value>)>> {
    let mut out = Vec::new();
    for_each_parquet_group(path, rejects, &mut |rows| {
        out.extend(rows);
        Ok(())
    })?;
    Ok(out)
}

/// A Parquet row as a JSON object, with its 1-based row number.
pub type NumberedObject = (u64, serde_json::Map<String, serde_json::Value>);

/// Rows of a Parquet file, row group by row group (memory bounded by one
/// group), as JSON objects with their 1-based row numbers: a row group that
/// cannot be decoded becomes one reject (file, its first row, reason) and
/// reading goes on with the next. Only a file that cannot be opened as Parquet
/// at all is an error, naming it.
pub fn for_each_parquet_group(
    path: &Path,
    rejects: &mut Vec<Reject>,
    each: &mut dyn FnMut(Vec<NumberedObject>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file_name = path.display().to_string();
    let open = || -> anyhow::Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {file_name}"))?;
        ParquetRecordBatchReaderBuilder::try_new(file).with_context(|| format!("{file_name}: not a readable Parquet file"))
    };
    let meta = open()?.metadata().clone();
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
            Ok(objects) => each(objects.into_iter().enumerate().map(|(i, o)| (first_row + i as u64, o)).collect())?,
            Err(e) => rejects.push(Reject::new(&file_name, first_row, format!("row group {group} ({rows} rows) unreadable: {e:#}"), "")),
        }
        first_row += rows;
    }
    Ok(())
}
