"""The inference server (`server-image`) as the official `openai` client sees it.

Run by `cargo test -p llmops-server --test openai_client`, which starts the server on
a tiny random model (`tiny_model.py`) and sets:

    LLMOPS_SERVER_URL   http://HOST:PORT of the server
    LLMOPS_API_KEY      a key from the server's --api-key-file
    LLMOPS_MODEL_NAME   the --served-model-name

The model is random, so the tests check the contract (shapes, determinism, limits,
errors), never particular words.
"""

import json
import os
import re
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

PROMPT = "the cat"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
FINISH_REASONS = {"stop", "length"}


def setting(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests with "
                    "`cargo test -p llmops-server --test openai_client`")
    return value


@pytest.fixture(scope="session")
def url():
    return setting("LLMOPS_SERVER_URL").rstrip("/")


@pytest.fixture(scope="session")
def model():
    return setting("LLMOPS_MODEL_NAME")


def make_client(url, api_key):
    # No retries: a failing request must fail the test, not be repeated.
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def client(url):
    return make_client(url, setting("LLMOPS_API_KEY"))


def complete(client, model, prompt=PROMPT, **params):
    params = {"max_tokens": 8, "temperature": 0, **params}
    return client.completions.create(model=model, prompt=prompt, **params)


def chat(client, model, **params):
    params = {"max_tokens": 8, "temperature": 0, **params}
    return client.chat.completions.create(model=model, messages=MESSAGES, **params)


def check_usage(usage, max_tokens):
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 <= usage.completion_tokens <= max_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def error_message(exc):
    """The `message` of an OpenAI error body (the client unwraps `{"error": ...}`)."""
    body = exc.body
    assert isinstance(body, dict), f"error body is not an OpenAI error object: {body!r}"
    assert isinstance(body.get("message"), str), f"error body has no message: {body!r}"
    return body["message"]


def call(client, model, endpoint, **params):
    if endpoint == "completions":
        return complete(client, model, **params)
    return chat(client, model, **params)


ENDPOINTS = ["completions", "chat"]


def test_models_list_is_the_served_model(client, model):
    assert [m.id for m in client.models.list().data] == [model]


def test_completion(client, model):
    first = complete(client, model)
    assert first.model == model
    assert len(first.choices) == 1
    choice = first.choices[0]
    assert choice.index == 0
    assert isinstance(choice.text, str)
    assert choice.finish_reason in FINISH_REASONS
    check_usage(first.usage, 8)
    if choice.finish_reason == "length":
        assert first.usage.completion_tokens == 8

    second = complete(client, model)
    assert second.choices[0].text == choice.text, "greedy decoding is not deterministic"
    assert second.usage == first.usage


def test_completion_stream_matches_unstreamed(client, model):
    full = complete(client, model)
    chunks = list(complete(client, model, stream=True))
    assert chunks, "the stream had no chunks"
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    last = chunks[-1]
    assert last.choices, "the last chunk has no choice"
    assert last.choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1] if c.choices)


def test_chat_completion(client, model):
    first = chat(client, model)
    assert first.model == model
    assert len(first.choices) == 1
    choice = first.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in FINISH_REASONS
    check_usage(first.usage, 8)
    assert chat(client, model).choices[0].message.content == choice.message.content


def test_chat_stream_matches_unstreamed(client, model):
    full = chat(client, model)
    chunks = list(chat(client, model, stream=True, stream_options={"include_usage": True}))
    deltas = [c for c in chunks if c.choices]
    assert deltas, "the stream had no choice chunks"
    assert deltas[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in deltas)
    assert content == full.choices[0].message.content
    assert deltas[-1].choices[0].finish_reason == full.choices[0].finish_reason

    # With include_usage the usage comes in one extra, last chunk with no choices.
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == full.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_seeded_sampling_is_reproducible(client, model):
    first = complete(client, model, temperature=1.0, seed=7, max_tokens=16)
    second = complete(client, model, temperature=1.0, seed=7, max_tokens=16)
    assert first.choices[0].text == second.choices[0].text


def test_stop_sequence(client, model):
    free = complete(client, model).choices[0]
    stopped = complete(client, model, stop=["e"]).choices[0]
    assert "e" not in stopped.text
    if "e" in free.text:
        # The same greedy tokens, cut just before the stop sequence.
        assert stopped.finish_reason == "stop"
        assert stopped.text == free.text[: free.text.index("e")]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_wrong_api_key_is_401(url, model, endpoint):
    with pytest.raises(openai.AuthenticationError) as err:
        call(make_client(url, "wrong"), model, endpoint)
    assert err.value.status_code == 401
    error_message(err.value)


def test_wrong_api_key_on_models_is_401(url):
    with pytest.raises(openai.AuthenticationError):
        make_client(url, "wrong").models.list()


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/v1/models", None),
    ("POST", "/v1/completions", {"model": "m", "prompt": PROMPT, "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"model": "m", "messages": MESSAGES, "max_tokens": 1}),
])
def test_missing_api_key_is_401(url, method, path, body):
    # The openai client refuses to send a request without a key, so this one is raw.
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 401
    error = json.loads(err.value.read())["error"]
    assert isinstance(error["message"], str)
    assert {"type", "param", "code"} <= error.keys()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unknown_model_is_404(client, endpoint):
    with pytest.raises(openai.NotFoundError) as err:
        call(client, "no-such-model", endpoint)
    assert err.value.status_code == 404
    assert "no-such-model" in error_message(err.value)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("params,names", [
    ({"temperature": -1}, r"temperature"),
    ({"max_tokens": 0}, r"max_tokens"),
    ({"max_tokens": -5}, r"max_tokens"),
    ({"n": 17}, r"\bn\b"),
], ids=["temperature", "max_tokens_zero", "max_tokens_negative", "n"])
def test_invalid_parameter_is_400(client, model, endpoint, params, names):
    with pytest.raises(openai.BadRequestError) as err:
        call(client, model, endpoint, **params)
    assert err.value.status_code == 400
    message = error_message(err.value)
    assert re.search(names, message), f"the message does not name the parameter: {message!r}"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_beyond_context_is_400(client, model, endpoint):
    with pytest.raises(openai.BadRequestError) as err:
        call(client, model, endpoint, max_tokens=10000)
    message = error_message(err.value)
    assert "context" in message.lower(), message


def test_concurrent_requests_match_sequential(client, model):
    prompts = ["the cat", "a dog sees", "once upon a time", "hello there",
               "the old man finds the", "my sister paints a red house near the sea"]
    alone = [complete(client, model, prompt=p, max_tokens=16).choices[0] for p in prompts]

    start = threading.Barrier(len(prompts))

    def together(prompt):
        start.wait()
        return complete(client, model, prompt=prompt, max_tokens=16).choices[0]

    with ThreadPoolExecutor(len(prompts)) as pool:
        batched = list(pool.map(together, prompts))
    for prompt, a, b in zip(prompts, alone, batched):
        assert (b.text, b.finish_reason) == (a.text, a.finish_reason), prompt
