"""Request handling shared by `/v1/chat/completions` and `/v1/completions`.

`GenerationHandler` turns a validated request body into a `GenerationRequest` (checking every
limit before anything is queued), submits it, and either collects the choices or yields them
step by step for streaming. Routes stay thin: they build the prompt ids and shape responses.

Limits enforced here (all 400 unless said otherwise): `max_tokens` <= `max_tokens_cap`;
`n` <= `max_n`; at most `max_stop` stop sequences of at most `max_stop_chars` characters;
prompt within `max_prompt_tokens` and, with `max_tokens`, within the model's context
(`context_length_exceeded`); `top_logprobs` <= `max_logprobs`; `logit_bias` of at most
300 token ids of the vocabulary, biases in [-100, 100]; a full queue is 429 with
`Retry-After`; an unknown model is 404; a model still loading is 503. Fields TuneForge does
not implement are refused (400, the field as `param`), never silently ignored.

A prompt is measured in characters before it is tokenized: text longer than the token limit
times the longest token of the vocabulary (or `max_prompt_chars`) cannot fit and is refused
without touching the tokenizer, so a few huge prompts cannot hold up everyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.inference.engine import Engine, EngineError, PromptTooLong, QueueFull, RequestStream
from tuneforge.inference.params import Delta, GenerationRequest, SamplingParams, TokenLogprob
from tuneforge.inference.registry import ModelEntry, ModelRegistry
from tuneforge.server.auth import Principal
from tuneforge.server.errors import APIError, bad_request, model_not_found
from tuneforge.server.metrics import Metrics
from tuneforge.server.settings import ServerSettings

MAX_LOGIT_BIAS = 300  # entries, as OpenAI


@dataclass
class ChoiceResult:
    """One finished choice of a non-streaming request."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "length"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def fingerprint() -> str:
    from tuneforge import __version__

    return f"tuneforge-{__version__}"


