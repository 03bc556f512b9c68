"""OpenAI's error shape, one exception for every refusal, and the handlers that render them.

Every error the server returns is

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

with the status OpenAI uses: 400 bad request, 401 bad key, 404 unknown model or object,
413 body too large, 422 malformed body (schema validation), 429 queue full (with Retry-After),
503 not ready. Routes raise `APIError` (or one of the helpers below) and never build error
responses by hand; `install_error_handlers(app)` also turns FastAPI's validation errors,
Starlette's HTTP errors (unknown route: 404, wrong method: 405) and any unexpected exception
(500) into this shape.

Example:
    >>> raise APIError(404, "The model 'x' does not exist", code="model_not_found", param="model")
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tuneforge.server")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
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
        (404, "Not found"),
        (413, "Request body too large"),
        (422, "Malformed request body"),
        (429, "Queue full; retry after Retry-After seconds"),
        (503, "Model still loading"),
    )
}


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    errors = err.errors()
    if not errors:
        return "Invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return (f"{param}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    """Render APIError, validation errors, HTTP errors and crashes in OpenAI's error shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(422, message, param=param, code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        return APIError(exc.status_code, message, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return APIError(500, "The server had an error while processing your request.").response()
