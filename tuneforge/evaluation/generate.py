"""Batched generation of replies for evaluation: left padding, KV cache, stop at end-of-turn.

Prompts are sorted by length and generated in batches with Hugging Face `generate` (which keeps
a KV cache and computes position ids from the attention mask, so left padding changes nothing).
A reply ends at the first stop token: EOS or the chat template's end-of-turn token. A reply
that reaches `max_new_tokens` without one is "never-ending", a behaviour metric of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from tuneforge.tokenize.tokenizer import stop_ids


@dataclass(frozen=True)
class GenerationSettings:
    """How replies are generated; recorded in the report."""

    max_new_tokens: int = 128
    """Longest reply, in tokens; a reply that reaches it unfinished counts as never-ending."""
    do_sample: bool = False
    """Greedy decoding by default: the evaluation is deterministic."""
    temperature: float = 1.0
    """Sampling temperature (only with do_sample)."""
    top_p: float = 1.0
    """Nucleus sampling mass (only with do_sample)."""
    batch_size: int = 32
    """Prompts generated together."""
    seed: int = 0
    """Seed for sampling."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reply:
    """One generated reply."""

    text: str
    n_tokens: int  # reply tokens, the stop token excluded
    finished: bool  # ended with a stop token before max_new_tokens


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a reply: EOS (tokenizer and generation config) and end-of-turn.

    The end-of-turn token is the one the chat template closes an assistant turn with, found
    the way training finds it (`tuneforge.tokenize.tokenizer.end_of_turn_ids`).
    """
    return stop_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))


@torch.no_grad()
def generate_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    settings: GenerationSettings,
    stop_ids: list[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Reply]:
    """Generate one reply per prompt (token ids), in batches; results in prompt order.

    Example:
        >>> ids = render_prompt([{"role": "user", "content": "Hi"}], tokenizer)
        >>> (reply,) = generate_replies(model, tokenizer, [ids], GenerationSettings())
    """
    if stop_ids is None:
        stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = stop_ids[0]
    device = next(model.parameters()).device
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p}
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
        **(sampling if settings.do_sample else {}),
    )
    if settings.do_sample:
        torch.manual_seed(settings.seed)
    # Longest first: similar lengths share a batch (little padding), and a memory problem shows
    # up on the first batch rather than the last.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    replies: list[Reply | None] = [None] * len(prompts)
    stop = set(stop_ids)
    for start in range(0, len(order), settings.batch_size):
        items = order[start : start + settings.batch_size]
        T = max(len(prompts[i]) for i in items)
        input_ids = torch.full((len(items), T), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), T), dtype=torch.long)
        for row, i in enumerate(items):  # left padding: every prompt ends at column T
            n = len(prompts[i])
            input_ids[row, T - n :] = torch.tensor(prompts[i], dtype=torch.long)
            attention_mask[row, T - n :] = 1
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
        )
        for row, i in enumerate(items):
            new = out[row, T:].tolist()
            cut = next((k for k, t in enumerate(new) if t in stop), None)
            tokens = new if cut is None else new[:cut]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            replies[i] = Reply(text, len(tokens), cut is not None)
        if progress is not None:
            progress(len(items))
    return [r for r in replies if r is not None]
