"""Loads a model directory written by `trainer pretrain` with `transformers`
(AutoModelForCausalLM / AutoTokenizer-free) and prints the fp32 logits of the given
token ids as JSON, for the export parity test."""

import argparse
import json

import torch
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--ids", required=True, help="comma-separated token ids")
    args = p.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    ids = torch.tensor([[int(t) for t in args.ids.split(",")]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    print(json.dumps({"logits": logits.tolist()}))


if __name__ == "__main__":
    main()
