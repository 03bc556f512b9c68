"""`POST /v1/completions`: OpenAI's legacy prompt-in, text-out API (one prompt per request)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.inference.params import SamplingParams, TokenLogprob
from tuneforge.server.errors import ERROR_RESPONSES, APIError, bad_request
from tuneforge.server.generation import fingerprint, new_id, sse, usage
from tuneforge.server.routes.chat import Handler
from tuneforge.server.schemas import Completion, CompletionCreate

router = APIRouter(prefix="/v1", tags=["completions"], responses=ERROR_RESPONSES)


def _single_prompt(prompt: Any) -> str | list[int]:
    """The one prompt in `prompt` (text, token ids, or a list holding one of those)."""
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(p, int) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        return _single_prompt(prompt[0])
    raise bad_request("exactly one prompt per request is supported", param="prompt")


def _completion_logprobs(engine, entry, items: list[TokenLogprob], start: int) -> dict[str, Any]:
    tokens, token_logprobs, top, offsets = [], [], [], []
    offset = start
    for lp in items:
        text, _ = engine.token_text(entry, lp.token_id)
        tokens.append(text)
        token_logprobs.append(lp.logprob)
        top.append({engine.token_text(entry, tid)[0]: value for tid, value in lp.top})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


@router.post("/completions", response_model=Completion)
async def create_completion(body: CompletionCreate, request: Request, handler: Handler):
    """Continue a prompt; `echo` prepends the prompt text, `stream` sends SSE chunks."""
    engine = handler.engine
    entry = handler.resolve(body.model)
    n = handler.check_n(body.n)
    stop = handler.stops(body.stop)
    if body.best_of not in (None, 1, n):
        raise bad_request("best_of is not supported", param="best_of")
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if body.echo and body.logprobs is not None:
        raise bad_request("echo with logprobs is not supported", param="echo")
    handler.logprobs(body.logprobs)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
    prompt = _single_prompt(body.prompt)
    if isinstance(prompt, str):
        prompt_ids = await run_in_threadpool(engine.encode, entry, prompt)
        prompt_text = prompt
    else:
        prompt_ids = prompt
        if any(t < 0 or t >= engine.vocab_size(entry) for t in prompt_ids):
            raise bad_request("prompt contains token ids outside the vocabulary", param="prompt")
        prompt_text = engine.decode(entry, prompt_ids) if body.echo else ""
    params = SamplingParams(
        max_tokens=handler.max_tokens(entry, body.max_tokens, len(prompt_ids)),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=stop,
        ignore_eos=bool(body.ignore_eos),
        logprobs=body.logprobs,
    )
    stream = handler.submit(entry, prompt_ids, params, n)
    completion_id, created = new_id("cmpl"), int(time.time())
    echo = prompt_text if body.echo else ""

    if not body.stream:
        results = await handler.collect(request, stream, n)
        choices = [
            {
                "index": r.index,
                "text": echo + r.text,
                "logprobs": _completion_logprobs(engine, entry, r.logprobs, 0)
                if params.logprobs is not None
                else None,
                "finish_reason": r.finish_reason,
            }
            for r in results
        ]
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": entry.id,
            "choices": choices,
            "usage": usage(stream.prompt_tokens, stream.completion_tokens),
            "system_fingerprint": fingerprint(),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    offsets = [0] * n

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": entry.id,
            "system_fingerprint": fingerprint(),
            "choices": choices,
        }
        if include_usage:
            out["usage"] = None
        return out

    async def events() -> AsyncIterator[bytes]:
        try:
            if echo:
                yield sse(
                    chunk(
                        [
                            {"index": i, "text": echo, "logprobs": None, "finish_reason": None}
                            for i in range(n)
                        ]
                    )
                )
            async for deltas in handler.follow(stream):
                choices = []
                for d in deltas:
                    if not (d.text or d.finish_reason or d.logprobs):
                        continue
                    logprobs = None
                    if params.logprobs is not None:
                        logprobs = _completion_logprobs(engine, entry, d.logprobs, offsets[d.index])
                        offsets[d.index] += sum(len(t) for t in logprobs["tokens"])
                    choices.append(
                        {
                            "index": d.index,
                            "text": d.text,
                            "logprobs": logprobs,
                            "finish_reason": d.finish_reason,
                        }
                    )
                if choices:
                    yield sse(chunk(choices))
            if include_usage:
                final = chunk([])
                final["usage"] = usage(stream.prompt_tokens, stream.completion_tokens)
                yield sse(final)
        except APIError as err:
            yield sse(err.body())
        finally:
            stream.cancel()
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")
