"""The engine on tiny models: continuous batching gives exactly what one-at-a-time decoding
gives, adapters share the base, sampling knobs behave, cancelled requests leave the batch."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from tests.inference.adapters import build_adapter
from tuneforge.inference.engine import Engine, EngineConfig, QueueFull
from tuneforge.inference.params import GenerationRequest, SamplingParams
from tuneforge.inference.registry import ModelEntry

PROMPTS = [
    "Hello! How can",
    "The quick brown fox jumps over the lazy dog and then",
    "0 1 2",
    "Please reset my password, I forgot it. Sure, I have sent",
]


def make_engine(path, **config) -> tuple[Engine, ModelEntry]:
    entry = ModelEntry(id="base", path=path, kind="full")
    engine = Engine(EngineConfig(**config), entry)
    engine.load()
    engine.start()
    return engine, entry


async def generate(engine, entry, prompt, **params):
    ids = engine.encode(entry, prompt) if isinstance(prompt, str) else prompt
    stream = engine.submit(GenerationRequest(entry, ids, SamplingParams(**params)))
    out = {}
    async for deltas in stream:
        for d in deltas:
            text, tokens, finish = out.get(d.index, ("", [], None))
            out[d.index] = (text + d.text, tokens + d.token_ids, d.finish_reason or finish)
    return [out[i] for i in sorted(out)]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def engine(request, tiny_model_dir, tiny_gpt2_dir):
    path = tiny_model_dir if request.param == "llama" else tiny_gpt2_dir
    engine, entry = make_engine(path, max_batch_size=8, max_queue=8)
    yield engine, entry
    engine.shutdown()


def test_continuous_batching_matches_hf_generate(engine):
    engine, entry = engine
    greedy = {"max_tokens": 10, "temperature": 0, "ignore_eos": True}

    async def scenario():
        solo = [await generate(engine, entry, p, **greedy) for p in PROMPTS]
        together = await asyncio.gather(*[generate(engine, entry, p, **greedy) for p in PROMPTS])

        async def join_later(prompt, delay, max_tokens):  # join a running batch mid-decode
            await asyncio.sleep(delay)
            return await generate(engine, entry, prompt, **{**greedy, "max_tokens": max_tokens})

        staggered = await asyncio.gather(
            *[join_later(p, 0.01 * i, 4 + 2 * i) for i, p in enumerate(PROMPTS)]
        )
        return solo, together, staggered

    solo, together, staggered = asyncio.run(scenario())
    model = engine._base.model
    for prompt, one, batched, late in zip(PROMPTS, solo, together, staggered, strict=True):
        ids = torch.tensor([engine.encode(entry, prompt)])
        reference = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False
        )[0, ids.shape[1] :].tolist()
        assert one[0][1] == reference
        assert batched[0][1] == reference
        assert late[0][1] == reference[: len(late[0][1])]
        assert one[0][2] == "length"


def test_seed_n_and_nucleus(engine):
    engine, entry = engine

    async def scenario():
        seeded = {"max_tokens": 8, "temperature": 1.0, "seed": 3, "ignore_eos": True}
        a = await generate_n(engine, entry, "Hello", 3, **seeded)
        # The same seed while other requests share the batch.
        b, _, _ = await asyncio.gather(
            generate_n(engine, entry, "Hello", 3, **seeded),
            generate(engine, entry, "The quick", max_tokens=8, temperature=1.0),
            generate(engine, entry, "0 1 2 3", max_tokens=5, temperature=0.5),
        )
        tiny_p = await generate(engine, entry, "Hello", max_tokens=8, top_p=1e-6, seed=1)
        greedy = await generate(engine, entry, "Hello", max_tokens=8, temperature=0)
        return a, b, tiny_p, greedy

    a, b, tiny_p, greedy = asyncio.run(scenario())
    assert [c[1] for c in a] == [c[1] for c in b]
    assert len({tuple(c[1]) for c in a}) > 1  # choices differ from each other
    assert tiny_p[0][1] == greedy[0][1]  # top_p -> 0 keeps only the most likely token


async def generate_n(engine, entry, prompt, n, **params):
    ids = engine.encode(entry, prompt)
    stream = engine.submit(GenerationRequest(entry, ids, SamplingParams(**params), n=n))
    out: dict[int, tuple[str, list[int], str | None]] = {}
    async for deltas in stream:
        for d in deltas:
            text, tokens, finish = out.get(d.index, ("", [], None))
            out[d.index] = (text + d.text, tokens + d.token_ids, d.finish_reason or finish)
    assert stream.completion_tokens == sum(len(v[1]) for v in out.values())
    return [out[i] for i in sorted(out)]


def test_frequency_penalty_discourages_repeats(engine):
    engine, entry = engine
    greedy = {"max_tokens": 40, "temperature": 0, "ignore_eos": True}

    async def scenario():
        return await asyncio.gather(
            generate(engine, entry, "0 1 2", **greedy),
            generate(engine, entry, "0 1 2", frequency_penalty=2.0, presence_penalty=2.0, **greedy),
        )

    plain, penalised = asyncio.run(scenario())
    distinct = lambda tokens: len(set(tokens))  # noqa: E731
    assert distinct(penalised[0][1]) > distinct(plain[0][1])


def test_cancel_frees_rows_and_queue_bound(tiny_model_dir):
    engine, entry = make_engine(tiny_model_dir, max_batch_size=1, max_queue=1)

    async def scenario():
        ids = engine.encode(entry, "Hello")
        long = SamplingParams(max_tokens=400, ignore_eos=True)
        first = engine.submit(GenerationRequest(entry, ids, long))
        await first.__aiter__().__anext__()  # decoding
        second = engine.submit(GenerationRequest(entry, ids, long))  # waits
        with pytest.raises(QueueFull):
            engine.submit(GenerationRequest(entry, ids, long))
        first.cancel()
        second.cancel()
        deadline = time.monotonic() + 5
        while (engine._running_rows() or engine.queue_depth()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return first.completion_tokens

    try:
        produced = asyncio.run(scenario())
        assert engine._running_rows() == 0 and engine.queue_depth() == 0
        assert produced < 400
    finally:
        engine.shutdown()


def test_adapters_mixed_batch_and_lru(tmp_path, tiny_tokenizer, tiny_model_dir):
    adapters = [
        ModelEntry(
            id=f"ad{i}",
            path=build_adapter(tiny_tokenizer, tiny_model_dir, tmp_path / f"ad{i}", seed=i),
            kind="adapter",
        )
        for i in range(3)
    ]
    engine, base = make_engine(tiny_model_dir, max_batch_size=8, max_adapters=2)
    greedy = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}
    models = [base, *adapters]

    async def scenario():
        solo = [await generate(engine, m, "Hello! How can", **greedy) for m in models]
        mixed = await asyncio.gather(
            *[generate(engine, m, "Hello! How can", **greedy) for m in models]
        )
        return solo, mixed

    try:
        solo, mixed = asyncio.run(scenario())
        tokens = [s[0][1] for s in solo]
        assert len({tuple(t) for t in tokens}) == 4  # every adapter changes the output
        assert [m[0][1] for m in mixed] == tokens  # one mixed batch, same results
        assert len(engine._base.adapters) <= 3  # over the limit only while all were decoding
        again = asyncio.run(generate(engine, adapters[0], "Hello! How can", **greedy))
        assert again[0][1] == tokens[1]
        assert len(engine._base.adapters) <= 2
    finally:
        engine.shutdown()


def test_merged_fine_tune_gets_its_own_lane(tiny_model_dir, tiny_gpt2_dir):
    """A full model (e.g. a merged fine-tune) is loaded beside the base and decoded in a lane
    of its own, concurrently with the base model's requests."""
    engine, base = make_engine(tiny_model_dir, max_full_models=1)
    merged = ModelEntry(id="merged", path=tiny_gpt2_dir, kind="full")
    greedy = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}

    async def scenario():
        return await asyncio.gather(
            generate(engine, merged, "Hello! How can", **greedy),
            generate(engine, base, "Hello! How can", **greedy),
        )

    try:
        merged_out, base_out = asyncio.run(scenario())
        model = engine._full[str(tiny_gpt2_dir)].model
        ids = torch.tensor([engine.encode(merged, "Hello! How can")])
        reference = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False
        )[0, ids.shape[1] :].tolist()
        assert merged_out[0][1] == reference
        assert merged_out[0][1] != base_out[0][1]
    finally:
        engine.shutdown()
