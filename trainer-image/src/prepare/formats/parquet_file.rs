//! Parquet sources (what Hugging Face Hub datasets are): the named string columns
//! of every row group, read with the `parquet` crate's Arrow reader. A Parquet
//! file is read from its footer, so a source is first copied to a temporary file
//! (never held in memory whole); its columns are named as JSONL's fields are.

use std::io::Read;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use llmops_crds::dataset::{DatasetType, RecordFields};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{Record, Records};
use crate::prepare::PrepareError;

/// Rows decoded at a time.
const BATCH_ROWS: usize = 1024;

/// Records of the Parquet file `raw` (the source's bytes, as stored).
pub fn records(
    mut raw: Box<dyn Read + Send>,
    fields: &RecordFields,
    kind: DatasetType,
    name: &str,
) -> Result<Records, PrepareError> {
    let unreadable = |reason: String| PrepareError::UnreadableSource {
        source_name: name.to_string(),
        reason,
    };
    let mut file = tempfile::tempfile().map_err(|e| unreadable(format!("no scratch file: {e}")))?;
    std::io::copy(&mut raw, &mut file).map_err(|e| PrepareError::from_read(name, e))?;
    let malformed = |reason: String| PrepareError::MalformedRecord {
        source_name: name.to_string(),
        line: 0,
        reason,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| malformed(format!("not a Parquet file: {e}")))?;
    let wanted: Vec<String> = match kind {
        DatasetType::Pretraining => vec![fields.text_field.clone()],
        DatasetType::Instruction => {
            vec![fields.prompt_field.clone(), fields.response_field.clone()]
        }
    };
    // Only the wanted top-level columns are decoded.
    let schema = builder.schema().clone();
    let mut roots = Vec::new();
    for column in &wanted {
        let index = schema.index_of(column).map_err(|_| {
            let present: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            malformed(format!(
                "missing column {column:?} (columns: {}); set format.parquet to the right column names",
                present.join(", ")
            ))
        })?;
        let data_type = schema.field(index).data_type();
        if !matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(malformed(format!(
                "column {column:?} holds {data_type}, not strings"
            )));
        }
        roots.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| malformed(format!("cannot read: {e}")))?;
    Ok(Box::new(Rows {
        reader,
        wanted: Arc::new(wanted),
        kind,
        name: name.to_string(),
        batch: None,
        row: 0,
        rows_before: 0,
    }))
}

/// The rows of a Parquet reader, one record each.
struct Rows {
    reader: ParquetRecordBatchReader,
    wanted: Arc<Vec<String>>,
    kind: DatasetType,
    name: String,
    batch: Option<RecordBatch>,
    /// The next row of `batch`.
    row: usize,
    /// Rows of the batches before `batch`, for messages.
    rows_before: u64,
}

impl Rows {
    fn next_record(&mut self) -> Result<Option<Record>, PrepareError> {
        loop {
            if let Some(batch) = &self.batch
                && self.row < batch.num_rows()
            {
                let row = self.row;
                self.row += 1;
                return self.record(batch, row).map(Some);
            }
            match self.reader.next() {
                None => return Ok(None),
                Some(Ok(batch)) => {
                    self.rows_before += self.batch.as_ref().map_or(0, |b| b.num_rows() as u64);
                    self.batch = Some(batch);
                    self.row = 0;
                }
                Some(Err(e)) => {
                    return Err(PrepareError::MalformedRecord {
                        source_name: self.name.clone(),
                        line: self.rows_before + 1,
                        reason: format!("cannot decode a row group: {e}"),
                    });
                }
            }
        }
    }

    /// Row `row` of `batch`, whose columns are the wanted ones in order.
    fn record(&self, batch: &RecordBatch, row: usize) -> Result<Record, PrepareError> {
        let number = self.rows_before + row as u64 + 1;
        let cell = |i: usize| -> Result<String, PrepareError> {
            let column = batch.column(i);
            let null = || PrepareError::MalformedRecord {
                source_name: self.name.clone(),
                line: number,
                reason: format!("column {:?} is null", self.wanted[i]),
            };
            if column.is_null(row) {
                return Err(null());
            }
            Ok(match column.data_type() {
                DataType::Utf8 => column.as_string::<i32>().value(row).to_string(),
                DataType::LargeUtf8 => column.as_string::<i64>().value(row).to_string(),
                _ => column.as_string_view().value(row).to_string(),
            })
        };
        Ok(match self.kind {
            DatasetType::Pretraining => Record::Text(cell(0)?),
            DatasetType::Instruction => Record::Pair {
                prompt: cell(0)?,
                response: cell(1)?,
            },
        })
    }
}

impl Iterator for Rows {
    type Item = Result<Record, PrepareError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, LargeStringArray, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

    /// A Parquet file with `batch`'s columns, snappy-compressed (pyarrow's
    /// default), in row groups of 2 rows.
    fn file(batch: RecordBatch) -> Vec<u8> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(2))
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        out
    }

    fn read(bytes: Vec<u8>, kind: DatasetType) -> Result<Vec<Record>, PrepareError> {
        let fields = RecordFields {
            text_field: "content".into(),
            prompt_field: "question".into(),
            response_field: "answer".into(),
        };
        records(
            Box::new(std::io::Cursor::new(bytes)),
            &fields,
            kind,
            "source 0 (x.parquet)",
        )?
        .collect()
    }

    #[test]
    fn named_string_columns_become_records_across_row_groups() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            (
                "content",
                Arc::new(StringArray::from(vec!["one", "two", "three"])) as _,
            ),
        ])
        .unwrap();
        let got = read(file(batch), DatasetType::Pretraining).unwrap();
        assert_eq!(got, ["one", "two", "three"].map(|t| Record::Text(t.into())));

        let batch = RecordBatch::try_from_iter([
            (
                "question",
                Arc::new(LargeStringArray::from(vec!["q1", "q2"])) as _,
            ),
            ("answer", Arc::new(StringArray::from(vec!["a1", "a2"])) as _),
        ])
        .unwrap();
        let got = read(file(batch), DatasetType::Instruction).unwrap();
        assert_eq!(
            got[1],
            Record::Pair {
                prompt: "q2".into(),
                response: "a2".into()
            }
        );
    }

    #[test]
    fn a_missing_column_a_non_string_column_and_a_null_are_named() {
        let batch =
            RecordBatch::try_from_iter([("text", Arc::new(StringArray::from(vec!["x"])) as _)])
                .unwrap();
        let err = read(file(batch), DatasetType::Pretraining)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing column \"content\"") && err.contains("columns: text"),
            "{err}"
        );

        let batch =
            RecordBatch::try_from_iter([("content", Arc::new(Int64Array::from(vec![7])) as _)])
                .unwrap();
        let err = read(file(batch), DatasetType::Pretraining)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"content\" holds Int64"), "{err}");

        let batch = RecordBatch::try_from_iter([(
            "content",
            Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])) as _,
        )])
        .unwrap();
        let err = read(file(batch), DatasetType::Pretraining)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("is null"), "{err}");

        let err = read(b"not parquet at all".to_vec(), DatasetType::Pretraining)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Parquet file"), "{err}");
    }
}
