"""What one generation asks for, and what the engine reports back.

`SamplingParams` carries OpenAI's sampling knobs (validated by the server before it gets
here); `GenerationRequest` is one request (prompt ids, model, params, n choices);
`Delta` is one step of one choice as the engine emits it: new text (UTF-8 complete, stop
strings already cut), the token ids behind it, their logprobs, and a finish reason on the
last delta of the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tuneforge.inference.registry import ModelEntry

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI sampling parameters.

    temperature 0 means greedy. `seed` makes sampling reproducible: each choice `i` of a
    request draws from its own generator seeded with `seed + i`. `logprobs` is the number of
    alternatives to report per token (None: no logprobs; 0: only the chosen token's).
    `json_object` constrains decoding so the text is one JSON object. `logit_bias` holds
    (token id, bias) pairs added to the model's logits before penalties and sampling (OpenAI's
    `logit_bias`; -100 in effect bans a token, +100 forces it).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    json_object: bool = False
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the top alternatives (token id, logprob)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Delta:
    """New output of choice `index`. `finish_reason` is set on the choice's last delta."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None


@dataclass
class GenerationRequest:
    """One request: `n` choices continuing `prompt_ids` on `model`.

    `extra_eos` are token ids that end generation besides the model's EOS (for chat, the
    template's end-of-turn token, e.g. `<|im_end|>`).
    """

    model: ModelEntry
    prompt_ids: list[int]
    params: SamplingParams
    n: int = 1
    extra_eos: tuple[int, ...] = ()
