"""Reference side of the PEFT adapter parity tests: `peft` loads a LoRA adapter on
its base model in `transformers` and computes the logits ours must reproduce.

    peft_reference.py logits --base DIR --adapter DIR --ids 1,2,3 --out FILE.safetensors

writes `logits` [1, seq, vocab] (fp32) of the base with the adapter applied
(unmerged), and `merged` of the same model after `merge_and_unload()`.
"""

import argparse

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    logits = sub.add_parser("logits")
    logits.add_argument("--base", required=True)
    logits.add_argument("--adapter", required=True)
    logits.add_argument("--ids", required=True)
    logits.add_argument("--out", required=True)
    args = parser.parse_args()

    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    ids = torch.tensor([[int(t) for t in args.ids.split(",")]], dtype=torch.long)
    with torch.no_grad():
        adapted = model(ids).logits.float().contiguous()
        merged = model.merge_and_unload()(ids).logits.float().contiguous()
    save_file({"logits": adapted, "merged": merged}, args.out)


if __name__ == "__main__":
    main()
