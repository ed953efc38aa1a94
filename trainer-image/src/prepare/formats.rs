//! Decompression and record parsing: text, JSONL, CSV and Parquet into [`Record`]s.

use std::io::{BufRead, BufReader, Read};

use llmops_crds::dataset::{Compression, DatasetType, Format, RecordFields, TextSeparator};

use super::PrepareError;
use super::sources::Limits;
use super::sources::bounded::{GzipMembers, LineLimit, at_line};

/// One document as read from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Pretraining text.
    Text(String),
    /// An instruction example.
    Pair { prompt: String, response: String },
}

/// A stream of records, each carrying its own parse error.
pub type Records = Box<dyn Iterator<Item = Result<Record, PrepareError>> + Send>;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Wraps `raw` in a gzip decoder when `compression` asks for it or, for `auto`,
/// when the bytes start with the gzip magic number, within the limits of this
/// process ([`Limits::in_force`]).
pub fn decompress(
    raw: Box<dyn Read + Send>,
    compression: Compression,
) -> std::io::Result<Box<dyn BufRead + Send>> {
    decompress_within(raw, compression, &Limits::in_force())
}

/// [`decompress`] within `limits`: each gzip member may decompress to at most
/// `gzip_member_bytes`, and each line after decompression may hold at most
/// `line_bytes`; past either, reading fails with an error naming the line and
/// the limit.
pub fn decompress_within(
    raw: Box<dyn Read + Send>,
    compression: Compression,
    limits: &Limits,
) -> std::io::Result<Box<dyn BufRead + Send>> {
    let mut buffered = BufReader::with_capacity(1 << 20, raw);
    let gzip = match compression {
        Compression::Gzip => true,
        Compression::None => false,
        // Nothing has been decompressed yet: a limit met here is on line 1.
        Compression::Auto => buffered
            .fill_buf()
            .map_err(|e| at_line(e, 1))?
            .starts_with(&GZIP_MAGIC),
    };
    let bytes: Box<dyn Read + Send> = if gzip {
        Box::new(GzipMembers::new(buffered, limits.gzip_member_bytes))
    } else {
        Box::new(buffered)
    };
    Ok(Box::new(BufReader::with_capacity(
        1 << 20,
        LineLimit::new(bytes, limits.line_bytes),
    )))
}

/// Parses `input` by `format` into records for a dataset of type `kind`.
pub fn records(
    input: Box<dyn BufRead + Send>,
    format: &Format,
    kind: DatasetType,
    source_name: &str,
) -> Result<Records, PrepareError> {
    let name = source_name.to_string();
    if let Some(fields) = &format.jsonl {
        return Ok(Box::new(JsonLines {
            input,
            fields: fields.clone(),
            kind,
            name,
            line: 0,
            buf: Vec::new(),
        }));
    }
    if let Some(csv) = &format.csv {
        return csv_records(input, &csv.fields, &csv.delimiter, kind, name);
    }
    if kind == DatasetType::Instruction {
        return Err(PrepareError::InvalidSpec(format!(
            "{name}: instruction data needs format jsonl, csv or parquet with promptField and responseField"
        )));
    }
    let separator = format
        .text
        .as_ref()
        .map(|t| t.separator)
        .unwrap_or_default();
    Ok(Box::new(TextDocuments {
        input,
        separator,
        name,
        done: false,
        buf: Vec::new(),
    }))
}

fn read_line(input: &mut dyn BufRead, buf: &mut Vec<u8>, name: &str) -> Result<bool, PrepareError> {
    buf.clear();
    let n = input
        .read_until(b'\n', buf)
        .map_err(|e| PrepareError::from_read(name, e))?;
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(n > 0)
}

struct TextDocuments {
    input: Box<dyn BufRead + Send>,
    separator: TextSeparator,
    name: String,
    done: bool,
    buf: Vec<u8>,
}

