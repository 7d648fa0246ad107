//! Arrow IPC files: atomic writes and schema-checked reads.

use crate::schema::{describe_fields, meta, ArtifactKind};
use arrow_array::RecordBatch;
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{ArrowError, Schema};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of artifact I/O; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a readable Arrow IPC file: {source}")]
    Arrow { path: PathBuf, source: ArrowError },
    #[error("{path}: expected a `{expected}` artifact, found schema `{found}`")]
    WrongKind { path: PathBuf, expected: &'static str, found: String },
    #[error("{path}: `{kind}` schema mismatch: expected columns [{expected}], found [{found}]")]
    SchemaMismatch { path: PathBuf, kind: &'static str, expected: String, found: String },
    #[error("{path}: row {row}: {problem}")]
    BadValue { path: PathBuf, row: usize, problem: String },
}

/// Writes `batches` as an artifact of `kind`, atomically (temp file + rename).
/// Each batch's columns must match the kind's schema.
pub fn write_artifact(
    path: &Path,
    kind: ArtifactKind,
    stage: &str,
    config_hash: &str,
    batches: &[RecordBatch],
) -> Result<(), ArtifactError> {
    let mut writer = ArtifactWriter::create(path, kind, stage, config_hash)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()
}

/// Reads an artifact, checking first that it is of `kind` and has its columns.
pub fn read_artifact(path: &Path, kind: ArtifactKind) -> Result<Vec<RecordBatch>, ArtifactError> {
    let file = File::open(path).map_err(|source| ArtifactError::Io { path: path.into(), source })?;
    let reader = FileReader::try_new(BufReader::new(file), None).map_err(|source| ArtifactError::Arrow { path: path.into(), source })?;
    check_schema(path, kind, &reader.schema())?;
    reader.map(|b| b.map_err(|source| ArtifactError::Arrow { path: path.into(), source })).collect()
}

/// Reads an artifact batch by batch (bounded memory), schema-checked first.
pub fn read_artifact_batches(
    path: &Path,
    kind: ArtifactKind,
) -> Result<impl Iterator<Item = Result<RecordBatch, ArtifactError>>, ArtifactError> {
    let file = File::open(path).map_err(|source| ArtifactError::Io { path: path.into(), source })?;
    let reader = FileReader::try_new(BufReader::new(file), None).map_err(|source| ArtifactError::Arrow { path: path.into(), source })?;
    check_schema(path, kind, &reader.schema())?;
    let path = path.to_path_buf();
    Ok(reader.map(move |b| b.map_err(|source| ArtifactError::Arrow { path: path.clone(), source })))
}

/// Checks that `found` is an artifact of `kind`: its metadata names the kind and
/// every expected column is there with the expected type.
pub fn check_schema(path: &Path, kind: ArtifactKind, found: &Schema) -> Result<(), ArtifactError> {
    if let Some(name) = found.metadata().get(meta::SCHEMA) {
        // A labeled file is a documents file with one more column.
        let superset = kind == ArtifactKind::Documents && name == ArtifactKind::Labeled.name();
        if name != kind.name() && !superset {
            return Err(ArtifactError::WrongKind { path: path.into(), expected: kind.name(), found: name.clone() });
        }
    }
    let expected = kind.fields();
    let ok =
        expected.iter().all(|e| found.field_with_name(e.name()).map(|f| f.data_type().equals_datatype(e.data_type())).unwrap_or(false));
    if ok {
        Ok(())
    } else {
        Err(ArtifactError::SchemaMismatch {
            path: path.into(),
            kind: kind.name(),
            expected: describe_fields(&expected),
            found: describe_fields(found.fields().iter().map(|f| f.as_ref())),
        })
    }
}

/// An artifact written batch by batch, for outputs larger than memory: rows go
/// to a temporary sibling, which [`ArtifactWriter::finish`] renames into place.
/// Dropped without `finish` (an error, a panic), the temporary file is removed,
/// so a crash never leaves a half-written artifact.
pub struct ArtifactWriter {
    path: PathBuf,
    tmp: PathBuf,
    schema: Arc<Schema>,
    writer: Option<FileWriter<std::io::BufWriter<File>>>,
    rows: usize,
    /// Renamed into place: nothing to clean up.
    committed: bool,
}

impl ArtifactWriter {
    pub fn create(path: &Path, kind: ArtifactKind, stage: &str, config_hash: &str) -> Result<Self, ArtifactError> {
        let io_err = |source| ArtifactError::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let tmp = crate::fsutil::temp_sibling(path);
        let schema = Arc::new(kind.schema(stage, config_hash));
        let file = std::io::BufWriter::new(File::create(&tmp).map_err(io_err)?);
        let writer = FileWriter::try_new(file, &schema).map_err(|source| {
            let _cleanup = std::fs::remove_file(&tmp);
            ArtifactError::Arrow { path: path.into(), source }
        })?;
        Ok(Self { path: path.to_path_buf(), tmp, schema, writer: Some(writer), rows: 0, committed: false })
    }

    /// Appends one batch (its columns must be the kind's).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ArtifactError> {
        let arrow_err = |source| ArtifactError::Arrow { path: self.path.clone(), source };
        let batch = batch.clone().with_schema(self.schema.clone()).map_err(arrow_err)?;
        if let Some(w) = self.writer.as_mut() {
            w.write(&batch).map_err(|source| ArtifactError::Arrow { path: self.path.clone(), source })?;
        }
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Finishes the file, syncs it and renames it into place.
    pub fn finish(mut self) -> Result<(), ArtifactError> {
        let io_err = |source| ArtifactError::Io { path: self.path.clone(), source };
        let Some(mut w) = self.writer.take() else { return Ok(()) };
        w.finish().map_err(|source| ArtifactError::Arrow { path: self.path.clone(), source })?;
        let mut file = w.into_inner().map_err(|source| ArtifactError::Arrow { path: self.path.clone(), source })?;
        std::io::Write::flush(&mut file).map_err(io_err)?;
        file.get_ref().sync_all().map_err(io_err)?;
        std::fs::rename(&self.tmp, &self.path).map_err(io_err)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for ArtifactWriter {
    /// Not finished, or finishing failed: the temporary file goes.
    fn drop(&mut self) {
        if !self.committed {
            let _cleanup = std::fs::remove_file(&self.tmp);
        }
    }
}
