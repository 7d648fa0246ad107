//! Typed rows of each artifact and their conversion to and from Arrow.

use crate::ipc::{read_artifact, write_artifact, ArtifactError};
use crate::schema::{col, ArtifactKind};
use arrow_array::builder::{ListBuilder, PrimitiveBuilder};
use arrow_array::types::{ArrowPrimitiveType, Float32Type, UInt32Type};
use arrow_array::{
    Array, ArrayRef, Float32Array, Float64Array, Int8Array, ListArray, PrimitiveArray, RecordBatch, StringArray, StructArray, UInt64Array,
};
use arrow_buffer::OffsetBuffer;
use std::path::Path;
use std::sync::Arc;

/// A row type stored as one artifact kind.
pub trait Artifact: Sized {
    const KIND: ArtifactKind;
    /// Converts rows to one record batch with the kind's columns.
    fn to_batch(rows: &[Self]) -> RecordBatch;
    /// Converts a checked batch back to rows; `path` is for error messages.
    fn from_batch(path: &Path, batch: &RecordBatch) -> Result<Vec<Self>, ArtifactError>;

    /// Writes rows as an artifact file, atomically.
    fn write(path: &Path, stage: &str, config_hash: &str, rows: &[Self]) -> Result<(), ArtifactError> {
        write_artifact(path, Self::KIND, stage, config_hash, &[Self::to_batch(rows)])
    }

    /// A writer that takes rows in batches (outputs larger than memory).
    fn writer(path: &Path, stage: &str, config_hash: &str) -> Result<RowWriter<Self>, ArtifactError> {
        Ok(RowWriter { inner: crate::ipc::ArtifactWriter::create(path, Self::KIND, stage, config_hash)?, _rows: std::marker::PhantomData })
    }

    /// Reads all rows of an artifact file, schema-checked.
    fn read(path: &Path) -> Result<Vec<Self>, ArtifactError> {
        let mut rows = Vec::new();
        for batch in read_artifact(path, Self::KIND)? {
            rows.extend(Self::from_batch(path, &batch)?);
        }
        Ok(rows)
    }
}

/// Typed rows written batch by batch; see [`crate::ipc::ArtifactWriter`].
pub struct RowWriter<A: Artifact> {
    inner: crate::ipc::ArtifactWriter,
    _rows: std::marker::PhantomData<A>,
}

impl<A: Artifact> RowWriter<A> {
    /// Appends rows (nothing for an empty slice).
    pub fn write(&mut self, rows: &[A]) -> Result<(), ArtifactError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.inner.write(&A::to_batch(rows))
    }
    pub fn rows(&self) -> usize {
        self.inner.rows()
    }
    pub fn finish(self) -> Result<(), ArtifactError> {
        self.inner.finish()
    }
}

fn strings<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

fn batch(kind: ArtifactKind, columns: Vec<ArrayRef>) -> RecordBatch {
    let schema = Arc::new(arrow_schema::Schema::new(kind.fields()));
    // Columns are built here from the kind's own field list: a mismatch is a bug.
    RecordBatch::try_new(schema, columns).expect("artifact columns match their schema")
}

fn column<'a, T: 'static>(path: &Path, b: &'a RecordBatch, name: &str) -> Result<&'a T, ArtifactError> {
    b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).ok_or_else(|| ArtifactError::BadValue {
        path: path.into(),
        row: 0,
        problem: format!("column `{name}` missing or of the wrong type"),
    })
}

fn no_nulls(path: &Path, name: &str, a: &dyn Array) -> Result<(), ArtifactError> {
    match (0..a.len()).find(|&i| a.is_null(i)) {
        None => Ok(()),
        Some(row) => Err(ArtifactError::BadValue { path: path.into(), row, problem: format!("null in non-nullable column `{name}`") }),
    }
}

fn str_col(path: &Path, b: &RecordBatch, name: &str) -> Result<Vec<String>, ArtifactError> {
    let a = column::<StringArray>(path, b, name)?;
    no_nulls(path, name, a)?;
    Ok(a.iter().map(|v| v.unwrap_or_default().to_string()).collect())
}

fn u64_col(path: &Path, b: &RecordBatch, name: &str) -> Result<Vec<u64>, ArtifactError> {
    let a = column::<UInt64Array>(path, b, name)?;
    no_nulls(path, name, a)?;
    Ok(a.values().to_vec())
}

/// A document: cleaned text with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Content hash of the text.
    pub id: String,
    pub text: String,
    /// `file:position` where the document came from.
    pub source: String,
    /// Language code, or `und` when unknown.
    pub lang: String,
    /// Extra fields as a JSON object.
    pub meta: String,
}

