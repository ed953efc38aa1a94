//! Keys and values of already-processed tokens, so decoding one more token costs one
//! token of compute instead of re-running the whole prefix.
//!
//! The cache holds a batch of sequences that may have different lengths: every
//! sequence occupies the same number of *slots*, and a per-slot validity mask says
//! which slots hold real tokens and which are padding. Positions (for RoPE and GPT-2's
//! learned position embeddings) count only real tokens, so padding never shifts a
//! sequence. This lets a server add sequences to a running batch ([`KvCache::append`])
//! and drop finished ones ([`KvCache::retain`]) between decoding steps.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Per-layer key/value tensors `[batch, kv_heads, slots, head_dim]` plus slot validity.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// `[batch, slots]` bool; `None` while the cache is empty.
    valid: Option<Tensor>,
    /// Whether any slot is padding. When not, single-token decoding needs no mask.
    padded: bool,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` blocks.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
            valid: None,
            padded: false,
        }
    }

    /// Forgets every cached token (the next forward starts a new batch).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.valid = None;
        self.padded = false;
    }

    /// Whether the cache holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.valid.is_none()
    }

    /// Number of sequences, or 0 when empty.
    pub fn batch_size(&self) -> i64 {
        self.valid.as_ref().map_or(0, |v| v.size()[0])
    }

    /// Slots per sequence (real tokens plus padding), or 0 when empty.
    pub fn slots(&self) -> i64 {
        self.valid.as_ref().map_or(0, |v| v.size()[1])
    }

    /// Number of blocks this cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Real (non-padding) tokens cached for each sequence.
    pub fn lengths(&self) -> Result<Vec<i64>> {
        match &self.valid {
            None => Ok(Vec::new()),
            Some(valid) => Ok(Vec::<i64>::try_from(&valid.f_sum_dim_intlist(
                1,
                false,
                Kind::Int64,
            )?)?),
        }
    }

    /// Keeps only the sequences at `indices` (in that order), e.g. to drop finished
    /// requests from a running batch. Slots that became padding for every remaining
    /// sequence are released.
    pub fn retain(&mut self, indices: &[i64]) -> Result<()> {
        let Some(valid) = &self.valid else {
            return if indices.is_empty() {
                Ok(())
            } else {
                Err(Error::InvalidInput(
                    "cannot select sequences from an empty cache".into(),
                ))
            };
        };
        if indices.is_empty() {
            self.clear();
            return Ok(());
        }
        let batch = valid.size()[0];
        if let Some(bad) = indices.iter().find(|&&i| i < 0 || i >= batch) {
            return Err(Error::InvalidInput(format!(
                "sequence index {bad} is outside the cached batch of {batch}"
            )));
        }
        let index = Tensor::f_from_slice(indices)?.f_to(valid.device())?;
        let valid = valid.f_index_select(0, &index)?;
        // Leading slots that no remaining sequence uses are pure padding: drop them.
        let used = Vec::<i64>::try_from(&valid.f_any_dim(0, false)?.f_to_kind(Kind::Int64)?)?;
        let start = used.iter().position(|&u| u != 0).unwrap_or(used.len()) as i64;
        let keep = valid.size()[1] - start;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.f_index_select(0, &index)?.f_narrow(2, start, keep)?;
            *v = v.f_index_select(0, &index)?.f_narrow(2, start, keep)?;
        }
        let valid = valid.f_narrow(1, start, keep)?;
        self.padded = valid.f_all()?.f_to_kind(Kind::Int64)?.f_int64_value(&[])? == 0;
        self.valid = Some(valid);
        Ok(())
    }

    /// Adds the sequences of `other` after this cache's sequences. The shorter of the
    /// two is left-padded with invalid slots so both have the same slot count.
    pub fn append(&mut self, mut other: KvCache) -> Result<()> {
        if other.layers.len() != self.layers.len() {
            return Err(Error::InvalidInput(format!(
                "cannot merge a cache of {} layers into one of {}",
                other.layers.len(),
                self.layers.len()
            )));
        }
        if other.is_empty() {
            return Ok(());
        }
        if self.is_empty() {
            *self = other;
            return Ok(());
        }
        let target = self.slots().max(other.slots());
        self.left_pad(target)?;
        other.left_pad(target)?;
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            match (mine.as_mut(), theirs) {
                (Some((k, v)), Some((k2, v2))) => {
                    *k = Tensor::f_cat(&[&*k, &k2], 0)?;
                    *v = Tensor::f_cat(&[&*v, &v2], 0)?;
                }
                _ => return Err(Error::InvalidInput("cache layers are incomplete".into())),
            }
        }
        let (Some(a), Some(b)) = (&self.valid, &other.valid) else {
            return Ok(());
        };
        self.valid = Some(Tensor::f_cat(&[a, b], 0)?);
        self.padded = self.padded || other.padded;
        Ok(())
    }

    /// Prepends invalid slots until there are `target` slots.
    fn left_pad(&mut self, target: i64) -> Result<()> {
        let extra = target - self.slots();
        let Some(valid) = &self.valid else {
            return Ok(());
        };
        if extra <= 0 {
            return Ok(());
        }
        let pad = |t: &Tensor| -> Result<Tensor> {
            let mut size = t.size();
            size[2] = extra;
            let zeros = Tensor::f_zeros(size.as_slice(), (t.kind(), t.device()))?;
            Ok(Tensor::f_cat(&[&zeros, t], 2)?)
        };
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = pad(k)?;
            *v = pad(v)?;
        }
        let none = Tensor::f_zeros([valid.size()[0], extra], (Kind::Bool, valid.device()))?;
        self.valid = Some(Tensor::f_cat(&[&none, valid], 1)?);
        self.padded = true;
        Ok(())
    }

    pub(crate) fn valid(&self) -> Option<&Tensor> {
        self.valid.as_ref()
    }

    pub(crate) fn is_padded(&self) -> bool {
        self.padded
    }

    /// Records the slot validity after a forward pass appended `new_padding` slots.
    pub(crate) fn set_valid(&mut self, valid: Tensor, new_padding: bool) {
        self.valid = Some(valid);
        self.padded |= new_padding;
    }

    pub(crate) fn layer_mut(&mut self, index: usize) -> Option<&mut Option<(Tensor, Tensor)>> {
        self.layers.get_mut(index)
    }
}
