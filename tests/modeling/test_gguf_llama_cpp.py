"""llama.cpp itself (`llama-cpp-python`) runs TuneForge's GGUF export of the demo's toy Llama:
it tokenizes the chat prompt as TuneForge does, gives the same greedy replies token for
token (f32), and ends each reply at the end-of-turn token, through its low-level API and
through its chat API (which renders the GGUF's own chat template).

Never skipped: without llama_cpp (installed by `bash scripts/install.sh --dev`) the import
of gguf_proof fails these tests.
"""

from __future__ import annotations

import pytest

from tests.modeling.gguf_proof import (
    NEAR_TIE,
    chats,
    explain_divergence,
    llama_replies,
    open_llama,
    tuneforge_replies,
)
from tuneforge.demo.base import BUNDLED
from tuneforge.modeling.gguf_export import export_gguf

MAX_NEW = 48


@pytest.fixture(scope="module")
def toy_gguf(tmp_path_factory):
    return export_gguf(BUNDLED, tmp_path_factory.mktemp("gguf") / "toy.gguf", type="f32")


def test_llama_cpp_gives_tuneforges_greedy_replies_and_stops_at_end_of_turn(toy_gguf):
    ours, loaded = tuneforge_replies(BUNDLED, MAX_NEW)
    llm = open_llama(toy_gguf.path)
    # The same prompt tokens: llama.cpp's tokenizer splits the rendered chat as TuneForge's.
    tok = loaded.tokenizer
    for chat, prompt in zip(chats(), ours.prompts, strict=True):
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt

    theirs = llama_replies(llm, ours.prompts, MAX_NEW)
    (eot,) = toy_gguf.end_of_turn_ids
    for prompt, a, b in zip(ours.prompts, ours.tokens, theirs.tokens, strict=True):
        if a != b:  # only a near-tie of the two best logits may flip a token
            assert explain_divergence(loaded.model, prompt, a, b) < NEAR_TIE, (a, b)
        assert b[-1] == eot and len(b) < MAX_NEW  # stopped by itself, at <|im_end|>
    assert sum(a == b for a, b in zip(ours.tokens, theirs.tokens, strict=True)) >= 2

    # The chat API renders the GGUF's chat template and stops at end of turn by itself.
    for chat, text in zip(chats(), theirs.texts, strict=True):
        reply = llm.create_chat_completion(
            chat, temperature=0.0, top_k=1, max_tokens=MAX_NEW, seed=0
        )["choices"][0]
        assert reply["finish_reason"] == "stop"
        assert reply["message"]["content"] == text
