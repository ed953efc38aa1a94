"""Reference for `server-bench`: Hugging Face `generate` on the same model shape,
prompts and thread count, measured in the same run.

    serve_bench.py make OUT_DIR --layers L --hidden H --heads A --context C
    serve_bench.py run MODEL_DIR --requests N --prompt-len P --new-tokens T --threads K

`make` writes a random Llama model with the tokenizer of `tiny_model.py`. `run`
prints one JSON object: tokens/s of greedy `generate` one request at a time and of
one static batch holding every request (equal prompt lengths, so no padding).
"""

import argparse
import json
import os
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_model import EOS, corpus, train_tokenizer  # noqa: E402


def make(args):
    os.makedirs(args.out, exist_ok=True)
    tok = train_tokenizer(corpus(0))
    tok.save(os.path.join(args.out, "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    intermediate = ((8 * args.hidden + 2) // 3 + 63) // 64 * 64
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, vocab_size=tok.get_vocab_size(),
                         max_position_embeddings=args.context, tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(args.out, safe_serialization=True)


def run(args):
    torch.set_num_threads(args.threads)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, model.config.vocab_size, (args.requests, args.prompt_len),
                            generator=gen)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                  do_sample=False, use_cache=True, pad_token_id=model.config.eos_token_id)
    tokens = args.requests * args.new_tokens
    with torch.inference_mode():
        model.generate(prompts[:1], **kwargs)  # warm-up
        start = time.perf_counter()
        for row in prompts:
            model.generate(row.unsqueeze(0), **kwargs)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(prompts, attention_mask=torch.ones_like(prompts), **kwargs)
        batched = time.perf_counter() - start
    print(json.dumps({
        "sequential_tokens_per_s": tokens / sequential,
        "batched_tokens_per_s": tokens / batched,
        "threads": torch.get_num_threads(),
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    for name, default in [("layers", 4), ("hidden", 256), ("heads", 4), ("context", 512)]:
        m.add_argument(f"--{name}", type=int, default=default)
    r = sub.add_parser("run")
    r.add_argument("model")
    for name, default in [("requests", 16), ("prompt-len", 64), ("new-tokens", 64),
                          ("threads", 1)]:
        r.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args()
    make(args) if args.command == "make" else run(args)


if __name__ == "__main__":
    main()
