"""Writes a tiny, randomly initialised Hugging Face model directory for serving tests.

    tiny_model.py OUT_DIR [--family llama|gpt2] [--seed N] [--defect non-finite|unloadable]

OUT_DIR gets `config.json`, `model.safetensors`, `generation_config.json`, a byte-level
BPE `tokenizer.json` trained here on a generated English-like corpus, and
`tokenizer_config.json` with a chat template. Everything is deterministic for a given
seed and nothing is downloaded.

`--defect` writes a broken model for rollout tests: `non-finite` sets the final
norm's weights to NaN (the model loads, and every logit is NaN), `unloadable`
truncates `model.safetensors` (the server cannot load it).
"""

import argparse
import json
import os
import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|user|>", "<|assistant|>", "<|system|>"]
VOCAB_SIZE = 500
CONTEXT = 256

# One message per turn, each closed by EOS; the prompt for a reply ends with the
# assistant header.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|endoftext|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird",
            "the farmer", "our neighbour", "the children", "a tired horse", "the captain",
            "her brother", "the baker", "a young doctor", "the soldiers", "my grandmother",
            "the musician", "a clever student", "the fisherman", "their uncle"]
VERBS = ["sees", "finds", "likes", "carries", "paints", "follows", "remembers", "builds",
         "watches", "opens", "brings", "cleans", "repairs", "forgets", "describes",
         "throws", "borrows", "discovers", "counts", "visits"]
ADJECTIVES = ["red", "quiet", "heavy", "bright", "little", "strange", "warm", "empty",
              "green", "broken", "gentle", "famous", "wooden", "golden", "narrow",
              "ancient", "yellow", "cheerful", "dangerous", "simple"]
OBJECTS = ["house", "river", "letter", "garden", "window", "boat", "apple", "story",
           "mountain", "song", "door", "basket", "bridge", "kitchen", "lantern", "castle",
           "blanket", "village", "picture", "journey"]
PLACES = ["in the morning", "near the sea", "after dinner", "under the tree",
          "at the market", "before the rain", "on the hill", "by the fire",
          "during the winter", "across the valley", "behind the school", "every evening"]
GREETINGS = ["hello", "hello there", "good morning", "thank you", "please be brief",
             "can you help me", "what is the answer", "tell me a story", "goodbye",
             "how are you today", "nice to meet you", "that sounds wonderful"]


def corpus(seed, n=400):
    """`n` deterministic sentences built from the word lists above."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.15:
            lines.append(rng.choice(GREETINGS) + rng.choice([".", "?", "!"]))
            continue
        sentence = (f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} the "
                    f"{rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)}")
        if kind < 0.6:
            sentence += " " + rng.choice(PLACES)
        if kind > 0.85:
            sentence += f", and {rng.choice(SUBJECTS)} {rng.choice(VERBS)} it"
        lines.append(sentence[0].upper() + sentence[1:] + ".")
    return lines


def alphabet():
    """The byte-level symbols of newline and printable ASCII. Leaving out the other
    bytes keeps every token plain ASCII, so that whatever a random model generates
    decodes to valid UTF-8 and streamed pieces concatenate to the full text."""
    symbols = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(
        "\n" + "".join(chr(b) for b in range(0x20, 0x7F)))
    return sorted({c for piece, _ in symbols for c in piece})


def train_tokenizer(lines):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def tiny_model(family, vocab_size, eos_id):
    ids = dict(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=None)
    if family == "gpt2":
        config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=CONTEXT,
                            vocab_size=vocab_size, **ids)
        return GPT2LMHeadModel(config)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=vocab_size, max_position_embeddings=CONTEXT,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         **ids)
    return LlamaForCausalLM(config)


def spread_weights(model, seed):
    """Replace the default N(0, 0.02) init with larger values, so that the next-token
    distribution is peaked: greedy choices then have clear margins and do not flip
    on rounding differences between batched and unbatched execution."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                continue  # norm scales stay 1, biases 0
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--family", choices=["llama", "gpt2"], default="llama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--defect", choices=["non-finite", "unloadable"])
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    tok = train_tokenizer(corpus(args.seed))
    tok.save(os.path.join(args.out, "tokenizer.json"))
    eos_id = tok.token_to_id(EOS)

    torch.manual_seed(args.seed)
    model = tiny_model(args.family, tok.get_vocab_size(), eos_id)
    spread_weights(model, args.seed)
    if args.defect == "non-finite":
        with torch.no_grad():
            final_norm = model.model.norm if args.family == "llama" else model.transformer.ln_f
            final_norm.weight.fill_(float("nan"))
    model.save_pretrained(args.out, safe_serialization=True)
    if args.defect == "unloadable":
        weights = os.path.join(args.out, "model.safetensors")
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 2)

    write_json(os.path.join(args.out, "generation_config.json"),
               {"bos_token_id": eos_id, "eos_token_id": eos_id})
    write_json(os.path.join(args.out, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": None,
        "unk_token": None,
        "model_max_length": CONTEXT,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    })


if __name__ == "__main__":
    main()
