#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! The workspace's dependency rules (ARCHITECTURE.md, "Dependency rules"),
//! checked on `cargo metadata` and on every member's `Cargo.toml`:
//!
//! - the trainers (`pretrain`, `sft`, `rlhf`) never depend on each other;
//! - `serve` and `eval` depend on no trainer and not on `data`;
//! - `model` and `train` depend on no stage crate (`data`, a trainer, `eval`, `serve`);
//! - `core`, `meter`, `render`, `frame`, `buildhash`, `tokenizer` and `data` depend on no
//!   other forja crate than these, and build without libtorch (no `tch` / `torch-sys` among their
//!   normal and build dependencies, transitively);
//! - only the orchestrator (`forja`) and the benchmarks depend on `serve`,
//!   and nothing depends on them: they are the only crates that reach everything;
//! - every dependency of every member, of any kind, is declared once in
//!   `[workspace.dependencies]` and used with `workspace = true`.
//!
//! Normal, dev and build dependencies all count. Each rule is a pure function
//! of the graph, and the last tests feed it forbidden edges to show that they
//! are named.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

const TRAINERS: [&str; 3] = ["forja-pretrain", "forja-sft", "forja-rlhf"];
const APPS: [&str; 2] = ["forja", "forja-benches"];
/// Crates that build without libtorch.
const NO_TORCH: [&str; 7] =
    ["forja-core", "forja-meter", "forja-render", "forja-frame", "forja-buildhash", "forja-tokenizer", "forja-data"];
const TORCH: [&str; 2] = ["tch", "torch-sys"];

/// A dependency between two workspace members.
#[derive(Debug, Clone)]
struct Edge {
    from: String,
    to: String,
    /// `normal`, `dev` or `build`.
    kind: String,
}

fn edge(from: &str, to: &str, kind: &str) -> Edge {
    Edge { from: from.into(), to: to.into(), kind: kind.into() }
}

/// Why the dependency `from → to` is forbidden, if it is.
fn forbidden(from: &str, to: &str) -> Option<&'static str> {
    let trainer = |c: &str| TRAINERS.contains(&c);
    if APPS.contains(&to) {
        return Some("nothing depends on the orchestrator or the benchmarks");
    }
    if APPS.contains(&from) {
        return None;
    }
    if to == "forja-serve" {
        return Some("only the orchestrator and the benchmarks depend on serve");
    }
    if trainer(from) && trainer(to) {
        return Some("trainers never depend on each other");
    }
    if matches!(from, "forja-serve" | "forja-eval") && (trainer(to) || to == "forja-data") {
        return Some("serve and eval depend on no trainer and not on data");
    }
    if matches!(from, "forja-model" | "forja-train") && (trainer(to) || matches!(to, "forja-data" | "forja-eval")) {
        return Some("model and train depend on no stage crate");
    }
    if from == "forja-dist" && to != "forja-core" {
        return Some("dist depends only on core (the engine calls it, not the other way)");
    }
    if NO_TORCH.contains(&from) && !NO_TORCH.contains(&to) {
        return Some("core, meter, render, frame, buildhash, tokenizer and data depend only on each other (they build without libtorch)");
    }
    None
}

/// Every forbidden edge, one line each.
fn violations(edges: &[Edge]) -> Vec<String> {
    edges.iter().filter_map(|e| forbidden(&e.from, &e.to).map(|why| format!("{} → {} ({}): {why}", e.from, e.to, e.kind))).collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `cargo metadata` of the workspace for the host platform (what `cargo
/// build` resolves; offline: the packages are already there).
fn metadata() -> Value {
    let cargo = env!("CARGO");
    let version = Command::new(cargo).arg("-vV").output().unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let host = version.lines().find_map(|l| l.strip_prefix("host: ")).expect("`cargo -vV` names the host").trim().to_string();
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &host, "--manifest-path"])
        .arg(root().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The workspace members: package id → package.
fn members(meta: &Value) -> BTreeMap<String, &Value> {
    let ids: BTreeSet<&str> = meta["workspace_members"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| ids.contains(p["id"].as_str().unwrap()))
        .map(|p| (p["id"].as_str().unwrap().to_string(), p))
        .collect()
}

/// Dependencies between members, as declared (`packages[].dependencies`).
fn member_edges(meta: &Value) -> Vec<Edge> {
    let members = members(meta);
    let names: BTreeSet<&str> = members.values().map(|p| p["name"].as_str().unwrap()).collect();
    let mut edges = Vec::new();
    for p in members.values() {
        for d in p["dependencies"].as_array().unwrap() {
            let to = d["name"].as_str().unwrap();
            if d["source"].is_null() && names.contains(to) {
                edges.push(edge(p["name"].as_str().unwrap(), to, d["kind"].as_str().unwrap_or("normal")));
            }
        }
    }
    edges
}

/// The resolved graph for building: package → (dependency, kinds), names only.
type Graph = BTreeMap<String, Vec<(String, Vec<String>)>>;

fn resolved(meta: &Value) -> Graph {
    let name_of: BTreeMap<&str, &str> =
        meta["packages"].as_array().unwrap().iter().map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap())).collect();
    let mut graph = Graph::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps: Vec<(String, Vec<String>)> = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let kinds: Vec<String> =
                    d["dep_kinds"].as_array().unwrap().iter().map(|k| k["kind"].as_str().unwrap_or("normal").to_string()).collect();
                (name_of[d["pkg"].as_str().unwrap()].to_string(), kinds)
            })
            .collect();
        graph.entry(name_of[node["id"].as_str().unwrap()].to_string()).or_default().extend(deps);
    }
    graph
}

