"""`create_app(settings)`: the OpenAI-compatible FastAPI application.

One router module per resource under `tuneforge/server/routes/`; this module only wires
them together with shared state, middleware and error handlers. Shared state lives on
`app.state` and reaches routes through the typed dependencies in `tuneforge.server.deps`:

- `app.state.settings`  ServerSettings
- `app.state.keys`      KeyTable (auth; see `tuneforge.server.auth.CurrentPrincipal`)
- `app.state.registry`  ModelRegistry: model id -> folder. The fine-tuning job store plugs
                        its fine-tunes in with `registry.add_source(...)` (see
                        `tuneforge.inference.registry`), so `/v1/models` lists them and
                        chat/completions serve `ft:...` ids.
- `app.state.engine`    Engine: the base model, adapters, the batching scheduler. Loaded in a
                        background thread at startup; `/health` answers 503 until it is ready,
                        and inference routes answer 503 meanwhile.
- `app.state.metrics`   Metrics, rendered at `/metrics`.

Exposure (see `tuneforge.server.hosts`): a non-loopback bind without API keys is refused
unless `allow_public_without_keys`; the Host header is checked against an allowlist (DNS
rebinding); with keys enabled, `/openapi.json` needs a key and `/docs` / `/redoc` are off
(a browser cannot send the bearer key they would need to fetch the document).

Adding a resource (e.g. the fine-tuning API): write `routes/<resource>.py` with an
`APIRouter` named `router`, add it to `ROUTERS` below, and use `CurrentPrincipal` for auth
and `APIError` for errors. Startup work for the resource can go in an `on_startup(app)`
hook appended to `STARTUP_HOOKS` (called after the registry exists, before the engine loads).

Example:
    >>> app = create_app(ServerSettings(model_dir="models"))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from tuneforge.inference.engine import Engine, EngineConfig
from tuneforge.inference.registry import ModelEntry, ModelRegistry, detect_kind
from tuneforge.server import dashboard, jobs
from tuneforge.server.auth import KeyTable, get_principal
from tuneforge.server.errors import ErrorResponse, install_error_handlers
from tuneforge.server.hosts import HostAllowlist, allowed_hosts, check_exposure
from tuneforge.server.metrics import Metrics
from tuneforge.server.middleware import BodyLimitMiddleware, MetricsMiddleware
from tuneforge.server.routes import chat, completions, files, fine_tuning, health, models
from tuneforge.server.routes import dashboard as dashboard_routes
from tuneforge.server.settings import ServerSettings

log = logging.getLogger("tuneforge.server")

# Routers of every resource, in the order they appear in the OpenAPI document.
ROUTERS = [
    health.router,
    models.router,
    chat.router,
    completions.router,
    files.router,
    fine_tuning.router,
    dashboard_routes.router,
]

# Called with the app once state is set up (registry, settings, metrics), before serving.
STARTUP_HOOKS: list[Callable[[FastAPI], None]] = [jobs.install]
# Called with the app when the server stops (before the engine shuts down).
SHUTDOWN_HOOKS: list[Callable[[FastAPI], None]] = [jobs.uninstall]


def resolve_base(settings: ServerSettings) -> ModelEntry:
    """The base model entry: an id in the store, a folder path, or a Hub id. Never
    deletable, even when its folder carries `tuneforge.json` (a fine-tune used as base).

    Without `settings.base_model`, the store must hold exactly one full model.
    """
    return replace(_find_base(settings), deletable=False)


def _find_base(settings: ServerSettings) -> ModelEntry:
    store = Path(settings.model_dir)
    name = settings.base_model
    if name is None:
        registry = ModelRegistry(store)
        full = [e for e in registry.list() if e.kind == "full"]
        if len(full) != 1:
            found = ", ".join(e.id for e in full) or "none"
            raise ValueError(
                f"{store}: choose the base model with --base-model (full models found: {found})"
            )
        return full[0]
    entry = ModelRegistry(store).resolve(name)
    if entry is not None:
        if entry.kind != "full":
            raise ValueError(f"base model {name!r} is an adapter, not a full model")
        return entry
    folder = Path(name).expanduser()
    if folder.is_dir():
        if detect_kind(folder) != "full":
            raise ValueError(f"{folder}: no config.json with safetensors weights")
        return ModelEntry(id=folder.name, path=folder, owned_by="system", kind="full")
    return ModelEntry(id=name, path=None, owned_by="system", kind="full", hub_id=name)


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app for `settings`.

    `engine` lets tests and embedders pass an engine they built (it is started but not
    re-loaded if already loaded); by default one is built from settings and loaded in the
    background at startup.
    """
    keys = KeyTable(settings.key_table(), settings.admin_keys)
    check_exposure(settings, keys.enabled)
    if engine is None:
        base = resolve_base(settings)
        engine = Engine(EngineConfig.from_settings(settings), base)
    registry = ModelRegistry(settings.model_dir, base=engine.base)
    metrics = Metrics(queue_depth=engine.queue_depth)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for hook in STARTUP_HOOKS:
            hook(app)
        loader = threading.Thread(target=_load, args=(engine,), name="tuneforge-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            for hook in SHUTDOWN_HOOKS:
                await asyncio.to_thread(hook, app)
            await asyncio.to_thread(engine.shutdown)

    hidden = keys.enabled  # the schema and docs pages are served to key holders only (below)
    app = FastAPI(
        title="TuneForge",
        version=_version(),
        description="OpenAI-compatible inference and fine-tuning for your own models.",
        lifespan=lifespan,
        openapi_url=None if hidden else "/openapi.json",
        docs_url=None if hidden else "/docs",
        redoc_url=None if hidden else "/redoc",
    )
    app.openapi = _openapi_with_400(app)  # type: ignore[method-assign]
    if keys.enabled:

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(get_principal)])
        def openapi_document() -> JSONResponse:
            return JSONResponse(app.openapi())

    app.state.settings = settings
    app.state.keys = keys
    app.state.registry = registry
    app.state.engine = engine
    app.state.metrics = metrics
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    dashboard.mount(app)  # the web page at `/`
    # Outermost first: metrics see every response, including 413s.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        path_limits={"/v1/files": settings.max_upload_bytes},
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Outermost of all: a request for a foreign Host reaches nothing else.
    app.add_middleware(HostAllowlist, allowed=allowed_hosts(settings))
    return app


def _openapi_with_400(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document as the server answers: schema errors are 400 in OpenAI's error
    shape (FastAPI documents its own 422 `HTTPValidationError`, which is never sent)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
                if responses.pop("422", None) is not None and "400" not in responses:
                    responses["400"] = {
                        "description": "Invalid request",
                        "content": {"application/json": {"schema": error_ref}},
                    }
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        components.setdefault(
            "ErrorResponse",
            ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}"),
        )
        app.openapi_schema = schema
        return schema

    return openapi


def _load(engine: Engine) -> None:
    try:
        engine.load()
        engine.start()
    except Exception:  # surfaced by /health as "failed"
        log.exception("loading the base model failed")
        return
    assert engine.dtype is not None
    # uvicorn's own channel: the one `tuneforge serve` prints at info level.
    logging.getLogger("uvicorn.error").info(
        "serving %s on %s in %s (%s)%s",
        engine.base.id,
        engine.device,
        engine.dtype.name,
        engine.dtype.reason,
        engine.quantized_note(),
    )


def _version() -> str:
    from tuneforge import __version__

    return __version__
