"""`tuneforge models ...`: list, export and lineage of fine-tuned models."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneforge.cli.common import JSON_OPTION, StoreOptions, console, fail, store_call, store_options

models_app = typer.Typer(help="Models: import (GGUF), list, export, lineage.", no_args_is_help=True)


@models_app.command("list")
@store_options()
def models_list(*, store: StoreOptions, as_json: bool = JSON_OPTION) -> None:
    """List fine-tuned models and checkpoints (store), or every model a server serves."""
    from rich.table import Table

    models = store_call(store.client().models)
    if as_json:
        print(json.dumps(models, indent=2))
        return
    table = Table()
    for col in ("id", "owned_by", "kind", "path"):
        table.add_column(col, overflow="fold")
    for m in models:
        table.add_row(m["id"], m.get("owned_by", ""), m.get("kind", ""), m.get("path", ""))
    console.print(table)


@models_app.command("export")
@store_options("data_dir", "database_url", "org")
def models_export(
    model_id: str = typer.Argument(..., help="A fine-tuned model or checkpoint id (ft:...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (must be empty)."),
    merge: bool = typer.Option(
        False, "--merge", help="Fold a LoRA adapter into its base: full safetensors weights."
    ),
    *,
    store: StoreOptions,
) -> None:
    """Copy a fine-tuned model out of the store as a standard Hugging Face folder."""
    from tuneforge.modeling.folder import export_model

    source = store_call(store.client().model_path, model_id)
    try:
        dest = export_model(source, out, merge=merge)
    except (FileExistsError, OSError, ValueError) as err:
        fail(err)
    console.print(f"{model_id} -> {dest}", highlight=False)


@models_app.command("import")
def models_import(
    source: str = typer.Argument(..., help="A .gguf file (Ollama, llama.cpp), Hub id or folder."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder to write (new or empty); needed for a .gguf file."
    ),
    dtype: str = typer.Option(
        "fp32", "--dtype", help="Weights' dtype: fp32 (exact dequantized values), bf16 or fp16."
    ),
) -> None:
    """Import a GGUF file as a standard Hugging Face folder (weights dequantized)."""
    import re

    from tuneforge.modeling.gguf import GGUFImportError, import_gguf, read_gguf_info

    path = Path(source)
    hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.endswith(".gguf")
    if path.is_dir() or (not path.exists() and hub_id):
        what = "a folder" if path.is_dir() else "a Hub id"
        console.print(
            f"{source} is {what}: TuneForge uses it as is (e.g. `tuneforge train --model "
            f"{source}`); no import needed.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    try:
        if out is None:
            raise GGUFImportError("give the folder to write with -o DIR")
        info = read_gguf_info(path)
        dest = import_gguf(path, out, dtype=dtype)
    except GGUFImportError as err:
        fail(err)
    how = "dequantized" if info.dequantized else "converted"
    console.print(
        f"{path.name}: {info.architecture} weights {how} from {info.quantization} to {dtype}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"model folder: {dest}", markup=False, highlight=False, soft_wrap=True)


@models_app.command("lineage")
def models_lineage(
    folder: Path = typer.Argument(..., help="A fine-tuned model folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the chain as a JSON list."),
) -> None:
    """Print where a model comes from: base -> v1 -> v2."""
    from tuneforge.training.lineage import lineage

    if not folder.is_dir():
        fail(f"not a folder: {folder}")
    chain = lineage(folder)
    if as_json:
        console.print_json(json.dumps(chain))
    else:
        console.print(" -> ".join(chain), highlight=False, soft_wrap=True)
