//! Precision and recall of MinHash-LSH near-duplicate removal on a generated
//! corpus with planted near-duplicates of known Jaccard similarity.

use std::collections::HashSet;

use llmops_trainer::prepare::dedup::{LshIndex, MinHasher};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn shingles(words: &[String], k: usize) -> HashSet<Vec<String>> {
    words
        .windows(k.min(words.len()))
        .map(|w| w.to_vec())
        .collect()
}

fn jaccard(a: &[String], b: &[String], k: usize) -> f64 {
    let (sa, sb) = (shingles(a, k), shingles(b, k));
    sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64
}

#[test]
fn precision_and_recall_on_planted_near_duplicates() {
    let (threshold, permutations, k) = (0.8, 128, 5);
    let mut rng = Rng(11);
    let vocab: Vec<String> = (0..20_000).map(|i| format!("w{i}")).collect();
    let mut docs: Vec<Vec<String>> = Vec::new();
    // Ground truth: for each doc, the best Jaccard against any earlier doc.
    let mut truth: Vec<f64> = Vec::new();
    for i in 0..6000 {
        if i % 3 == 2 {
            // A near-duplicate: copy an earlier original (never another copy, so
            // the truth is one known Jaccard) and substitute 0–8% of its words.
            let src = loop {
                let i = rng.below(docs.len());
                if truth[i] == 0.0 {
                    break i;
                }
            };
            let mut words = docs[src].clone();
            let edits = rng.below(words.len() * 8 / 100 + 1);
            for _ in 0..edits {
                let at = rng.below(words.len());
                words[at] = vocab[rng.below(vocab.len())].clone();
            }
            truth.push(jaccard(&docs[src], &words, k));
            docs.push(words);
        } else {
            let len = 100 + rng.below(300);
            docs.push(
                (0..len)
                    .map(|_| vocab[rng.below(vocab.len())].clone())
                    .collect(),
            );
            truth.push(0.0);
        }
    }
    let hasher = MinHasher::new(permutations, k);
    let mut index = LshIndex::new(threshold, permutations);
    let (bands, rows) = index.shape();
    let (mut tp, mut fp, mut fneg) = (0, 0, 0);
    // How far from the threshold the mistakes are: estimator noise, not misses.
    let (mut lowest_fp, mut highest_miss) = (1.0f64, 0.0f64);
    for (doc, j) in docs.iter().zip(&truth) {
        let flagged =
            index.is_duplicate(&index.fingerprint(&hasher.signature(&doc.join(" ")).unwrap()));
        let actual = *j >= threshold;
        match (flagged, actual) {
            (true, true) => tp += 1,
            (true, false) => {
                fp += 1;
                lowest_fp = lowest_fp.min(*j);
            }
            (false, true) => {
                fneg += 1;
                highest_miss = highest_miss.max(*j);
            }
            _ => {}
        }
    }
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fneg) as f64;
    let planted = truth.iter().filter(|j| **j >= threshold).count();
    println!(
        "near-duplicates: threshold {threshold}, {permutations} permutations ({bands} bands x {rows} rows), shingle {k}: \
         {} docs, {planted} planted at J >= {threshold}, {tp} found, {fp} false positives, {fneg} missed: \
         precision {precision:.3}, recall {recall:.3}; false positives all have J >= {lowest_fp:.3}, \
         misses all have J <= {highest_miss:.3}",
        docs.len()
    );
    assert!(precision >= 0.85, "precision {precision}");
    assert!(recall >= 0.85, "recall {recall}");
}
