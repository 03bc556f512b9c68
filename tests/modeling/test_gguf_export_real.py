"""The GGUF export of a real model: a short LoRA fine-tune of SmolLM2-135M-Instruct on the
demo's bank conversations, exported and run by independent readers: llama.cpp gives
TuneForge's greedy replies and stops at end of turn (f32); transformers reads the f16 and
q8_0 exports back with logits close to TuneForge's."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.modeling.gguf_proof import (
    NEAR_TIE,
    explain_divergence,
    llama_replies,
    open_llama,
    tuneforge_replies,
)
from tests.training.train_data import make_config, run_recipe
from tuneforge.demo import bank
from tuneforge.modeling.gguf import read_gguf_info
from tuneforge.modeling.gguf_export import export_gguf
from tuneforge.modeling.ollama import CHATML
from tuneforge.tokenize.tokenizer import load_tokenizer

MAX_NEW = 48
# As in test_gguf_export.py, relative to the largest logit.
TOLERANCE = {"f16": 2e-3, "q8_0": 4e-2}


@pytest.fixture(scope="module")
def bank_run(tmp_path_factory, smollm2):
    """A LoRA fine-tune of SmolLM2 on the demo's bank chats: two steps (what is proved is
    the export of a merged LoRA run, not what the run learned)."""
    root = tmp_path_factory.mktemp("smollm2-bank")
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(ex) + "\n" for ex in bank.clean_examples(16)))
    overrides = {"method": "lora", "optim.max_steps": 2, "optim.lr": 2e-3, "optim.batch_size": 8}
    assert run_recipe(make_config(smollm2, train, root / "run", **overrides)).result.step == 2
    return root / "run"


@pytest.mark.real_model
def test_llama_cpp_runs_the_fine_tune_as_tuneforge_does(bank_run, tmp_path):
    exported = export_gguf(bank_run, tmp_path / "bank.gguf", type="f32", ollama=True)
    ours, loaded = tuneforge_replies(bank_run, MAX_NEW)
    theirs = llama_replies(open_llama(exported.path), ours.prompts, MAX_NEW)
    eot = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for prompt, a, b in zip(ours.prompts, ours.tokens, theirs.tokens, strict=True):
        if a != b:  # only a near-tie of the two best logits may flip a token
            assert explain_divergence(loaded.model, prompt, a, b) < NEAR_TIE, (a, b)
        assert b[-1] == eot and len(b) < MAX_NEW, b  # stopped by itself, at <|im_end|>
    assert sum(a == b for a, b in zip(ours.tokens, theirs.tokens, strict=True)) >= 2
    # SmolLM2's <|im_end|> is its EOS: the end of turn and the stop are the same token.
    assert exported.stop_tokens == ["<|im_end|>"]
    modelfile = exported.modelfile.read_text()
    assert f'TEMPLATE """{CHATML.go_template()}"""' in modelfile
    assert f'SYSTEM """{bank.SYSTEM}"""' in modelfile  # every training example had it


@pytest.mark.real_model
@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_transformers_reads_the_export_back_close_to_tuneforges_logits(type, smollm2, tmp_path):
    out = export_gguf(smollm2, tmp_path / "m.gguf", type=type).path
    assert read_gguf_info(out).quantization == type.upper()
    tok = load_tokenizer(str(smollm2))
    ids = tok(["The capital of France is Paris, and the capital of Italy is"], return_tensors="pt")
    ref_model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    read = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    with torch.no_grad():
        ref, got = ref_model(**ids).logits, read(**ids).logits
    worst = (got - ref).abs().max() / ref.abs().max()
    assert 0 < worst <= TOLERANCE[type], f"{type}: {worst:.2e}"
    # The next token agrees wherever the reference's best token is clear of the second.
    top2 = torch.topk(ref[0], 2).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * worst * ref.abs().max()
    assert torch.equal(got[0].argmax(-1)[clear], ref[0].argmax(-1)[clear])
