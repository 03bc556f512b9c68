"""The OpenAI-compatible HTTP server: `create_app(settings)` and `tuneforge serve`.

Layout: `app.py` wires routers (`routes/<resource>.py`), `settings.py` holds the one
`ServerSettings`, `auth.py` the API-key dependency (`CurrentPrincipal`), `errors.py` OpenAI's
error shape (`APIError`), `deps.py` the typed dependencies, `generation.py` the request
handling shared by chat and completions.
"""

from tuneforge.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str):  # lazy: importing settings must not import torch
    if name == "create_app":
        from tuneforge.server.app import create_app

        return create_app
    raise AttributeError(name)
