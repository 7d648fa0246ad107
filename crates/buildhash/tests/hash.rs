#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! The code hash follows exactly the crates a crate depends on.

use forja_buildhash::code_hash;
use std::fs;
use std::path::Path;

/// A workspace: `core`; `stage` depends on `core`; `cli` depends on both.
fn workspace(root: &Path) {
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    write(
        "Cargo.toml",
        "[workspace]\nmembers = [\"crates/*\"]\n[workspace.dependencies]\nx-core = { path = \"crates/core\" }\nx-stage = { path = \"crates/stage\" }\nx-cli = { path = \"crates/cli\" }\nserde = \"1\"\n",
    );
    write("Cargo.lock", "# lock\n");
    write("crates/core/Cargo.toml", "[package]\nname = \"x-core\"\n[dependencies]\nserde.workspace = true\n");
    write("crates/core/src/lib.rs", "pub fn core() {}\n");
    write("crates/stage/Cargo.toml", "[package]\nname = \"x-stage\"\n[dependencies]\nx-core.workspace = true\n");
    write("crates/stage/src/lib.rs", "pub fn stage() {}\n");
    write("crates/stage/src/deep/mod.rs", "pub fn deep() {}\n");
    write("crates/cli/Cargo.toml", "[package]\nname = \"x-cli\"\n[dependencies]\nx-core.workspace = true\nx-stage.workspace = true\n");
    write("crates/cli/src/main.rs", "fn main() {}\n");
}

fn hash(root: &Path, krate: &str) -> String {
    code_hash(&root.join("crates").join(krate)).unwrap().0
}

#[test]
fn an_edit_changes_the_hash_of_its_crate_and_its_dependents_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    workspace(root);
    let (core, stage, cli) = (hash(root, "core"), hash(root, "stage"), hash(root, "cli"));
    assert_eq!(hash(root, "stage"), stage, "deterministic");

    // The CLI (the orchestrator) changes: the stage keeps its hash.
    fs::write(root.join("crates/cli/src/main.rs"), "fn main() { println!(); }\n").unwrap();
    assert_eq!(hash(root, "stage"), stage);
    assert_eq!(hash(root, "core"), core);
    assert_ne!(hash(root, "cli"), cli);

    // The stage's own code, even a nested file, changes its hash and its dependents'.
    fs::write(root.join("crates/stage/src/deep/mod.rs"), "pub fn deep() { }\n").unwrap();
    let stage2 = hash(root, "stage");
    assert_ne!(stage2, stage);
    assert_eq!(hash(root, "core"), core);

    // A crate it depends on changes it too.
    fs::write(root.join("crates/core/src/lib.rs"), "pub fn core() { }\n").unwrap();
    assert_ne!(hash(root, "stage"), stage2);

    // So do external versions (Cargo.lock).
    let stage3 = hash(root, "stage");
    fs::write(root.join("Cargo.lock"), "# lock 2\n").unwrap();
    assert_ne!(hash(root, "stage"), stage3);
}

#[test]
fn the_paths_watched_cover_every_source_folder() {
    let dir = tempfile::tempdir().unwrap();
    workspace(dir.path());
    let (_, watched) = code_hash(&dir.path().join("crates/stage")).unwrap();
    for p in ["crates/stage/src", "crates/core/src", "Cargo.lock"] {
        assert!(watched.contains(&dir.path().join(p)), "{p} not watched: {watched:?}");
    }
    assert!(!watched.contains(&dir.path().join("crates/cli/src")));
}
