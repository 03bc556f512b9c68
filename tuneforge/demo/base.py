"""The demo's base model: a small Llama that the project pretrains itself, offline.

`demo_base()` returns a standard model folder (safetensors, BPE tokenizer with a ChatML chat
template). The folder ships with the package (`BUNDLED`, 11 MB), so the demo starts at once.
Without it (or for another `BaseRecipe`) the first call builds one — tokenizer trained on the
general corpus, model initialised, then pretrained with TuneForge's own training loop on
`pretraining_corpus()`, a few minutes on a laptop CPU — and caches it under
``$TUNEFORGE_CACHE`` (default ``~/.cache/tuneforge``).

Rebuild the bundled model with ``python -m tuneforge.demo.base --out tuneforge/demo/base_model``
(deterministic for a given PyTorch build).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from tuneforge.demo.corpus import pretraining_corpus
from tuneforge.fsutil import cache_dir, write_json, write_jsonl

# Files of a Hugging Face model folder that make up the base model (no training leftovers).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class BaseRecipe:
    """Everything that decides the demo base model; part of its cache key."""

    version: int = 1
    corpus_size: int = 6000
    vocab_size: int = 2048
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    max_length: int = 256
    epochs: int = 4
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"demo-base-v{self.version}-{self.num_layers}x{self.hidden_size}-{digest[:8]}"


BUNDLED = Path(__file__).parent / "base_model"


def cache_root() -> Path:
    return cache_dir()


def demo_base(
    console: Console | None = None, recipe: BaseRecipe | None = None, cache: Path | None = None
) -> Path:
    """The pretrained demo base model folder, built on first use and cached."""
    if recipe is None and cache is None and (BUNDLED / "model.safetensors").is_file():
        return BUNDLED
    recipe = recipe or BaseRecipe()
    folder = (cache or cache_root()) / recipe.key
    if (folder / "model.safetensors").is_file():
        return folder
    console = console or Console(stderr=True)
    console.print(
        f"[dim]pretraining the demo base model once ({recipe.num_layers} layers x "
        f"{recipe.hidden_size} wide on {recipe.corpus_size:,} generated general-domain "
        f"examples); it is cached in {folder}[/dim]"
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{recipe.key}.") as tmp:
        built = _pretrain(Path(tmp), recipe, console)
        staged = Path(tmp) / "final"
        staged.mkdir()
        for name in MODEL_FILES:
            if (built / name).is_file():
                shutil.copy2(built / name, staged / name)
        write_json(staged / "tuneforge.json", {"demo_base": asdict(recipe)})
        # Another process may have finished first; either copy is the same model.
        if not (folder / "model.safetensors").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staged, folder)
    return folder


def _pretrain(workdir: Path, recipe: BaseRecipe, console: Console) -> Path:
    from transformers.utils import logging as hf_logging

    from tuneforge.modeling.tiny import build_model, save_model_folder, train_tokenizer
    from tuneforge.tokenize.templates import ensure_chat_template
    from tuneforge.training.config import load_config
    from tuneforge.training.loop import run_training

    corpus = pretraining_corpus(recipe.corpus_size, recipe.seed)
    texts = []
    for example in corpus:
        texts += [m["content"] for m in example.get("messages", [])] or [example["text"]]
    tokenizer = train_tokenizer(texts, vocab_size=recipe.vocab_size)
    ensure_chat_template(tokenizer)
    tokenizer.model_max_length = 1024
    model = build_model(
        tokenizer,
        arch="llama",
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        num_heads=recipe.num_heads,
        max_positions=1024,
        seed=recipe.seed,
    )
    # Generation stops at the end of an assistant turn as well as at end-of-text.
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    init = save_model_folder(model, tokenizer, workdir / "init")
    train_file = workdir / "corpus.jsonl"
    write_jsonl(train_file, corpus)
    cfg = load_config(
        None,
        {
            "model.name_or_path": str(init),
            "data.train": str(train_file),
            "data.train_on": "all",
            "data.max_length": recipe.max_length,
            "data.packing": True,
            "method": "full",
            "optim.epochs": recipe.epochs,
            "optim.batch_size": recipe.batch_size,
            "optim.lr": recipe.lr,
            "optim.schedule": "cosine",
            "optim.warmup": 0.05,
            "optim.weight_decay": 0.01,
            "checkpoint.keep_last": 1,
            "output.dir": str(workdir / "pretrained"),
            "seed": recipe.seed,
        },
    )
    hf_logging.disable_progress_bar()
    return run_training(cfg, console).output_dir


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the demo base model (deterministic).")
    parser.add_argument("--out", type=Path, help="Copy the built model folder here.")
    args = parser.parse_args()
    if args.out is None:
        print(demo_base(Console(), BaseRecipe(), cache=cache_root()))
        return
    with tempfile.TemporaryDirectory() as cache:
        built = demo_base(Console(), BaseRecipe(), cache=Path(cache))
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(built, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
