//! Artifacts as polars data frames: Arrow batches converted to a
//! [`DataFrame`], SQL over named tables, and tables printed for people.
//!
//! polars is built without its IPC reader (that feature turns on its streaming
//! engine and with it cloud I/O: ARCHITECTURE.md, "Dependencies"), so the
//! artifacts are read with arrow-rs, as everywhere else in forja, and their
//! columns copied into polars series here. Strings, booleans, integers and
//! floats become polars columns of their type (8- and 16-bit integers widened
//! to 32 bits, which polars keeps behind features of its own); lists of those
//! become list columns; anything else (structs, lists of structs) becomes text,
//! as arrow prints it.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrowPrimitiveType, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::DataType as ArrowType;
use polars::prelude::{Column, DataFrame, IntoLazy, NamedFrom, PolarsError, Series};
use polars::sql::SQLContext;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use polars;

/// Errors of this crate; each names the file or the query.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a readable Arrow IPC file: {source}")]
    Arrow { path: PathBuf, source: arrow_schema::ArrowError },
    #[error("{path}: column `{column}`: {source}")]
    Convert { path: PathBuf, column: String, source: PolarsError },
    #[error("{path}: no column `{column}` (columns: {found})")]
    NoColumn { path: PathBuf, column: String, found: String },
    #[error("SQL: {source}\n  query: {query}\n  tables: {tables}")]
    Sql { query: String, tables: String, source: PolarsError },
    #[error("table `{name}`: {problem}")]
    Table { name: String, problem: String },
}

/// One artifact file read as a data frame, with what its metadata says.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The columns read (none: only the row count, in `df.height()`).
    pub df: DataFrame,
    /// The artifact kind (`schema` metadata), the stage that wrote it and its
    /// configuration hash, where the file records them.
    pub kind: Option<String>,
    pub stage: Option<String>,
    pub config_hash: Option<String>,
    /// Column names and Arrow types as stored.
    pub arrow_columns: Vec<(String, String)>,
}

/// Reads an Arrow IPC file of any schema into a data frame; `columns` (when
/// given) reads only those, each of which must exist.
pub fn read_frame(path: &Path, columns: Option<&[&str]>) -> Result<Frame, FrameError> {
    let arrow_err = |source| FrameError::Arrow { path: path.into(), source };
    let (reader, schema) = open(path, columns)?;
    let meta = |key: &str| schema.metadata().get(key).cloned();
    let (kind, stage, config_hash) =
        (meta(forja_core::schema::meta::SCHEMA), meta(forja_core::schema::meta::STAGE), meta(forja_core::schema::meta::CONFIG_HASH));
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(arrow_err)?;
    let projected = match columns {
        Some(cols) => cols.iter().filter_map(|c| schema.field_with_name(c).ok()).cloned().collect::<Vec<_>>(),
        None => schema.fields().iter().map(|f| f.as_ref().clone()).collect(),
    };
    let arrow_columns = projected.iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect();
    let df = frame_of(path, &projected, &batches)?;
    Ok(Frame { df, kind, stage, config_hash, arrow_columns })
}

/// Calls `f` on each batch of an Arrow IPC file, read with only `columns`
/// (in that order): bounded memory for files larger than it.
pub fn for_each_batch<E: From<FrameError>>(
    path: &Path,
    columns: &[&str],
    mut f: impl FnMut(&RecordBatch) -> Result<(), E>,
) -> Result<(), E> {
    let (reader, _) = open(path, Some(columns))?;
    for batch in reader {
        f(&batch.map_err(|source| FrameError::Arrow { path: path.into(), source })?)?;
    }
    Ok(())
}

type Reader = arrow_ipc::reader::FileReader<std::io::BufReader<std::fs::File>>;

/// Opens an Arrow IPC file reading only `columns` (all when `None`); also
/// returns the file's whole schema.
fn open(path: &Path, columns: Option<&[&str]>) -> Result<(Reader, arrow_schema::SchemaRef), FrameError> {
    let file = || std::fs::File::open(path).map(std::io::BufReader::new).map_err(|source| FrameError::Io { path: path.into(), source });
    let arrow_err = |source| FrameError::Arrow { path: path.into(), source };
    let whole = arrow_ipc::reader::FileReader::try_new(file()?, None).map_err(arrow_err)?;
    let schema = whole.schema();
    let Some(cols) = columns else { return Ok((whole, schema)) };
    let projection = column_indices(path, &schema, cols)?;
    let reader = arrow_ipc::reader::FileReader::try_new(file()?, Some(projection)).map_err(arrow_err)?;
    Ok((reader, schema))
}

