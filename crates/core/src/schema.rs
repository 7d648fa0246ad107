//! Arrow schemas of the artifacts that stages exchange.
//!
//! Column names live here and nowhere else: other crates use the [`col`] constants.

use arrow_schema::{DataType, Field, Schema};
use std::collections::HashMap;
use std::sync::Arc;

/// Version of the artifact layout; bumped when a column changes meaning.
pub const SCHEMA_VERSION: &str = "1";

/// Schema-metadata keys written into every artifact.
pub mod meta {
    pub const SCHEMA: &str = "forja.schema";
    pub const VERSION: &str = "forja.version";
    pub const STAGE: &str = "forja.stage";
    pub const CONFIG_HASH: &str = "forja.config_hash";
}

/// Column names.
pub mod col {
    pub const ID: &str = "id";
    pub const TEXT: &str = "text";
    pub const SOURCE: &str = "source";
    pub const LANG: &str = "lang";
    pub const META: &str = "meta";
    /// The class of a labeled document.
    pub const LABEL: &str = "label";
    pub const POSITION: &str = "position";
    pub const REASON: &str = "reason";
    pub const RAW: &str = "raw";
    pub const RAW_LEN: &str = "raw_len";
    pub const RULE: &str = "rule";
    pub const DOC_ID: &str = "doc_id";
    pub const IDS: &str = "ids";
    pub const STAGE: &str = "stage";
    pub const STEP: &str = "step";
    pub const NAME: &str = "name";
    pub const VALUE: &str = "value";
    pub const SPLIT: &str = "split";
    pub const PROMPT: &str = "prompt";
    pub const COMPLETION: &str = "completion";
    pub const MODEL: &str = "model";
    pub const REWARD: &str = "reward";
    pub const VECTOR: &str = "vector";
    pub const MESSAGES: &str = "messages";
    pub const ROLE: &str = "role";
    pub const CONTENT: &str = "content";
    pub const CHOSEN: &str = "chosen";
    pub const REJECTED: &str = "rejected";
    pub const ANNOTATOR: &str = "annotator";
    pub const RATING: &str = "rating";
    pub const KEY: &str = "key";
    pub const CHOSEN_LOGP: &str = "chosen_logp";
    pub const REJECTED_LOGP: &str = "rejected_logp";
    pub const CHOSEN_TOKENS: &str = "chosen_tokens";
    pub const REJECTED_TOKENS: &str = "rejected_tokens";
}

/// The `messages` column of `sft_examples`: `list<struct<role, content>>`.
pub fn message_fields() -> arrow_schema::Fields {
    arrow_schema::Fields::from(vec![Field::new(col::ROLE, DataType::Utf8, false), Field::new(col::CONTENT, DataType::Utf8, false)])
}

/// The kinds of artifact that stages exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    Documents,
    /// Documents with a class label: the documents columns plus `label`; read
    /// wherever documents are.
    Labeled,
    Rejects,
    Tokens,
    Metrics,
    Generations,
    Embeddings,
    SftExamples,
    Preferences,
    Ratings,
    PairLogps,
}

impl ArtifactKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Documents => "documents",
            Self::Labeled => "labeled",
            Self::Rejects => "rejects",
            Self::Tokens => "tokens",
            Self::Metrics => "metrics",
            Self::Generations => "generations",
            Self::Embeddings => "embeddings",
            Self::SftExamples => "sft_examples",
            Self::Preferences => "preferences",
            Self::Ratings => "ratings",
            Self::PairLogps => "pair_logps",
        }
    }

    /// The columns every file of this kind must have (extra columns are allowed).
    pub fn fields(self) -> Vec<Field> {
        use col::*;
        let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
        match self {
            Self::Documents => vec![utf8(ID), utf8(TEXT), utf8(SOURCE), utf8(LANG), utf8(META)],
            Self::Labeled => vec![utf8(ID), utf8(TEXT), utf8(SOURCE), utf8(LANG), utf8(META), utf8(LABEL)],
            Self::Rejects => vec![
                utf8(SOURCE),
                Field::new(POSITION, DataType::UInt64, false),
                utf8(REASON),
                utf8(RAW),
                Field::new(RAW_LEN, DataType::UInt64, false),
                utf8(RULE),
                utf8(LANG),
            ],
            Self::Tokens => {
                vec![utf8(DOC_ID), Field::new(IDS, DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))), false)]
            }
            Self::Metrics => vec![
                utf8(STAGE),
                Field::new(STEP, DataType::UInt64, false),
                utf8(NAME),
                Field::new(VALUE, DataType::Float64, false),
                utf8(SPLIT),
            ],
            Self::Generations => vec![utf8(PROMPT), utf8(COMPLETION), utf8(MODEL), Field::new(REWARD, DataType::Float32, true)],
            Self::Embeddings => {
                vec![utf8(DOC_ID), Field::new(VECTOR, DataType::List(Arc::new(Field::new("item", DataType::Float32, false))), false)]
            }
            // A conversation: system / user / assistant turns in order.
            Self::SftExamples => vec![
                utf8(ID),
                Field::new(MESSAGES, DataType::List(Arc::new(Field::new("item", DataType::Struct(message_fields()), false))), false),
                utf8(SOURCE),
            ],
            // A person preferred `chosen` to `rejected` as the answer to `prompt`.
            Self::Preferences => vec![utf8(PROMPT), utf8(CHOSEN), utf8(REJECTED), utf8(ANNOTATOR), utf8(SOURCE)],
            // Thumbs up (+1) or down (-1) on one completion of a served model.
            Self::Ratings => {
                vec![utf8(ID), utf8(PROMPT), utf8(COMPLETION), utf8(MODEL), Field::new(RATING, DataType::Int8, false), utf8(ANNOTATOR)]
            }
            // A model's summed log-probabilities of both answers of each
            // preference pair (DPO's reference, computed once); `key` is the
            // pair's content hash, so a table is never applied to other pairs.
            Self::PairLogps => vec![
                utf8(KEY),
                Field::new(CHOSEN_LOGP, DataType::Float64, false),
                Field::new(REJECTED_LOGP, DataType::Float64, false),
                Field::new(CHOSEN_TOKENS, DataType::UInt64, false),
                Field::new(REJECTED_TOKENS, DataType::UInt64, false),
            ],
        }
    }

    /// The full schema, with the forja metadata for `stage` and `config_hash`.
    pub fn schema(self, stage: &str, config_hash: &str) -> Schema {
        let metadata = HashMap::from([
            (meta::SCHEMA.to_string(), self.name().to_string()),
            (meta::VERSION.to_string(), SCHEMA_VERSION.to_string()),
            (meta::STAGE.to_string(), stage.to_string()),
            (meta::CONFIG_HASH.to_string(), config_hash.to_string()),
        ]);
        Schema::new_with_metadata(self.fields(), metadata)
    }
}

/// Renders columns as `name: type` for error messages.
pub fn describe_fields<'a>(fields: impl IntoIterator<Item = &'a Field>) -> String {
    fields.into_iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
}
