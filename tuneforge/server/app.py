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
from pathlib import Path

from fastapi import FastAPI

from tuneforge.inference.engine import Engine, EngineConfig
from tuneforge.inference.registry import ModelEntry, ModelRegistry, detect_kind
from tuneforge.server import jobs
from tuneforge.server.auth import KeyTable
from tuneforge.server.errors import install_error_handlers
from tuneforge.server.metrics import Metrics
from tuneforge.server.middleware import BodyLimitMiddleware, MetricsMiddleware
from tuneforge.server.routes import chat, completions, files, fine_tuning, health, models
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
]

# Called with the app once state is set up (registry, settings, metrics), before serving.
STARTUP_HOOKS: list[Callable[[FastAPI], None]] = [jobs.install]
# Called with the app when the server stops (before the engine shuts down).
SHUTDOWN_HOOKS: list[Callable[[FastAPI], None]] = [jobs.uninstall]


def resolve_base(settings: ServerSettings) -> ModelEntry:
    """The base model entry: an id in the store, a folder path, or a Hub id.

    Without `settings.base_model`, the store must hold exactly one full model.
    """
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
    keys = KeyTable(settings.key_table())
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

    app = FastAPI(
        title="TuneForge",
        version=_version(),
        description="OpenAI-compatible inference and fine-tuning for your own models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keys = keys
    app.state.registry = registry
    app.state.engine = engine
    app.state.metrics = metrics
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # Outermost first: metrics see every response, including 413s.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        path_limits={"/v1/files": settings.max_upload_bytes},
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _load(engine: Engine) -> None:
    try:
        engine.load()
        engine.start()
    except Exception:  # surfaced by /health as "failed"
        log.exception("loading the base model failed")


def _version() -> str:
    from tuneforge import __version__

    return __version__
