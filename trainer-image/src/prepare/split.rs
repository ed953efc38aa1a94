//! Deterministic train/validation/test assignment by a seeded hash of each
//! document, so the same document lands in the same split on every run and
//! adding documents never moves existing ones.

use llmops_crds::dataset::Split;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The three splits, in manifest order.
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// Index into [`SPLITS`] for a document's normalised bytes.
pub fn assign(document: &[u8], spec: &Split) -> usize {
    let h = xxh3_64_with_seed(document, spec.seed as u64);
    // The top 53 bits as a uniform number in [0, 1).
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u < spec.validation {
        1
    } else if u < spec.validation + spec.test {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_and_determinism() {
        let spec = Split {
            validation: 0.1,
            test: 0.2,
            seed: 7,
        };
        let mut counts = [0usize; 3];
        for i in 0..20_000 {
            counts[assign(format!("doc {i}").as_bytes(), &spec)] += 1;
        }
        assert!((1_700..2_300).contains(&counts[1]), "{counts:?}");
        assert!((3_600..4_400).contains(&counts[2]), "{counts:?}");
        assert_eq!(assign(b"x", &spec), assign(b"x", &spec));
        let other_seed = Split {
            seed: 8,
            ..spec.clone()
        };
        let moved = (0..1000)
            .filter(|i| {
                assign(format!("doc {i}").as_bytes(), &spec)
                    != assign(format!("doc {i}").as_bytes(), &other_seed)
            })
            .count();
        assert!(moved > 100, "the seed changes the split");
    }
}
