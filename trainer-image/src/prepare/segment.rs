//! Cutting token streams into fixed-length training rows.
//!
//! Packed: documents are concatenated (each followed by EOS when asked) and cut
//! into windows of `sequence_length` starting every `stride` tokens. The final
//! partial window is completed with padding when the split carries loss masks,
//! and otherwise with tokens from the start of the split's stream, so no tokens
//! are lost and pretraining shards need no mask file.
//!
//! Unpacked: every document starts its own windows; the last window of each
//! document is padded with the pad id and masked out of the loss.

/// Receives each finished row: `tokens.len() == mask.len() == sequence_length`.
pub trait RowSink {
    fn row(&mut self, tokens: &[u32], mask: &[u8]) -> std::io::Result<()>;
}

/// Segmentation state for one split.
pub struct Segmenter {
    seq_len: usize,
    stride: usize,
    pack: bool,
    pad_id: u32,
    masked: bool,
    tokens: Vec<u32>,
    mask: Vec<u8>,
    /// Start of the unemitted window in `tokens`/`mask` (packed mode).
    start: usize,
    /// Tokens from `start` that an earlier window already covered.
    covered: usize,
    /// The first `seq_len` tokens of the stream, to complete the last window.
    head: Vec<(u32, u8)>,
    /// Tokens pushed (documents and EOS), for `stats.*Tokens`.
    pub tokens_in: u64,
    /// Rows emitted.
    pub rows: u64,
}

impl Segmenter {
    pub fn new(seq_len: usize, stride: usize, pack: bool, pad_id: u32, masked: bool) -> Self {
        Self {
            seq_len,
            stride: stride.clamp(1, seq_len),
            pack,
            pad_id,
            masked,
            tokens: Vec::new(),
            mask: Vec::new(),
            start: 0,
            covered: 0,
            head: Vec::new(),
            tokens_in: 0,
            rows: 0,
        }
    }

    /// Adds one document's tokens and mask (1 = target), emitting full rows.
    pub fn push(
        &mut self,
        tokens: &[u32],
        mask: &[u8],
        sink: &mut impl RowSink,
    ) -> std::io::Result<()> {
        self.tokens_in += tokens.len() as u64;
        if !self.pack {
            return self.emit_document(tokens, mask, sink);
        }
        if self.head.len() < self.seq_len {
            let take = (self.seq_len - self.head.len()).min(tokens.len());
            self.head.extend(
                tokens[..take]
                    .iter()
                    .copied()
                    .zip(mask[..take].iter().copied()),
            );
        }
        self.tokens.extend_from_slice(tokens);
        self.mask.extend_from_slice(mask);
        while self.tokens.len() - self.start >= self.seq_len {
            let end = self.start + self.seq_len;
            self.rows += 1;
            sink.row(&self.tokens[self.start..end], &self.mask[self.start..end])?;
            self.start += self.stride;
            self.covered = self.seq_len - self.stride;
        }
        // Compact once the consumed prefix dominates, keeping pushes amortised O(1).
        if self.start > self.tokens.len() / 2 {
            self.tokens.drain(..self.start);
            self.mask.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }

    /// Emits the final partial window, if it holds tokens no row has covered yet.
    pub fn finish(&mut self, sink: &mut impl RowSink) -> std::io::Result<()> {
        let pending = self.tokens.len() - self.start;
        if !self.pack || pending <= self.covered {
            return Ok(());
        }
        let mut tokens = self.tokens[self.start..].to_vec();
        let mut mask = self.mask[self.start..].to_vec();
        if self.masked {
            tokens.resize(self.seq_len, self.pad_id);
            mask.resize(self.seq_len, 0);
        } else {
            let fill = self.head.iter().cycle().take(self.seq_len - tokens.len());
            for (t, m) in fill {
                tokens.push(*t);
                mask.push(*m);
            }
        }
        self.emit(&tokens, &mask, sink)
    }

    fn emit_document(
        &mut self,
        tokens: &[u32],
        mask: &[u8],
        sink: &mut impl RowSink,
    ) -> std::io::Result<()> {
        let mut start = 0;
        loop {
            let end = (start + self.seq_len).min(tokens.len());
            let mut t = tokens[start..end].to_vec();
            let mut m = mask[start..end].to_vec();
            t.resize(self.seq_len, self.pad_id);
            m.resize(self.seq_len, 0);
            self.emit(&t, &m, sink)?;
            if end == tokens.len() {
                return Ok(());
            }
            start += self.stride;
        }
    }

    fn emit(
        &mut self,
        tokens: &[u32],
        mask: &[u8],
        sink: &mut impl RowSink,
    ) -> std::io::Result<()> {
        self.rows += 1;
        sink.row(tokens, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rows(Vec<(Vec<u32>, Vec<u8>)>);

    impl RowSink for Rows {
        fn row(&mut self, tokens: &[u32], mask: &[u8]) -> std::io::Result<()> {
            self.0.push((tokens.to_vec(), mask.to_vec()));
            Ok(())
        }
    }

    fn run(seg: &mut Segmenter, docs: &[&[u32]]) -> Vec<(Vec<u32>, Vec<u8>)> {
        let mut rows = Rows::default();
        for d in docs {
            seg.push(d, &vec![1; d.len()], &mut rows).unwrap();
        }
        seg.finish(&mut rows).unwrap();
        rows.0
    }

    #[test]
    fn packing_wraps_the_tail_without_masks() {
        let mut seg = Segmenter::new(4, 4, true, 99, false);
        let rows = run(&mut seg, &[&[1, 2, 3, 0], &[4, 5, 0]]);
        let tokens: Vec<Vec<u32>> = rows.into_iter().map(|r| r.0).collect();
        assert_eq!(tokens, [vec![1, 2, 3, 0], vec![4, 5, 0, 1]]);
        assert_eq!(seg.tokens_in, 7);
    }

    #[test]
    fn stride_overlaps_windows() {
        let mut seg = Segmenter::new(4, 2, true, 99, true);
        let rows = run(&mut seg, &[&[1, 2, 3, 4, 5, 6, 7]]);
        let tokens: Vec<Vec<u32>> = rows.iter().map(|r| r.0.clone()).collect();
        assert_eq!(
            tokens,
            [vec![1, 2, 3, 4], vec![3, 4, 5, 6], vec![5, 6, 7, 99]]
        );
        assert_eq!(rows[2].1, [1, 1, 1, 0]);
    }

    #[test]
    fn no_tail_row_when_everything_is_covered() {
        let mut seg = Segmenter::new(4, 2, true, 99, true);
        assert_eq!(run(&mut seg, &[&[1, 2, 3, 4, 5, 6]]).len(), 2);
    }

    #[test]
    fn unpacked_documents_are_padded_and_masked() {
        let mut seg = Segmenter::new(4, 4, false, 9, true);
        let rows = run(&mut seg, &[&[1, 2], &[3, 4, 5, 6, 7]]);
        assert_eq!(
            rows,
            [
                (vec![1, 2, 9, 9], vec![1, 1, 0, 0]),
                (vec![3, 4, 5, 6], vec![1, 1, 1, 1]),
                (vec![7, 9, 9, 9], vec![1, 0, 0, 0]),
            ]
        );
    }
}
