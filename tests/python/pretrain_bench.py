"""PyTorch eager reference for `trainer bench pretrain`: a nanoGPT-style training
loop (forward, mean next-token cross-entropy, backward, clip_grad_norm_, AdamW)
over a `transformers` model of the same shape. Prints {"ms_per_step": ...}."""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def build(args):
    if args.family == "gpt2":
        config = GPT2Config(
            vocab_size=args.vocab,
            n_embd=args.hidden,
            n_layer=args.layers,
            n_head=args.heads,
            n_positions=args.sequence_length,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            resid_pdrop=0.0,
            tie_word_embeddings=True,
        )
        return GPT2LMHeadModel(config)
    # Same default MLP width as the trainer: ceil(8/3 * hidden) rounded up to 64.
    intermediate = ((8 * args.hidden + 2) // 3 + 63) // 64 * 64
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.sequence_length,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="llama")
    for name, default in [
        ("layers", 4), ("hidden", 256), ("heads", 4), ("vocab", 4096),
        ("sequence-length", 256), ("batch", 8), ("steps", 10), ("warmup", 2), ("threads", 0),
    ]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    args = p.parse_args()
    device = torch.device(args.device)
    autocast = args.bf16 and device.type == "cuda"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    tokens = torch.randint(args.vocab, (args.batch, args.sequence_length + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "step": 0.0}
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        sync()
        forward = time.perf_counter()
        loss.backward()
        sync()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        end = time.perf_counter()
        if i >= args.warmup:
            totals["forward"] += forward - start
            totals["backward"] += backward - forward
            totals["optimizer"] += end - backward
            totals["step"] += end - start
    ms = {k: v * 1000 / args.steps for k, v in totals.items()}
    print(json.dumps({
        "ms_per_step": ms["step"],
        "forward_ms": ms["forward"],
        "backward_ms": ms["backward"],
        "optimizer_ms": ms["optimizer"],
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