class GenerationHandler:
    """Validates, submits and follows one generation request."""

    def __init__(
        self,
        engine: Engine,
        registry: ModelRegistry,
        settings: ServerSettings,
        metrics: Metrics,
        principal: Principal,
    ) -> None:
        self.engine, self.registry, self.settings = engine, registry, settings
        self.metrics, self.principal = metrics, principal
        self.started = time.perf_counter()

    # -- validation --------------------------------------------------------------------------

    def resolve(self, model_id: str) -> ModelEntry:
        entry = self.registry.resolve(model_id, self.principal.org_id)
        if entry is None:
            raise model_not_found(model_id)
        return entry

    def check_n(self, n: int | None) -> int:
        n = 1 if n is None else n
        if n > self.settings.max_n:
            raise bad_request(f"n must be at most {self.settings.max_n}", param="n")
        return n

    def stops(self, stop: str | list[str] | None) -> tuple[str, ...]:
        if stop is None:
            return ()
        stops = [stop] if isinstance(stop, str) else list(stop)
        if len(stops) > self.settings.max_stop:
            raise bad_request(
                f"at most {self.settings.max_stop} stop sequences are allowed", param="stop"
            )
        for s in stops:
            if len(s) > self.settings.max_stop_chars:
                raise bad_request(
                    f"stop sequences may be at most {self.settings.max_stop_chars} characters",
                    param="stop",
                )
        return tuple(s for s in stops if s)

    def prompt_cap(self, entry: ModelEntry) -> int:
        """The most prompt tokens `entry` accepts."""
        context = self.engine.context_length(entry)
        return min(self.settings.max_prompt_tokens or context, context - 1)

    def prompt_chars(self, entry: ModelEntry) -> int:
        """The most prompt characters worth tokenizing: no longer text can fit the token cap."""
        bound = self.prompt_cap(entry) * self.engine.max_token_chars(entry)
        if self.settings.max_prompt_chars is not None:
            bound = min(bound, self.settings.max_prompt_chars)
        return bound

    async def encode(self, entry: ModelEntry, text: str) -> list[int]:
        """Token ids of a completion prompt, refused by its length before tokenizing."""

        def run() -> list[int]:
            return self.engine.encode(entry, text, max_chars=self.prompt_chars(entry))

        try:
            return await run_in_threadpool(run)
        except PromptTooLong as err:
            raise self._too_long(err, "prompt") from None

    async def prepare_chat(
        self, entry: ModelEntry, messages: list[dict[str, Any]], tools: list | None
    ) -> list[int]:
        """Prompt ids of a chat, refused by its rendered length before tokenizing."""

        def run() -> list[int]:
            return self.engine.prepare_chat(
                entry, messages, tools, max_chars=self.prompt_chars(entry)
            )

        try:
            return await run_in_threadpool(run)
        except PromptTooLong as err:
            raise self._too_long(err, "messages") from None
        except ValueError as err:
            raise bad_request(str(err), param="messages") from None

    def _too_long(self, err: PromptTooLong, param: str) -> APIError:
        return bad_request(
            f"The prompt has {err.chars} characters, more than the {err.limit} that can fit "
            "in this model's prompt token limit.",
            param=param,
            code="context_length_exceeded",
        )

    def max_tokens(self, entry: ModelEntry, requested: int | None, prompt_len: int) -> int:
        """The completion budget, after checking the prompt against the context."""
        context = self.engine.context_length(entry)
        prompt_cap = self.prompt_cap(entry)
        if prompt_len > prompt_cap:
            raise bad_request(
                f"The prompt has {prompt_len} tokens; this model accepts at most {prompt_cap}.",
                param="messages",
                code="context_length_exceeded",
            )
        if prompt_len == 0:
            raise bad_request("The prompt is empty.", param="prompt")
        if requested is None:
            return max(1, min(self.settings.default_max_tokens, context - prompt_len))
        if requested > self.settings.max_tokens_cap:
            raise bad_request(
                f"max_tokens must be at most {self.settings.max_tokens_cap}", param="max_tokens"
            )
        if prompt_len + requested > context:
            raise bad_request(
                f"This model's maximum context length is {context} tokens; the prompt has "
                f"{prompt_len} and max_tokens is {requested}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested

    def logit_bias(
        self, entry: ModelEntry, bias: dict[str, float] | None
    ) -> tuple[tuple[int, float], ...]:
        """OpenAI's `logit_bias` as (token id, bias) pairs, each checked."""
        if not bias:
            return ()
        if len(bias) > MAX_LOGIT_BIAS:
            raise bad_request(
                f"logit_bias may hold at most {MAX_LOGIT_BIAS} tokens", param="logit_bias"
            )
        vocab = self.engine.vocab_size(entry)
        pairs = []
        for key, value in bias.items():
            # Canonical decimal only, so "7" and "07" cannot name one token twice (and a
            # 5,000-digit key never reaches int()).
            if not (key.isascii() and key.isdigit() and len(key) <= 12) or str(int(key)) != key:
                raise bad_request(
                    f"logit_bias keys must be token ids, got {key[:32]!r}", param="logit_bias"
                )
            if int(key) >= vocab:
                raise bad_request(
                    f"logit_bias: token id {key} is outside the vocabulary (size {vocab})",
                    param="logit_bias",
                )
            if not -100 <= value <= 100:
                raise bad_request(
                    f"logit_bias values must be between -100 and 100, got {value}",
                    param="logit_bias",
                )
            pairs.append((int(key), float(value)))
        return tuple(pairs)

    @staticmethod
    def refuse_unsupported(body: Any) -> None:
        """400 for any field the request carries that TuneForge does not implement.

        Declared fields are either implemented or harmless metadata; anything else (OpenAI's
        `functions`, `audio`, `reasoning_effort`, a vLLM `top_k`, a typo) would otherwise be
        dropped without a word, and the caller would believe it took effect.
        """
        unknown = next(iter(body.model_extra or {}), None)
        if unknown is not None:  # OpenAI's own wording for this error
            raise bad_request(f"Unrecognized request argument supplied: {unknown}", param=unknown)

    def logprobs(self, k: int | None) -> None:
        if k is not None and k > self.settings.max_logprobs:
            raise bad_request(
                f"top_logprobs must be at most {self.settings.max_logprobs}", param="top_logprobs"
            )

    # -- running ---------------------------------------------------------------------------------

    def submit(
        self, entry: ModelEntry, prompt_ids: list[int], params: SamplingParams, n: int, **kw
    ) -> RequestStream:
        request = GenerationRequest(entry, prompt_ids, params, n=n, **kw)
        try:
            return self.engine.submit(request)
        except QueueFull:
            retry = str(self.settings.retry_after_s)
            raise APIError(
                429,
                "The server is busy: too many requests are waiting. Retry shortly.",
                code="queue_full",
                headers={"Retry-After": retry},
            ) from None

    async def collect(self, request: Request, stream: RequestStream, n: int) -> list[ChoiceResult]:
        """Run a request to the end; a client that disconnects cancels it (frees the slot)."""
        results = [ChoiceResult(index=i) for i in range(n)]
        watcher = asyncio.create_task(_cancel_on_disconnect(request, stream))
        try:
            async for deltas in self.follow(stream):
                for d in deltas:
                    r = results[d.index]
                    r.text += d.text
                    r.token_ids += d.token_ids
                    r.logprobs += d.logprobs
                    if d.finish_reason:
                        r.finish_reason = d.finish_reason
        finally:
            watcher.cancel()
            stream.cancel()
        return results

    async def follow(self, stream: RequestStream) -> AsyncIterator[list[Delta]]:
        """The engine's deltas, with metrics recorded and engine errors as APIError."""
        first = True
        try:
            async for deltas in stream:
                if first and any(d.token_ids for d in deltas):
                    self.metrics.ttft.observe(time.perf_counter() - self.started)
                    first = False
                yield deltas
        except EngineError as err:
            raise APIError(err.status, str(err), code=err.code) from None
        finally:
            self.metrics.prompt_tokens.inc(stream.prompt_tokens)
            self.metrics.generated_tokens.inc(stream.completion_tokens)
            self.metrics.latency.observe(time.perf_counter() - self.started)


async def _cancel_on_disconnect(request: Request, stream: RequestStream) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while not stream.done:
            if await request.is_disconnected():
                stream.cancel()
                return
            await asyncio.sleep(0.1)


def sse(data: object) -> bytes:
    """One server-sent event carrying `data` as JSON (or a raw string such as [DONE])."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sampling_params(
    body: Any, *, max_tokens: int, stop: tuple[str, ...], **extra: Any
) -> SamplingParams:
    """`SamplingParams` from the sampling fields chat and legacy completions share."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=stop,
        ignore_eos=bool(body.ignore_eos),
        **extra,
    )


