"""What one generation asks for, and what the engine reports back.

`SamplingParams` carries OpenAI's sampling knobs (validated by the server before it gets
here); `GenerationRequest` is one request (prompt ids, model, params, n choices);
`Delta` is one step of one choice as the engine emits it: new text (UTF-8 complete, stop
strings already cut), the token ids behind it, their logprobs, and a finish reason on the
last delta of the choice. `RequestStream` carries a request's deltas from the engine thread
to the asyncio side; `EngineError` (and `PromptTooLong`, `QueueFull`) is how a request is
refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tuneforge.inference.registry import ModelEntry

if TYPE_CHECKING:
    from tuneforge.inference.constraint import Constraint

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
    template's end-of-turn token, e.g. `<|im_end|>`). `constraint` is a compiled grammar the
    text must follow (`response_format` json_schema, a forced tool call).
    """

    model: ModelEntry
    prompt_ids: list[int]
    params: SamplingParams
    n: int = 1
    extra_eos: tuple[int, ...] = ()
    constraint: Constraint | None = None


class EngineError(Exception):
    """A request the engine cannot serve; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class QueueFull(Exception):
    """The waiting queue is at `max_queue`."""


class PromptTooLong(EngineError):
    """Prompt text longer than `limit` characters: refused before tokenization."""

    def __init__(self, chars: int, limit: int) -> None:
        super().__init__(
            f"the prompt has {chars} characters, more than the {limit} that can fit",
            code="context_length_exceeded",
        )
        self.chars, self.limit = chars, limit


class RequestStream:
    """The asyncio side of one request: `async for deltas in stream` until all choices end.

    Created on the event loop (by `Engine.submit`); the engine thread pushes through
    `call_soon_threadsafe`. `cancel()` is safe from anywhere.
    """

    def __init__(self, n: int, prompt_tokens: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.n = n
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cancelled = False
        self.done = False
        self.remaining = n

    def _put(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def push(self, deltas: list[Delta]) -> None:
        self._put(deltas)

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self._put(None)

    def fail(self, error: Exception) -> None:
        if not self.done:
            self.done = True
            self._put(error)

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
