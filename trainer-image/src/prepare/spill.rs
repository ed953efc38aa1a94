//! A temporary file holding the cleaned, deduplicated documents between the
//! collection pass and the tokenizer/tokenization passes, so memory stays bounded
//! however large the corpus is (sources are read exactly once).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};

use super::formats::Record;

const TEXT: u8 = 0;
const PAIR: u8 = 1;

/// Appends records to the spill file.
pub struct SpillWriter {
    out: BufWriter<File>,
}

fn put(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    let len =
        u32::try_from(s.len()).map_err(|_| std::io::Error::other("document larger than 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(s.as_bytes())
}

impl SpillWriter {
    pub fn new(file: File) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 20, file),
        }
    }

    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        match record {
            Record::Text(t) => {
                self.out.write_all(&[TEXT])?;
                put(&mut self.out, t)
            }
            Record::Pair { prompt, response } => {
                self.out.write_all(&[PAIR])?;
                put(&mut self.out, prompt)?;
                put(&mut self.out, response)
            }
        }
    }

    /// Flushes and returns the file for reading.
    pub fn finish(self) -> std::io::Result<File> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// Reads the records back from the start of a spill file.
pub struct SpillReader {
    input: BufReader<File>,
}

impl SpillReader {
    pub fn new(file: &File) -> std::io::Result<Self> {
        let mut file = file.try_clone()?;
        file.rewind()?;
        Ok(Self {
            input: BufReader::with_capacity(1 << 20, file),
        })
    }

    fn string(&mut self) -> std::io::Result<String> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        self.input.read_exact(&mut buf)?;
        String::from_utf8(buf).map_err(std::io::Error::other)
    }

    fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        let mut tag = [0u8; 1];
        match self.input.read_exact(&mut tag) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        }
        Ok(Some(match tag[0] {
            TEXT => Record::Text(self.string()?),
            _ => Record::Pair {
                prompt: self.string()?,
                response: self.string()?,
            },
        }))
    }
}

impl Iterator for SpillReader {
    type Item = std::io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let records = [
            Record::Text("héllo".into()),
            Record::Pair {
                prompt: "p".into(),
                response: String::new(),
            },
        ];
        let mut w = SpillWriter::new(tempfile::tempfile().unwrap());
        for r in &records {
            w.write(r).unwrap();
        }
        let file = w.finish().unwrap();
        let back: Vec<Record> = SpillReader::new(&file)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(back, records);
        assert_eq!(SpillReader::new(&file).unwrap().count(), 2, "re-readable");
    }
}
