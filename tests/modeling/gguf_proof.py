"""Helpers of the GGUF export's proof tests: the same greedy chat replies from TuneForge and
from llama.cpp (`llama-cpp-python`), token by token.

llama_cpp is imported at module level on purpose: where `bash scripts/install.sh --dev` has not
installed it, the tests that use these helpers fail (they are never skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import torch

from tuneforge.demo import bank
from tuneforge.evaluation.generate import stop_token_ids
from tuneforge.evaluation.loading import load_for_eval
from tuneforge.tokenize.templates import render_prompt

# A few of the demo's bank questions (the first way a customer asks, per intent).
QUESTIONS = [asks[0] for asks, _ in list(bank.INTENTS.values())[:3]]
# A near-tie: llama.cpp's f32 kernels and PyTorch's sum in different orders (~1e-5 relative),
# which can swap the two best tokens only when their logits are this close.
NEAR_TIE = 1e-3


def chats(system: str | None = bank.SYSTEM) -> list[list[dict[str, str]]]:
    head = [{"role": "system", "content": system}] if system else []
    return [[*head, {"role": "user", "content": q}] for q in QUESTIONS]


@dataclass
class Replies:
    prompts: list[list[int]]  # token ids of each rendered chat prompt
    tokens: list[list[int]]  # each reply's tokens, the stop token included when it stopped
    texts: list[str]


def tuneforge_replies(folder: str | Path, max_new_tokens: int) -> tuple[Replies, object]:
    """TuneForge's greedy replies as its evaluation makes them (`load_for_eval` in fp32,
    `render_prompt`, greedy `generate` stopped at `stop_token_ids`: EOS or end of turn), with
    their token ids."""
    loaded = load_for_eval(folder, dtype="fp32", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    prompts = [render_prompt(c, tok) for c in chats()]
    stops = stop_token_ids(model, tok)
    tokens, texts = [], []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
        ids = out[0, len(prompt) :].tolist()
        tokens.append(ids)
        texts.append(tok.decode([t for t in ids if t not in stops], skip_special_tokens=True))
    return Replies(prompts, tokens, texts), loaded


def open_llama(gguf: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(gguf), n_ctx=1024, n_threads=2, seed=0, verbose=False, n_batch=256
    )


def llama_replies(llm: llama_cpp.Llama, prompts: list[list[int]], max_new_tokens: int) -> Replies:
    """llama.cpp's greedy continuation of each prompt, stopped where llama.cpp's vocabulary
    says a generation ends (its end-of-generation tokens, read from the GGUF)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tokens = []
    for prompt in prompts:
        ids: list[int] = []
        for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True):
            ids.append(int(t))
            if llama_cpp.llama_vocab_is_eog(vocab, t) or len(ids) >= max_new_tokens:
                break
        tokens.append(ids)
    texts = [llm.detokenize([t for t in ids if not _eog(vocab, t)]).decode() for ids in tokens]
    return Replies(prompts, tokens, texts)


def _eog(vocab, token: int) -> bool:
    return bool(llama_cpp.llama_vocab_is_eog(vocab, token))


def explain_divergence(model, prompt: list[int], ours: list[int], theirs: list[int]) -> float:
    """The gap between TuneForge's two best logits where the replies first differ, relative
    to the largest logit (a small gap is a near-tie that rounding can flip)."""
    k = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ours[:k]])).logits[0, -1]
    top = torch.topk(logits, 2).values
    return float((top[0] - top[1]) / logits.abs().max())
