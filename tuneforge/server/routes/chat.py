"""`POST /v1/chat/completions`: chat with the base model, an adapter or a fine-tune.

Messages are rendered with the model folder's own chat template, through the same
`tuneforge.tokenize.templates` module training uses. With `tools`, the reply is parsed for
tool calls in the template's own format (`tuneforge.inference.tool_calls`); a required or
named `tool_choice` and a `json_schema` response format are enforced by constrained decoding
(`tuneforge.inference.constraint`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.inference.constraint import (
    Constraint,
    check_schema_size,
    json_object_grammar,
    json_schema_grammar,
    lark_grammar,
)
from tuneforge.inference.params import Delta, TokenLogprob
from tuneforge.inference.tool_calls import (
    ToolStreamer,
    forcing_grammar,
    merge_deltas,
    openai_calls,
    parse,
)
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
from tuneforge.server.schemas import ChatCompletion, ChatCompletionCreate, NamedToolChoice

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


def _tool_choice(body: ChatCompletionCreate) -> tuple[list[dict[str, Any]], str | None]:
    """The tools as dicts, and how calls are made: None (not parsed), "auto", or "forced"
    (the reply must be calls of the tools returned: all of them, or the named one)."""
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice or ("auto" if tools else "none")
    if choice != "none" and not tools:
        raise bad_request("tool_choice requires tools", param="tool_choice")
    if isinstance(choice, NamedToolChoice):
        named = [t for t in tools if t["function"]["name"] == choice.function.name]
        if not named:
            raise bad_request(
                f"tool_choice names {choice.function.name[:64]!r}, which is not in tools",
                param="tool_choice",
            )
        return named, "forced"
    if choice == "required":
        return tools, "forced"
    return tools, (None if choice == "none" else "auto")


async def _constraint(
    handler: GenerationHandler, entry: Any, body: ChatCompletionCreate, forced: list | None
) -> Constraint | None:
    """The grammar the reply must follow, compiled off the event loop (400 if refused)."""
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise bad_request(
                "response_format json_schema needs json_schema.schema", param="response_format"
            )
        if forced:
            raise bad_request(
                "a required or named tool_choice cannot be combined with a json_schema "
                "response_format",
                param="response_format",
            )
        schema = fmt.json_schema.schema_
        param = "response_format"
        make = lambda: json_schema_grammar(schema)  # noqa: E731
    elif fmt is not None and fmt.type == "json_object":
        param = "response_format"
        schema = {}
        make = json_object_grammar
    elif forced:
        family = handler.engine.tool_family(entry)
        parallel = body.parallel_tool_calls is not False
        param = "tools"
        make = lambda: lark_grammar(forcing_grammar(family, forced, parallel))  # noqa: E731
    else:
        return None

    def run() -> Constraint:
        check_schema_size(schema if param == "response_format" else forced, param)
        return handler.engine.compile_constraint(entry, make())

    try:
        return await run_in_threadpool(run)
    except ValueError as err:
        raise bad_request(f"{param} cannot be enforced: {err}", param=param) from None


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionCreate, request: Request, handler: Handler):
    """OpenAI's chat completions, streaming (SSE ending in `data: [DONE]`) or not."""
    engine = handler.engine
    entry = await run_in_threadpool(handler.resolve, body.model)  # a DB / disk lookup
    n = handler.check_n(body.n)
    stop = handler.stops(body.stop)
    fmt = body.response_format.type if body.response_format else "text"
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs=true", param="top_logprobs")
    handler.logprobs(body.top_logprobs)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
    handler.refuse_unsupported(body)
    tools, calls = _tool_choice(body)
    if calls == "forced" and fmt == "json_object":
        raise bad_request(
            "a required or named tool_choice cannot be combined with a json_object response_format",
            param="response_format",
        )
    prompt_ids = await handler.prepare_chat(entry, _messages(body), tools or None)
    logit_bias = handler.logit_bias(entry, body.logit_bias)  # the vocabulary is loaded now
    constraint = await _constraint(handler, entry, body, tools if calls == "forced" else None)
    family = engine.tool_family(entry)
    parallel = body.parallel_tool_calls is not False
    requested = body.max_completion_tokens or body.max_tokens
    params = sampling_params(
        body,
        max_tokens=handler.max_tokens(entry, requested, len(prompt_ids)),
        stop=stop,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        json_object=fmt == "json_object",
        logit_bias=logit_bias,
    )
    stream = handler.submit(
        entry,
        prompt_ids,
        params,
        n,
        extra_eos=engine.chat_stop_ids(entry),
        constraint=constraint,
    )
    envelope = Envelope("chat.completion", new_id("chatcmpl"), int(time.time()), entry.id)

    def logprobs_of(logprobs: list[TokenLogprob]) -> dict[str, Any] | None:
        if params.logprobs is None or not logprobs:
            return None
        return {"content": _chat_logprobs(engine, entry, logprobs)}

    if not body.stream:
        results = await handler.collect(request, stream, n)
        choices = []
        for r in results:
            message: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": None}
            finish = r.finish_reason
            parsed = parse(family, r.text, final=True) if calls else None
            if parsed is not None and parsed.calls:
                made = parsed.calls if parallel else parsed.calls[:1]
                message["content"] = parsed.content.strip() or None
                message["tool_calls"] = openai_calls(made)
                finish = "tool_calls"
            choices.append(
                {
                    "index": r.index,
                    "message": message,
                    "logprobs": {"content": _chat_logprobs(engine, entry, r.logprobs)}
                    if params.logprobs is not None
                    else None,
                    "finish_reason": finish,
                }
            )
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
    streamers = [ToolStreamer(family, parallel) if calls else None for _ in range(n)]

    def choice_of(d: Delta) -> dict[str, Any] | None:
        streamer = streamers[d.index]
        finish: str | None = d.finish_reason
        if streamer is None:
            delta: dict[str, Any] = {"content": d.text} if d.text else {}
        else:
            pieces = streamer.feed(d.text)
            if finish is not None:
                last, called = streamer.finish()
                pieces += last
                finish = "tool_calls" if called else finish
            delta = merge_deltas(pieces)
            if not delta and finish is None and not d.logprobs:
                return None
        return {
            "index": d.index,
            "delta": delta,
            "logprobs": logprobs_of(d.logprobs),
            "finish_reason": finish,
        }

    return event_stream(
        handler,
        stream,
        replace(envelope, object="chat.completion.chunk"),
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        opening=opening,
        choice_of=choice_of,
    )
