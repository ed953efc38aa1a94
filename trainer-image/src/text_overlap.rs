//! Text overlap of generated answers with references, for a FineTune's evaluation:
//! ROUGE-L, BLEU and exact match.
//!
//! ROUGE-L and BLEU reproduce the reference implementations that FineTune results are
//! compared with (the reference-parity tests), at the versions pinned in `tests/python/requirements.txt`:
//! `rouge-score` 0.1.2 and `sacrebleu` 2.6.0. `tests/metrics_parity.rs` checks them
//! against the real libraries. All functions pair `candidates[i]` (the model's output)
//! with `references[i]` (the expected text) and panic when the two lists differ in
//! length, which is a bug in the caller, never a property of the data.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

/// ROUGE-L F-measure of one candidate against one reference, in 0..=1, as
/// `rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
/// .score(reference, candidate)["rougeL"].fmeasure` computes it.
///
/// Both texts are tokenized as rouge-score's default tokenizer does: lowercased, then
/// split into the maximal runs of `[a-z0-9]` (see `rouge_tokens`). With `l` the length
/// of their longest common subsequence of tokens, precision is `l / candidate tokens`,
/// recall `l / reference tokens` and F = 2PR / (P + R) (0 when P + R is 0). Either side
/// without tokens gives 0, also when both are empty. The arithmetic is done in the
/// reference's order, so the result is the same `f64`.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let cand = rouge_tokens(candidate);
    let refs = rouge_tokens(reference);
    if cand.is_empty() || refs.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&refs, &cand) as f64;
    let precision = lcs / cand.len() as f64;
    let recall = lcs / refs.len() as f64;
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// The mean of [`rouge_l`] over the pairs (summed in order, then divided), in 0..=1;
/// 0 for no pairs.
pub fn mean_rouge_l(candidates: &[String], references: &[String]) -> f64 {
    assert_same_len(candidates, references);
    if candidates.is_empty() {
        return 0.0;
    }
    let sum: f64 = candidates
        .iter()
        .zip(references)
        .map(|(c, r)| rouge_l(c, r))
        .sum();
    sum / candidates.len() as f64
}

/// Corpus BLEU in 0..=100, as `sacrebleu.corpus_bleu(candidates, [references]).score`
/// computes it with its defaults: one reference per candidate, the `13a` tokenizer
/// (see `tokenize_13a`), case kept, n-grams up to 4, smoothing `exp`, effective order off.
///
/// N-gram matches (clipped by the reference's counts) and totals are summed over the
/// corpus, as are the candidate and reference lengths. The score is 0 when no n-gram of
/// any order matches. Otherwise precision n is `100 · matches / total`; an order whose
/// matches are 0 gets `100 / (2^k · total)` for its k-th such order (NIST smoothing);
/// once an order has no n-grams at all (every candidate shorter than n), that order and
/// the higher ones are 0, and sacrebleu's floored logarithm (`log 0 = -9999999999`)
/// makes the score 0. The score is the geometric mean of the four precisions times the
/// brevity penalty `exp(1 - ref_len / sys_len)` when the candidates are shorter in total
/// (0 when they have no tokens), else 1. For no pairs it is 0, where sacrebleu raises.
pub fn corpus_bleu(candidates: &[String], references: &[String]) -> f64 {
    assert_same_len(candidates, references);
    let mut stats = BleuStats::default();
    for (cand, reference) in candidates.iter().zip(references) {
        stats.add(&tokenize_13a(cand), &tokenize_13a(reference));
    }
    stats.score()
}

/// The fraction of pairs, in 0..=1, whose texts are equal after trimming surrounding
/// whitespace and collapsing each internal run of whitespace to one space (whitespace:
/// Unicode `White_Space`, as [`str::split_whitespace`] sees it); case and punctuation
/// count. 0 for no pairs.
pub fn exact_match(candidates: &[String], references: &[String]) -> f64 {
    assert_same_len(candidates, references);
    if candidates.is_empty() {
        return 0.0;
    }
    let equal = candidates
        .iter()
        .zip(references)
        .filter(|(c, r)| c.split_whitespace().eq(r.split_whitespace()))
        .count();
    equal as f64 / candidates.len() as f64
}

fn assert_same_len(candidates: &[String], references: &[String]) {
    assert_eq!(
        candidates.len(),
        references.len(),
        "metrics need one reference per candidate"
    );
}