/// The path from `start` to libtorch over normal and build dependencies, if any.
fn torch_path(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([start.to_string()]);
    let mut seen = BTreeSet::from([start.to_string()]);
    while let Some(at) = queue.pop_front() {
        if TORCH.contains(&at.as_str()) {
            let mut path = vec![at.clone()];
            while let Some(p) = parent.get(path.last().unwrap()) {
                path.push(p.clone());
            }
            path.reverse();
            return Some(path);
        }
        for (dep, kinds) in graph.get(&at).map(Vec::as_slice).unwrap_or_default() {
            if kinds.iter().any(|k| k != "dev") && seen.insert(dep.clone()) {
                parent.insert(dep.clone(), at.clone());
                queue.push_back(dep.clone());
            }
        }
    }
    None
}

/// Entries of a manifest that do not come from `[workspace.dependencies]`.
fn non_workspace_deps(manifest: &toml::Table) -> Vec<String> {
    const SECTIONS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut tables: Vec<(String, &toml::Table)> = Vec::new();
    for s in SECTIONS {
        if let Some(t) = manifest.get(s).and_then(toml::Value::as_table) {
            tables.push((s.to_string(), t));
        }
    }
    for (platform, t) in manifest.get("target").and_then(toml::Value::as_table).into_iter().flatten() {
        for s in SECTIONS {
            if let Some(deps) = t.get(s).and_then(toml::Value::as_table) {
                tables.push((format!("target.{platform}.{s}"), deps));
            }
        }
    }
    let mut bad = Vec::new();
    for (section, deps) in tables {
        for (name, spec) in deps {
            let inherited = spec.as_table().and_then(|t| t.get("workspace")).and_then(toml::Value::as_bool) == Some(true);
            if !inherited {
                bad.push(format!("[{section}] {name} = {spec}"));
            }
        }
    }
    bad
}

#[test]
fn dependency_rules_hold() {
    let edges = member_edges(&metadata());
    assert!(edges.iter().any(|e| e.from == "forja" && e.to == "forja-serve"), "the graph was read: {edges:?}");
    let bad = violations(&edges);
    assert!(bad.is_empty(), "forbidden dependencies between workspace crates:\n{}", bad.join("\n"));
}

#[test]
fn core_tokenizer_and_data_build_without_libtorch() {
    let graph = resolved(&metadata());
    assert!(torch_path(&graph, "forja-model").is_some(), "the resolved graph was read (model links libtorch)");
    let bad: Vec<String> = NO_TORCH
        .iter()
        .filter_map(|c| torch_path(&graph, c))
        .map(|path| format!("{} links libtorch: {}", path[0], path.join(" → ")))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_dependency_comes_from_the_workspace() {
    let meta = metadata();
    let mut bad = Vec::new();
    for p in members(&meta).values() {
        let path = p["manifest_path"].as_str().unwrap();
        let manifest: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        bad.extend(non_workspace_deps(&manifest).into_iter().map(|b| format!("{path}: {b}")));
    }
    assert!(
        bad.is_empty(),
        "dependencies not taken from [workspace.dependencies] (declare them there, use `workspace = true`):\n{}",
        bad.join("\n")
    );
}

#[test]
fn forbidden_edges_are_named() {
    let edges = [
        edge("forja-rlhf", "forja-sft", "normal"),
        edge("forja-sft", "forja-pretrain", "dev"),
        edge("forja-serve", "forja-data", "normal"),
        edge("forja-eval", "forja-rlhf", "normal"),
        edge("forja-data", "forja-model", "normal"),
        edge("forja-train", "forja-pretrain", "normal"),
        edge("forja-rlhf", "forja-serve", "normal"),
        edge("forja-serve", "forja", "dev"),
        // allowed
        edge("forja-sft", "forja-data", "normal"),
        edge("forja-sft", "forja-eval", "normal"),
        edge("forja-pretrain", "forja-eval", "dev"),
        edge("forja", "forja-rlhf", "normal"),
        edge("forja-benches", "forja-serve", "dev"),
    ];
    let bad = violations(&edges);
    assert_eq!(bad.len(), 8, "{bad:#?}");
    assert_eq!(bad[0], "forja-rlhf → forja-sft (normal): trainers never depend on each other");
    assert!(bad[2].starts_with("forja-serve → forja-data (normal): serve and eval"), "{}", bad[2]);
}

#[test]
fn a_libtorch_path_is_named() {
    let mut graph = Graph::new();
    graph.insert("forja-data".into(), vec![("forja-core".into(), vec!["normal".into()]), ("criterion".into(), vec!["dev".into()])]);
    graph.insert("forja-core".into(), vec![("helper".into(), vec!["build".into()])]);
    graph.insert("helper".into(), vec![("tch".into(), vec!["normal".into()])]);
    graph.insert("criterion".into(), vec![("torch-sys".into(), vec!["normal".into()])]);
    assert_eq!(torch_path(&graph, "forja-data").unwrap(), ["forja-data", "forja-core", "helper", "tch"]);
    graph.get_mut("forja-core").unwrap().clear();
    assert_eq!(torch_path(&graph, "forja-data"), None, "dev-dependencies do not count");
}

#[test]
fn a_dependency_outside_the_workspace_is_named() {
    let manifest: toml::Table = r#"
        [dependencies]
        anyhow.workspace = true
        axum = "0.8"
        [dev-dependencies]
        tempfile = { workspace = true }
        reqwest = { version = "0.12", features = ["json"] }
        [target.'cfg(unix)'.dependencies]
        libc = "0.2"
    "#
    .parse()
    .unwrap();
    let bad = non_workspace_deps(&manifest);
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert_eq!(bad[0], r#"[dependencies] axum = "0.8""#);
    assert!(bad[2].starts_with("[target.cfg(unix).dependencies] libc"), "{}", bad[2]);
}
