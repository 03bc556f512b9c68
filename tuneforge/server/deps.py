"""Typed FastAPI dependencies: the app's shared objects as annotated parameter types.

Example:
    >>> @router.get("/v1/models")
    ... def list_models(registry: Registry, principal: CurrentPrincipal) -> ModelList: ...
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tuneforge.inference.engine import Engine
from tuneforge.inference.registry import ModelRegistry
from tuneforge.server.auth import CurrentPrincipal, Principal
from tuneforge.server.errors import APIError
from tuneforge.server.metrics import Metrics
from tuneforge.server.settings import ServerSettings


def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_ready_engine(request: Request) -> Engine:
    """The engine, or 503 while the base model is still loading."""
    engine: Engine = request.app.state.engine
    if not engine.ready:
        raise APIError(
            503,
            # The failure's reason names folders and exceptions: it stays in the server log.
            "The model is still loading; retry shortly."
            if not engine.failed
            else "The model failed to load; see the server log.",
            code="model_loading",
            headers={"Retry-After": "5"},
        )
    return engine


Settings = Annotated[ServerSettings, Depends(get_settings)]
Registry = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ReadyEngine = Annotated[Engine, Depends(get_ready_engine)]

__all__ = [
    "CurrentPrincipal",
    "EngineDep",
    "MetricsDep",
    "Principal",
    "ReadyEngine",
    "Registry",
    "Settings",
]
