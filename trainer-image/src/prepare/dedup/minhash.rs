//! MinHash + LSH near-duplicate detection.
//!
//! A document is the set of its `shingle_size`-word shingles. Each shingle is
//! hashed once to 64 bits; the `permutations` MinHash functions are then cheap
//! multiply-shift hashes of that value (`(a·h + b) >> 32`, `a` odd), which keeps
//! signature computation at one multiply-add per shingle and permutation.
//! Signatures are cut into `bands` of `rows`; two documents are candidates when
//! any band matches. Bands/rows come from the threshold as `datasketch` chooses
//! them (minimising the weighted false-positive and false-negative areas of the
//! S-curve), with the weights tilted towards recall ([`LSH_WEIGHTS`]); each
//! candidate is then verified by the similarity of the two signatures, which
//! removes the false positives that tilt lets in. Kept documents retain an 8-bit
//! sketch of their signature for that check (one byte per permutation), so the
//! index stays a few hundred bytes per document.

use std::collections::HashMap;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Computes MinHash signatures.
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
    shingle_size: usize,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl MinHasher {
    /// A hasher with `permutations` hash functions drawn from a fixed seed, so
    /// signatures are reproducible across runs and machines.
    pub fn new(permutations: usize, shingle_size: usize) -> Self {
        let mut state = 0x6c6c_6d6f_7073_u64;
        let mut a = Vec::with_capacity(permutations);
        let mut b = Vec::with_capacity(permutations);
        for _ in 0..permutations {
            a.push(splitmix64(&mut state) | 1);
            b.push(splitmix64(&mut state));
        }
        Self {
            a,
            b,
            shingle_size: shingle_size.max(1),
        }
    }

    /// The signature of `text`, or `None` for a text with no words.
    pub fn signature(&self, text: &str) -> Option<Vec<u32>> {
        let words: Vec<u64> = text
            .split_whitespace()
            .map(|w| xxh3_64(w.as_bytes()))
            .collect();
        if words.is_empty() {
            return None;
        }
        let k = self.shingle_size.min(words.len());
        let mut sig = vec![u32::MAX; self.a.len()];
        for window in words.windows(k) {
            let mut state = window.iter().fold(0u64, |acc, w| acc.rotate_left(23) ^ *w);
            let h = splitmix64(&mut state);
            for ((s, a), b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                let v = (a.wrapping_mul(h).wrapping_add(*b) >> 32) as u32;
                if v < *s {
                    *s = v;
                }
            }
        }
        Some(sig)
    }
}

