"""Pydantic schemas of the inference API, named by role (`ChatCompletionCreate` is what a
client sends, `ChatCompletion` what it gets back). Shapes follow OpenAI's API reference.

Request fields fall in three groups: the ones TuneForge implements; metadata that cannot
change a reply (`user`, `metadata`, `store`, `service_tier`, ...: accepted and ignored, as
the official client may send them); and everything else, which the handler refuses with 400
and the field as `param` (`GenerationHandler.refuse_unsupported`) rather than silently
ignoring it. Numbers are strict: `max_tokens: true` is an error, not 1.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

# JSON numbers as they are: strict types refuse `true` (which lax pydantic reads as 1) and
# `2.0` for an integer; a strict float still takes an integer.
Float = Annotated[float, Field(strict=True)]

# -- models -----------------------------------------------------------------------------------


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


# -- shared request parts ------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an option not implemented is refused
    include_usage: StrictBool = False


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema every reply must match (always enforced by
    constrained decoding, `strict` or not)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class _SamplingFields(BaseModel):
    """Sampling parameters shared by chat and completions (ranges as in OpenAI's reference).

    Unknown fields are kept (`model_extra`) so the handler can refuse them by name.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=512)
    temperature: Float | None = Field(None, ge=0.0, le=2.0)
    top_p: Float | None = Field(None, gt=0.0, le=1.0)
    n: StrictInt | None = Field(None, ge=1)
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: Float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Float | None = Field(None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    logit_bias: dict[str, Float] | None = Field(
        None,
        description="Token id (as a string) -> bias in [-100, 100] added to its logit before "
        "sampling; at most 300 entries.",
    )
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = Field(
        False, description="Keep generating past end-of-sequence tokens (vLLM's extension)."
    )
    # Accepted and ignored: they describe the caller or OpenAI's billing, never the reply.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: StrictBool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


# -- chat --------------------------------------------------------------------------------------------


class ChatMessageIn(BaseModel):
    """A message of the conversation (system, developer, user, assistant or tool)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionName


class ChatCompletionCreate(_SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(
        None,
        max_length=128,
        description="Rendered into the prompt by the chat template; the model's calls are "
        "parsed from its reply in the template's own format into `tool_calls`.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description='"auto" (the default with tools), "none" (no call is parsed), "required" or '
        "a named function (enforced by constrained decoding: the reply is a valid call whose "
        "arguments match the tool's JSON schema).",
    )
    parallel_tool_calls: StrictBool | None = Field(
        None, description="false: at most one call per reply (the default allows several)."
    )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobPublic(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobPublic] | None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


# -- legacy completions -----------------------------------------------------------------------------


class CompletionCreate(_SamplingFields):
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]] = Field(
        description="One prompt: text or token ids (a list of one prompt is accepted too)."
    )
    logprobs: StrictInt | None = Field(None, ge=0, le=5)
    echo: StrictBool | None = False
    suffix: str | None = None
    best_of: StrictInt | None = Field(None, ge=1)


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


# -- health ------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "loading", "failed"]
    model: str
    detail: str | None = None
