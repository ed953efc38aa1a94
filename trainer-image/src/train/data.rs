//! Global batches over a dataset split: shuffled once per epoch from the seed,
//! deterministic, and resumable from a [`Cursor`].
//!
//! A global batch is `batch` consecutive entries of the epoch's permutation; rank
//! `r` of `w` takes the `r`-th of `w` equal slices and cuts it into micro-batches.
//! Every rank walks the same permutation, so the slices are disjoint and together
//! are exactly the batch a single process would take.

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::artifact::{ArtifactError, SplitReader};

/// Target id the loss ignores (`cross_entropy`'s `ignore_index`).
pub const IGNORE: i64 = -100;

/// Where the next global batch starts: in which epoch, at which position of that
/// epoch's permutation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub position: u64,
}

/// One forward/backward pass worth of rows.
#[derive(Debug)]
pub struct MicroBatch {
    /// `[rows, len - 1]` token ids.
    pub inputs: Tensor,
    /// `[rows, len - 1]` next-token targets, [`IGNORE`] where the mask says so.
    pub targets: Tensor,
}

/// This rank's share of one optimizer step.
#[derive(Debug)]
pub struct StepBatch {
    pub micro_batches: Vec<MicroBatch>,
    /// Loss targets in the whole global batch (all ranks), to normalise the loss
    /// so that any split into ranks and micro-batches gives the same gradient.
    pub global_targets: i64,
}

/// Cuts global batches out of a split.
pub struct Loader {
    split: SplitReader,
    /// Tokens per row fed to the model (rows are cropped to this length).
    len: usize,
    seed: u64,
    batch: usize,
    micro: usize,
    rank: usize,
    world: usize,
    cursor: Cursor,
    order: Vec<u64>,
    device: Device,
}

impl Loader {
    /// A loader of global batches of `batch` rows, each rank taking
    /// `batch / world` of them in micro-batches of `micro`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        split: SplitReader,
        len: usize,
        seed: u64,
        batch: usize,
        micro: usize,
        rank: usize,
        world: usize,
        device: Device,
    ) -> Self {
        let order = permutation(split.len(), seed, 0);
        Self {
            split,
            len,
            seed,
            batch,
            micro,
            rank,
            world,
            cursor: Cursor::default(),
            order,
            device,
        }
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Continues from `cursor` (from a checkpoint).
    pub fn seek(&mut self, cursor: Cursor) {
        if cursor.epoch != self.cursor.epoch {
            self.order = permutation(self.split.len(), self.seed, cursor.epoch);
        }
        self.cursor = cursor;
    }

    /// The split's row indices of the next global batch, advancing the cursor
    /// (into the next epoch, reshuffled, when this one runs out).
    fn next_indices(&mut self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.batch);
        while out.len() < self.batch {
            if self.cursor.position >= self.order.len() as u64 {
                self.seek(Cursor {
                    epoch: self.cursor.epoch + 1,
                    position: 0,
                });
            }
            out.push(self.order[self.cursor.position as usize]);
            self.cursor.position += 1;
        }
        out
    }

    /// This rank's micro-batches of the next global batch.
    pub fn next_step(&mut self) -> Result<StepBatch, ArtifactError> {
        let indices = self.next_indices();
        let share = self.batch / self.world;
        let mut global_targets = 0;
        let mut rows = Vec::with_capacity(share);
        for (i, &index) in indices.iter().enumerate() {
            let mine = i / share == self.rank;
            let row = self.split.get(index)?;
            // Only the mask is needed for other ranks' rows, but reading the row is
            // cheap next to a training step and keeps one code path.
            let (tokens, targets, count) = self.row(&row.tokens, row.mask.as_deref());
            global_targets += count;
            if mine {
                rows.push((tokens, targets));
            }
        }
        let micro_batches = rows
            .chunks(self.micro)
            .map(|chunk| self.micro_batch(chunk))
            .collect();
        Ok(StepBatch {
            micro_batches,
            global_targets,
        })
    }

    fn micro_batch(&self, rows: &[Row]) -> MicroBatch {
        stack_rows(rows, self.len, self.device)
    }

    fn row(&self, tokens: &[u32], mask: Option<&[u8]>) -> (Vec<i64>, Vec<i64>, i64) {
        row(tokens, mask, self.len)
    }
}

/// Inputs and targets of one row.
type Row = (Vec<i64>, Vec<i64>);

/// Inputs, targets and the number of loss targets of a row cropped to `len`.
fn row(tokens: &[u32], mask: Option<&[u8]>, len: usize) -> (Vec<i64>, Vec<i64>, i64) {
    let tokens = &tokens[..len];
    let inputs: Vec<i64> = tokens[..len - 1].iter().map(|&t| t as i64).collect();
    let mut count = 0;
    let targets = (1..len)
        .map(|i| {
            if mask.is_some_and(|m| m[i] == 0) {
                IGNORE
            } else {
                count += 1;
                tokens[i] as i64
            }
        })
        .collect();
    (inputs, targets, count)
}

fn stack_rows(rows: &[Row], len: usize, device: Device) -> MicroBatch {
    let width = (len - 1) as i64;
    let stack = |pick: fn(&Row) -> &Vec<i64>| {
        let flat: Vec<i64> = rows.iter().flat_map(|r| pick(r).iter().copied()).collect();
        Tensor::from_slice(&flat)
            .view([rows.len() as i64, width])
            .to_device(device)
    };
    MicroBatch {
        inputs: stack(|r| &r.0),
        targets: stack(|r| &r.1),
    }
}

/// The first `limit` rows of a split (in order) as micro-batches of `micro`,
/// for evaluation.
pub fn eval_batches(
    split: &SplitReader,
    len: usize,
    micro: usize,
    limit: u64,
    device: Device,
) -> Result<Vec<MicroBatch>, ArtifactError> {
    let n = split.len().min(limit);
    let mut out = Vec::new();
    let mut rows = Vec::with_capacity(micro);
    for index in 0..n {
        let seq = split.get(index)?;
        let (inputs, targets, _) = row(&seq.tokens, seq.mask.as_deref(), len);
        rows.push((inputs, targets));
        if rows.len() == micro || index + 1 == n {
            out.push(stack_rows(&rows, len, device));
            rows.clear();
        }
    }
    Ok(out)
}

/// A seeded Fisher–Yates permutation of `0..n` for `epoch`; independent of torch's
/// generator so data order never depends on what else drew random numbers.
pub fn permutation(n: u64, seed: u64, epoch: u64) -> Vec<u64> {
    let mut state = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut order: Vec<u64> = (0..n).collect();
    for i in (1..order.len()).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// SplitMix64: a tiny, well-mixed generator; good enough to shuffle rows.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_seeded_per_epoch() {
        let a = permutation(100, 7, 0);
        assert_eq!(a, permutation(100, 7, 0), "deterministic");
        assert_ne!(a, permutation(100, 7, 1), "reshuffled each epoch");
        assert_ne!(a, permutation(100, 8, 0), "depends on the seed");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "a permutation");
    }

    #[test]
    fn rows_shift_targets_and_honour_masks() {
        let (inputs, targets, count) = row(&[10, 11, 12, 13, 14], Some(&[1, 1, 0, 1, 1]), 4);
        assert_eq!(inputs, vec![10, 11, 12]);
        assert_eq!(
            targets,
            vec![11, IGNORE, 13],
            "masked target ignored, row cropped to 4"
        );
        assert_eq!(count, 2);
        let (_, targets, count) = row(&[1, 2, 3], None, 3);
        assert_eq!((targets, count), (vec![2, 3], 2));
    }
}
