"""The serving fast path: bf16 engines answer like fp32 ones, and a real instruct model
chats sensibly in bf16, ending its turn by itself."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tuneforge.inference.engine import Engine, EngineConfig
from tuneforge.inference.params import GenerationRequest, SamplingParams
from tuneforge.inference.registry import ModelEntry


def start(path, dtype: str) -> tuple[Engine, ModelEntry]:
    entry = ModelEntry(id="base", path=path, kind="full")
    engine = Engine(EngineConfig(dtype=dtype, device="cpu", max_batch_size=4), entry)
    engine.load()
    engine.start()
    return engine, entry


async def chat(engine: Engine, entry: ModelEntry, ids: list[int], **params) -> tuple:
    request = GenerationRequest(
        entry, ids, SamplingParams(**params), extra_eos=engine.chat_stop_ids(entry)
    )
    text, tokens, finish = "", [], None
    async for deltas in engine.submit(request):
        for d in deltas:
            text, tokens = text + d.text, tokens + d.token_ids
            finish = d.finish_reason or finish
    return text, tokens, finish


def test_engine_dtype_auto_is_resolved_and_recorded(tiny_model_dir):
    engine, _ = start(tiny_model_dir, "auto")
    try:
        assert engine.dtype is not None and engine.dtype.name in ("bf16", "fp32")
        assert engine.dtype.reason
        assert next(engine._base.model.parameters()).dtype == engine.dtype.torch_dtype
    finally:
        engine.shutdown()


def test_bf16_and_fp32_engines_agree_greedy(tiny_model_dir):
    """A bf16 engine's greedy tokens are the fp32 engine's until fp32 itself nearly ties.

    bf16 keeps 8 bits of mantissa: its logits differ from fp32's by up to ~`TOLERANCE`, so
    two candidates closer than that may swap (a tiny random model has many near-ties). So
    where the two engines' tokens first differ, fp32's own top-2 margin must be below
    `TOLERANCE`, and bf16 must agree on at least the first token of every prompt."""
    tolerance = 0.05  # logits; |bf16 - fp32| logit gaps on this model are ~0.005 (std 0.17)
    prompts = ["Hello! How can", "The quick brown fox", "Please reset my password"]
    engines = {dt: start(tiny_model_dir, dt) for dt in ("fp32", "bf16")}
    try:
        engine32, entry = engines["fp32"]
        model32 = engine32._base.model
        for p in prompts:
            ids = engine32.encode(entry, p)
            outs = {}
            for dt, (engine, _) in engines.items():
                greedy = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
                outs[dt] = asyncio.run(chat(engine, entry, ids, **greedy))[1]
            assert outs["bf16"][0] == outs["fp32"][0]
            same = 0
            while same < len(outs["fp32"]) and outs["bf16"][same] == outs["fp32"][same]:
                same += 1
            if same < len(outs["fp32"]):
                with torch.inference_mode():
                    prefix = torch.tensor([ids + outs["fp32"][:same]])
                    top2 = model32(prefix).logits[0, -1].float().topk(2).values
                assert float(top2[0] - top2[1]) < tolerance, (p, same, outs)
    finally:
        for engine, _ in engines.values():
            engine.shutdown()


@pytest.mark.real_model
def test_real_model_chat_in_bf16_stops_at_end_of_turn(smollm2):
    engine, entry = start(smollm2, "bf16")
    try:
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        ids = engine.prepare_chat(entry, messages)
        text, tokens, finish = asyncio.run(chat(engine, entry, ids, max_tokens=64, temperature=0))
    finally:
        engine.shutdown()
    assert finish == "stop", (text, finish)
    assert len(tokens) < 64
    assert "Paris" in text
    assert "<|im_end|>" not in text and "<|im_start|>" not in text