impl Document {
    /// A string or number field of the `meta` JSON (a label, a group), trimmed;
    /// or why there is none.
    pub fn meta_field(&self, field: &str) -> Result<String, String> {
        let meta: serde_json::Value = serde_json::from_str(&self.meta).map_err(|e| format!("meta is not JSON: {e}"))?;
        match meta.get(field) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(format!("field `{field}` is empty or not a string/number: {other}")),
            None => Err(format!("no field `{field}` in meta")),
        }
    }
}

impl Artifact for Document {
    const KIND: ArtifactKind = ArtifactKind::Documents;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        batch(
            Self::KIND,
            vec![
                strings(rows.iter().map(|r| r.id.as_str())),
                strings(rows.iter().map(|r| r.text.as_str())),
                strings(rows.iter().map(|r| r.source.as_str())),
                strings(rows.iter().map(|r| r.lang.as_str())),
                strings(rows.iter().map(|r| r.meta.as_str())),
            ],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let (id, text, source, lang, meta) = (
            str_col(path, b, col::ID)?,
            str_col(path, b, col::TEXT)?,
            str_col(path, b, col::SOURCE)?,
            str_col(path, b, col::LANG)?,
            str_col(path, b, col::META)?,
        );
        Ok(id
            .into_iter()
            .zip(text)
            .zip(source)
            .zip(lang)
            .zip(meta)
            .map(|((((id, text), source), lang), meta)| Document { id, text, source, lang, meta })
            .collect())
    }
}

/// A document with its class label (the `labeled` artifact).
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledDocument {
    pub doc: Document,
    pub label: String,
}

impl Artifact for LabeledDocument {
    const KIND: ArtifactKind = ArtifactKind::Labeled;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        batch(
            Self::KIND,
            vec![
                strings(rows.iter().map(|r| r.doc.id.as_str())),
                strings(rows.iter().map(|r| r.doc.text.as_str())),
                strings(rows.iter().map(|r| r.doc.source.as_str())),
                strings(rows.iter().map(|r| r.doc.lang.as_str())),
                strings(rows.iter().map(|r| r.doc.meta.as_str())),
                strings(rows.iter().map(|r| r.label.as_str())),
            ],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let docs = Document::from_batch(path, b)?;
        let labels = str_col(path, b, col::LABEL)?;
        Ok(docs.into_iter().zip(labels).map(|(doc, label)| LabeledDocument { doc, label }).collect())
    }
}

/// Longest `raw` kept in a reject; `raw_len` keeps the original length.
pub const REJECT_RAW_MAX: usize = 2000;

/// A record that a stage dropped, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub source: String,
    /// 1-based line (text, JSONL; for CSV the line where the record starts) or row (Parquet).
    pub position: u64,
    pub reason: String,
    /// The record, truncated to [`REJECT_RAW_MAX`] bytes.
    pub raw: String,
    /// The record's original length in bytes.
    pub raw_len: u64,
    /// The short key counts and reports group by: the data chain's rule
    /// (`gopher_enough_stop_words`, `exact_duplicate`, …), or
    /// [`Reject::INVALID`] for a record another stage could not use.
    pub rule: String,
    /// The record's language where the stage identified one (`und`: not
    /// identified), empty where it does not identify languages.
    pub lang: String,
}

impl Reject {
    pub fn new(source: &str, position: u64, reason: impl Into<String>, raw: &str) -> Self {
        let mut end = raw.len().min(REJECT_RAW_MAX);
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            source: source.to_string(),
            position,
            reason: reason.into(),
            raw: raw[..end].to_string(),
            raw_len: raw.len() as u64,
            rule: Self::INVALID.to_string(),
            lang: String::new(),
        }
    }

    /// The rule of a record a stage could not use (the default).
    pub const INVALID: &'static str = "invalid";

    /// The same reject counted under `rule`, in language `lang`.
    pub fn with_rule(mut self, rule: &str, lang: &str) -> Self {
        self.rule = rule.to_string();
        self.lang = lang.to_string();
        self
    }
}

