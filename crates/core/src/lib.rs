//! forja-core: the contracts between stages.
//!
//! - [`schema`]: the Arrow schema of every artifact, with column-name constants;
//! - [`ipc`]: atomic Arrow IPC writes and schema-checked reads;
//! - [`artifacts`]: typed rows (documents, rejects, tokens, metrics, generations)
//!   and sft examples) and their conversion to and from record batches;
//! - [`hash`] and [`manifest`]: content hashes and the run manifest;
//! - [`fsutil`]: atomic file and directory writes;
//! - [`metric`]: metric and split names;
//! - [`stage`]: the typed stage interface, its JSON/CLI adapter, the stage binaries' CLI;
//! - [`token_counts`]: how often each token id occurs in a model's training data
//!   (written into model folders, read by the server's drift monitor).
//!
//! This crate never depends on libtorch.

pub mod artifacts;
pub mod fsutil;
pub mod hash;
pub mod ipc;
pub mod launch;
pub mod manifest;
pub mod metric;
pub mod params;
pub mod schema;
pub mod stage;
pub mod token_counts;

pub use artifacts::{
    Artifact, Document, EmbeddingRow, Generation, LabeledDocument, Message, MetricRow, PairLogps, Preference, Rating, Reject, SftExample,
    TokenRow,
};
pub use ipc::{read_artifact, write_artifact, ArtifactError};
pub use schema::ArtifactKind;