/// Tokens as rouge-score's default tokenizer (`rouge_score.tokenize.tokenize`, no
/// stemmer) makes them: Python's `str.lower()`, each run of characters outside
/// `[a-z0-9]` replaced by a space, split on whitespace, empty tokens dropped. So the
/// tokens are the maximal runs of ASCII letters and digits in the lowercased text, and
/// every other character separates tokens: `don't` is `don`, `t`; `café` is `caf`;
/// `中文` gives nothing. Unicode lowercasing matters for exactly two characters whose
/// lowercase contains ASCII: `İ` (U+0130, lowercased to `i` and U+0307, so `İstanbul`
/// is `i`, `stanbul`) and the Kelvin sign (U+212A, lowercased to `k`).
fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Length of the longest common subsequence (rouge-score's `_lcs_table`, two rows at
/// a time).
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            row[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(row[j])
            };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

/// The `13a` regexes of sacrebleu's `TokenizerRegexp`, applied in order: a space each
/// side of most ASCII punctuation (not `'`, `,`, `-`, `.`); `.` and `,` split from a
/// preceding non-digit, then from a following non-digit (so `3.14` and `1,000` stay
/// whole); `-` split from a preceding digit. Each is a leftmost, non-overlapping
/// replacement of two-character matches, as Python's `re.sub` does: `a.,5` becomes
/// `a . ,5`, because the second regex consumes the `.` with the `a` and so never sees `.,`.
static RULES_13A: LazyLock<[(Regex, &str); 4]> = LazyLock::new(|| {
    let re = |p| Regex::new(p).expect("13a regex");
    [
        (re(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), " ${1} "),
        (re(r"([^0-9])([\.,])"), "${1} ${2} "),
        (re(r"([\.,])([^0-9])"), " ${1} ${2}"),
        (re(r"([0-9])(-)"), "${1} ${2} "),
    ]
});

/// Whitespace as Python's `str.isspace()`, used by sacrebleu's `rstrip()` and
/// `split()`: Unicode `White_Space` plus the ASCII separators U+001C..=U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// A segment's tokens as sacrebleu's BLEU preprocesses it (`lowercase=False`):
/// `rstrip()`, then `Tokenizer13a`: remove `<skipped>`, join `-` + newline, newlines to
/// spaces; if the line contains `&`, unescape `&quot;`, `&amp;`, `&lt;`, `&gt;` in that
/// order, each over the whole line (so `&amp;lt;` becomes `<` but `&amp;quot;` stays
/// `&quot;`); pad with a space each side, apply [`RULES_13A`], and split on whitespace.
fn tokenize_13a(segment: &str) -> Vec<String> {
    let mut line = segment
        .trim_end_matches(is_python_space)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, replacement) in RULES_13A.iter() {
        line = re.replace_all(&line, *replacement).into_owned();
    }
    line.split(is_python_space)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

const MAX_ORDER: usize = 4;

/// sacrebleu's corpus statistics: lengths, clipped n-gram matches and n-gram totals.
#[derive(Default)]
struct BleuStats {
    sys_len: u64,
    ref_len: u64,
    correct: [u64; MAX_ORDER],
    total: [u64; MAX_ORDER],
}

impl BleuStats {
    /// Adds one segment (`BLEU._compute_segment_statistics` with one reference).
    fn add(&mut self, cand: &[String], reference: &[String]) {
        self.sys_len += cand.len() as u64;
        self.ref_len += reference.len() as u64;
        let ref_counts = ngram_counts(reference);
        for (ngram, count) in ngram_counts(cand) {
            let n = ngram.len() - 1;
            self.total[n] += count;
            if let Some(r) = ref_counts.get(ngram) {
                self.correct[n] += count.min(*r);
            }
        }
    }

    /// `BLEU.compute_bleu` with smoothing `exp` and effective order off.
    fn score(&self) -> f64 {
        let (sys_len, ref_len) = (self.sys_len as f64, self.ref_len as f64);
        let bp = match () {
            _ if self.sys_len >= self.ref_len => 1.0,
            _ if self.sys_len > 0 => (1.0 - ref_len / sys_len).exp(),
            _ => 0.0,
        };
        if self.correct.iter().all(|&c| c == 0) {
            return 0.0;
        }
        let mut precisions = [0.0f64; MAX_ORDER];
        let mut smooth = 1.0f64;
        let counts = self.correct.iter().zip(&self.total);
        for (precision, (&correct, &total)) in precisions.iter_mut().zip(counts) {
            if total == 0 {
                break;
            }
            *precision = if correct == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total as f64)
            } else {
                100.0 * correct as f64 / total as f64
            };
        }
        // sacrebleu's `my_log`: log(0) floored to -9999999999.
        let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
        let sum = precisions.iter().fold(0.0, |acc, &p| acc + log(p));
        bp * (sum / MAX_ORDER as f64).exp()
    }
}

