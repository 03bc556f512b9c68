"""`POST /v1/completions`: OpenAI's legacy prompt-in, text-out API (one prompt per request)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.inference.params import Delta, TokenLogprob
from tuneforge.server.errors import ERROR_RESPONSES, bad_request
from tuneforge.server.generation import Envelope, event_stream, new_id, sampling_params, usage
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
    entry = await run_in_threadpool(handler.resolve, body.model)  # a DB / disk lookup
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
    handler.refuse_unsupported(body)
    prompt = _single_prompt(body.prompt)
    if isinstance(prompt, str):
        prompt_ids = await handler.encode(entry, prompt)
        prompt_text = prompt
    else:
        prompt_ids = prompt
        vocab = await run_in_threadpool(engine.vocab_size, entry)  # may read the tokenizer
        if any(t < 0 or t >= vocab for t in prompt_ids):
            raise bad_request("prompt contains token ids outside the vocabulary", param="prompt")
        prompt_text = engine.decode(entry, prompt_ids) if body.echo else ""
    logit_bias = handler.logit_bias(entry, body.logit_bias)
    params = sampling_params(
        body,
        max_tokens=handler.max_tokens(entry, body.max_tokens, len(prompt_ids)),
        stop=stop,
        logprobs=body.logprobs,
        logit_bias=logit_bias,
    )
    stream = handler.submit(entry, prompt_ids, params, n)
    envelope = Envelope("text_completion", new_id("cmpl"), int(time.time()), entry.id)
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
        return envelope.body(choices, usage=usage(stream.prompt_tokens, stream.completion_tokens))

    offsets = [0] * n  # characters streamed so far per choice (text_offset of the next token)

    def choice_of(d: Delta) -> dict[str, Any]:
        logprobs = None
        if params.logprobs is not None:
            logprobs = _completion_logprobs(engine, entry, d.logprobs, offsets[d.index])
            offsets[d.index] += sum(len(t) for t in logprobs["tokens"])
        return {
            "index": d.index,
            "text": d.text,
            "logprobs": logprobs,
            "finish_reason": d.finish_reason,
        }

    opening = [
        {"index": i, "text": echo, "logprobs": None, "finish_reason": None} for i in range(n)
    ]
    return event_stream(
        handler,
        stream,
        envelope,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        opening=opening if echo else None,
        choice_of=choice_of,
    )
