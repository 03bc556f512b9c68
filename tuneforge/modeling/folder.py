"""The model folder: the one place that knows what a TuneForge model folder holds.

A model folder is a Hugging Face folder plus TuneForge's manifest:

- full weights (`config.json` + `model.safetensors` or a sharded index), or a PEFT adapter
  (`adapter_config.json` + `adapter_model.safetensors`, applied on the base it names);
- the tokenizer (`tokenizer.json`, ...), with the pad token and chat template training used;
- `tuneforge.json`, the `Manifest`: base model, parent fine-tune, data files and their hashes,
  the whole config, final metrics. Written last (`write_manifest`, atomic), so a folder with a
  manifest holds a whole model;
- during and after training, `checkpoints/step-000120/`: resumable snapshots, complete once
  their `trainer_state.json` exists (`checkpoint_steps`).

Readers: `read_folder` (kind, base, parent, manifest; `end_of_turn_ids` from the tokenizer),
`read_manifest`, `detect_kind`, `is_model_folder`. Writers: `write_manifest`, `staged_export`,
`export_model`, `load_merged`. Tokenizers are loaded by `tuneforge.tokenize.tokenizer` (`load_tokenizer`,
and `end_of_turn_ids` for where a reply ends).

Importing this module imports neither torch nor transformers (the job worker uses the
checkpoint layout without them); the functions that need them import them when called.

Example:
    >>> f = read_folder("runs/v2")
    >>> f.kind, f.base_model, f.parent_model
    ('adapter', 'Qwen/Qwen2.5-0.5B', 'runs/v1')
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tuneforge.fsutil import fsync_dir, write_json

ModelKind = Literal["full", "adapter"]

MANIFEST_FILE = "tuneforge.json"
CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
MERGED_DIR = "merged"  # LoRA runs with output.merge: full weights next to the adapter

# The checkpoint layout (written by `tuneforge.training.checkpoint`).
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"  # written last: a step folder without it is incomplete
STEP_DIR = re.compile(r"^step-(\d+)$")
TRAINING_STATE_FILES = frozenset({"optimizer.pt", "scheduler.pt", "rng.pt", STATE_FILE})


class ManifestError(ValueError):
    """A `tuneforge.json` that is not valid JSON or not a manifest."""


# -- the manifest -------------------------------------------------------------------------------


class _Record(BaseModel):
    # Unknown keys are kept (manifests of older and newer versions round-trip unchanged).
    model_config = ConfigDict(extra="allow")


class DataFile(_Record):
    """A data file a run read, as recorded: where it was and what it held."""

    path: str | None = None
    sha256: str | None = None
    examples: int | None = None
    dropped_too_long: int | None = None
    truncated: int | None = None


class ReplayFile(DataFile):
    """The parent's training data mixed into a continued fine-tune."""

    changed_since_parent: bool | None = None
    fraction: float | None = None


class ManifestData(_Record):
    train: DataFile | None = None
    replay: ReplayFile | None = None
    valid: DataFile | None = None


class Manifest(_Record):
    """`tuneforge.json`: how a model folder was made.

    Every field is optional (folders made by other tools, or by older versions, have fewer),
    and unknown keys are kept. `to_json` gives back exactly the keys that were set.
    """

    tuneforge_version: str | None = None
    base_model: str | None = None
    """The model the line of fine-tunes started from (a Hub id or a folder)."""
    parent_model: str | None = None
    """The fine-tune this one continued, or None."""
    task: str | None = None
    method: str | None = None
    data: ManifestData | None = None
    config: dict[str, Any] | None = None
    """The run's whole `TrainConfig`, as JSON."""
    metrics: dict[str, Any] | None = None
    """Final metrics (losses, steps, best step, ...)."""
    memory: dict[str, Any] | None = None
    """The training process's peak resident memory (`peak_rss_gb`) and its marks per phase."""
    labels: list[str] | None = None
    """Classification: class names in id order."""
    owned_by: str | None = None
    """Who `/v1/models` lists as the owner (default: tuneforge)."""

    @classmethod
    def of(cls, value: Manifest | Mapping[str, Any]) -> Manifest:
        """A manifest from a mapping (validated) or itself."""
        if isinstance(value, Manifest):
            return value
        try:
            return cls.model_validate(dict(value))
        except ValidationError as e:
            raise ManifestError(f"not a TuneForge manifest: {e}") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON object, with exactly the keys that were set (None values kept when set)."""
        return self.model_dump(exclude_unset=True)

    @property
    def lr(self) -> float | None:
        """The run's peak learning rate, when it was a number (not 'auto')."""
        lr = ((self.config or {}).get("optim") or {}).get("lr")
        return lr if isinstance(lr, float) else None

    @property
    def train_data(self) -> Path | None:
        """The training file the run read."""
        train = self.data.train if self.data is not None else None
        return Path(train.path) if train is not None and train.path else None


