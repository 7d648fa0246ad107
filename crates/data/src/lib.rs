//! forja-data: collection and preparation of training data.
//!
//! Readers ([`read`]), cleaning and exact de-duplication ([`clean`]), deterministic
//! splits ([`split`]), tokenizers ([`tokenizer`]) and the stages that compose them
//! ([`stages`]). Never depends on libtorch.

pub mod calibrate;
pub mod clean;
pub mod corpus;
pub mod lang;
pub mod minhash;
pub mod pii;
pub mod profile;
pub mod quality;
pub mod read;
pub mod report;
pub mod split;
pub mod stages;
pub mod web;
/// Tokenizers live in their own crate, re-exported here.
pub use forja_tokenizer as tokenizer;

pub use stages::STAGES;
