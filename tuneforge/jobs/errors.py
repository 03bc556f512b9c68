"""Errors of the job store, free of HTTP: the server maps them to OpenAI's error shape."""

from __future__ import annotations


class StoreError(Exception):
    """Base class: `message`, the request `param` it concerns, and a machine-readable `code`."""

    status = 400

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(StoreError):
    """The request cannot be carried out as asked (HTTP 400)."""


class NotFound(StoreError):
    """No such object for this organization (HTTP 404: other tenants' objects do not exist)."""

    status = 404


class Conflict(StoreError):
    """The request contradicts an earlier one, e.g. a reused Idempotency-Key (HTTP 409)."""

    status = 409


class TooLarge(StoreError):
    """An upload over the size cap (HTTP 413)."""

    status = 413