/// Counts of all n-grams of orders 1..=4 (sacrebleu's `extract_all_word_ngrams`).
fn ngram_counts(tokens: &[String]) -> HashMap<&[String], u64> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for ngram in tokens.windows(n) {
            *counts.entry(ngram).or_insert(0) += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn bleu(cands: &[&str], refs: &[&str]) -> f64 {
        corpus_bleu(&strings(cands), &strings(refs))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rouge_tokens_keep_ascii_letters_and_digits_only() {
        assert_eq!(
            rouge_tokens("Don't STOP-me 42x!"),
            ["don", "t", "stop", "me", "42x"]
        );
        assert_eq!(rouge_tokens("café über 中文"), ["caf", "ber"]);
        assert_eq!(
            rouge_tokens("İstanbul \u{212a}elvin"),
            ["i", "stanbul", "kelvin"]
        );
        assert!(rouge_tokens(" ... ").is_empty());
    }

    #[test]
    fn rouge_l_is_zero_without_tokens() {
        assert_eq!(rouge_l("", ""), 0.0);
        assert_eq!(rouge_l("the cat", ""), 0.0);
        assert_eq!(rouge_l("", "the cat"), 0.0);
        assert_eq!(rouge_l("!!", "?? 中文"), 0.0);
    }

    #[test]
    fn rouge_l_identical_disjoint_and_partial() {
        assert_eq!(rouge_l("The cat sat.", "the  cat sat"), 1.0);
        assert_eq!(rouge_l("a b", "c d"), 0.0);
        // LCS "the cat on mat": P = R = 4/6.
        assert!(close(
            rouge_l("the cat sat on the mat", "the cat lay on a mat"),
            2.0 / 3.0
        ));
        // LCS 2 of 2 candidate tokens and 4 reference tokens: F = 2·1·0.5 / 1.5.
        assert!(close(rouge_l("a b", "a x b y"), 2.0 / 3.0));
    }

    #[test]
    fn mean_rouge_l_averages_pairs() {
        let cands = strings(&["a b", "x", ""]);
        let refs = strings(&["a b", "y", ""]);
        assert!(close(mean_rouge_l(&cands, &refs), 1.0 / 3.0));
        assert_eq!(mean_rouge_l(&[], &[]), 0.0);
    }

    #[test]
    fn tokenize_13a_splits_punctuation_not_numbers_or_contractions() {
        assert_eq!(tokenize_13a("Hello, world."), ["Hello", ",", "world", "."]);
        assert_eq!(
            tokenize_13a("3.14 and 1,000 don't"),
            ["3.14", "and", "1,000", "don't"]
        );
        assert_eq!(
            tokenize_13a("10-20 well-known"),
            ["10", "-", "20", "well-known"]
        );
        assert_eq!(
            tokenize_13a("&quot;hi&quot; &amp; &lt;b&gt; &amp;quot;"),
            ["\"", "hi", "\"", "&", "<", "b", ">", "&", "quot", ";"]
        );
        assert_eq!(tokenize_13a("a.,5"), ["a", ".", ",5"]);
        assert_eq!(tokenize_13a("end-\nline<skipped>\u{1c}"), ["endline"]);
        assert!(tokenize_13a("  \t").is_empty());
    }

    #[test]
    fn bleu_identical_disjoint_and_empty() {
        let s = "the cat sat on the mat";
        assert!(close(bleu(&[s, "a b c d"], &[s, "a b c d"]), 100.0));
        assert_eq!(bleu(&["a b c d"], &["e f g h"]), 0.0);
        assert_eq!(bleu(&["", ""], &["a b c d", "e"]), 0.0);
        assert_eq!(bleu(&[], &[]), 0.0);
    }

    #[test]
    fn bleu_smooths_zero_matches_and_penalises_brevity() {
        // Precisions 4/5, 3/4, 2/3, 1/2.
        let plain = (0.8f64 * 0.75 * (2.0 / 3.0) * 0.5).powf(0.25) * 100.0;
        assert!(close(bleu(&["a b c d e"], &["a b c d f"]), plain));
        // 1-grams 4/5, 2-grams 2/4; 3- and 4-grams match nothing: 100/(2·3), 100/(4·2).
        let smoothed = (80.0f64 * 50.0 * (100.0 / 6.0) * 12.5).powf(0.25);
        assert!(close(bleu(&["a b x c d"], &["a b y c d"]), smoothed));
        // Every n-gram matches; 4 candidate tokens against 6 reference tokens.
        assert!(close(
            bleu(&["a b c d"], &["a b c d e f"]),
            100.0 * (-0.5f64).exp()
        ));
        // No 4-grams in the candidates: the floored log makes the score 0.
        assert_eq!(bleu(&["the cat sat"], &["the cat sat"]), 0.0);
    }

    #[test]
    fn exact_match_normalises_whitespace_only() {
        let cands = strings(&[" a  b\t", "x", "Case", ""]);
        let refs = strings(&["a b", "y", "case", "  "]);
        assert!(close(exact_match(&cands, &refs), 0.5));
        assert_eq!(exact_match(&[], &[]), 0.0);
    }
}