def read_manifest(folder: str | Path) -> Manifest | None:
    """The folder's `tuneforge.json`, or None when it has none.

    Raises:
        ManifestError: the file is not valid JSON, or not a manifest.
    """
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a JSON object")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ManifestError(f"{path}: not a TuneForge manifest: {e}") from None


def write_manifest(folder: str | Path, manifest: Manifest | Mapping[str, Any]) -> Path:
    """Write `tuneforge.json` into `folder` atomically; return its path.

    Write it after the weights and tokenizer (or into a stage moved into place manifest
    last): a folder with a manifest always holds a whole model.
    """
    path = Path(folder) / MANIFEST_FILE
    write_json(path, Manifest.of(manifest).to_json())
    return path


# -- the reader ---------------------------------------------------------------------------------


def detect_kind(folder: str | Path) -> ModelKind | None:
    """`adapter` / `full` for a folder with safetensors weights, None otherwise.

    Cheap (no file is read): model stores are scanned with it.
    """
    folder = Path(folder)
    if (folder / ADAPTER_CONFIG_FILE).is_file():
        return "adapter" if any((folder / w).is_file() for w in ADAPTER_WEIGHTS) else None
    if (folder / CONFIG_FILE).is_file():
        return "full" if any((folder / w).is_file() for w in FULL_WEIGHTS) else None
    return None


def is_model_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a model config (`config.json` or `adapter_config.json`)."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() or (folder / ADAPTER_CONFIG_FILE).is_file()


