"""Reference implementations for `trainer prepare`, driven by its tests and by
`trainer bench prepare`. Each subcommand prints one JSON object on stdout.

  encode TOKENIZER_JSON TEXT_FILE          ids of each line (tokenizer parity)
  bench-tokenize TOKENIZER_JSON TEXT_FILE  seconds for encode_batch over all lines
  bench-minhash TEXT_FILE PERMS THRESHOLD SHINGLE FP_WEIGHT FN_WEIGHT
                                           seconds and near-duplicates for
                                           datasketch MinHash + MinHashLSH
"""

import json
import sys
import time


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def encode(tokenizer_json, text_file):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    ids = [e.ids for e in tok.encode_batch(lines(text_file), add_special_tokens=False)]
    print(json.dumps({"ids": ids}))


def bench_tokenize(tokenizer_json, text_file, repeats=3):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    docs = lines(text_file)
    best = float("inf")
    tokens = 0
    for _ in range(repeats):
        start = time.perf_counter()
        encodings = tok.encode_batch(docs, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
        tokens = sum(len(e.ids) for e in encodings)
    print(json.dumps({"seconds": best, "tokens": tokens}))


def shingles(text, k):
    words = text.split()
    k = min(k, len(words))
    return {" ".join(words[i : i + k]).encode("utf-8") for i in range(len(words) - k + 1)}


def bench_minhash(text_file, perms, threshold, shingle, fp_weight, fn_weight):
    from datasketch import MinHash, MinHashLSH

    docs = lines(text_file)
    perms, threshold, shingle = int(perms), float(threshold), int(shingle)
    weights = (float(fp_weight), float(fn_weight))
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=perms, weights=weights)
    duplicates = 0
    for i, doc in enumerate(docs):
        m = MinHash(num_perm=perms)
        m.update_batch(list(shingles(doc, shingle)))
        if lsh.query(m):
            duplicates += 1
        else:
            lsh.insert(str(i), m)
    print(json.dumps({"seconds": time.perf_counter() - start, "duplicates": duplicates}))


if __name__ == "__main__":
    commands = {"encode": encode, "bench-tokenize": bench_tokenize, "bench-minhash": bench_minhash}
    commands[sys.argv[1]](*sys.argv[2:])
