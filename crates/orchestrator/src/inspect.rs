//! `forja inspect ARTIFACT… [--sql QUERY]`: look into artifacts without
//! Python — a file's schema, metadata and first rows, or a polars SQL query
//! over files and run folders, printed as a table.

use anyhow::Context;
use forja_frame::{read_frame, show, table_name, Show, Tables};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to look at and how to print it.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// Artifact files (Arrow IPC, `.arrow`) or folders: a folder adds every
    /// artifact under it.
    #[arg(required = true)]
    pub artifacts: Vec<PathBuf>,
    /// A polars SQL query. Each file is a table named by its stem (`rejects`,
    /// `metrics`, `train`); same-named files with the same columns are one
    /// table (every stage's `rejects`); in a folder each file is also
    /// named by its path inside it (`clean_rejects`), and a file at the
    /// folder's top keeps its bare name to itself (a run's `metrics.arrow`).
    #[arg(long)]
    pub sql: Option<String>,
    /// Rows printed (the first and last halves when there are more; 0: all).
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// Characters of a text value printed before it is cut.
    #[arg(long, default_value_t = 60)]
    pub str_len: usize,
}

/// One artifact and the table names it answers to.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    names: Vec<String>,
}

/// Every artifact the arguments name, sorted within each folder.
fn entries(args: &[PathBuf]) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut files = Vec::new();
            walk(a, &mut files).with_context(|| format!("{}: cannot list the folder", a.display()))?;
            files.sort();
            anyhow::ensure!(!files.is_empty(), "{}: no .arrow artifacts in this folder", a.display());
            // A file at the folder's top keeps its bare name to itself: a run
            // folder's `metrics.arrow` already holds every stage's rows.
            let top: Vec<String> = files.iter().filter(|f| f.parent() == Some(a.as_path())).map(|f| table_name(f)).collect();
            for f in files {
                let inside = f.strip_prefix(a).unwrap_or(&f).with_extension("");
                let qualified = forja_frame::table_name(Path::new(&inside.to_string_lossy().replace(['/', '\\'], "_")));
                let bare = table_name(&f);
                let mut names = Vec::new();
                if f.parent() == Some(a.as_path()) || !top.contains(&bare) {
                    names.push(bare);
                }
                if !names.contains(&qualified) {
                    names.push(qualified);
                }
                out.push(Entry { path: f, names });
            }
        } else {
            anyhow::ensure!(a.is_file(), "{}: no such file or folder", a.display());
            out.push(Entry { path: a.clone(), names: vec![table_name(a)] });
        }
    }
    Ok(out)
}

/// `.arrow` files under `dir` (not hidden ones: a stage's staging files).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "arrow") {
            out.push(p);
        }
    }
    Ok(())
}

/// Runs the command, printing to stdout.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let opts = Show { rows: args.rows, str_len: args.str_len };
    let entries = entries(&args.artifacts)?;
    match &args.sql {
        Some(q) => print!("{}", query(&entries, q, opts)?),
        None if entries.len() == 1 => print!("{}", describe_file(&entries[0].path, opts)?),
        None => print!("{}", list(&entries)?),
    }
    Ok(())
}

/// The query's result, with its row count. Only the tables the query names
/// are read (a run folder's token files can be large).
fn query(entries: &[Entry], sql: &str, opts: Show) -> anyhow::Result<String> {
    let words = identifiers(sql);
    let mut by_name: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for e in entries {
        for n in &e.names {
            by_name.entry(n.as_str()).or_default().push(&e.path);
        }
    }
    let mut tables = Tables::new();
    let mut conflicts = Vec::new();
    for (name, paths) in &by_name {
        if !words.contains(&name.to_ascii_lowercase()) {
            continue;
        }
        let mut frames = Vec::new();
        for p in paths {
            frames.push(read_frame(p, None)?.df);
        }
        let same = frames.windows(2).all(|w| w[0].schema() == w[1].schema());
        if !same {
            let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            conflicts.push(format!("`{name}` is {} files with different columns ({})", paths.len(), list.join(", ")));
            continue;
        }
        for df in frames {
            tables.add(name, df)?;
        }
    }
    let result = tables.sql(sql).map_err(|e| {
        let mut msg = e.to_string();
        msg += &format!("\n  tables given: {}", by_name.keys().copied().collect::<Vec<_>>().join(", "));
        for c in &conflicts {
            msg += &format!("\n  {c}: use the folder-qualified names");
        }
        anyhow::anyhow!(msg)
    })?;
    Ok(format!("{}\n{} row(s)\n", show(&result, opts), result.height()))
}

/// The lowercased identifiers of a query (a table is read when its name is one).
fn identifiers(sql: &str) -> std::collections::BTreeSet<String> {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).map(str::to_ascii_lowercase).collect()
}

/// One file: where it comes from, its columns, its row count and first rows.
fn describe_file(path: &Path, opts: Show) -> anyhow::Result<String> {
    let f = read_frame(path, None)?;
    let mut s = format!("{}\n", path.display());
    let unknown = || "-".to_string();
    s += &format!(
        "  artifact: {}; stage: {}; config hash: {}\n  rows: {}\n  columns:\n",
        f.kind.clone().unwrap_or_else(unknown),
        f.stage.clone().unwrap_or_else(unknown),
        f.config_hash.clone().unwrap_or_else(unknown),
        f.df.height()
    );
    for (name, t) in &f.arrow_columns {
        s += &format!("    {name}: {t}\n");
    }
    s += &format!("\n{}\n", show(&f.df, opts));
    s += &format!("table name for --sql: {}\n", table_name(path));
    Ok(s)
}

/// Several files: one line each, with the names `--sql` knows them by.
fn list(entries: &[Entry]) -> anyhow::Result<String> {
    let mut s = String::from("table(s)\trows\tartifact\tstage\tfile\n");
    for e in entries {
        // No column read: the metadata and the row count only.
        let f = read_frame(&e.path, Some(&[]))?;
        s += &format!(
            "{}\t{}\t{}\t{}\t{}\n",
            e.names.join(", "),
            f.df.height(),
            f.kind.unwrap_or_else(|| "-".into()),
            f.stage.unwrap_or_else(|| "-".into()),
            e.path.display()
        );
    }
    Ok(s)
}