impl Artifact for Reject {
    const KIND: ArtifactKind = ArtifactKind::Rejects;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        batch(
            Self::KIND,
            vec![
                strings(rows.iter().map(|r| r.source.as_str())),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.position))),
                strings(rows.iter().map(|r| r.reason.as_str())),
                strings(rows.iter().map(|r| r.raw.as_str())),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.raw_len))),
                strings(rows.iter().map(|r| r.rule.as_str())),
                strings(rows.iter().map(|r| r.lang.as_str())),
            ],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let source = str_col(path, b, col::SOURCE)?;
        let position = u64_col(path, b, col::POSITION)?;
        let reason = str_col(path, b, col::REASON)?;
        let raw = str_col(path, b, col::RAW)?;
        let raw_len = u64_col(path, b, col::RAW_LEN)?;
        let rule = str_col(path, b, col::RULE)?;
        let lang = str_col(path, b, col::LANG)?;
        Ok((0..source.len())
            .map(|i| Reject {
                source: source[i].clone(),
                position: position[i],
                reason: reason[i].clone(),
                raw: raw[i].clone(),
                raw_len: raw_len[i],
                rule: rule[i].clone(),
                lang: lang[i].clone(),
            })
            .collect())
    }
}

/// A document's token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub doc_id: String,
    pub ids: Vec<u32>,
}

impl TokenRow {
    /// Checks that every id is below `vocab_size` (ids from outside must not reach
    /// an embedding unchecked); `path` is for the error.
    pub fn check_vocab(rows: &[TokenRow], path: &Path, vocab_size: u64) -> Result<(), ArtifactError> {
        for (row, r) in rows.iter().enumerate() {
            if let Some(bad) = r.ids.iter().find(|&&t| u64::from(t) >= vocab_size) {
                return Err(ArtifactError::BadValue {
                    path: path.into(),
                    row,
                    problem: format!("doc {}: token id {bad} >= vocab_size {vocab_size}", r.doc_id),
                });
            }
        }
        Ok(())
    }
}

impl Artifact for TokenRow {
    const KIND: ArtifactKind = ArtifactKind::Tokens;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        let ids = list_column::<UInt32Type>(rows.iter().map(|r| r.ids.as_slice()));
        batch(Self::KIND, vec![strings(rows.iter().map(|r| r.doc_id.as_str())), ids])
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let doc_id = str_col(path, b, col::DOC_ID)?;
        let ids = list_col::<UInt32Type>(path, b, col::IDS)?;
        Ok(doc_id.into_iter().zip(ids).map(|(doc_id, ids)| TokenRow { doc_id, ids }).collect())
    }
}

/// A document's embedding vector.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRow {
    pub doc_id: String,
    pub vector: Vec<f32>,
}

impl Artifact for EmbeddingRow {
    const KIND: ArtifactKind = ArtifactKind::Embeddings;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        let vectors = list_column::<Float32Type>(rows.iter().map(|r| r.vector.as_slice()));
        batch(Self::KIND, vec![strings(rows.iter().map(|r| r.doc_id.as_str())), vectors])
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let doc_id = str_col(path, b, col::DOC_ID)?;
        let vectors = list_col::<Float32Type>(path, b, col::VECTOR)?;
        Ok(doc_id.into_iter().zip(vectors).map(|(doc_id, vector)| EmbeddingRow { doc_id, vector }).collect())
    }
}

/// A non-null list column of primitive items (`item` fields not nullable).
fn list_column<'a, T: ArrowPrimitiveType>(rows: impl ExactSizeIterator<Item = &'a [T::Native]>) -> ArrayRef {
    let mut list = ListBuilder::with_capacity(PrimitiveBuilder::<T>::new(), rows.len()).with_field(Arc::new(arrow_schema::Field::new(
        "item",
        T::DATA_TYPE,
        false,
    )));
    for row in rows {
        list.values().append_slice(row);
        list.append(true);
    }
    Arc::new(list.finish())
}

/// The rows of a list column of primitive items.
fn list_col<T: ArrowPrimitiveType>(path: &Path, b: &RecordBatch, name: &str) -> Result<Vec<Vec<T::Native>>, ArtifactError> {
    let list = column::<ListArray>(path, b, name)?;
    no_nulls(path, name, list)?;
    let values = list.values().as_any().downcast_ref::<PrimitiveArray<T>>().ok_or_else(|| ArtifactError::BadValue {
        path: path.into(),
        row: 0,
        problem: format!("`{name}` items are not {}", T::DATA_TYPE),
    })?;
    let offsets = list.value_offsets();
    Ok((0..list.len()).map(|i| values.values()[offsets[i] as usize..offsets[i + 1] as usize].to_vec()).collect())
}

/// One measured value: `name` at `step` of `stage`, on `split`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub stage: String,
    pub step: u64,
    pub name: String,
    pub value: f64,
    /// `train`, `val`, `test`, or `-` when not tied to a split.
    pub split: String,
}

impl MetricRow {
    pub fn new(stage: &str, step: u64, name: &str, value: f64, split: &str) -> Self {
        Self { stage: stage.into(), step, name: name.into(), value, split: split.into() }
    }
}

