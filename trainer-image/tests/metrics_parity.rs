//! Our ROUGE-L and BLEU give the numbers of the reference libraries, `rouge-score` and
//! `sacrebleu` (through `tests/python/metrics_reference.py`), on a few hundred generated
//! pairs: punctuation, numbers, mixed case, quotes, HTML escapes, hyphens, contractions,
//! non-ASCII, odd whitespace, empty and identical pairs, short and long sentences.
//!
//! Needs the project venv (`scripts/setup-venv`), or `LLMOPS_PYTHON` naming a Python
//! with the packages of `tests/python/requirements.txt`.

use std::path::PathBuf;
use std::process::Command;

use llmops_trainer::text_overlap::{corpus_bleu, mean_rouge_l, rouge_l};

const PAIRS: usize = 360;

/// Words with everything the two tokenizers treat specially, separated by spaces.
const WORDS: &str = "the The THE a cat Cat model dog runs quickly data train loss token \
    tokens eval of and to in is it don't it's we'll O'Neil well-known state-of-the-art \
    re-run 3.14 1,000 42 10-20 2024 v2.0 0.5% e.g. U.S. a.,5 x,.,7 .5 ,5 7- café Über \
    naïve résumé 中文 日本語 İstanbul \u{212a}elvin straße & &amp; &quot;quoted&quot; \
    &lt;tag&gt; &amp;lt; &amp;quot; &#39; AT&T <b> a<b x>y \"hello\" 'single' (paren) \
    [bracket] {brace} $5 #1 @user a/b back\\slash ~ `code` ^ | _under_ ... -- — \
    <skipped> ok. yes, no; why? wow! end: “curly” 😀";

/// Mostly single spaces, and the whitespace the tokenizers disagree on.
const SEPARATORS: &[&str] = &[
    " ", " ", " ", " ", " ", " ", " ", " ", " ", " ", "  ", "\t", "\n", "-\n", "\u{a0}", "\u{1c}",
    "\u{3000}", "\u{2009}", ", ", ". ", " - ", "\r\n",
];

const ENDINGS: &[&str] = &["", "", ".", ".", " .", "!", "?", "...", "\"", " ", "\n"];

const LENGTHS: &[usize] = &[1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 28, 40];

/// SplitMix64: a fixed sequence, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Joins words with mostly plain spaces, sometimes changing case, and ends the text.
fn render(rng: &mut Rng, words: &[&str]) -> String {
    let mut text = String::new();
    if rng.percent(5) {
        text.push_str(rng.pick(&["  ", "\t", "\n"]));
    }
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            text.push_str(rng.pick(SEPARATORS));
        }
        match rng.below(20) {
            0 => text.push_str(&word.to_uppercase()),
            1 => text.push_str(&word.to_lowercase()),
            _ => text.push_str(word),
        }
    }
    text.push_str(rng.pick(ENDINGS));
    text
}

/// A reference from the candidate's words: most kept, some replaced, dropped,
/// inserted or swapped with their neighbour.
fn perturb<'a>(rng: &mut Rng, vocabulary: &[&'a str], words: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for word in words {
        match rng.below(100) {
            0..=64 => out.push(*word),
            65..=79 => out.push(rng.pick(vocabulary)),
            80..=89 => {}
            _ => {
                out.push(*word);
                out.push(rng.pick(vocabulary));
            }
        }
    }
    for i in 1..out.len() {
        if rng.percent(8) {
            out.swap(i - 1, i);
        }
    }
    out
}

/// `PAIRS` deterministic (candidate, reference) pairs.
fn pairs() -> (Vec<String>, Vec<String>) {
    let vocabulary: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = Rng(2024);
    let (mut cands, mut refs) = (Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let n = LENGTHS[rng.below(LENGTHS.len())];
        let words: Vec<&str> = (0..n).map(|_| rng.pick(&vocabulary)).collect();
        let (cand, reference) = match rng.below(100) {
            0..=5 => (
                rng.pick(&["", "", " ", "\n"]).to_string(),
                render(&mut rng, &words),
            ),
            6..=8 => (render(&mut rng, &words), String::new()),
            9..=18 => {
                let text = render(&mut rng, &words);
                (text.clone(), text)
            }
            19..=23 => {
                let other: Vec<&str> = (0..n).map(|_| rng.pick(&vocabulary)).collect();
                (render(&mut rng, &words), render(&mut rng, &other))
            }
            _ => {
                let reference = perturb(&mut rng, &vocabulary, &words);
                (render(&mut rng, &words), render(&mut rng, &reference))
            }
        };
        cands.push(cand);
        refs.push(reference);
    }
    (cands, refs)
}

struct Reference {
    rouge_l: f64,
    rouge_l_each: Vec<f64>,
    bleu: f64,
}

fn python() -> PathBuf {
    std::env::var_os("LLMOPS_PYTHON").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python")),
        PathBuf::from,
    )
}