/// The positions of `columns` in `schema`, each of which must be there.
fn column_indices(path: &Path, schema: &arrow_schema::Schema, columns: &[&str]) -> Result<Vec<usize>, FrameError> {
    columns
        .iter()
        .map(|c| {
            schema.index_of(c).map_err(|_| FrameError::NoColumn {
                path: path.into(),
                column: c.to_string(),
                found: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
            })
        })
        .collect()
}

/// Converts record batches of one schema (`fields`) into one data frame.
pub fn frame_of(path: &Path, fields: &[arrow_schema::Field], batches: &[RecordBatch]) -> Result<DataFrame, FrameError> {
    let mut columns = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let convert = |source| FrameError::Convert { path: path.into(), column: f.name().clone(), source };
        let mut parts = batches.iter().map(|b| series(f.name(), b.column(i).as_ref()));
        let mut s = match parts.next() {
            Some(first) => first.map_err(convert)?,
            None => empty_series(f.name(), f.data_type()).map_err(convert)?,
        };
        for part in parts {
            s.append(&part.map_err(convert)?).map_err(convert)?;
        }
        columns.push(Column::from(s));
    }
    // From the batches, so that a frame of no columns still has its rows.
    let height = batches.iter().map(RecordBatch::num_rows).sum();
    DataFrame::new(height, columns).map_err(|source| FrameError::Convert { path: path.into(), column: "*".into(), source })
}

/// A zero-row column of the type `t` converts to.
fn empty_series(name: &str, t: &ArrowType) -> Result<Series, PolarsError> {
    series(name, arrow_array::new_empty_array(t).as_ref())
}

fn primitive<T, N>(name: &str, a: &dyn Array, f: impl Fn(T::Native) -> N) -> Series
where
    T: ArrowPrimitiveType,
    Series: NamedFrom<Vec<Option<N>>, [Option<N>]>,
{
    let values: Vec<Option<N>> = a.as_primitive::<T>().iter().map(|v| v.map(&f)).collect();
    Series::new(name.into(), values)
}

/// One Arrow array as a polars series (see the crate's documentation).
pub fn series(name: &str, a: &dyn Array) -> Result<Series, PolarsError> {
    use ArrowType as A;
    Ok(match a.data_type() {
        A::Utf8 => Series::new(name.into(), a.as_string::<i32>().iter().collect::<Vec<Option<&str>>>()),
        A::LargeUtf8 => Series::new(name.into(), a.as_string::<i64>().iter().collect::<Vec<Option<&str>>>()),
        A::Utf8View => Series::new(name.into(), a.as_string_view().iter().collect::<Vec<Option<&str>>>()),
        A::Boolean => Series::new(name.into(), a.as_boolean().iter().collect::<Vec<Option<bool>>>()),
        A::Int8 => primitive::<Int8Type, i32>(name, a, i32::from),
        A::Int16 => primitive::<Int16Type, i32>(name, a, i32::from),
        A::Int32 => primitive::<Int32Type, i32>(name, a, |v| v),
        A::Int64 => primitive::<Int64Type, i64>(name, a, |v| v),
        A::UInt8 => primitive::<UInt8Type, u32>(name, a, u32::from),
        A::UInt16 => primitive::<UInt16Type, u32>(name, a, u32::from),
        A::UInt32 => primitive::<UInt32Type, u32>(name, a, |v| v),
        A::UInt64 => primitive::<UInt64Type, u64>(name, a, |v| v),
        A::Float32 => primitive::<Float32Type, f32>(name, a, |v| v),
        A::Float64 => primitive::<Float64Type, f64>(name, a, |v| v),
        A::List(item) if flat(item.data_type()) => {
            let rows: Vec<Option<Series>> =
                a.as_list::<i32>().iter().map(|v| v.map(|v| series("", v.as_ref())).transpose()).collect::<Result<_, _>>()?;
            let mut s = Series::new(name.into(), rows);
            if s.is_empty() {
                // No row to infer the item type from.
                let item = empty_series("", item.data_type())?;
                s = s.cast(&polars::prelude::DataType::List(Box::new(item.dtype().clone())))?;
            }
            s
        }
        _ => as_text(name, a)?,
    })
}

