"""Reference side of the llmops-model parity tests: `transformers` creates tiny random
checkpoints and computes the logits our implementation must reproduce.

    model_reference.py create --family gpt2|llama|llama3|qwen2|mistral --out DIR
                              [--seed N] [--tied|--untied]
                              [--dtype float32|bfloat16|float16] [--shard-size SIZE]
                              [--ids 1,2,3] [--generate N]
    model_reference.py logits --model DIR --ids 1,2,3 --out FILE.safetensors [--generate N]

`create` saves a model with `save_pretrained(safe_serialization=True)` and, with
--ids, writes DIR/reference.safetensors holding `logits` [1, seq, vocab] (fp32, from
the saved weights) and, with --generate, `greedy`: up to N tokens from greedy
`generate()` (ending with the EOS token when it stopped there).
`logits` loads any HF directory with AutoModelForCausalLM and writes the same file.
"""

import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


LLAMA_LIKE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=101,
                  max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5,
                  bos_token_id=0, eos_token_id=1)


def tiny_config(family, tied):
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=101,
                          bos_token_id=0, eos_token_id=1, tie_word_embeddings=tied)
    if family == "llama3":
        # With head_dim 16 and rope_theta 500 the wavelengths run from 2π to ~1400:
        # some below original/high_freq_factor (kept), some between (blended), most
        # beyond original/low_freq_factor (divided by the factor).
        return LlamaConfig(**LLAMA_LIKE, tie_word_embeddings=tied,
                           rope_scaling={"rope_type": "llama3", "factor": 4.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 16})
    if family == "qwen2":
        return Qwen2Config(**LLAMA_LIKE, tie_word_embeddings=tied)
    if family == "mistral":
        # A window shorter than the test prompt, so that it masks something.
        return MistralConfig(**LLAMA_LIKE, tie_word_embeddings=tied, sliding_window=5)
    return LlamaConfig(**LLAMA_LIKE, tie_word_embeddings=tied)


CLASSES = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "llama3": LlamaForCausalLM,
           "qwen2": Qwen2ForCausalLM, "mistral": MistralForCausalLM}


def spread_weights(model, seed):
    """Replace the default N(0, 0.02) init with larger, varied values: with tiny
    weights attention is nearly uniform and norms are identity, so a wrong mask, RoPE
    or norm would barely move the logits. Norm scales and biases get noise too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.2 * noise)
            else:
                p.copy_(0.25 * noise)


def reference(model, ids, generate, out):
    model = model.float().eval()
    tensors = {}
    with torch.no_grad():
        input_ids = torch.tensor([ids], dtype=torch.long)
        tensors["logits"] = model(input_ids).logits.float().contiguous()
        if generate:
            # An explicit mask: otherwise generate() infers one from pad_token_id and
            # would hide prompt tokens that happen to equal it.
            seq = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=generate, do_sample=False,
                                 pad_token_id=model.config.eos_token_id)
            tensors["greedy"] = seq[0, len(ids):].contiguous()
    save_file(tensors, out)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    create = sub.add_parser("create")
    create.add_argument("--family", choices=list(CLASSES), required=True)
    create.add_argument("--out", required=True)
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--tied", dest="tied", action="store_true", default=None)
    create.add_argument("--untied", dest="tied", action="store_false")
    create.add_argument("--dtype", choices=list(DTYPES), default="float32")
    create.add_argument("--shard-size")
    create.add_argument("--ids")
    create.add_argument("--generate", type=int, default=0)
    logits = sub.add_parser("logits")
    logits.add_argument("--model", required=True)
    logits.add_argument("--ids", required=True)
    logits.add_argument("--out", required=True)
    logits.add_argument("--generate", type=int, default=0)
    args = parser.parse_args()

    if args.cmd == "create":
        torch.manual_seed(args.seed)
        tied = args.tied if args.tied is not None else args.family == "gpt2"
        config = tiny_config(args.family, tied)
        model = CLASSES[args.family](config)
        spread_weights(model, args.seed)
        model = model.to(DTYPES[args.dtype])
        kwargs = {"safe_serialization": True}
        if args.shard_size:
            kwargs["max_shard_size"] = args.shard_size
        model.save_pretrained(args.out, **kwargs)
        if args.ids:
            ids = [int(t) for t in args.ids.split(",")]
            # Reload from disk: the reference is what transformers computes in fp32 for
            # the checkpoint as stored (weights rounded to bf16/fp16, buffers such as
            # RoPE frequencies recomputed in fp32 rather than cast from the model).
            model = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
            reference(model, ids, args.generate, os.path.join(args.out, "reference.safetensors"))
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        ids = [int(t) for t in args.ids.split(",")]
        reference(model, ids, args.generate, args.out)


if __name__ == "__main__":
    main()
