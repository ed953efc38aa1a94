"""Writes a large synthetic pretraining corpus for measuring `trainer prepare`
memory and throughput: blank-line separated documents of word-like text, about
one in ten a near-duplicate of an earlier one.

  prepare_corpus.py OUT_FILE MEGABYTES [SEED]
"""

import random
import sys


def main(out, megabytes, seed=0):
    rng = random.Random(int(seed))
    syllables = ["ka", "lo", "ri", "ne", "ta", "mo", "su", "vi", "de", "an", "or", "el", "ist", "ung", "pre", "con"]
    vocab = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(20000)]
    target = int(float(megabytes) * 1e6)
    recent = []
    written = 0
    with open(out, "w", encoding="utf-8") as f:
        while written < target:
            if recent and rng.random() < 0.1:
                words = rng.choice(recent).split(" ")
                words[rng.randrange(len(words))] = rng.choice(vocab)
                doc = " ".join(words)
            else:
                doc = " ".join(rng.choice(vocab) for _ in range(rng.randint(100, 600)))
                recent.append(doc)
                if len(recent) > 1000:
                    recent.pop(0)
            f.write(doc + "\n\n")
            written += len(doc) + 2


if __name__ == "__main__":
    main(*sys.argv[1:])
