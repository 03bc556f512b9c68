"""`logit_bias` in the sampling path: per row, before penalties and sampling, also when rows
of one batch carry different biases."""

from __future__ import annotations

import asyncio

import torch

from tests.inference.test_engine import generate, make_engine
from tuneforge.inference.sampling import biased_logits


def test_biased_logits_adds_each_rows_own_bias():
    logits = torch.zeros(3, 5)
    out = biased_logits(logits, [((1, 2.0), (4, -100.0)), (), ((0, 0.5),)])
    expected = torch.zeros(3, 5)
    expected[0, 1], expected[0, 4], expected[2, 0] = 2.0, -100.0, 0.5
    assert torch.equal(out, expected)
    assert biased_logits(logits, [(), (), ()]) is logits  # no bias: no copy


def test_logit_bias_rows_in_one_batch(tiny_model_dir):
    engine, entry = make_engine(tiny_model_dir, max_batch_size=8)
    greedy = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    prompt = "The quick brown fox"

    async def scenario():
        plain = await generate(engine, entry, prompt, **greedy)
        first = plain[0][1][0]
        forced = (first + 7) % engine.vocab_size(entry)
        together = await asyncio.gather(
            generate(engine, entry, prompt, **greedy),
            generate(engine, entry, prompt, logit_bias=((first, -100.0),), **greedy),
            generate(engine, entry, prompt, logit_bias=((forced, 100.0),), **greedy),
            generate(
                engine,
                entry,
                prompt,
                logit_bias=((forced, 100.0),),
                temperature=1.0,
                max_tokens=6,
                ignore_eos=True,
                seed=1,
            ),
        )
        return plain, first, forced, together

    try:
        plain, first, forced, (same, banned, forced_greedy, forced_sampled) = asyncio.run(
            scenario()
        )
        assert same[0][1] == plain[0][1]
        assert banned[0][1][0] != first and first not in banned[0][1]
        assert forced_greedy[0][1] == [forced] * 6
        assert forced_sampled[0][1] == [forced] * 6
    finally:
        engine.shutdown()
