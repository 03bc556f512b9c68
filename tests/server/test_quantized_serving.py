"""A server started with `quantize` (weight-only int4 decode steps): the base and an adapter
on it answer through the official openai client; an unknown kind is refused up front."""

from __future__ import annotations

import pytest

from tests.server.conftest import settings_for, start_server, stop_server


def test_server_with_int4_answers_through_the_openai_client(model_store, tmp_path):
    from openai import OpenAI

    settings = settings_for(model_store, tmp_path / "data", quantize="int4")
    running = start_server(settings)
    try:
        note = running.app.state.engine.quantized_note()
        assert "int4 weights in" in note and "kept as they were" not in note
        with OpenAI(base_url=running.v1, api_key="unused", max_retries=0, timeout=60) as client:
            for model in ("tiny-llama", "acme/support:v1"):  # the base, and an adapter on it
                reply = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "hello"}],
                    max_tokens=6,
                    temperature=0,
                )
                assert reply.usage.completion_tokens >= 1
                assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        stop_server(running)


def test_unknown_quantize_is_refused(model_store):
    with pytest.raises(ValueError, match="quantize must be one of none, int8, int4"):
        settings_for(model_store, quantize="int3")
