"""Reference text metrics for the trainer's `metrics` module, driven by
`trainer-image/tests/metrics_parity.rs`.

  metrics_reference.py PAIRS_JSON

PAIRS_JSON holds {"candidates": [...], "references": [...]}, one reference per
candidate. Prints one JSON object on stdout:

  rouge_l       mean ROUGE-L F-measure over the pairs (rouge-score, no stemmer)
  rouge_l_each  each pair's ROUGE-L F-measure
  bleu          sacrebleu.corpus_bleu(candidates, [references]).score, defaults
"""

import json
import sys

import sacrebleu
from rouge_score import rouge_scorer


def main(path):
    with open(path, encoding="utf-8") as f:
        pairs = json.load(f)
    candidates, references = pairs["candidates"], pairs["references"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    each = [
        scorer.score(reference, candidate)["rougeL"].fmeasure
        for candidate, reference in zip(candidates, references, strict=True)
    ]
    mean = sum(each) / len(each) if each else 0.0
    bleu = sacrebleu.corpus_bleu(candidates, [references]).score
    print(json.dumps({"rouge_l": mean, "bleu": bleu, "rouge_l_each": each}))


if __name__ == "__main__":
    main(sys.argv[1])
