"""The server's log-probabilities against `transformers`, and lm-evaluation-harness
scoring a multiple-choice task through `local-completions` against the server.

Driven by `server-image/tests/lm_eval_harness.rs`, which makes the tiny model
(`tests/python/tiny_model.py`), starts the `server` on 127.0.0.1 and passes
LLMOPS_SERVER_URL, LLMOPS_MODEL_NAME and LLMOPS_MODEL_DIR. Nothing is downloaded:
the task and its data are written here, and the Hugging Face libraries run offline.
"""

import glob
import json
import os
import subprocess
import sys
import urllib.request

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

URL = os.environ.get("LLMOPS_SERVER_URL", "")
MODEL_NAME = os.environ.get("LLMOPS_MODEL_NAME", "")
MODEL_DIR = os.environ.get("LLMOPS_MODEL_DIR", "")
# Per-token log-probabilities (fp32) and whole-continuation log-likelihoods.
TOKEN_TOLERANCE = 1e-4
LOGLIKELIHOOD_TOLERANCE = 1e-3

PROMPTS = [
    "The cat sees the red house near the sea.",
    "Hello there! My sister paints the quiet garden",
    "the farmer",
]

# Multiple choice over the tiny model's corpus words: a context, its choices and
# the index of the "right" one (a random model is scored, so any gold will do).
QUESTIONS = [
    ("The cat sees the", ["red house", "quiet river", "heavy letter"], 0),
    ("A dog finds the", ["bright garden", "little window", "strange boat", "warm apple"], 1),
    ("The old man likes the", ["empty story", "green mountain"], 1),
    ("My sister carries the", ["broken song", "gentle door", "famous basket"], 2),
    ("The teacher paints the", ["wooden bridge", "golden kitchen", "narrow lantern"], 0),
    ("A small bird follows the", ["ancient castle", "yellow blanket"], 0),
    ("The farmer remembers the", ["cheerful village", "dangerous picture", "simple journey"], 2),
    ("Our neighbour builds the", ["red boat", "quiet house", "heavy river"], 1),
    ("The children watch the", ["bright letter", "little garden"], 1),
    ("A tired horse opens the", ["strange window", "warm boat", "empty apple"], 0),
    ("The captain brings the", ["green story", "broken mountain", "gentle song"], 2),
    ("Her brother cleans the", ["famous door", "wooden basket"], 0),
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    return model.eval()


def post(path, body):
    request = urllib.request.Request(URL + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def reference_logprobs(model, ids):
    """Row t: the log-softmax of the logits at position t (scores token t + 1)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def assert_top(top, row, k):
    """`top` (token -> logprob) holds the k largest values of `row`."""
    want = sorted(row.topk(k).values.tolist(), reverse=True)
    got = sorted(top.values(), reverse=True)
    # Distinct ids may share a text; the map then holds fewer entries.
    assert len(got) <= k and len(got) >= 1
    for g in got:
        assert min(abs(g - w) for w in want) < TOKEN_TOLERANCE, (got, want)
    assert abs(got[0] - want[0]) < TOKEN_TOLERANCE


@pytest.mark.parametrize("prompt", PROMPTS)
def test_echoed_prompt_logprobs_equal_transformers(tokenizer, model, prompt):
    ids = tokenizer(prompt)["input_ids"]
    body = post("/v1/completions", {"model": MODEL_NAME, "prompt": ids, "max_tokens": 0,
                                    "echo": True, "logprobs": 5})
    choice = body["choices"][0]
    assert choice["text"] == tokenizer.decode(ids)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    ref = reference_logprobs(model, ids)
    for t in range(1, len(ids)):
        want = ref[t - 1, ids[t]].item()
        assert abs(lp["token_logprobs"][t] - want) < TOKEN_TOLERANCE, (t, lp["token_logprobs"][t], want)
        assert_top(lp["top_logprobs"][t], ref[t - 1], 5)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_generated_logprobs_equal_transformers(tokenizer, model, prompt):
    ids = tokenizer(prompt)["input_ids"]
    body = post("/v1/completions", {"model": MODEL_NAME, "prompt": ids, "max_tokens": 6,
                                    "temperature": 0, "echo": True, "logprobs": 3})
    lp = body["choices"][0]["logprobs"]
    # The generated tokens' ids, from the greedy answer of transformers.
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    full = out[0].tolist()
    new = len(lp["tokens"]) - len(ids)
    assert 1 <= new <= 6
    ref = reference_logprobs(model, full)
    for t in range(len(ids), len(ids) + new):
        want = ref[t - 1, full[t]].item()
        assert abs(lp["token_logprobs"][t] - want) < TOKEN_TOLERANCE, (t, want, lp)
        assert_top(lp["top_logprobs"][t], ref[t - 1], 3)
        # Greedy: the token is the most likely one.
        assert abs(lp["token_logprobs"][t] - max(lp["top_logprobs"][t].values())) < 1e-6


def test_chat_logprobs_equal_those_of_completions(tokenizer):
    messages = [{"role": "user", "content": "tell me a story"}]
    chat = post("/v1/chat/completions", {"model": MODEL_NAME, "messages": messages,
                                         "max_tokens": 5, "temperature": 0,
                                         "logprobs": True, "top_logprobs": 2})
    content = chat["choices"][0]["logprobs"]["content"]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    plain = post("/v1/completions", {"model": MODEL_NAME, "prompt": ids, "max_tokens": 5,
                                     "temperature": 0, "logprobs": 2})
    lp = plain["choices"][0]["logprobs"]
    assert [c["token"] for c in content] == lp["tokens"]
    for c, logprob in zip(content, lp["token_logprobs"]):
        assert abs(c["logprob"] - logprob) < 1e-6
        assert len(c["top_logprobs"]) == 2
        assert bytes(c["bytes"]).decode() == c["token"]


def encode_pair(tokenizer, context, continuation):
    """lm-eval's split of a request into context and continuation tokens."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def write_task(root):
    data = os.path.join(root, "tiny_mc.jsonl")
    with open(data, "w") as f:
        for question, choices, answer in QUESTIONS:
            f.write(json.dumps({"question": question, "choices": choices, "answer": answer}) + "\n")
    with open(os.path.join(root, "tiny_mc.yaml"), "w") as f:
        f.write(f"""task: llmops_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")


@pytest.mark.parametrize("tokenized", [True, False], ids=["token-ids", "text"])
def test_lm_eval_scores_equal_transformers(tmp_path, tokenizer, model, tokenized):
    write_task(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TOKENIZERS_PARALLELISM="false")
    model_args = ",".join([
        f"base_url={URL}/v1/completions",
        f"model={MODEL_NAME}",
        "tokenizer_backend=huggingface",
        f"tokenizer={MODEL_DIR}",
        f"tokenized_requests={tokenized}",
        "num_concurrent=1",
        "max_retries=1",
    ])
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions",
         "--model_args", model_args, "--tasks", "llmops_tiny_mc",
         "--include_path", str(tmp_path), "--output_path", str(out), "--log_samples",
         "--batch_size", "1"],
        env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    [samples_file] = glob.glob(str(out / "**" / "samples_llmops_tiny_mc_*.jsonl"), recursive=True)
    samples = [json.loads(line) for line in open(samples_file)]
    assert len(samples) == len(QUESTIONS)

    correct = 0
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        question, choices, answer = QUESTIONS[sample["doc_id"]]
        ours = [resp[0][0] for resp in sample["resps"]]
        assert len(ours) == len(choices)
        theirs = []
        for choice in choices:
            ctx, cont = encode_pair(tokenizer, question, " " + choice)
            ref = reference_logprobs(model, ctx + cont)
            theirs.append(sum(ref[len(ctx) + i - 1, tok].item() for i, tok in enumerate(cont)))
        for o, t in zip(ours, theirs):
            assert abs(float(o) - t) < LOGLIKELIHOOD_TOLERANCE, (sample["doc_id"], ours, theirs)
        right = int(max(range(len(theirs)), key=theirs.__getitem__) == answer)
        assert sample["acc"] == right, (sample["doc_id"], ours, theirs)
        correct += right
    [results_file] = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    results = json.load(open(results_file))["results"]["llmops_tiny_mc"]
    assert results["acc,none"] == correct / len(QUESTIONS), (results, correct)
    print(f"lm-eval ({'token ids' if tokenized else 'text'}): acc {results['acc,none']:.4f} "
          f"= transformers {correct}/{len(QUESTIONS)}")
