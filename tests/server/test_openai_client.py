"""The real server on a loopback port, driven by the official `openai` client."""

from __future__ import annotations

import concurrent.futures
import json
import shutil

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY

CHAT = [{"role": "user", "content": "Hello! How can I help you?"}]


def greedy_chat(client, model="tiny-llama", **kw):
    return client.chat.completions.create(
        model=model, messages=CHAT, temperature=0, max_tokens=kw.pop("max_tokens", 12), **kw
    )


# -- models --------------------------------------------------------------------------------------


def test_list_and_retrieve_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny-llama"  # the base model first
    assert {"tiny-llama", "acme/support:v1", "acme/sales:v1"} <= set(ids)
    # The client percent-encodes "/" (acme%2Fsupport:v1); the id still resolves.
    model = client.models.retrieve("acme/support:v1")
    assert (model.id, model.object) == ("acme/support:v1", "model")
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"


def test_path_traversal_is_refused(client, server, model_store, tmp_path):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for model_id in ("../models/tiny-llama", "acme/../tiny-llama", "/etc/passwd", ".."):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=2)
    for raw in ("/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/models/%2E%2E%2Ftiny-llama"):
        response = httpx.get(server.url + raw, headers=headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"
    # A symlink in the store that points outside it is not a model.
    shutil.copytree(model_store / "tiny-llama", tmp_path / "outside-model")
    (model_store / "escape").symlink_to(tmp_path, target_is_directory=True)
    try:
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("escape/outside-model")
        assert "escape/outside-model" not in [m.id for m in client.models.list().data]
    finally:
        (model_store / "escape").unlink()


def test_delete_fine_tune(client, model_store):
    shutil.copytree(model_store / "acme" / "sales:v1", model_store / "acme" / "old:v0")
    try:
        assert client.models.retrieve("acme/old:v0").id == "acme/old:v0"
        # A folder of the model store belongs to no organization: only an admin key deletes
        # it (tests/server/test_models_delete.py), not this ordinary key.
        with pytest.raises(openai.PermissionDeniedError):
            client.models.delete("acme/old:v0")
        assert (model_store / "acme" / "old:v0").is_dir()
        with pytest.raises(openai.NotFoundError):
            client.models.delete("acme/no-such:v0")
        with pytest.raises(openai.BadRequestError):  # the base model is not a fine-tune
            client.models.delete("tiny-llama")
    finally:
        shutil.rmtree(model_store / "acme" / "old:v0")


# -- chat -------------------------------------------------------------------------------------------


def test_chat_usage_and_finish_reason(client, server):
    from tuneforge.tokenize.templates import render_prompt

    out = greedy_chat(client, max_tokens=7)
    choice = out.choices[0]
    engine = server.app.state.engine
    prompt_ids = render_prompt(CHAT, engine._base.tokenizer)
    assert out.usage.prompt_tokens == len(prompt_ids)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    if choice.finish_reason == "length":
        assert out.usage.completion_tokens == 7
    else:
        assert choice.finish_reason == "stop" and out.usage.completion_tokens <= 7
    assert out.object == "chat.completion" and out.model == "tiny-llama"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)


