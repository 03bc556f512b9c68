"""The inference request path as a migrating OpenAI user and an attacker drive it: huge
prompts are refused before they are tokenized (and hold no one else up), `logit_bias` works,
numbers are strict, and fields TuneForge does not implement are refused, not ignored."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import CORPUS
from tests.server.conftest import API_KEY, settings_for, start_server, stop_server
from tuneforge.modeling.tiny import build_model, save_model_folder

CHAT = [{"role": "user", "content": "Hello! How can I help you?"}]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def _greedy(client, **kw):
    return client.chat.completions.create(
        model="tiny-llama", messages=CHAT, temperature=0, max_tokens=6, **kw
    )


# -- oversized prompts ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roomy_server(model_store, tmp_path_factory):
    """Bodies up to 3 MiB, so a 2 MiB prompt reaches the handler."""
    settings = settings_for(
        model_store,
        tmp_path_factory.mktemp("data"),
        api_keys=[API_KEY],
        max_body_bytes=3 * 1024 * 1024,
    )
    running = start_server(settings)
    yield running
    stop_server(running)


def test_huge_prompts_are_refused_untokenized_and_hold_nobody_up(roomy_server):
    """Four ~2 MiB prompts and one small request at once. Against what tokenizing one huge
    prompt costs on this machine right now (measured here), each huge prompt must be refused
    (400 context_length_exceeded) in well under that time, and the small request must not
    wait for them."""
    engine = roomy_server.app.state.engine
    huge = (" ".join(CORPUS) + " ") * (2 * 1024 * 1024 // 600)
    started = time.perf_counter()
    engine._base.tokenizer(huge)
    tokenize_s = time.perf_counter() - started

    client = OpenAI(base_url=roomy_server.v1, api_key=API_KEY, max_retries=0, timeout=120)

    def small() -> float:
        t = time.perf_counter()
        client.chat.completions.create(model="tiny-llama", messages=CHAT, max_tokens=2)
        return time.perf_counter() - t

    def big(kind: str) -> tuple[float, openai.BadRequestError | None]:
        t = time.perf_counter()
        try:
            if kind == "chat":
                client.chat.completions.create(
                    model="tiny-llama", messages=[{"role": "user", "content": huge}], max_tokens=1
                )
            else:
                client.completions.create(model="tiny-llama", prompt=huge, max_tokens=1)
        except openai.BadRequestError as err:
            return time.perf_counter() - t, err
        return time.perf_counter() - t, None

    baseline = min(small() for _ in range(3))
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        bigs = [pool.submit(big, kind) for kind in ("chat", "completions") * 2]
        small_s = pool.submit(small).result()
        results = [f.result() for f in bigs]
    for elapsed, err in results:
        assert err is not None
        assert err.body["code"] == "context_length_exceeded"
        assert err.body["param"] in ("messages", "prompt")
        assert elapsed < tokenize_s / 2, (elapsed, tokenize_s)
    assert small_s < baseline + tokenize_s / 2, (small_s, baseline, tokenize_s)


@pytest.fixture(scope="module")
def long_context_server(tmp_path_factory, tiny_tokenizer):
    """A tiny model with a context of a million positions, and a prompt cap of 200,000
    tokens: a 2 MiB prompt is within the character bound, so it is tokenized (then refused
    for its token count)."""
    root = tmp_path_factory.mktemp("long") / "models"
    model = build_model(tiny_tokenizer, arch="llama", max_positions=1 << 20)
    save_model_folder(model, tiny_tokenizer, root / "long-llama")
    settings = settings_for(
        root,
        tmp_path_factory.mktemp("data"),
        base_model="long-llama",
        max_body_bytes=3 * 1024 * 1024,
        max_prompt_tokens=200_000,
    )
    running = start_server(settings)
    yield running
    stop_server(running)


def test_long_prompts_being_tokenized_hold_nobody_up(long_context_server):
    """Tokenizing takes no global lock: while four ~2 MiB prompts are tokenized, a small
    request is answered without waiting for them."""
    server = long_context_server
    huge = (" ".join(CORPUS) + " ") * (2 * 1024 * 1024 // 600)
    tokenizer = server.app.state.engine._base.tokenizer
    started = time.perf_counter()
    tokenizer(huge)
    tokenize_s = time.perf_counter() - started
    client = OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)

    def small() -> float:
        t = time.perf_counter()
        client.completions.create(model="long-llama", prompt="Hello", max_tokens=2)
        return time.perf_counter() - t

    def big() -> tuple[float, dict]:
        t = time.perf_counter()
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="long-llama", prompt=huge, max_tokens=1)
        return time.perf_counter() - t, err.value.body

    baseline = min(small() for _ in range(3))
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        bigs = [pool.submit(big) for _ in range(4)]
        time.sleep(min(0.5, tokenize_s / 4))  # let them reach the tokenizer
        small_s = pool.submit(small).result()
        results = [f.result() for f in bigs]
    for _, body in results:
        assert body["code"] == "context_length_exceeded"
        assert "tokens" in body["message"]  # refused by its token count: it was tokenized
    assert small_s < baseline + tokenize_s / 2, (small_s, baseline, tokenize_s)
    assert small_s < min(elapsed for elapsed, _ in results)


def test_prompt_char_limit_setting(model_store, tmp_path):
    """`max_prompt_chars` tightens the bound: a prompt that fits the tokens but not the
    characters is refused with the same error."""
    running = start_server(settings_for(model_store, tmp_path / "data", max_prompt_chars=40))
    try:
        client = OpenAI(base_url=running.v1, api_key="unused", max_retries=0, timeout=60)
        client.completions.create(model="tiny-llama", prompt="x" * 40, max_tokens=1)
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="tiny-llama", prompt="x" * 41, max_tokens=1)
        assert err.value.body["code"] == "context_length_exceeded"
        assert err.value.body["param"] == "prompt"
    finally:
        stop_server(running)


# -- logit_bias ----------------------------------------------------------------------------------


def _ids_of(tokenizer, text: str) -> list[int]:
    """Every token id that decodes to exactly `text`."""
    return [i for i in range(len(tokenizer)) if tokenizer.decode([i]) == text]


def test_logit_bias_bans_and_forces_tokens(client, server):
    tokenizer = server.app.state.engine._base.tokenizer
    greedy = {"model": "tiny-llama", "prompt": "Hello! How can", "max_tokens": 5}
    greedy |= {"temperature": 0, "logprobs": 0, "extra_body": {"ignore_eos": True}}
    plain = client.completions.create(**greedy).choices[0]
    first = plain.logprobs.tokens[0]
    ban = {str(i): -100 for i in _ids_of(tokenizer, first)}
    banned = client.completions.create(**greedy, logit_bias=ban).choices[0]
    assert banned.logprobs.tokens[0] != first
    assert banned.text != plain.text

    (dog, *_) = _ids_of(tokenizer, " dog")
    force = {str(dog): 100}
    # Chat and completions, streaming and not, sampled (temperature 1) and greedy.
    chat = client.chat.completions.create(
        model="tiny-llama",
        messages=CHAT,
        max_tokens=4,
        temperature=1.0,
        logit_bias=force,
        extra_body={"ignore_eos": True},
    )
    assert chat.choices[0].message.content == " dog" * 4
    chunks = client.completions.create(
        model="tiny-llama",
        prompt="Hello",
        max_tokens=3,
        temperature=0,
        logit_bias=force,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " dog" * 3


def test_logit_bias_per_request_in_one_batch(client, server):
    """Requests decoded in one batch each get only their own bias."""
    tokenizer = server.app.state.engine._base.tokenizer
    ids = [_ids_of(tokenizer, word)[0] for word in (" dog", " card")]

    def ask(bias):
        return (
            client.completions.create(
                model="tiny-llama",
                prompt="The quick brown fox",
                max_tokens=8,
                temperature=0,
                logit_bias=bias,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .text
        )

    plain = ask(None)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(ask, b) for b in (None, {str(ids[0]): 100}, {str(ids[1]): 100})] * 2
        texts = [f.result() for f in futures]
    for text, word in zip(texts, [None, " dog", " card"] * 2, strict=True):
        assert text == (plain if word is None else word * 8)


@pytest.mark.parametrize(
    "bias",
    [
        {str(i): 1 for i in range(301)},  # too many entries
        {"100000": 1},  # outside the vocabulary
        {"5": 101},  # out of range
        {"5": -100.5},
        {"abc": 1},  # not a token id
        {"-1": 1},
        {"07": 1},  # not canonical: "7" and "07" would name one token twice
        {"9" * 5000: 1},  # past int()'s digit limit
    ],
)
def test_logit_bias_is_validated(client, bias):
    with pytest.raises(openai.BadRequestError) as err:
        _greedy(client, logit_bias=bias)
    assert err.value.body["param"] == "logit_bias"
    assert err.value.body["type"] == "invalid_request_error"


# -- strict numbers and unimplemented fields -------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", True),
        ("max_completion_tokens", True),
        ("n", True),
        ("seed", True),
        ("top_logprobs", True),
        ("max_tokens", 2.0),
        ("temperature", True),
        ("logprobs", 1),
        ("stream", "yes"),
        ("logit_bias", {"5": True}),
    ],
)
def test_sampling_numbers_are_strict(server, field, value):
    """`max_tokens: true` was read as 1; every such value is now a request error naming the
    field, answered 400 like OpenAI."""
    body = {"model": "tiny-llama", "messages": CHAT, field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    response = httpx.post(server.v1 + "/chat/completions", json=body, headers=HEADERS)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].split(".")[0] == field


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"top_k": 5}, "top_k"),  # a vLLM extension TuneForge does not have
        ({"max_token": 5}, "max_token"),  # a typo must not pass for the default
    ],
)
def test_unimplemented_fields_are_refused(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        _greedy(client, extra_body=extra)
    assert err.value.body["param"] == param


def test_unimplemented_completion_fields_are_refused(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="tiny-llama", prompt="Hi", max_tokens=2, extra_body={"min_p": 0.1}
        )
    assert err.value.body["param"] == "min_p"


def test_harmless_fields_are_accepted(client):
    """Metadata that cannot change a reply, and `tool_choice: "none"` without tools."""
    plain = _greedy(client).choices[0].message.content
    out = _greedy(
        client,
        user="u-1",
        metadata={"team": "support"},
        store=False,
        tool_choice="none",
        extra_body={"service_tier": "auto", "safety_identifier": "s", "prompt_cache_key": "k"},
    )
    assert out.choices[0].message.content == plain
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    _greedy(client, tools=tools, tool_choice="auto", parallel_tool_calls=True)
