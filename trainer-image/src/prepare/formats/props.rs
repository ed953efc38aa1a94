//! Properties of the format parsers over generated input: any bytes end in
//! records or an error naming the source (never a panic), what a writer of
//! the format produces reads back unchanged, and the limits fail exactly when
//! the input goes past them.

use std::io::{Read, Write};

use llmops_crds::dataset::{CsvFormat, TextFormat};
use proptest::prelude::*;

use super::*;
use crate::prepare::error::LimitExceeded;

const NAME: &str = "source 3 (prop)";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn parse_within(
    bytes: &[u8],
    compression: Compression,
    format: &Format,
    kind: DatasetType,
    limits: &Limits,
) -> Result<Vec<Record>, PrepareError> {
    let input = decompress_within(
        Box::new(std::io::Cursor::new(bytes.to_vec())),
        compression,
        limits,
    )
    .map_err(|e| PrepareError::from_read(NAME, e))?;
    records(input, format, kind, NAME)?.collect()
}

fn parse(bytes: &[u8], format: &Format, kind: DatasetType) -> Result<Vec<Record>, PrepareError> {
    parse_within(bytes, Compression::Auto, format, kind, &Limits::default())
}

fn read_all(bytes: &[u8], compression: Compression, limits: &Limits) -> std::io::Result<Vec<u8>> {
    let mut input = decompress_within(
        Box::new(std::io::Cursor::new(bytes.to_vec())),
        compression,
        limits,
    )?;
    let mut out = Vec::new();
    input.read_to_end(&mut out)?;
    Ok(out)
}

fn text_format(separator: TextSeparator) -> Format {
    Format {
        text: Some(TextFormat { separator }),
        ..Format::default()
    }
}

fn jsonl() -> Format {
    Format {
        jsonl: Some(RecordFields::default()),
        ..Format::default()
    }
}

fn csv_format(delimiter: &str) -> Format {
    Format {
        csv: Some(CsvFormat {
            fields: RecordFields {
                text_field: "body".into(),
                ..RecordFields::default()
            },
            delimiter: delimiter.into(),
        }),
        ..Format::default()
    }
}

fn any_format() -> impl Strategy<Value = Format> {
    prop_oneof![
        Just(text_format(TextSeparator::Line)),
        Just(text_format(TextSeparator::BlankLine)),
        Just(text_format(TextSeparator::File)),
        Just(jsonl()),
        Just(csv_format(",")),
        Just(csv_format("\t")),
    ]
}

fn any_kind() -> impl Strategy<Value = DatasetType> {
    prop_oneof![
        Just(DatasetType::Pretraining),
        Just(DatasetType::Instruction)
    ]
}

fn any_compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::Auto),
        Just(Compression::Gzip),
        Just(Compression::None)
    ]
}

/// Bytes that look like the formats (braces, quotes, delimiters, newlines,
/// invalid UTF-8) more often than uniform bytes would.
fn formatish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => any::<u8>(),
        2 => prop::sample::select(b"{}[]\":,\t\n\r\\ tx".to_vec()),
    ];
    prop::collection::vec(byte, 0..400)
}