/// Types that convert to a polars column of their own.
fn flat(t: &ArrowType) -> bool {
    t.is_numeric() || matches!(t, ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View | ArrowType::Boolean)
}

/// Any other column, as arrow prints its values.
fn as_text(name: &str, a: &dyn Array) -> Result<Series, PolarsError> {
    let fmt = ArrayFormatter::try_new(a, &FormatOptions::default())
        .map_err(|e| PolarsError::ComputeError(format!("cannot show {}: {e}", a.data_type()).into()))?;
    let values: Vec<Option<String>> = (0..a.len()).map(|i| (!a.is_null(i)).then(|| fmt.value(i).to_string())).collect();
    Ok(Series::new(name.into(), values))
}

/// Data frames registered under table names, for SQL.
#[derive(Default)]
pub struct Tables {
    frames: BTreeMap<String, DataFrame>,
}

impl Tables {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `df` as `name`; a second frame of the same name is appended to
    /// the first when their columns agree (every stage's `metrics` as one
    /// table), an error naming both column lists otherwise.
    pub fn add(&mut self, name: &str, df: DataFrame) -> Result<(), FrameError> {
        check_table_name(name)?;
        match self.frames.get_mut(name) {
            None => {
                self.frames.insert(name.to_string(), df);
            }
            Some(have) => {
                if have.schema() != df.schema() {
                    return Err(FrameError::Table {
                        name: name.into(),
                        problem: format!("columns differ between files: [{}] and [{}]", describe(have), describe(&df)),
                    });
                }
                have.vstack_mut_owned(df).map_err(|e| FrameError::Table { name: name.into(), problem: e.to_string() })?;
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&DataFrame> {
        self.frames.get(name)
    }

    /// Runs one SQL query (polars SQL) over the tables.
    pub fn sql(&self, query: &str) -> Result<DataFrame, FrameError> {
        let err = |source| FrameError::Sql {
            query: query.into(),
            tables: self.frames.iter().map(|(n, df)| format!("{n} ({})", describe(df))).collect::<Vec<_>>().join("; "),
            source,
        };
        let mut ctx = SQLContext::new();
        for (name, df) in &self.frames {
            ctx.register(name, df.clone().lazy());
        }
        ctx.execute(query).and_then(|lf| lf.collect()).map_err(err)
    }
}

/// A SQL identifier: a letter or `_`, then letters, digits and `_`.
fn is_identifier(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Table names are SQL identifiers.
fn check_table_name(name: &str) -> Result<(), FrameError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(FrameError::Table { name: name.into(), problem: "not a SQL identifier (letters, digits and `_`)".into() })
    }
}

/// `name: type` of every column.
pub fn describe(df: &DataFrame) -> String {
    df.schema().iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>().join(", ")
}

/// A table name for a file: its stem with anything else than letters,
/// digits and `_` turned into `_` (`rejects.arrow` → `rejects`).
pub fn table_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if is_identifier(&name) {
        name
    } else {
        format!("_{name}")
    }
}

/// How a table is printed.
#[derive(Debug, Clone, Copy)]
pub struct Show {
    /// Rows shown (head and tail halves when there are more); 0 for all.
    pub rows: usize,
    /// Characters of a string value before it is cut with `…`.
    pub str_len: usize,
}

impl Default for Show {
    fn default() -> Self {
        Self { rows: 20, str_len: 60 }
    }
}

/// The table as text (polars' own table printer with these limits).
pub fn show(df: &DataFrame, opts: Show) -> String {
    // polars reads its printing limits from the environment only (set here,
    // where a command prints, not while other threads read it).
    let rows = if opts.rows == 0 { "-1".to_string() } else { opts.rows.to_string() };
    std::env::set_var("POLARS_FMT_MAX_ROWS", rows);
    std::env::set_var("POLARS_FMT_STR_LEN", opts.str_len.to_string());
    std::env::set_var("POLARS_FMT_MAX_COLS", "-1");
    std::env::set_var("POLARS_FMT_TABLE_ROUNDED_CORNERS", "0");
    // Cells are cut at `str_len`, not wrapped to a width (unless the user set one).
    if std::env::var_os("POLARS_TABLE_WIDTH").is_none() {
        std::env::set_var("POLARS_TABLE_WIDTH", "-1");
    }
    format!("{df}")
}
