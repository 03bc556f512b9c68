"""`POST /v1/chat/completions`: chat with the base model, an adapter or a fine-tune.

Messages are rendered with the model folder's own chat template, through the same
`tuneforge.tokenize.templates` module training uses.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.inference.params import SamplingParams, TokenLogprob
from tuneforge.server.auth import CurrentPrincipal
from tuneforge.server.deps import MetricsDep, ReadyEngine, Registry, Settings
from tuneforge.server.errors import ERROR_RESPONSES, APIError, bad_request
from tuneforge.server.generation import GenerationHandler, fingerprint, new_id, sse, usage
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
    entry = handler.resolve(body.model)
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
    try:
        prompt_ids = await run_in_threadpool(
            engine.prepare_chat, entry, _messages(body), body.tools
        )
    except ValueError as err:
        raise bad_request(str(err), param="messages") from None
    requested = body.max_completion_tokens or body.max_tokens
    params = SamplingParams(
        max_tokens=handler.max_tokens(entry, requested, len(prompt_ids)),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=stop,
        ignore_eos=bool(body.ignore_eos),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        json_object=fmt == "json_object",
    )
    stream = handler.submit(entry, prompt_ids, params, n, extra_eos=engine.chat_stop_ids(entry))
    completion_id, created = new_id("chatcmpl"), int(time.time())

    if not body.stream:
        results = await handler.collect(request, stream, n)
        choices = []
        for r in results:
            logprobs = None
            if params.logprobs is not None:
                logprobs = {"content": _chat_logprobs(engine, entry, r.logprobs)}
            choices.append(
                {
                    "index": r.index,
                    "message": {"role": "assistant", "content": r.text, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": r.finish_reason,
                }
            )
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": entry.id,
            "choices": choices,
            "usage": usage(stream.prompt_tokens, stream.completion_tokens),
            "system_fingerprint": fingerprint(),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            "id": completion_id,
            "object": "chat.completion.chunk",
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
            yield sse(
                chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
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
                    if params.logprobs is not None and d.logprobs:
                        logprobs = {"content": _chat_logprobs(engine, entry, d.logprobs)}
                    choices.append(
                        {
                            "index": d.index,
                            "delta": {"content": d.text} if d.text else {},
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
            stream.cancel()  # a disconnected client frees its batch slot
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")
