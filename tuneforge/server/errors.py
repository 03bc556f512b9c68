"""OpenAI's error shape, one exception for every refusal, and the handlers that render them.

Every error the server returns is

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

with the status OpenAI uses: 400 bad request (including a body or parameter that does not
fit the schema: `param` names the first bad field as OpenAI does, `messages[0].content`),
401 bad key, 403 key not allowed, 404 unknown model or object, 413 body too large, 429 queue
full (with Retry-After), 503 not ready. Routes raise `APIError` (or one of the helpers below)
and never build error responses by hand; `install_error_handlers(app)` also turns FastAPI's
validation errors, Starlette's HTTP errors (unknown route: 404, wrong method: 405) and any
unexpected exception (500, a generic message; the traceback goes to the log) into this shape.
No response names a server folder: messages are scrubbed of the server's own paths (the
model store, the data folder, the base model's folder), which stay in the log.

Example:
    >>> raise APIError(404, "The model 'x' does not exist", code="model_not_found", param="model")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.jobs.errors import StoreError

log = logging.getLogger("tuneforge.server")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ErrorBody(BaseModel):
    """The inside of an OpenAI error response."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error response: `{"error": {...}}` (used in the OpenAPI document)."""

    error: ErrorBody


class APIError(Exception):
    """An error answered to the client in OpenAI's shape.

    `type` defaults from the status (invalid_request_error, rate_limit_error, server_error);
    `headers` are sent as-is (e.g. Retry-After).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        message = scrub(self.message, _REDACTED)
        if message != self.message:  # the full text is for the operator only
            log.warning("error message named a server path: %s", self.message)
        return {
            "error": {
                "message": message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, param=param, code=code)


def model_not_found(model_id: str) -> APIError:
    return APIError(
        404,
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# OpenAPI `responses=` for routes: documents the error shape for each status they can return.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": desc}
    for status, desc in (
        (400, "Invalid request"),
        (401, "Missing or invalid API key"),
        (403, "Not allowed for this key"),
        (404, "Not found"),
        (409, "Conflicts with the state of another object"),
        (413, "Request body too large"),
        (429, "Queue full; retry after Retry-After seconds"),
        (503, "Model still loading"),
    )
}


# Pydantic error types -> OpenAI's codes for them.
_VALIDATION_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "json_invalid": "invalid_json",
}
_LOCATIONS = ("body", "query", "path", "header", "cookie")


def validation_error(errors: list[Any]) -> APIError:
    """FastAPI's validation errors as OpenAI answers them: 400 invalid_request_error, `param`
    the location of the first bad field (`messages[0].content`, `limit`), a readable message."""
    if not errors:
        return APIError(400, "Invalid request.", code="invalid_value")
    first = errors[0]
    param = _param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value"))
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        message = f"The request body is not valid JSON: {msg}."
        param = None
    elif kind == "missing":
        message = f"Missing required parameter: '{param}'." if param else "Missing parameter."
    elif kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {msg}."
    else:
        message = f"Invalid request body: {msg}."
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return APIError(400, message, param=param, code=_VALIDATION_CODES.get(kind, "invalid_value"))


def _param(loc: Any) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content"; drops the request part
    and pydantic's union-member tags ("str", "list[str]", "function-after[...]")."""
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _is_union_tag(part):
            out += ("." if out else "") + part
    return out or None


def _is_union_tag(part: str) -> bool:
    return "[" in part or "(" in part or part in ("str", "int", "float", "bool", "list", "dict")


# Server folders no response may name (filled by `install_error_handlers`, longest first).
_REDACTED: list[str] = []


def scrub(message: str, secrets: list[str]) -> str:
    """`message` with every one of `secrets` (server folders) replaced by `<server path>`."""
    for secret in secrets:
        if secret and secret in message:
            message = message.replace(secret, "<server path>")
    return message


def _server_paths(app: FastAPI) -> list[str]:
    """The folders a response must not reveal, longest first (so a parent never leaves a
    child's tail behind)."""
    found: set[str] = set()
    settings = getattr(app.state, "settings", None)
    engine = getattr(app.state, "engine", None)
    base = getattr(getattr(engine, "base", None), "path", None)
    for folder in (
        getattr(settings, "model_dir", None),
        getattr(settings, "data_dir", None),
        base,
    ):
        if folder is None:
            continue
        # Absolute forms only: a relative "models" would scrub the word from every message.
        for variant in (Path(folder).absolute(), Path(os.path.realpath(folder))):
            text = str(variant)
            if text != "/":
                found.add(text)
    return sorted(found, key=len, reverse=True)


def install_error_handlers(app: FastAPI) -> None:
    """Render APIError, the job store's errors (404 for other tenants' objects too), validation
    errors, HTTP errors and crashes in OpenAI's error shape."""

    # Every APIError body (JSON responses and SSE error events alike) is scrubbed of these.
    _REDACTED[:] = sorted({*_REDACTED, *_server_paths(app)}, key=len, reverse=True)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        # A quota refusal carries headers (x-should-retry: false: retrying at once cannot help).
        headers = getattr(exc, "headers", None)
        error = APIError(exc.status, exc.message, param=exc.param, code=exc.code, headers=headers)
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        return APIError(exc.status_code, message, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return APIError(500, "The server had an error while processing your request.").response()