def test_chat_stream_matches_and_reports_usage(client):
    full = greedy_chat(client, max_tokens=16)
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=CHAT,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [full.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_sse_ends_with_done(server):
    body = {"model": "tiny-llama", "messages": CHAT, "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST",
        server.v1 + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_stop_sequence_spanning_tokens(client):
    base = client.completions.create(
        model="tiny-llama", prompt="Hello! How can", temperature=0, max_tokens=24
    )
    text = base.choices[0].text
    assert len(text) >= 6
    stop = text[3:6]  # three characters, most likely spread over several tokens
    cut = client.completions.create(
        model="tiny-llama", prompt="Hello! How can", temperature=0, max_tokens=24, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="tiny-llama",
        prompt="Hello! How can",
        temperature=0,
        max_tokens=24,
        stop=stop,
        stream=True,
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == cut.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_and_seed_reproducibility(client):
    def sample(seed):
        return client.chat.completions.create(
            model="tiny-llama", messages=CHAT, n=3, seed=seed, temperature=1.0, max_tokens=10
        )

    first, again, other = sample(7), sample(7), sample(8)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert texts != [c.message.content for c in other.choices]
    assert len(set(texts)) > 1  # each choice has its own stream of randomness
    assert 3 <= first.usage.completion_tokens <= 30  # counted over all three choices


def test_chat_logprobs(client):
    out = client.chat.completions.create(
        model="tiny-llama", messages=CHAT, max_tokens=5, logprobs=True, top_logprobs=3, seed=1
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        tops = [t.logprob for t in item.top_logprobs]
        assert tops == sorted(tops, reverse=True) and tops[0] >= item.logprob - 1e-5
        assert bytes(item.bytes).decode("utf-8", errors="replace") == item.token


def test_completion_logprobs_and_echo(client):
    out = client.completions.create(
        model="tiny-llama", prompt="The quick brown", max_tokens=4, logprobs=2, temperature=0
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    # Greedy: the chosen token is the most likely one.
    for token_lp, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert abs(max(top.values()) - token_lp) < 1e-4
    echoed = client.completions.create(
        model="tiny-llama", prompt="The quick brown", max_tokens=4, echo=True, temperature=0
    )
    assert echoed.choices[0].text == "The quick brown" + out.choices[0].text


def test_json_mode_returns_valid_json(client):
    for seed, max_tokens in ((0, 6), (1, 20), (2, 60)):
        out = client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "Reply in JSON."}],
            response_format={"type": "json_object"},
            seed=seed,
            max_tokens=max_tokens,
        )
        value = json.loads(out.choices[0].message.content)
        assert isinstance(value, dict)
        assert out.usage.completion_tokens <= max_tokens


def test_adapters_change_outputs_and_batch_together(client):
    solo = {m: greedy_chat(client, m).choices[0].message.content for m in MODELS}
    assert len(set(solo.values())) == 3, solo  # base and both adapters all differ
    # Mixed-adapter requests decoded in one batch give the same greedy text as alone.
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = {pool.submit(greedy_chat, client, m): m for m in MODELS * 2}
        for future, model in futures.items():
            assert future.result().choices[0].message.content == solo[model]


MODELS = ["tiny-llama", "acme/support:v1", "acme/sales:v1"]


# -- errors ----------------------------------------------------------------------------------------


def test_auth_required(server):
    from openai import OpenAI

    with OpenAI(base_url=server.v1, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as err:
            bad.models.list()
        assert err.value.status_code == 401
        assert err.value.body["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health").status_code == 200  # health is open
    assert httpx.get(server.url + "/metrics").status_code == 401
    no_header = httpx.post(server.v1 + "/chat/completions", json={})
    assert no_header.status_code == 401


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")


def test_oversized_and_malformed_requests(client, server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    huge = [{"role": "user", "content": "x" * (server.settings.max_body_bytes + 1)}]
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="tiny-llama", messages=huge)
    assert err.value.status_code == 413
    assert err.value.body["code"] == "request_too_large"

    def chunked():  # no Content-Length: the cap applies while reading
        yield b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
        for _ in range(server.settings.max_body_bytes // 1000 + 1):
            yield b"y" * 1000
        yield b'"}]}'

    response = httpx.post(server.v1 + "/chat/completions", content=chunked(), headers=headers)
    assert response.status_code == 413

    for body in (b"{not json", b'{"model": "tiny-llama"}', b'{"model": 3, "messages": []}'):
        response = httpx.post(server.v1 + "/chat/completions", content=body, headers=headers)
        assert response.status_code == 400, body  # OpenAI's status for schema errors
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=CHAT, temperature=7)


def test_limits_are_400(client, server):
    settings = server.settings
    cases = [
        {"max_tokens": settings.max_tokens_cap + 1},
        {"n": settings.max_n + 1},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": ["z" * (settings.max_stop_chars + 1)]},
        {"max_tokens": 500},  # prompt + max_tokens over the 512-token context
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},  # no schema
    ]
    for extra in cases:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny-llama", messages=CHAT, **extra)
    long_prompt = [{"role": "user", "content": " ".join(["hello"] * 600)}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-llama", messages=long_prompt, max_tokens=1)
    assert err.value.body["code"] == "context_length_exceeded"


def test_health_and_metrics(client, server):
    greedy_chat(client, max_tokens=2)
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    for name in (
        "tuneforge_requests_total",
        "tuneforge_errors_total",
        "tuneforge_prompt_tokens_total",
        "tuneforge_generated_tokens_total",
        "tuneforge_queue_depth",
        "tuneforge_time_to_first_token_seconds_bucket",
        "tuneforge_request_latency_seconds_count",
    ):
        assert name in text
    assert 'route="/v1/chat/completions",status="200"' in text