def has_tokenizer(folder: str | Path) -> bool:
    """Whether `folder` holds tokenizer files."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


@dataclass(frozen=True)
class ModelFolder:
    """What a model folder is, read from its files on first use of each property.

    `kind` needs safetensors weights (None: nothing loadable); `is_adapter` only the adapter
    config. Two bases are kept apart: `base_model` is the manifest's record of where the line
    of fine-tunes started; `adapter_base` is the model an adapter applies to
    (`base_model_name_or_path`), which for an adapter continuing a full fine-tune is that
    fine-tune. `loads_on` picks the one to load an adapter on.
    """

    path: Path

    @cached_property
    def kind(self) -> ModelKind | None:
        return detect_kind(self.path)

    @cached_property
    def is_adapter(self) -> bool:
        """Whether the folder holds a PEFT adapter config."""
        return (self.path / ADAPTER_CONFIG_FILE).is_file()

    @cached_property
    def manifest(self) -> Manifest | None:
        """`tuneforge.json`, or None (raises ManifestError for a broken one)."""
        return read_manifest(self.path)

    @cached_property
    def adapter_base(self) -> str | None:
        """`base_model_name_or_path` of `adapter_config.json` (raises ValueError for a broken
        one), or None."""
        if not self.is_adapter:
            return None
        base = json.loads((self.path / ADAPTER_CONFIG_FILE).read_text()).get(
            "base_model_name_or_path"
        )
        return str(base) if base else None

    @property
    def base_model(self) -> str | None:
        """The base model recorded in `tuneforge.json`, if any."""
        return self.manifest.base_model if self.manifest is not None else None

    @property
    def parent_model(self) -> str | None:
        """The fine-tune this one continued (`parent_model` in `tuneforge.json`), if any."""
        return self.manifest.parent_model if self.manifest is not None else None

    @property
    def loads_on(self) -> str | None:
        """For an adapter, the model it is applied on: `adapter_config.json`'s base, else
        the manifest's. None for full weights."""
        return (self.adapter_base or self.base_model) if self.is_adapter else None

    @property
    def has_tokenizer(self) -> bool:
        return has_tokenizer(self.path)

    @property
    def is_model(self) -> bool:
        """Whether the folder holds a model config (see `is_model_folder`)."""
        return is_model_folder(self.path)

    @cached_property
    def width(self) -> int | None:
        """The model's hidden size from `config.json` (an adapter's: its base's); None when no
        config says it (a Hub id that is no local folder, say)."""
        if self.is_adapter:
            base = self.loads_on
            return read_folder(base).width if base else None
        try:
            config = json.loads((self.path / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return None
        config = config.get("text_config") or config  # multimodal configs nest the LM's
        for key in ("hidden_size", "n_embd", "d_model"):
            if isinstance(config.get(key), int):
                return int(config[key])
        return None

    @cached_property
    def end_of_turn_ids(self) -> list[int]:
        """Where this model's replies end: the end-of-turn token of its chat template.

        Loads the tokenizer (the folder's, else the base's for an adapter) on first use.
        """
        source = str(self.path) if self.has_tokenizer else self.loads_on
        if source is None:
            raise ValueError(f"{self.path}: no tokenizer in the folder and no base to take it from")
        from tuneforge.tokenize.tokenizer import end_of_turn_ids, load_tokenizer

        return end_of_turn_ids(load_tokenizer(source))


def read_folder(folder: str | Path) -> ModelFolder:
    """The model folder at `folder`: kind, manifest, bases, parent, end-of-turn ids.

    Works on any folder (a TuneForge output, a Hugging Face or PEFT folder, or one that is no
    model at all: `kind` None, no manifest). Cheap: each property reads its file when first
    used, and raises then (`ManifestError` for a broken `tuneforge.json`, ValueError for a
    broken `adapter_config.json`).
    """
    return ModelFolder(Path(folder))


# -- checkpoints --------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of optimizer step `step`: `step-000120`."""
    return f"step-{step:06d}"


def checkpoint_steps(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `root`, oldest first.

    `root` is a run's `checkpoints/` folder. Interrupted saves (`.tmp-*`) and step folders
    without their `trainer_state.json` are left out.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


# -- export -------------------------------------------------------------------------------------


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under `path`, then `path` itself."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        elif file.is_dir():
            fsync_dir(file)
    fsync_dir(path)


@contextlib.contextmanager
def staged_export(out: str | Path) -> Iterator[Path]:
    """Yield a hidden folder to write the final model into; on success move it into `out`.

    The old manifest is removed first and the new one (if written into the stage) is moved
    last, so a reader never sees a manifest next to half-written weights. On an exception the
    stage is removed and `out` keeps what it had, less its manifest.

    Example:
        >>> with staged_export(run_dir) as stage:
        ...     model.save_pretrained(stage)
        ...     write_manifest(stage, manifest)
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".tmp-export-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    try:
        yield stage
        fsync_tree(stage)
        entries = sorted(stage.iterdir(), key=lambda e: e.name == MANIFEST_FILE)
        for entry in entries:
            target = out / entry.name
            if entry.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
        stage.rmdir()
        fsync_dir(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def load_merged(source: str | Path, dtype: Any = "auto") -> Any:
    """The folder's causal LM with full weights: a LoRA adapter is applied on the model it
    `loads_on` and folded in (`merge_and_unload`); full weights load as they are.

    The one place an adapter is merged for export (merged safetensors, GGUF).
    """
    from transformers import AutoModelForCausalLM

    folder = read_folder(source)
    if not folder.is_adapter:
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, use_safetensors=True)
    from peft import PeftModel

    if folder.loads_on is None:
        raise ValueError(f"{source}: adapter without a base model to apply it on")
    base = AutoModelForCausalLM.from_pretrained(folder.loads_on, dtype=dtype, use_safetensors=True)
    return PeftModel.from_pretrained(base, str(source)).merge_and_unload(safe_merge=True)


def export_model(source: str | Path, dest: str | Path, merge: bool = False) -> Path:
    """Copy a fine-tuned model (or checkpoint) folder to `dest` as a standard Hugging Face
    folder, without the training state; with `merge`, fold a LoRA adapter into its base and
    write full weights.

    Raises:
        FileExistsError: `dest` exists and is not empty.
    """
    source, dest = Path(source), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    # Written into a stage and moved into `dest` manifest last: an interrupted export leaves
    # no folder that looks whole.
    with staged_export(dest) as stage:
        if merge and read_folder(source).is_adapter:
            from transformers import AutoTokenizer

            load_merged(source).save_pretrained(str(stage), safe_serialization=True)
            AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(stage))
            if (source / MANIFEST_FILE).is_file():
                shutil.copy2(source / MANIFEST_FILE, stage / MANIFEST_FILE)
            return dest
        for item in source.iterdir():
            if item.name in TRAINING_STATE_FILES or item.name in (CHECKPOINTS_DIR, "tensorboard"):
                continue
            if item.is_dir():
                shutil.copytree(item, stage / item.name)
            else:
                shutil.copy2(item, stage / item.name)
    return dest
