"""`POST /v1/chat/completions`: chat with the base model, an adapter or a fine-tune.

Messages are rendered with the model folder's own chat template, through the same
`tuneforge.tokenize.templates` module training uses.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.inference.params import TokenLogprob
from tuneforge.server.auth import CurrentPrincipal
from tuneforge.server.deps import MetricsDep, ReadyEngine, Registry, Settings
from tuneforge.server.errors import ERROR_RESPONSES, bad_request
from tuneforge.server.generation import (
    Envelope,
    GenerationHandler,
    event_stream,
    new_id,
    sampling_params,
    usage,
)
from tuneforge.server.schemas import ChatCompletion, ChatCompletionCreate

router = APIRouter(prefix="/v1", tags=["chat"], responses=ERROR_RESPONSES)


def get_handler(
    engine: ReadyEngine,
    registry: Registry,
    settings: Settings,
    metrics: MetricsDep,
    principal: CurrentPrincipal,
) -> GenerationHandler:
    return GenerationHandler(engine, registry, settings, metrics, principal)


Handler = Annotated[GenerationHandler, Depends(get_handler)]


def _messages(body: ChatCompletionCreate) -> list[dict[str, Any]]:
    out = []
    for m in body.messages:
        message = m.model_dump(exclude_none=True)
        if message["role"] == "developer":  # OpenAI's newer name for the system turn
            message["role"] = "system"
        out.append(message)
    return out


def _chat_logprobs(engine, entry, items: list[TokenLogprob]) -> list[dict[str, Any]]:
    out = []
    for lp in items:
        text, raw = engine.token_text(entry, lp.token_id)
        top = []
        for tid, value in lp.top:
            t_text, t_raw = engine.token_text(entry, tid)
            top.append({"token": t_text, "logprob": value, "bytes": list(t_raw)})
        out.append({"token": text, "logprob": lp.logprob, "bytes": list(raw), "top_logprobs": top})
    return out


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionCreate, request: Request, handler: Handler):
    """OpenAI's chat completions, streaming (SSE ending in `data: [DONE]`) or not."""
    engine = handler.engine
    entry = await run_in_threadpool(handler.resolve, body.model)  # a DB / disk lookup
    n = handler.check_n(body.n)
    stop = handler.stops(body.stop)
    fmt = body.response_format.type if body.response_format else "text"
    if fmt == "json_schema":
        raise bad_request(
            "response_format json_schema is not supported; use json_object",
            param="response_format",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs=true", param="top_logprobs")
    handler.logprobs(body.top_logprobs)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
    handler.refuse_unsupported(body)
    prompt_ids = await handler.prepare_chat(entry, _messages(body), body.tools)
    logit_bias = handler.logit_bias(entry, body.logit_bias)  # the vocabulary is loaded now
    requested = body.max_completion_tokens or body.max_tokens
    params = sampling_params(
        body,
        max_tokens=handler.max_tokens(entry, requested, len(prompt_ids)),
        stop=stop,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        json_object=fmt == "json_object",
        logit_bias=logit_bias,
    )
    stream = handler.submit(entry, prompt_ids, params, n, extra_eos=engine.chat_stop_ids(entry))
    envelope = Envelope("chat.completion", new_id("chatcmpl"), int(time.time()), entry.id)

    def logprobs_of(logprobs: list[TokenLogprob]) -> dict[str, Any] | None:
        if params.logprobs is None or not logprobs:
            return None
        return {"content": _chat_logprobs(engine, entry, logprobs)}

    if not body.stream:
        results = await handler.collect(request, stream, n)
        choices = [
            {
                "index": r.index,
                "message": {"role": "assistant", "content": r.text, "refusal": None},
                "logprobs": {"content": _chat_logprobs(engine, entry, r.logprobs)}
                if params.logprobs is not None
                else None,
                "finish_reason": r.finish_reason,
            }
            for r in results
        ]
        return envelope.body(choices, usage=usage(stream.prompt_tokens, stream.completion_tokens))

    opening = [
        {
            "index": i,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        for i in range(n)
    ]
    return event_stream(
        handler,
        stream,
        replace(envelope, object="chat.completion.chunk"),
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        opening=opening,
        choice_of=lambda d: {
            "index": d.index,
            "delta": {"content": d.text} if d.text else {},
            "logprobs": logprobs_of(d.logprobs),
            "finish_reason": d.finish_reason,
        },
    )
