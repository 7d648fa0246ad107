//! The run manifest: every stage of a run with the content hashes of its inputs,
//! parameters and outputs, written as `runs/NAME/manifest.json`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A file or folder with its content hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HashedPath {
    pub path: String,
    pub blake3: String,
}

impl HashedPath {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        Ok(Self { path: path.display().to_string(), blake3: crate::hash::hash_path(path)? })
    }
}

/// What happened to a stage in a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Ran,
    Skipped,
    Failed,
}

/// One stage's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: String,
    pub status: StageStatus,
    /// Hash of kind, parameters, input hashes and program version: the cache key.
    pub key: String,
    pub params: serde_json::Value,
    /// Hash of `params` (canonical JSON).
    pub params_hash: String,
    pub inputs: BTreeMap<String, HashedPath>,
    pub outputs: BTreeMap<String, HashedPath>,
    pub wall_s: f64,
    pub error: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RunManifest {
    pub pipeline: String,
    pub pipeline_file: String,
    pub program_version: String,
    pub seed: u64,
    pub device: String,
    pub started_unix_s: u64,
    pub stages: Vec<StageRecord>,
}

impl RunManifest {
    /// Writes the manifest atomically as pretty JSON.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::fsutil::atomic_write(path, text.as_bytes())?;
        Ok(())
    }
}
