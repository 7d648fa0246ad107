//! Build-time code hashes for stage cache keys.
//!
//! A stage crate's `build.rs` calls [`emit`], which hashes the crate's own files
//! (`Cargo.toml`, `build.rs`, `src/`) and those of every workspace crate it
//! depends on, transitively, together with `Cargo.lock` and the workspace
//! `Cargo.toml` (external versions, profiles), and sets `FORJA_CODE_HASH` for the
//! crate (`env!("FORJA_CODE_HASH")`). An edit to a crate the stage does not use
//! (the orchestrator, another stage) leaves the hash, and so the stage's cached
//! results and checkpoints, as they were; any change to its own code changes it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Computes the hash for the crate being built and tells cargo about it.
/// Panics (failing the build, as a build script should) when the workspace
/// cannot be read.
pub fn emit() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let (hash, watched) = code_hash(&manifest_dir).expect("forja-buildhash: reading the workspace");
    for path in watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-env=FORJA_CODE_HASH={hash}");
}

/// The hash of `crate_dir`'s code and its workspace dependencies', and the paths
/// it was computed from.
pub fn code_hash(crate_dir: &Path) -> Result<(String, Vec<PathBuf>), String> {
    let root = workspace_root(crate_dir)?;
    let members = workspace_paths(&root)?;
    let mut crates = BTreeSet::new();
    collect(crate_dir, &members, &mut crates)?;
    let mut files = Vec::new();
    let mut watched = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    for dir in &crates {
        for name in ["Cargo.toml", "build.rs"] {
            if dir.join(name).exists() {
                files.push(dir.join(name));
            }
        }
        watched.push(dir.join("Cargo.toml"));
        if dir.join("src").exists() {
            list_files(&dir.join("src"), &mut files)?;
            watched.push(dir.join("src"));
        }
    }
    files.extend(watched[..2].iter().filter(|p| p.exists()).cloned());
    files.sort();
    let mut h = blake3::Hasher::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update(&[0]);
        h.update(&fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?);
        h.update(&[0]);
    }
    Ok((h.finalize().to_hex()[..16].to_string(), watched))
}

fn workspace_root(start: &Path) -> Result<PathBuf, String> {
    let mut dir = start.to_path_buf();
    loop {
        let manifest = dir.join("Cargo.toml");
        if manifest.exists() && read_toml(&manifest)?.contains_key("workspace") {
            return Ok(dir);
        }
        if !dir.pop() {
            return Err(format!("no workspace Cargo.toml above {}", start.display()));
        }
    }
}

/// Package name → folder, from `[workspace.dependencies]` entries with a `path`.
fn workspace_paths(root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let table = read_toml(&root.join("Cargo.toml"))?;
    let deps = table.get("workspace").and_then(|w| w.get("dependencies")).and_then(|d| d.as_table());
    Ok(deps.into_iter().flatten().filter_map(|(name, spec)| Some((name.clone(), root.join(spec.get("path")?.as_str()?)))).collect())
}

/// `dir` and every workspace crate it depends on (normal and build dependencies).
fn collect(dir: &Path, members: &[(String, PathBuf)], out: &mut BTreeSet<PathBuf>) -> Result<(), String> {
    if !out.insert(dir.to_path_buf()) {
        return Ok(());
    }
    let table = read_toml(&dir.join("Cargo.toml"))?;
    for section in ["dependencies", "build-dependencies"] {
        let Some(deps) = table.get(section).and_then(|d| d.as_table()) else { continue };
        for name in deps.keys() {
            if let Some((_, path)) = members.iter().find(|(n, _)| n == name) {
                collect(path, members, out)?;
            }
        }
    }
    Ok(())
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            list_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn read_toml(path: &Path) -> Result<toml::Table, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.parse().map_err(|e| format!("{}: {e}", path.display()))
}