impl Artifact for MetricRow {
    const KIND: ArtifactKind = ArtifactKind::Metrics;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        batch(
            Self::KIND,
            vec![
                strings(rows.iter().map(|r| r.stage.as_str())),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.step))),
                strings(rows.iter().map(|r| r.name.as_str())),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
                strings(rows.iter().map(|r| r.split.as_str())),
            ],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let stage = str_col(path, b, col::STAGE)?;
        let step = u64_col(path, b, col::STEP)?;
        let name = str_col(path, b, col::NAME)?;
        let value = column::<Float64Array>(path, b, col::VALUE)?;
        no_nulls(path, col::VALUE, value)?;
        let split = str_col(path, b, col::SPLIT)?;
        Ok((0..stage.len())
            .map(|i| MetricRow {
                stage: stage[i].clone(),
                step: step[i],
                name: name[i].clone(),
                value: value.value(i),
                split: split[i].clone(),
            })
            .collect())
    }
}

/// A model's completion of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt: String,
    pub completion: String,
    pub model: String,
    pub reward: Option<f32>,
}

impl Artifact for Generation {
    const KIND: ArtifactKind = ArtifactKind::Generations;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        batch(
            Self::KIND,
            vec![
                strings(rows.iter().map(|r| r.prompt.as_str())),
                strings(rows.iter().map(|r| r.completion.as_str())),
                strings(rows.iter().map(|r| r.model.as_str())),
                Arc::new(Float32Array::from(rows.iter().map(|r| r.reward).collect::<Vec<_>>())),
            ],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let prompt = str_col(path, b, col::PROMPT)?;
        let completion = str_col(path, b, col::COMPLETION)?;
        let model = str_col(path, b, col::MODEL)?;
        let reward = column::<Float32Array>(path, b, col::REWARD)?;
        Ok((0..prompt.len())
            .map(|i| Generation {
                prompt: prompt[i].clone(),
                completion: completion[i].clone(),
                model: model[i].clone(),
                reward: (!reward.is_null(i)).then(|| reward.value(i)),
            })
            .collect())
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A supervised fine-tuning example: a conversation whose assistant turns are
/// the targets (a prompt/response pair is a two-message conversation).
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub id: String,
    pub messages: Vec<Message>,
    /// `file:position` it came from.
    pub source: String,
}

impl Artifact for SftExample {
    const KIND: ArtifactKind = ArtifactKind::SftExamples;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        let all: Vec<&Message> = rows.iter().flat_map(|r| r.messages.iter()).collect();
        let structs = StructArray::new(
            crate::schema::message_fields(),
            vec![strings(all.iter().map(|m| m.role.as_str())), strings(all.iter().map(|m| m.content.as_str()))],
            None,
        );
        let item = Arc::new(arrow_schema::Field::new("item", arrow_schema::DataType::Struct(crate::schema::message_fields()), false));
        let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.messages.len()));
        let messages = ListArray::new(item, offsets, Arc::new(structs), None);
        batch(
            Self::KIND,
            vec![strings(rows.iter().map(|r| r.id.as_str())), Arc::new(messages), strings(rows.iter().map(|r| r.source.as_str()))],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let id = str_col(path, b, col::ID)?;
        let source = str_col(path, b, col::SOURCE)?;
        let list = column::<ListArray>(path, b, col::MESSAGES)?;
        no_nulls(path, col::MESSAGES, list)?;
        let bad = |problem: &str| ArtifactError::BadValue { path: path.into(), row: 0, problem: problem.to_string() };
        let structs = list.values().as_any().downcast_ref::<StructArray>().ok_or_else(|| bad("`messages` items are not structs"))?;
        let field = |name: &str| {
            structs
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| bad(&format!("`messages` items lack a string `{name}`")))
        };
        let (role, content) = (field(col::ROLE)?, field(col::CONTENT)?);
        let offsets = list.value_offsets();
        Ok((0..list.len())
            .map(|i| SftExample {
                id: id[i].clone(),
                messages: (offsets[i] as usize..offsets[i + 1] as usize)
                    .map(|j| Message { role: role.value(j).to_string(), content: content.value(j).to_string() })
                    .collect(),
                source: source[i].clone(),
            })
            .collect())
    }
}

/// A human preference between two answers to one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Who judged (an API key's label, a person's name).
    pub annotator: String,
    /// Where the pair came from (`serve:MODEL:COMPLETION_ID`, a file).
    pub source: String,
}

