"""The gateway through the official `openai` client.

    gateway_client.py BASE_URL    (keys in GATEWAY_KEY_ALL, GATEWAY_KEY_ALPHA)

With the key for every model: `/v1/models` lists `alpha` and `beta`, and each
answers two completions and one streamed completion (3 per model: the caller
counts them on the pods), and a chat completion. With the key for `alpha` only: `beta` is neither
listed nor served (NotFoundError, code model_not_found). A wrong key is an
AuthenticationError.
"""

import os
import sys

import openai

base = sys.argv[1].rstrip("/") + "/v1"
NO_EOS = {"0": -100}


def client(key):
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)


every = client(os.environ["GATEWAY_KEY_ALL"])
ids = sorted(m.id for m in every.models.list())
assert ids == ["alpha", "beta"], ids

for model in ["alpha", "beta"]:
    for prompt in ["the old man sees", "a small bird"]:
        done = every.completions.create(
            model=model, prompt=prompt, max_tokens=4, temperature=0, logit_bias=NO_EOS
        )
        assert done.model == model, (model, done.model)
        assert done.usage.completion_tokens == 4, done.usage
    chunks = list(
        every.completions.create(
            model=model, prompt="my sister", max_tokens=6, temperature=0,
            logit_bias=NO_EOS, stream=True,
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(chunks) >= 6 and text, (model, chunks)
    assert all(c.model == model for c in chunks), model

    # Chat is routed alike (not counted: the caller counts completions).
    chat = every.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=3,
        temperature=0,
    )
    assert chat.model == model and chat.choices[0].message.role == "assistant", chat

alpha_only = client(os.environ["GATEWAY_KEY_ALPHA"])
assert [m.id for m in alpha_only.models.list()] == ["alpha"]
try:
    alpha_only.completions.create(model="beta", prompt="hi", max_tokens=2)
    raise AssertionError("beta answered a key for alpha only")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
    assert "alpha" not in str(e.body), e.body

try:
    client("sk-wrong-key-0123456789").models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

print("ok")
