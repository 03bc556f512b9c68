"""Which models the engine keeps in memory, and what loading or failing to load one costs the
others: a broken adapter leaves the base exactly as it was; a merged model loads while every
other stream keeps decoding; switching merged models keeps no per-model leftovers."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import threading
import time
import types
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.inference.adapters import build_adapter
from tests.inference.test_engine import generate, make_engine
from tuneforge.inference.engine import EngineError
from tuneforge.inference.params import GenerationRequest, SamplingParams
from tuneforge.inference.registry import ModelEntry
from tuneforge.modeling import load as loading
from tuneforge.modeling.tiny import build_model, save_model_folder

GREEDY = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}
PROMPT = "Hello! How can"


def _corrupt_adapters(good, root):
    """Adapter folders that pass the engine's first checks but fail while peft loads them.

    `init_lora_weights: false` makes the LoRA layers peft injects before reading the weights
    random, so a half-loaded adapter left in the base would change its replies.
    """
    config = json.loads((good / "adapter_config.json").read_text())
    truncated = root / "truncated"
    shutil.copytree(good, truncated)
    (truncated / "adapter_config.json").write_text(
        json.dumps({**config, "init_lora_weights": False})
    )
    raw = (good / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(raw[: len(raw) // 2])
    misshapen = root / "misshapen"
    shutil.copytree(good, misshapen)
    (misshapen / "adapter_config.json").write_text(
        json.dumps({**config, "init_lora_weights": False})
    )
    weights = load_file(good / "adapter_model.safetensors")
    save_file(
        {k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in weights.items()},
        misshapen / "adapter_model.safetensors",
    )
    return [
        ModelEntry(id=f"broken/{p.name}", path=p, kind="adapter") for p in (truncated, misshapen)
    ]


def test_failed_adapter_load_leaves_base_and_adapters_untouched(
    tmp_path, tiny_tokenizer, tiny_model_dir
):
    good = ModelEntry(
        id="good",
        path=build_adapter(tiny_tokenizer, tiny_model_dir, tmp_path / "good", seed=5),
        kind="adapter",
    )
    broken = _corrupt_adapters(good.path, tmp_path)
    engine, base = make_engine(tiny_model_dir)

    def reply(entry):
        return asyncio.run(generate(engine, entry, PROMPT, **GREEDY))[0][0]

    def refused(entry) -> str:
        with pytest.raises(EngineError) as err:
            reply(entry)
        return str(err.value)

    try:
        before = reply(base)
        # A broken adapter before any adapter is loaded (the base is a plain model) ...
        for entry in broken:
            message = refused(entry)
            assert f"{entry.id!r} cannot be applied to base model" in message
            assert reply(base) == before
        with_good = reply(good)
        assert with_good != before
        # ... and once the base is a peft model holding another adapter.
        for entry in broken:
            refused(entry)
            assert reply(base) == before
            assert reply(good) == with_good
        assert list(engine._base.model.peft_config) == list(engine._base.adapters)
        # The same broken folder fails the same way every time (nothing half-registered).
        assert "cannot be applied" in refused(broken[0])
    finally:
        engine.shutdown()


@pytest.fixture()
def two_merged(tmp_path, tiny_tokenizer):
    """Two merged models (different weights) besides the base."""
    entries = []
    for i, arch in enumerate(("gpt2", "llama")):
        torch.manual_seed(100 + i)
        model = build_model(tiny_tokenizer, arch=arch)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        path = save_model_folder(model, tiny_tokenizer, tmp_path / f"merged{i}")
        entries.append(ModelEntry(id=f"merged{i}", path=path, kind="full"))
    return entries


def _tables(root, vocab_size: int) -> int:
    """Token-bytes tables reachable from `root` (lists of one bytes-or-None per token)."""
    seen, stack, found = {id(root)}, [root], 0
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.nn.Module | torch.Tensor | threading.Thread | types.ModuleType):
            continue  # weights, and threads whose frames reach everything
        if (
            isinstance(obj, list)
            and len(obj) == vocab_size
            and all(x is None or isinstance(x, bytes) for x in obj)
        ):
            found += 1
            continue
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                stack.append(ref)
    return found


def test_switching_merged_models_keeps_nothing_behind(tiny_model_dir, two_merged):
    """Each switch evicts the other merged model (one slot); JSON mode builds the token-bytes
    tables of each load. What stays reachable must not grow with the number of switches."""
    engine, _ = make_engine(tiny_model_dir, max_full_models=1)
    json_greedy = {"max_tokens": 6, "temperature": 0, "json_object": True}
    vocab_size = len(engine._base.tokenizer)
    evicted: list[weakref.ref] = []

    def switch(entry):
        out = asyncio.run(generate(engine, entry, PROMPT, **json_greedy))
        assert out[0][0].startswith("{")
        resident = [m for m in engine._full.values()]
        assert len(resident) == 1
        evicted.append(weakref.ref(resident[0].model))

    try:
        for entry in two_merged:  # warm up: each model loaded once
            switch(entry)
        gc.collect()
        after_two = _tables(engine, vocab_size)
        assert after_two >= 1  # the resident model's table: the walk does find tables
        for _ in range(3):
            for entry in two_merged:
                switch(entry)
        gc.collect()
        assert _tables(engine, vocab_size) == after_two
        assert all(ref() is None for ref in evicted[:-1])  # evicted weights are freed
    finally:
        engine.shutdown()


def test_streams_keep_decoding_while_a_merged_model_loads(tiny_model_dir, two_merged, monkeypatch):
    """A merged model whose load is held open by the test: the base model's stream goes on
    producing tokens meanwhile, and the merged model's request is answered once it loads."""
    started, release = threading.Event(), threading.Event()
    real_load = loading.load_model_and_tokenizer
    merged = two_merged[0]

    def gated_load(source, *args, **kwargs):
        if str(source) == str(merged.path):
            started.set()
            assert release.wait(30), "the test never released the load"
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(loading, "load_model_and_tokenizer", gated_load)
    engine, base = make_engine(tiny_model_dir, max_full_models=1)

    async def scenario():
        ids = engine.encode(base, PROMPT)
        long = engine.submit(
            GenerationRequest(base, ids, SamplingParams(max_tokens=400, ignore_eos=True))
        )
        tokens = long.__aiter__()
        await tokens.__anext__()  # the base stream is decoding
        loading_reply = asyncio.ensure_future(generate(engine, merged, PROMPT, **GREEDY))
        while not started.is_set():
            await asyncio.sleep(0.01)
        before = long.completion_tokens
        deadline = time.monotonic() + 20
        while long.completion_tokens < before + 5 and time.monotonic() < deadline:
            await asyncio.wait_for(tokens.__anext__(), timeout=10)
        during = long.completion_tokens - before
        assert not loading_reply.done()  # its model is still loading
        release.set()
        reply = await asyncio.wait_for(loading_reply, timeout=60)
        long.cancel()
        return during, reply

    try:
        during, reply = asyncio.run(scenario())
        assert during >= 5  # tokens kept coming while the merged model was loading
        model = engine._full[str(merged.path)].model
        ids = torch.tensor([engine.encode(merged, PROMPT)])
        reference = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
        )[0, ids.shape[1] :].tolist()
        assert reply[0][1] == reference
    finally:
        release.set()
        engine.shutdown()


def test_a_merged_model_that_fails_to_load_fails_only_its_requests(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken-merged"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    engine, base = make_engine(tiny_model_dir, max_full_models=1)
    entry = ModelEntry(id="broken-merged", path=broken, kind="full")

    async def scenario():
        return await asyncio.gather(
            generate(engine, entry, PROMPT, **GREEDY),
            generate(engine, base, PROMPT, **GREEDY),
            return_exceptions=True,
        )

    try:
        failed, served = asyncio.run(scenario())
        assert isinstance(failed, EngineError) and "'broken-merged' failed" in str(failed)
        assert str(broken) not in str(failed)  # server paths stay in the log
        assert served[0][2] == "length"
        assert not engine._full and not engine._loading and engine.queue_depth() == 0
    finally:
        engine.shutdown()
