//! Content hashes (BLAKE3, hex) of files, folders and parameter sets.

use serde::Serialize;
use std::fs;
use std::io;
use std::path::Path;

/// Hash of a file's bytes, or of a folder's files (relative names and contents, sorted).
pub fn hash_path(path: &Path) -> io::Result<String> {
    let meta = fs::metadata(path)?;
    if meta.is_dir() {
        let mut files = Vec::new();
        collect_files(path, path, &mut files)?;
        files.sort();
        let mut h = blake3::Hasher::new();
        for rel in files {
            let file_hash = hash_file(&path.join(&rel))?;
            h.update(rel.as_bytes());
            h.update(&[0]);
            h.update(file_hash.as_bytes());
        }
        Ok(h.finalize().to_hex().to_string())
    } else {
        hash_file(path)
    }
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(fs::File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // temporaries of atomic writes
        }
        if entry.file_type()?.is_dir() {
            collect_files(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// Hash of bytes.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Hash of a serialisable value through canonical JSON (object keys sorted).
pub fn hash_json<T: Serialize>(value: &T) -> String {
    let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    hash_bytes(canonical_json(&v).as_bytes())
}

/// JSON text with object keys sorted at every level.
pub fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            let body: Vec<String> = keys.into_iter().map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k]))).collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => {
            format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(","))
        }
        other => other.to_string(),
    }
}

/// Version of the running program: package version and a hash of the executable,
/// so results of an older build are never taken for this one's. Computed once.
pub fn program_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            let exe = std::env::current_exe().ok().and_then(|p| hash_path(&p).ok()).unwrap_or_default();
            format!("{}+{}", env!("CARGO_PKG_VERSION"), &exe[..exe.len().min(16)])
        })
        .clone()
}