impl Artifact for Preference {
    const KIND: ArtifactKind = ArtifactKind::Preferences;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        batch(
            Self::KIND,
            vec![
                strings(rows.iter().map(|r| r.prompt.as_str())),
                strings(rows.iter().map(|r| r.chosen.as_str())),
                strings(rows.iter().map(|r| r.rejected.as_str())),
                strings(rows.iter().map(|r| r.annotator.as_str())),
                strings(rows.iter().map(|r| r.source.as_str())),
            ],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let (prompt, chosen, rejected) = (str_col(path, b, col::PROMPT)?, str_col(path, b, col::CHOSEN)?, str_col(path, b, col::REJECTED)?);
        let (annotator, source) = (str_col(path, b, col::ANNOTATOR)?, str_col(path, b, col::SOURCE)?);
        Ok((0..prompt.len())
            .map(|i| Preference {
                prompt: prompt[i].clone(),
                chosen: chosen[i].clone(),
                rejected: rejected[i].clone(),
                annotator: annotator[i].clone(),
                source: source[i].clone(),
            })
            .collect())
    }
}

/// A thumbs up (+1) or down (-1) on one completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rating {
    /// The completion's id (`cmpl-…`, `chatcmpl-…`).
    pub id: String,
    pub prompt: String,
    pub completion: String,
    /// The model that wrote it (`id@hash`).
    pub model: String,
    pub rating: i8,
    pub annotator: String,
}

impl Artifact for Rating {
    const KIND: ArtifactKind = ArtifactKind::Ratings;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        batch(
            Self::KIND,
            vec![
                strings(rows.iter().map(|r| r.id.as_str())),
                strings(rows.iter().map(|r| r.prompt.as_str())),
                strings(rows.iter().map(|r| r.completion.as_str())),
                strings(rows.iter().map(|r| r.model.as_str())),
                Arc::new(Int8Array::from(rows.iter().map(|r| r.rating).collect::<Vec<_>>())),
                strings(rows.iter().map(|r| r.annotator.as_str())),
            ],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let (id, prompt, completion) = (str_col(path, b, col::ID)?, str_col(path, b, col::PROMPT)?, str_col(path, b, col::COMPLETION)?);
        let (model, annotator) = (str_col(path, b, col::MODEL)?, str_col(path, b, col::ANNOTATOR)?);
        let rating = column::<Int8Array>(path, b, col::RATING)?;
        no_nulls(path, col::RATING, rating)?;
        Ok((0..id.len())
            .map(|i| Rating {
                id: id[i].clone(),
                prompt: prompt[i].clone(),
                completion: completion[i].clone(),
                model: model[i].clone(),
                rating: rating.value(i),
                annotator: annotator[i].clone(),
            })
            .collect())
    }
}

/// Summed log-probabilities of a preference pair's two answers under one model.
#[derive(Debug, Clone, PartialEq)]
pub struct PairLogps {
    /// Content hash of (prompt, chosen, rejected).
    pub key: String,
    pub chosen_logp: f64,
    pub rejected_logp: f64,
    pub chosen_tokens: u64,
    pub rejected_tokens: u64,
}

impl Artifact for PairLogps {
    const KIND: ArtifactKind = ArtifactKind::PairLogps;
    fn to_batch(rows: &[Self]) -> RecordBatch {
        batch(
            Self::KIND,
            vec![
                strings(rows.iter().map(|r| r.key.as_str())),
                Arc::new(Float64Array::from(rows.iter().map(|r| r.chosen_logp).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(rows.iter().map(|r| r.rejected_logp).collect::<Vec<_>>())),
                Arc::new(UInt64Array::from(rows.iter().map(|r| r.chosen_tokens).collect::<Vec<_>>())),
                Arc::new(UInt64Array::from(rows.iter().map(|r| r.rejected_tokens).collect::<Vec<_>>())),
            ],
        )
    }
    fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<Self>, ArtifactError> {
        let key = str_col(path, b, col::KEY)?;
        let f64s = |name: &str| -> Result<Vec<f64>, ArtifactError> {
            let a = column::<Float64Array>(path, b, name)?;
            no_nulls(path, name, a)?;
            Ok(a.values().to_vec())
        };
        let (c, r) = (f64s(col::CHOSEN_LOGP)?, f64s(col::REJECTED_LOGP)?);
        let (ct, rt) = (u64_col(path, b, col::CHOSEN_TOKENS)?, u64_col(path, b, col::REJECTED_TOKENS)?);
        Ok((0..key.len())
            .map(|i| PairLogps {
                key: key[i].clone(),
                chosen_logp: c[i],
                rejected_logp: r[i],
                chosen_tokens: ct[i],
                rejected_tokens: rt[i],
            })
            .collect())
    }
}