@dataclass(frozen=True)
class Envelope:
    """What every response object and stream chunk of one request carries."""

    object: str  # "chat.completion", "text_completion", ...
    id: str
    created: int
    model: str

    def body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
            **extra,
        }


def event_stream(
    handler: GenerationHandler,
    stream: RequestStream,
    envelope: Envelope,
    *,
    include_usage: bool,
    choice_of: Callable[[Delta], dict[str, Any] | None],
    opening: list[dict[str, Any]] | None = None,
) -> StreamingResponse:
    """Server-sent chunks for `stream`: `opening` first, then `choice_of(delta)` for each
    non-empty delta (None: nothing to send for it yet), a usage chunk when asked, and `data: [DONE]`. An error mid-stream is sent
    as an error event; a client that disconnects frees its batch slot."""
    extra = {"usage": None} if include_usage else {}

    async def events() -> AsyncIterator[bytes]:
        try:
            if opening:
                yield sse(envelope.body(opening, **extra))
            async for deltas in handler.follow(stream):
                choices = [
                    c
                    for d in deltas
                    if d.text or d.finish_reason or d.logprobs
                    if (c := choice_of(d)) is not None
                ]
                if choices:
                    yield sse(envelope.body(choices, **extra))
            if include_usage:
                totals = usage(stream.prompt_tokens, stream.completion_tokens)
                yield sse(envelope.body([], usage=totals))
        except APIError as err:
            yield sse(err.body())
        finally:
            stream.cancel()
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")
