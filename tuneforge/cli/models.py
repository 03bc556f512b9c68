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


EXPORT_FORMATS = ("hf", "gguf")


@models_app.command("export")
@store_options("data_dir", "database_url", "org")
def models_export(
    model: str = typer.Argument(
        ..., help="A run (model folder), or a fine-tuned model or checkpoint id (ft:...)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="hf: the folder to write (must be empty); gguf: the .gguf file."
    ),
    format: str = typer.Option(
        "hf", "--format", help="hf: a Hugging Face folder; gguf: one file for llama.cpp / Ollama."
    ),
    type: str = typer.Option(
        "f16", "--type", help="GGUF weights: f32 (exact), f16, bf16 or q8_0 (8-bit, ~half of f16)."
    ),
    merge: bool = typer.Option(
        False, "--merge", help="hf: fold a LoRA adapter into its base (full safetensors weights)."
    ),
    ollama: bool = typer.Option(
        False, "--ollama", help="gguf: also write an Ollama Modelfile; prints `ollama create`."
    ),
    *,
    store: StoreOptions,
) -> None:
    """Export a fine-tuned model: a Hugging Face folder, or GGUF for llama.cpp and Ollama.

    A LoRA run is merged into its base for GGUF. The GGUF carries the tokenizer, the chat
    template, the end-of-turn token and sampling defaults, so llama.cpp and Ollama prompt and
    stop as TuneForge does.
    """
    if format not in EXPORT_FORMATS:
        fail(f"unknown --format {format!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if format == "hf" and ollama:
        fail("--ollama goes with --format gguf")
    source = Path(model)
    if not source.is_dir():
        try:
            source = store_call(store.client).model_path(model)
        except KeyError:
            fail(f"{model}: neither a model folder nor a fine-tuned model id of the store")
    if format == "gguf":
        _export_gguf(model, source, out, type, ollama)
        return
    from tuneforge.modeling.folder import export_model

    try:
        dest = export_model(source, out, merge=merge)
    except (FileExistsError, OSError, ValueError) as err:
        fail(err)
    console.print(f"{model} -> {dest}", highlight=False)


def _export_gguf(model: str, source: Path, out: Path, type: str, ollama: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from tuneforge.modeling.gguf import GGUFError
    from tuneforge.modeling.gguf_export import export_gguf

    columns = ("{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"writing {out.name}", total=None)
        try:
            result = export_gguf(
                source,
                out,
                type=type,
                ollama=ollama,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (GGUFError, OSError) as err:
            bar.stop()
            fail(err)
    size = f"{result.n_bytes / 1e6:.1f} MB"
    console.print(
        f"{model} -> {result.path} ({result.architecture}, {result.type}, {size})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    stops = ", ".join(result.stop_tokens)
    console.print(f"stops at: {stops}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"run it: llama-cli -m {result.path} -cnv", markup=False, highlight=False, soft_wrap=True
    )
    if result.modelfile is not None:
        console.print(f"Modelfile: {result.modelfile}", markup=False, highlight=False)
        console.print(result.ollama_command, markup=False, highlight=False, soft_wrap=True)


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
