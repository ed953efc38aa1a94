//! Binary token shards: `<split>-<nnnnn>.bin` holds rows of `sequence_length`
//! little-endian u32 token ids; `<split>-<nnnnn>.mask` (when the split carries
//! loss masks) holds one byte per token, 1 = target. Each shard stays under
//! [`SHARD_BYTES`] so it can be fetched and memory-mapped independently.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::artifact::ShardEntry;

use super::segment::RowSink;

/// Upper bound on the token bytes in one shard.
pub const SHARD_BYTES: usize = 64 << 20;

struct OpenShard {
    bin: BufWriter<File>,
    bin_hash: Sha256,
    mask: Option<(BufWriter<File>, Sha256)>,
    rows: u64,
    index: usize,
}

/// Writes the rows of one split into numbered shards.
pub struct ShardWriter {
    dir: PathBuf,
    split: &'static str,
    rows_per_shard: u64,
    masked: bool,
    current: Option<OpenShard>,
    finished: Vec<ShardEntry>,
    next_index: usize,
}

fn shard_name(split: &str, index: usize, ext: &str) -> String {
    format!("{split}-{index:05}.{ext}")
}

impl ShardWriter {
    /// A writer whose shards hold at most `shard_bytes` of tokens (at least one row).
    pub fn new(
        dir: &Path,
        split: &'static str,
        seq_len: usize,
        masked: bool,
        shard_bytes: usize,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            split,
            rows_per_shard: (shard_bytes / (seq_len * 4)).max(1) as u64,
            masked,
            current: None,
            finished: Vec::new(),
            next_index: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<OpenShard> {
        let index = self.next_index;
        self.next_index += 1;
        let create = |ext| {
            File::create(self.dir.join(shard_name(self.split, index, ext)))
                .map(|f| BufWriter::with_capacity(1 << 20, f))
        };
        Ok(OpenShard {
            bin: create("bin")?,
            bin_hash: Sha256::new(),
            mask: if self.masked {
                Some((create("mask")?, Sha256::new()))
            } else {
                None
            },
            rows: 0,
            index,
        })
    }

    fn close(&mut self, shard: OpenShard) -> std::io::Result<()> {
        shard
            .bin
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        let (mask_path, mask_sha256) = match shard.mask {
            Some((w, h)) => {
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                (
                    Some(shard_name(self.split, shard.index, "mask")),
                    Some(hex::encode(h.finalize())),
                )
            }
            None => (None, None),
        };
        self.finished.push(ShardEntry {
            path: shard_name(self.split, shard.index, "bin"),
            sequences: shard.rows,
            sha256: hex::encode(shard.bin_hash.finalize()),
            mask_path,
            mask_sha256,
        });
        Ok(())
    }

    /// Closes the last shard and returns every shard written, in order.
    pub fn finish(mut self) -> std::io::Result<Vec<ShardEntry>> {
        if let Some(shard) = self.current.take() {
            self.close(shard)?;
        }
        Ok(self.finished)
    }
}

impl RowSink for ShardWriter {
    fn row(&mut self, tokens: &[u32], mask: &[u8]) -> std::io::Result<()> {
        let mut shard = match self.current.take() {
            Some(s) if s.rows < self.rows_per_shard => s,
            Some(full) => {
                self.close(full)?;
                self.open()?
            }
            None => self.open()?,
        };
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        shard.bin.write_all(&bytes)?;
        shard.bin_hash.update(&bytes);
        if let Some((w, h)) = &mut shard.mask {
            w.write_all(mask)?;
            h.update(mask);
        }
        shard.rows += 1;
        self.current = Some(shard);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_roll_over_into_numbered_shards() {
        let dir = tempfile::tempdir().unwrap();
        let seq_len = 16;
        let mut w = ShardWriter::new(dir.path(), "train", seq_len, true, 2 * seq_len * 4);
        let row = vec![7u32; seq_len];
        let mask = vec![1u8; seq_len];
        for _ in 0..3 {
            w.row(&row, &mask).unwrap();
        }
        let shards = w.finish().unwrap();
        let names: Vec<&str> = shards.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(names, ["train-00000.bin", "train-00001.bin"]);
        assert_eq!(shards[0].sequences, 2);
        assert_eq!(shards[1].mask_path.as_deref(), Some("train-00001.mask"));
        let bytes = std::fs::read(dir.path().join("train-00001.bin")).unwrap();
        assert_eq!(bytes.len(), seq_len * 4);
        assert_eq!(
            shards[1].sha256,
            llmops_store::sha256_file(&dir.path().join("train-00001.bin")).unwrap()
        );
    }
}