impl TextDocuments {
    fn next_document(&mut self) -> Result<Option<String>, PrepareError> {
        let mut doc = String::new();
        loop {
            if !read_line(&mut self.input, &mut self.buf, &self.name)? {
                self.done = true;
                return Ok((!doc.trim().is_empty()).then_some(doc));
            }
            let line = String::from_utf8_lossy(&self.buf);
            match self.separator {
                TextSeparator::Line if !line.trim().is_empty() => {
                    return Ok(Some(line.into_owned()));
                }
                TextSeparator::Line => {}
                TextSeparator::BlankLine if line.trim().is_empty() => {
                    if !doc.trim().is_empty() {
                        return Ok(Some(doc));
                    }
                    doc.clear();
                }
                TextSeparator::BlankLine | TextSeparator::File => {
                    if !doc.is_empty() {
                        doc.push('\n');
                    }
                    doc.push_str(&line);
                }
            }
        }
    }
}

impl Iterator for TextDocuments {
    type Item = Result<Record, PrepareError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_document() {
            Ok(doc) => doc.map(|d| Ok(Record::Text(d))),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

struct JsonLines {
    input: Box<dyn BufRead + Send>,
    fields: RecordFields,
    kind: DatasetType,
    name: String,
    line: u64,
    buf: Vec<u8>,
}

impl JsonLines {
    fn malformed(&self, reason: String) -> PrepareError {
        PrepareError::MalformedRecord {
            source_name: self.name.clone(),
            line: self.line,
            reason,
        }
    }

    fn field(
        &self,
        object: &serde_json::Map<String, serde_json::Value>,
        field: &str,
    ) -> Result<String, PrepareError> {
        match object.get(field) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.malformed(format!(
                "field {field:?} must be a string, found {}",
                json_type(other)
            ))),
            None => Err(self.malformed(format!(
                "missing field {field:?} (fields present: {}); set format.jsonl to the right field names",
                object.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn next_record(&mut self) -> Result<Option<Record>, PrepareError> {
        loop {
            if !read_line(&mut self.input, &mut self.buf, &self.name)? {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: serde_json::Value = serde_json::from_slice(&self.buf)
                .map_err(|e| self.malformed(format!("invalid JSON: {e}")))?;
            let serde_json::Value::Object(object) = value else {
                return Err(self.malformed(format!(
                    "expected a JSON object, found {}",
                    json_type(&value)
                )));
            };
            return Ok(Some(match self.kind {
                DatasetType::Pretraining => {
                    Record::Text(self.field(&object, &self.fields.text_field)?)
                }
                DatasetType::Instruction => Record::Pair {
                    prompt: self.field(&object, &self.fields.prompt_field)?,
                    response: self.field(&object, &self.fields.response_field)?,
                },
            }));
        }
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Iterator for JsonLines {
    type Item = Result<Record, PrepareError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

fn csv_records(
    input: Box<dyn BufRead + Send>,
    fields: &RecordFields,
    delimiter: &str,
    kind: DatasetType,
    name: String,
) -> Result<Records, PrepareError> {
    let delimiter = match delimiter.as_bytes() {
        [d] => *d,
        _ => {
            return Err(PrepareError::InvalidSpec(format!(
                "{name}: csv delimiter must be one ASCII character, got {delimiter:?}"
            )));
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(input);
    let malformed = |name: &str, line: u64, reason: String| PrepareError::MalformedRecord {
        source_name: name.to_string(),
        line,
        reason,
    };
    let headers = reader
        .byte_headers()
        .map_err(|e| {
            // A limit or read error is the source's, not the header's.
            let message = format!("invalid CSV header: {e}");
            match e.into_kind() {
                csv::ErrorKind::Io(io) => PrepareError::from_read(&name, io),
                _ => malformed(&name, 1, message),
            }
        })?
        .clone();
    let wanted: Vec<String> = match kind {
        DatasetType::Pretraining => vec![fields.text_field.clone()],
        DatasetType::Instruction => {
            vec![fields.prompt_field.clone(), fields.response_field.clone()]
        }
    };
    let columns = wanted
        .iter()
        .map(|w| {
            headers.iter().position(|h| h == w.as_bytes()).ok_or_else(|| {
                let present: Vec<String> = headers.iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
                malformed(
                    &name,
                    1,
                    format!("missing column {w:?} (columns: {}); set format.csv to the right column names", present.join(", ")),
                )
            })
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let rows = reader.into_byte_records().map(move |row| {
        let row = row.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            match e.into_kind() {
                csv::ErrorKind::Io(io) => PrepareError::from_read(&name, io),
                kind => malformed(&name, line, format!("invalid CSV: {kind:?}")),
            }
        })?;
        let line = row.position().map_or(0, |p| p.line());
        let cell = |i: usize| {
            row.get(columns[i])
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .ok_or_else(|| malformed(&name, line, format!("row has no column {:?}", wanted[i])))
        };
        Ok(match kind {
            DatasetType::Pretraining => Record::Text(cell(0)?),
            DatasetType::Instruction => Record::Pair {
                prompt: cell(0)?,
                response: cell(1)?,
            },
        })
    });
    Ok(Box::new(rows))
}

pub mod parquet_file;
#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use llmops_crds::dataset::{CsvFormat, TextFormat};
    use std::io::Write;

    fn parse(
        bytes: &[u8],
        format: &Format,
        kind: DatasetType,
    ) -> Vec<Result<Record, PrepareError>> {
        let input = decompress(
            Box::new(std::io::Cursor::new(bytes.to_vec())),
            Compression::Auto,
        )
        .unwrap();
        records(input, format, kind, "source 0 (test)")
            .unwrap()
            .collect()
    }

    fn texts(bytes: &[u8], separator: TextSeparator) -> Vec<String> {
        let format = Format {
            text: Some(TextFormat { separator }),
            ..Format::default()
        };
        parse(bytes, &format, DatasetType::Pretraining)
            .into_iter()
            .map(|r| match r.unwrap() {
                Record::Text(t) => t,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn text_separators() {
        let body = b"a b\nc\n\n\nd\r\ne\n";
        assert_eq!(texts(body, TextSeparator::BlankLine), ["a b\nc", "d\ne"]);
        assert_eq!(texts(body, TextSeparator::Line), ["a b", "c", "d", "e"]);
        assert_eq!(texts(body, TextSeparator::File), ["a b\nc\n\n\nd\ne"]);
    }

    #[test]
    fn gzip_is_detected_by_magic() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"one\n\ntwo\n").unwrap();
        assert_eq!(
            texts(&gz.finish().unwrap(), TextSeparator::BlankLine),
            ["one", "two"]
        );
    }

    #[test]
    fn jsonl_fields_and_line_numbers() {
        let format = Format {
            jsonl: Some(RecordFields::default()),
            ..Format::default()
        };
        let body = b"{\"prompt\":\"p1\",\"response\":\"r1\"}\n\n{\"prompt\":\"p2\",\"response\":\"r2\"}\n{oops\n";
        let out = parse(body, &format, DatasetType::Instruction);
        assert_eq!(
            out[1].as_ref().unwrap(),
            &Record::Pair {
                prompt: "p2".into(),
                response: "r2".into()
            }
        );
        let err = out[2].as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("source 0 (test): line 4: invalid JSON"),
            "{err}"
        );
        let missing = parse(b"{\"body\":\"x\"}\n", &format, DatasetType::Pretraining);
        let err = missing[0].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("missing field \"text\""),
            "{err}"
        );
    }

    #[test]
    fn csv_columns_and_delimiter() {
        let format = Format {
            csv: Some(CsvFormat {
                fields: RecordFields {
                    text_field: "body".into(),
                    ..RecordFields::default()
                },
                delimiter: ";".into(),
            }),
            ..Format::default()
        };
        let out = parse(
            b"id;body\n1;\"hello; world\"\n2;second\n",
            &format,
            DatasetType::Pretraining,
        );
        let got: Vec<Record> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got,
            [
                Record::Text("hello; world".into()),
                Record::Text("second".into())
            ]
        );
        let input = decompress(
            Box::new(std::io::Cursor::new(b"a;b\n".to_vec())),
            Compression::None,
        )
        .unwrap();
        let err = records(input, &format, DatasetType::Pretraining, "s")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing column \"body\""), "{err}");
    }
}
