//! Reading one text column of a parquet file, row group by row group (the
//! memory held is one row group's column, whatever the file's size).

use anyhow::{anyhow, bail, Context, Result};
use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use std::path::Path;
use std::sync::Arc;

/// Calls `each(text, bytes_read)` for every non-null value of `column`
/// (`bytes_read`: of the file, approximately, for progress). A damaged file
/// is an error (the parquet crate can panic on one: that is caught).
pub fn read_column(path: &Path, column: &str, each: &mut dyn FnMut(String, u64) -> Result<()>) -> Result<()> {
    let what = format!("parquet file {}", path.display());
    crate::data::untrusted::no_panic(&what, || read(path, column, each))
}

fn read(path: &Path, column: &str, each: &mut dyn FnMut(String, u64) -> Result<()>) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let size = file.metadata()?.len();
    let reader = SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{} is not a readable parquet file: {e}", path.display()))?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema();
    let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
    let Some(field) = schema.get_fields().iter().find(|f| f.name() == column) else {
        bail!("{} has no column {column:?} (it has {}; use --column)", path.display(), names.join(", "));
    };
    if !is_text(field) {
        bail!("column {column:?} of {} is not a text (UTF-8 string) column", path.display());
    }
    let projection = Type::group_type_builder(schema.name()).with_fields(vec![Arc::clone(field)]).build()?;
    let rows = meta.file_metadata().num_rows().max(1) as u64;
    let rows_iter = reader
        .get_row_iter(Some(projection))
        .map_err(|e| anyhow!("{}: cannot read column {column:?}: {e}", path.display()))?;
    for (i, row) in rows_iter.enumerate() {
        let row = row.map_err(|e| anyhow!("{} is corrupt or truncated: {e}", path.display()))?;
        let read = size * (i as u64 + 1) / rows;
        match row.get_column_iter().next().map(|(_, f)| f) {
            Some(Field::Str(s)) => each(s.clone(), read)?,
            Some(Field::Null) | None => {}
            Some(other) => bail!("{}: column {column:?} holds {other:?}, not text", path.display()),
        }
    }
    Ok(())
}

fn is_text(field: &Type) -> bool {
    if !field.is_primitive() || field.get_physical_type() != PhysicalType::BYTE_ARRAY {
        return false;
    }
    let info = field.get_basic_info();
    matches!(info.logical_type_ref(), Some(LogicalType::String)) || info.converted_type() == ConvertedType::UTF8
}