/// Non-blank text without line breaks: one line of a text source.
fn line_text() -> impl Strategy<Value = String> {
    "[^\n\r]{1,40}".prop_filter("not blank", |s| !s.trim().is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failures are reported with their minimal input; no files are written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the bytes, parsing ends in records or in an error that names
    /// the source; never in a panic.
    #[test]
    fn any_bytes_parse_or_fail_naming_the_source(
        body in formatish_bytes(),
        gzipped in any::<bool>(),
        compression in any_compression(),
        format in any_format(),
        kind in any_kind(),
        line_bytes in prop_oneof![Just(DEFAULT_LINE), 1u64..64],
        gzip_member_bytes in prop_oneof![Just(DEFAULT_MEMBER), 1u64..512],
    ) {
        let bytes = if gzipped { gzip(&body) } else { body };
        let limits = Limits { line_bytes, gzip_member_bytes, ..Limits::default() };
        if let Err(e) = parse_within(&bytes, compression, &format, kind, &limits) {
            let message = e.to_string();
            prop_assert!(
                message.starts_with(NAME)
                    || message.starts_with(&format!("invalid spec: {NAME}")),
                "{message}"
            );
        }
    }

    /// JSON lines written by a JSON writer read back as the same texts and pairs.
    #[test]
    fn jsonl_round_trips(texts in prop::collection::vec(any::<String>(), 0..20)) {
        let mut body = String::new();
        for t in &texts {
            body.push_str(&serde_json::json!({"text": t, "n": 1}).to_string());
            body.push('\n');
        }
        let got = parse(body.as_bytes(), &jsonl(), DatasetType::Pretraining).unwrap();
        let want: Vec<Record> = texts.iter().cloned().map(Record::Text).collect();
        prop_assert_eq!(got, want);

        let mut pairs = String::new();
        for (i, t) in texts.iter().enumerate() {
            let line = serde_json::json!({"prompt": t, "response": i.to_string()});
            pairs.push_str(&format!("{line}\r\n"));
        }
        let got = parse(pairs.as_bytes(), &jsonl(), DatasetType::Instruction).unwrap();
        let want: Vec<Record> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Record::Pair { prompt: t.clone(), response: i.to_string() })
            .collect();
        prop_assert_eq!(got, want);
    }

    /// Rows written by a CSV writer read back as the same cells, whatever they
    /// hold (delimiters, quotes, line breaks).
    #[test]
    fn csv_round_trips(
        texts in prop::collection::vec(any::<String>(), 0..20),
        delimiter in prop::sample::select(vec![",", ";", "\t", "|"]),
    ) {
        let mut writer = csv::WriterBuilder::new()
            .delimiter(delimiter.as_bytes()[0])
            .from_writer(Vec::new());
        writer.write_record(["id", "body"]).unwrap();
        for (i, t) in texts.iter().enumerate() {
            writer.write_record([i.to_string().as_str(), t.as_str()]).unwrap();
        }
        let body = writer.into_inner().unwrap();
        let got = parse(&body, &csv_format(delimiter), DatasetType::Pretraining).unwrap();
        let want: Vec<Record> = texts.iter().cloned().map(Record::Text).collect();
        prop_assert_eq!(got, want);
    }

    /// Text documents joined by their separator split back into the same
    /// documents, plain or gzip-compressed.
    #[test]
    fn text_round_trips(
        docs in prop::collection::vec(prop::collection::vec(line_text(), 1..4), 1..10),
        gzipped in any::<bool>(),
    ) {
        let pack = |s: String| if gzipped { gzip(s.as_bytes()) } else { s.into_bytes() };
        let texts = |bytes: &[u8], separator| -> Vec<Record> {
            parse(bytes, &text_format(separator), DatasetType::Pretraining).unwrap()
        };
        let lines: Vec<String> = docs.iter().flatten().cloned().collect();
        prop_assert_eq!(
            texts(&pack(lines.join("\n")), TextSeparator::Line),
            lines.iter().cloned().map(Record::Text).collect::<Vec<_>>()
        );
        let joined: Vec<String> = docs.iter().map(|d| d.join("\n")).collect();
        prop_assert_eq!(
            texts(&pack(joined.join("\n\n") + "\n"), TextSeparator::BlankLine),
            joined.iter().cloned().map(Record::Text).collect::<Vec<_>>()
        );
        prop_assert_eq!(
            texts(&pack(lines.join("\n")), TextSeparator::File),
            vec![Record::Text(lines.join("\n"))]
        );
    }

    /// Any number of gzip members decompress to their concatenation, and each
    /// member is held to the limit on its own.
    #[test]
    fn gzip_members_concatenate_within_the_limit(
        members in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..5),
        limit in 1u64..400,
    ) {
        let bytes: Vec<u8> = members.iter().flat_map(|m| gzip(m)).collect();
        let limits = Limits { gzip_member_bytes: limit, ..Limits::default() };
        let largest = members.iter().map(Vec::len).max().unwrap_or(0) as u64;
        match read_all(&bytes, Compression::Auto, &limits) {
            Ok(out) => {
                prop_assert!(largest <= limit);
                prop_assert_eq!(out, members.concat());
            }
            Err(e) => {
                prop_assert!(largest > limit, "{e}");
                let exceeded = LimitExceeded::in_io(&e).expect("a limit error");
                prop_assert_eq!(exceeded.limit, limit);
            }
        }
    }

    /// On any bytes the bounded decoder agrees with flate2's multi-member
    /// decoder: the same output, or an error from both.
    #[test]
    fn gzip_decoding_matches_flate2(body in formatish_bytes(), cut in any::<prop::sample::Index>()) {
        // Valid gzip with a tail of arbitrary bytes, or cut short.
        let mut bytes = gzip(&body);
        let at = cut.index(bytes.len() + body.len() + 1);
        if at <= bytes.len() { bytes.truncate(at) } else { bytes.extend(&body[..at - bytes.len() - 1]) }
        let ours = read_all(&bytes, Compression::Gzip, &Limits::default());
        let mut theirs = Vec::new();
        let theirs = flate2::bufread::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut theirs)
            .map(|_| theirs);
        match (ours, theirs) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "ours {:?}, flate2 {:?}", a.map(|v| v.len()), b.map(|v| v.len())),
        }
    }

    /// A source fails on its first line longer than the limit, naming that
    /// line, and only then.
    #[test]
    fn lines_fail_exactly_past_the_limit(body in formatish_bytes(), limit in 1u64..80) {
        let limits = Limits { line_bytes: limit, ..Limits::default() };
        let first_long = body
            .split(|b| *b == b'\n')
            .position(|line| line.len() as u64 > limit)
            .map(|i| i as u64 + 1);
        match read_all(&body, Compression::None, &limits) {
            Ok(out) => {
                prop_assert_eq!(first_long, None);
                prop_assert_eq!(out, body);
            }
            Err(e) => {
                let exceeded = LimitExceeded::in_io(&e).expect("a limit error");
                prop_assert_eq!(exceeded.line, first_long);
                let message = PrepareError::from_read(NAME, e).to_string();
                let expected_start = format!("{NAME}: line {}: the line is longer than", first_long.unwrap_or(0));
                prop_assert!(message.starts_with(&expected_start), "{}", message);
            }
        }
    }
}

const DEFAULT_LINE: u64 = crate::prepare::sources::limits::DEFAULT_LINE_MAX_BYTES;
const DEFAULT_MEMBER: u64 = crate::prepare::sources::limits::DEFAULT_GZIP_MEMBER_MAX_BYTES;

#[test]
fn a_zip_bomb_in_a_source_fails_permanently_with_source_line_and_limit() {
    use crate::train::Permanence;
    let mut body = b"{\"text\": \"fine\"}\n".to_vec();
    body.resize(8 << 20, b' ');
    let limits = Limits {
        gzip_member_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = parse_within(
        &gzip(&body),
        Compression::Auto,
        &jsonl(),
        DatasetType::Pretraining,
        &limits,
    )
    .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(
        err.to_string(),
        format!(
            "{NAME}: line 2: a gzip member decompresses to more than the limit of 1 MiB; split the data into smaller gzip members or files, or raise LLMOPS_GZIP_MEMBER_MAX_BYTES"
        )
    );
}