/// The reference libraries' scores for the pairs.
fn reference(cands: &[String], refs: &[String]) -> Reference {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    serde_json::to_writer(
        &mut file,
        &serde_json::json!({"candidates": cands, "references": refs}),
    )
    .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/metrics_reference.py"
    );
    let python = python();
    let out = Command::new(&python)
        .arg(script)
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): create the venv with scripts/setup-venv or set LLMOPS_PYTHON",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "metrics_reference.py failed (is the venv up to date? scripts/setup-venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Reference {
        rouge_l: v["rouge_l"].as_f64().unwrap(),
        rouge_l_each: serde_json::from_value(v["rouge_l_each"].clone()).unwrap(),
        bleu: v["bleu"].as_f64().unwrap(),
    }
}

/// Asserts corpus-level parity on the pairs and returns (ROUGE-L, BLEU) differences.
fn assert_corpus_parity(name: &str, cands: &[String], refs: &[String]) -> (f64, f64) {
    let want = reference(cands, refs);
    let (rouge, bleu) = (mean_rouge_l(cands, refs), corpus_bleu(cands, refs));
    let (d_rouge, d_bleu) = ((rouge - want.rouge_l).abs(), (bleu - want.bleu).abs());
    println!(
        "{name}: {} pairs, ROUGE-L {rouge} (|Δ| {d_rouge:e}), BLEU {bleu} (|Δ| {d_bleu:e})",
        cands.len()
    );
    assert!(
        d_rouge < 1e-9,
        "{name}: mean ROUGE-L {rouge}, rouge-score {}",
        want.rouge_l
    );
    assert!(
        d_bleu < 1e-6,
        "{name}: BLEU {bleu}, sacrebleu {}",
        want.bleu
    );
    (d_rouge, d_bleu)
}

#[test]
fn rouge_l_matches_rouge_score_on_each_pair() {
    let (cands, refs) = pairs();
    let want = reference(&cands, &refs);
    assert_eq!(want.rouge_l_each.len(), PAIRS);
    let mut max_diff = 0.0f64;
    for (i, expected) in want.rouge_l_each.iter().enumerate() {
        let got = rouge_l(&cands[i], &refs[i]);
        max_diff = max_diff.max((got - expected).abs());
        assert!(
            (got - expected).abs() < 1e-9,
            "pair {i}: ROUGE-L {got}, rouge-score {expected}\n  candidate {:?}\n  reference {:?}",
            cands[i],
            refs[i]
        );
    }
    println!("per-pair ROUGE-L: max |Δ| {max_diff:e}");
    // The corpus covers the whole range, not just the easy ends.
    let partial = want
        .rouge_l_each
        .iter()
        .filter(|f| **f > 0.0 && **f < 1.0)
        .count();
    assert!(
        partial > PAIRS / 2,
        "only {partial} pairs score strictly between 0 and 1"
    );
    assert!(want.rouge_l_each.contains(&1.0));
    assert!(want.rouge_l_each.contains(&0.0));
}

#[test]
fn corpus_scores_match_on_the_corpus_and_its_parts() {
    let (cands, refs) = pairs();
    let (full_rouge, full_bleu) = assert_corpus_parity("all", &cands, &refs);
    let bleu = corpus_bleu(&cands, &refs);
    assert!(bleu > 5.0 && bleu < 95.0, "BLEU {bleu} exercises little");

    let select = |keep: &dyn Fn(usize) -> bool| -> (Vec<String>, Vec<String>) {
        (0..PAIRS)
            .filter(|i| keep(*i))
            .map(|i| (cands[i].clone(), refs[i].clone()))
            .unzip()
    };
    let short = |i: usize| cands[i].split_whitespace().count() <= 3;
    let mut parts = vec![
        ("first 10", select(&|i| i < 10)),
        ("first 3", select(&|i| i < 3)),
        ("every third", select(&|i| i % 3 == 0)),
        ("short candidates", select(&short)),
        ("long candidates", select(&|i| !short(i))),
    ];
    // Roles swapped: the brevity penalty applies where it did not, and back.
    let (every_third_c, every_third_r) = parts[2].1.clone();
    parts.push(("every third, swapped", (every_third_r, every_third_c)));
    // No candidate has four tokens: sacrebleu's floored log of the empty 4-gram
    // precision makes the score 0 although lower orders match.
    let fixed = |items: &[(&str, &str)]| -> (Vec<String>, Vec<String>) {
        items
            .iter()
            .map(|(c, r)| (c.to_string(), r.to_string()))
            .unzip()
    };
    let no_4_grams = fixed(&[("the cat", "the cat sat"), ("Hi, you", "hi, you")]);
    assert_eq!(corpus_bleu(&no_4_grams.0, &no_4_grams.1), 0.0);
    parts.push(("no 4-grams", no_4_grams));
    // 4-grams without a match: the `exp` smoothing replaces their zero precision.
    parts.push((
        "no 4-gram matches",
        fixed(&[("a b c d e", "a b c x e"), ("f g", "f g")]),
    ));
    let (mut max_rouge, mut max_bleu) = (full_rouge, full_bleu);
    for (name, (c, r)) in &parts {
        let (d_rouge, d_bleu) = assert_corpus_parity(name, c, r);
        max_rouge = max_rouge.max(d_rouge);
        max_bleu = max_bleu.max(d_bleu);
    }
    println!("corpus parity: max |Δ| ROUGE-L {max_rouge:e}, BLEU {max_bleu:e}");
}
