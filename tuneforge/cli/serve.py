"""`tuneforge serve`: the OpenAI-compatible server (tuneforge.server)."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneforge.cli.common import err_console, fail


def serve(
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="The model store: folders served by relative path as id."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Base model: id in the store, folder or Hub id."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Server state folder."),
    host: str | None = typer.Option(None, "--host", help="Interface to bind (127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port to bind (8000)."),
    api_key: list[str] = typer.Option(
        [], "--api-key", help="Accepted API key (repeatable; also env TUNEFORGE_API_KEYS)."
    ),
    api_keys_file: Path | None = typer.Option(
        None, "--api-keys-file", help='JSON file mapping key -> organization: {"sk-..": "org"}.'
    ),
    dtype: str | None = typer.Option(None, "--dtype", help="auto, fp32, bf16 or fp16."),
    quantize: str | None = typer.Option(
        None, "--quantize", help="none, int8 or int4: the weights decode steps read (CPU)."
    ),
    device: str | None = typer.Option(None, "--device", help="torch device (default: auto)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size", help="Rows per step."),
    max_queue: int | None = typer.Option(None, "--max-queue", help="Waiting requests before 429."),
    max_adapters: int | None = typer.Option(None, "--max-adapters", help="Adapters kept loaded."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run model code from the Hub (off by default)."
    ),
    no_worker: bool = typer.Option(
        False, "--no-worker", help="Do not run fine-tuning jobs here (run `tuneforge worker`)."
    ),
    database_url: str | None = typer.Option(
        None, "--database-url", help="Job store database URL (default: SQLite in --data-dir)."
    ),
    admin_key: list[str] = typer.Option(
        [],
        "--admin-key",
        help="Operator key: may also delete --model-dir folders (repeatable; env "
        "TUNEFORGE_ADMIN_KEYS).",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="Extra name accepted in the Host header (repeatable; env TUNEFORGE_ALLOWED_HOSTS).",
    ),
    allow_public_without_keys: bool = typer.Option(
        False,
        "--allow-public-without-keys",
        help="Start on a non-loopback --host with no API key (refused otherwise).",
    ),
) -> None:
    """Serve the base model and its fine-tunes with OpenAI's API, and the web dashboard at /."""
    import uvicorn
    from pydantic import ValidationError

    from tuneforge.server.app import create_app
    from tuneforge.server.settings import ServerSettings

    try:
        settings = ServerSettings.from_env(
            model_dir=model_dir,
            base_model=base_model,
            data_dir=data_dir,
            host=host,
            port=port,
            api_keys_file=api_keys_file,
            dtype=dtype,
            quantize=quantize,
            device=device,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            max_adapters=max_adapters,
            trust_remote_code=trust_remote_code or None,
            worker=not no_worker,
            database_url=database_url,
            allow_public_without_keys=allow_public_without_keys or None,
        )
        if api_key:
            settings.api_keys = [*settings.api_keys, *api_key]
        if admin_key:
            settings.admin_keys = [*settings.admin_keys, *admin_key]
        if allowed_host:
            settings.allowed_hosts = [*settings.allowed_hosts, *allowed_host]
        server_app = create_app(settings)
    except (ValidationError, ValueError, OSError) as err:
        fail(err, 2)
    auth = "on" if server_app.state.keys.enabled else "off (no API keys configured)"
    err_console.print(
        f"serving [bold]{server_app.state.engine.base.id}[/] from {settings.model_dir} "
        f"on http://{settings.host}:{settings.port}/v1 (auth {auth})",
        highlight=False,
    )
    uvicorn.run(server_app, host=settings.host, port=settings.port, log_level="info")