/// Estimated Jaccard similarity of two signatures.
pub fn similarity(a: &[u32], b: &[u32]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// (false-positive, false-negative) weights for choosing bands and rows. Favouring
/// recall is safe because candidates are verified against the threshold.
pub const LSH_WEIGHTS: (f64, f64) = (0.1, 0.9);

/// `(bands, rows)` for a threshold, as `datasketch.lsh._optimal_param` with the
/// given (false-positive, false-negative) weights.
pub fn lsh_params(threshold: f64, permutations: usize, weights: (f64, f64)) -> (usize, usize) {
    let integrate = |f: &dyn Fn(f64) -> f64, lo: f64, hi: f64| {
        // Composite Simpson's rule; the integrands are smooth polynomials.
        let n = 200;
        let h = (hi - lo) / n as f64;
        let mut sum = f(lo) + f(hi);
        for i in 1..n {
            sum += f(lo + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        sum * h / 3.0
    };
    let mut best = (f64::MAX, (1, permutations));
    for b in 1..=permutations {
        for r in 1..=permutations / b {
            let (bf, rf) = (b as f64, r as i32);
            let fp = integrate(&|s| 1.0 - (1.0 - s.powi(rf)).powf(bf), 0.0, threshold);
            let fneg = integrate(
                &|s| 1.0 - (1.0 - (1.0 - s.powi(rf)).powf(bf)),
                threshold,
                1.0,
            );
            let error = weights.0 * fp + weights.1 * fneg;
            if error < best.0 {
                best = (error, (b, r));
            }
        }
    }
    best.1
}

/// What the index needs of one document; computed in parallel, judged in order.
#[derive(Clone, Debug, Default)]
pub struct Fingerprint {
    keys: Vec<u64>,
    sketch: Vec<u8>,
}

/// The LSH index of the documents kept so far.
pub struct LshIndex {
    /// Per band: band hash → the first kept document with it.
    bands: Vec<HashMap<u64, u32>>,
    rows: usize,
    threshold: f64,
    permutations: usize,
    /// 8-bit signature sketches of kept documents, `permutations` bytes each.
    sketches: Vec<u8>,
}

impl LshIndex {
    /// An empty index for `permutations`-long signatures and a Jaccard threshold.
    pub fn new(threshold: f64, permutations: usize) -> Self {
        let (bands, rows) = lsh_params(threshold, permutations, LSH_WEIGHTS);
        Self {
            bands: (0..bands).map(|_| HashMap::new()).collect(),
            rows,
            threshold,
            permutations,
            sketches: Vec::new(),
        }
    }

    /// `(bands, rows)` in use.
    pub fn shape(&self) -> (usize, usize) {
        (self.bands.len(), self.rows)
    }

    /// The band keys and sketch of a signature.
    pub fn fingerprint(&self, signature: &[u32]) -> Fingerprint {
        let keys = signature
            .chunks_exact(self.rows)
            .take(self.bands.len())
            .enumerate()
            .map(|(band, rows)| {
                let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
                xxh3_64_with_seed(&bytes, band as u64)
            })
            .collect();
        Fingerprint {
            keys,
            sketch: signature.iter().map(|v| *v as u8).collect(),
        }
    }

    /// Similarity estimated from 8-bit sketches: unequal values collide with
    /// probability 1/256, which is corrected for.
    fn sketch_similarity(&self, doc: u32, sketch: &[u8]) -> f64 {
        let start = doc as usize * self.permutations;
        let kept = &self.sketches[start..start + self.permutations];
        let same = kept.iter().zip(sketch).filter(|(a, b)| a == b).count() as f64
            / self.permutations as f64;
        ((same - 1.0 / 256.0) / (1.0 - 1.0 / 256.0)).max(0.0)
    }

    /// True when a kept document is estimated at least `threshold` similar;
    /// otherwise the document joins the index. An empty fingerprint (a document
    /// without words) is never a near-duplicate.
    pub fn is_duplicate(&mut self, fp: &Fingerprint) -> bool {
        if fp.keys.is_empty() {
            return false;
        }
        let duplicate = fp.keys.iter().zip(&self.bands).any(|(k, band)| {
            band.get(k)
                .is_some_and(|doc| self.sketch_similarity(*doc, &fp.sketch) >= self.threshold)
        });
        if duplicate {
            return true;
        }
        let id = (self.sketches.len() / self.permutations) as u32;
        for (k, band) in fp.keys.iter().zip(&mut self.bands) {
            band.entry(*k).or_insert(id);
        }
        self.sketches.extend_from_slice(&fp.sketch);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_match_datasketch() {
        // Values printed by datasketch.lsh._optimal_param(t, n, 0.5, 0.5).
        assert_eq!(lsh_params(0.8, 128, (0.5, 0.5)), (9, 13));
        assert_eq!(lsh_params(0.5, 128, (0.5, 0.5)), (25, 5));
        assert_eq!(lsh_params(0.9, 64, (0.5, 0.5)), (3, 21));
        assert_eq!(lsh_params(0.8, 128, (0.1, 0.9)), (14, 9));
    }

    #[test]
    fn similar_texts_have_similar_signatures() {
        let h = MinHasher::new(256, 3);
        let base: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
        let mut edited = base.clone();
        edited[100] = "changed".into();
        let a = h.signature(&base.join(" ")).unwrap();
        let b = h.signature(&edited.join(" ")).unwrap();
        let c = h
            .signature(
                &(0..200)
                    .map(|i| format!("x{i}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .unwrap();
        // True Jaccard: 195 shared of 201 distinct shingles ≈ 0.97.
        assert!(similarity(&a, &b) > 0.9, "{}", similarity(&a, &b));
        assert!(similarity(&a, &c) < 0.05);
        assert_eq!(h.signature("   "), None);
    }

    #[test]
    fn lsh_flags_near_duplicates_only() {
        let h = MinHasher::new(128, 5);
        let mut lsh = LshIndex::new(0.8, 128);
        let doc = |prefix: &str, edit: Option<usize>| {
            (0..300)
                .map(|i| {
                    if Some(i) == edit {
                        "zzz".to_string()
                    } else {
                        format!("{prefix}{i}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let key = |t: &str| lsh.fingerprint(&h.signature(t).unwrap());
        let (k1, k2, k3) = (
            key(&doc("a", None)),
            key(&doc("a", Some(150))),
            key(&doc("b", None)),
        );
        assert!(!lsh.is_duplicate(&k1));
        assert!(lsh.is_duplicate(&k2));
        assert!(!lsh.is_duplicate(&k3));
    }
}
