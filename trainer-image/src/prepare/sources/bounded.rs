//! Readers that stop a source at a limit with a [`LimitExceeded`] error instead
//! of letting it grow without bound: the bytes of a download, the decompressed
//! bytes of one gzip member, the bytes of one line.
//!
//! The errors travel up as `io::Error`s through decompression and the CSV
//! reader; [`LineLimit`], the top of the stack, adds the line being read, and
//! [`crate::prepare::PrepareError::from_read`] recovers them with the source's
//! name.

use std::io::{self, BufRead, Read};

use flate2::bufread::GzDecoder;
use llmops_contract::env;

use crate::prepare::error::LimitExceeded;

/// Fails once more than `limit` bytes have been read through it.
pub struct Capped<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R> Capped<R> {
    /// A download of at most `limit` bytes ([`env::SOURCE_MAX_BYTES`]).
    pub fn download(inner: R, limit: u64) -> Self {
        Self {
            inner,
            read: 0,
            limit,
        }
    }
}

/// The error of a download larger than `limit`.
pub fn download_too_large(limit: u64, line: Option<u64>) -> LimitExceeded {
    LimitExceeded {
        what: "the download is larger than",
        limit,
        fix: format!(
            "split the source into smaller files or raise {}",
            env::SOURCE_MAX_BYTES
        ),
        line,
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(download_too_large(self.limit, None).into_io());
        }
        Ok(n)
    }
}

/// Decompresses a gzip stream of any number of members, as
/// `flate2::bufread::MultiGzDecoder` does, but fails once one member has
/// decompressed to more than `limit` bytes: a few kilobytes of gzip can expand
/// to terabytes.
pub struct GzipMembers<R: BufRead> {
    /// `None` at the end of the stream or after an error.
    decoder: Option<GzDecoder<R>>,
    member_bytes: u64,
    limit: u64,
}

impl<R: BufRead> GzipMembers<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Self {
            decoder: Some(GzDecoder::new(inner)),
            member_bytes: 0,
            limit,
        }
    }

    fn too_large(&self) -> io::Error {
        LimitExceeded {
            what: "a gzip member decompresses to more than",
            limit: self.limit,
            fix: format!(
                "split the data into smaller gzip members or files, or raise {}",
                env::GZIP_MEMBER_MAX_BYTES
            ),
            line: None,
        }
        .into_io()
    }
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            // Never inflate more than one byte past the limit into `buf`.
            let room = (self.limit - self.member_bytes).saturating_add(1);
            let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            let n = match decoder.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) => {
                    self.decoder = None;
                    return Err(e);
                }
            };
            if n > 0 {
                self.member_bytes += n as u64;
                if self.member_bytes > self.limit {
                    self.decoder = None;
                    return Err(self.too_large());
                }
                return Ok(n);
            }
            // The end of a member: another follows unless the input ends here.
            let Some(decoder) = self.decoder.take() else {
                return Ok(0);
            };
            let mut inner = decoder.into_inner();
            if inner.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.decoder = Some(GzDecoder::new(inner));
            self.member_bytes = 0;
        }
    }
}

/// Fails on a line (bytes between newlines) longer than `limit`, before the
/// parsers above it would hold the whole line in memory, and adds the number
/// of the line being read to the limit errors of the readers below it.
pub struct LineLimit<R> {
    inner: R,
    limit: u64,
    /// 1-based number of the line being read.
    line: u64,
    /// Bytes of that line read so far.
    line_len: u64,
}

impl<R> LineLimit<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            limit,
            line: 1,
            line_len: 0,
        }
    }

    fn too_long(&self) -> io::Error {
        LimitExceeded {
            what: "the line is longer than",
            limit: self.limit,
            fix: format!(
                "split the record, check the format (a binary file, a CSV quote left open), or raise {}",
                env::LINE_MAX_BYTES
            ),
            line: Some(self.line),
        }
        .into_io()
    }

    fn locate(&self, err: io::Error) -> io::Error {
        at_line(err, self.line)
    }
}

/// Places a [`LimitExceeded`] carried by `err` that has no line yet at `line`.
pub fn at_line(err: io::Error, line: u64) -> io::Error {
    match LimitExceeded::in_io(&err) {
        Some(limit) if limit.line.is_none() => LimitExceeded {
            line: Some(line),
            ..limit.clone()
        }
        .into_io(),
        _ => err,
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| self.locate(e))?;
        let mut rest = &buf[..n];
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            self.line_len += newline as u64;
            if self.line_len > self.limit {
                return Err(self.too_long());
            }
            self.line += 1;
            self.line_len = 0;
            rest = &rest[newline + 1..];
        }
        self.line_len += rest.len() as u64;
        if self.line_len > self.limit {
            return Err(self.too_long());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn limit_of(err: &io::Error) -> LimitExceeded {
        LimitExceeded::in_io(err).cloned().expect("a limit error")
    }

    #[test]
    fn members_are_limited_one_by_one() {
        let mut two = gzip(&[b'a'; 100]);
        two.extend(gzip(&[b'b'; 100]));
        let mut out = Vec::new();
        GzipMembers::new(&two[..], 100)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 200);
        let err = GzipMembers::new(&two[..], 99)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(limit_of(&err).limit, 99);
    }

    #[test]
    fn a_bomb_stops_at_the_limit_with_the_line_being_read() {
        // 64 MiB of newlines-free zeros after two short lines, compressed to ~64 KiB.
        let mut body = b"one\ntwo\n".to_vec();
        body.resize(64 << 20, 0);
        let bomb = gzip(&body);
        assert!(bomb.len() < 1 << 20);
        let reader = LineLimit::new(GzipMembers::new(&bomb[..], 1 << 20), 64 << 20);
        let err = io::BufReader::new(reader)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        let limit = limit_of(&err);
        assert_eq!((limit.line, limit.limit), (Some(3), 1 << 20));
        assert!(limit.fix.contains(env::GZIP_MEMBER_MAX_BYTES), "{limit}");
    }

    #[test]
    fn lines_are_limited_and_numbered() {
        let text = b"short\nexactly8\nnine byte\n";
        let read = |limit| {
            let mut out = Vec::new();
            // A tiny buffer, so lines straddle reads.
            io::BufReader::with_capacity(3, LineLimit::new(&text[..], limit))
                .read_to_end(&mut out)
                .map(|_| out)
        };
        assert_eq!(read(9).unwrap(), text);
        let err = read(8).unwrap_err();
        assert_eq!(limit_of(&err).line, Some(3));
        assert!(
            err.to_string()
                .starts_with("line 3: the line is longer than the limit of 8 bytes")
        );
    }

    #[test]
    fn downloads_are_capped() {
        let body = [0u8; 10];
        assert!(
            Capped::download(&body[..], 10)
                .read_to_end(&mut Vec::new())
                .is_ok()
        );
        let err = Capped::download(&body[..], 9)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(limit_of(&err).fix.contains(env::SOURCE_MAX_BYTES));
    }
}
