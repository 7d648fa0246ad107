//! Atomic writes: write under a temporary name in the same folder, then rename,
//! so a crash never leaves a half-written file or folder that a later stage accepts.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A temporary sibling of `path` (same folder, so the rename is atomic).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn ensure_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fs::create_dir_all(p),
        _ => Ok(()),
    }
}

/// Writes a file atomically through `fill`, which receives a buffered writer.
pub fn atomic_write_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
{
    ensure_parent(path)?;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut w = io::BufWriter::new(fs::File::create(&tmp)?);
        fill(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _cleanup = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// Builds a folder atomically: `fill` writes into a temporary folder, which then
/// replaces `dir` (an existing `dir` is removed first).
pub fn atomic_dir<F, T>(dir: &Path, fill: F) -> anyhow::Result<T>
where
    F: FnOnce(&Path) -> anyhow::Result<T>,
{
    ensure_parent(dir)?;
    let tmp = temp_sibling(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    let value = match fill(&tmp) {
        Ok(v) => v,
        Err(e) => {
            let _cleanup = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if dir.exists() {
        let old = dir.with_file_name(format!(
            ".{}.old-{}",
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id()
        ));
        fs::rename(dir, &old)?;
        fs::rename(&tmp, dir)?;
        fs::remove_dir_all(&old)?;
    } else {
        fs::rename(&tmp, dir)?;
    }
    Ok(value)
}
