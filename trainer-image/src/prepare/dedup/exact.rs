use std::collections::HashSet;

use xxhash_rust::xxh3::xxh3_128;

/// Remembers 128-bit hashes of the documents kept so far. At 128 bits the chance
/// of two different documents colliding in a billion-document corpus is ~1e-21,
/// so a hash hit is treated as identity.
#[derive(Default)]
pub struct ExactDedup {
    seen: HashSet<u128>,
}

/// The fingerprint of a normalised document.
pub fn fingerprint(text: &[u8]) -> u128 {
    xxh3_128(text)
}

impl ExactDedup {
    /// Records `fingerprint`; true when it was seen before (a duplicate).
    pub fn is_duplicate(&mut self, fingerprint: u128) -> bool {
        !self.seen.insert(fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_copy_is_a_duplicate() {
        let mut d = ExactDedup::default();
        assert!(!d.is_duplicate(fingerprint(b"a")));
        assert!(!d.is_duplicate(fingerprint(b"b")));
        assert!(d.is_duplicate(fingerprint(b"a")));
    }
}
