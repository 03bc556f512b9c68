"""Model ids -> model folders: what the server lists and what it may load.

`ModelRegistry` answers two questions: which models does an organization see (`list`), and
which folder does a model id name (`resolve`). Ids are looked up in a listing; they are never
joined onto a path, so `../` in an id cannot reach outside the store. Every folder is also
checked, after resolving symlinks, to lie inside its source's root (a symlink in the model
store pointing elsewhere is skipped).

Sources of models:

1. The model store (`model_dir`): every folder up to two levels deep that holds a model
   (`config.json` + safetensors weights, or a PEFT `adapter_config.json` +
   `adapter_model.safetensors`) is listed under its relative path, e.g. `tiny-llama`,
   `acme/support-bot`. Folders holding only pickled weights (`*.bin`, `*.pt`) are not models
   here: only safetensors are loaded.
2. The base model when it lives outside the store (a folder path or a Hub id given to
   `tuneforge serve --base-model`).
3. Extension sources added with `add_source`: the fine-tuning job store registers the
   fine-tunes it produced (ids like `ft:tiny-llama:org-a:support:abc123`), each with its
   organization and folder, and optionally lets `DELETE /v1/models/{id}` remove them.

Example (the seam the job store plugs into):
    >>> class JobModels:
    ...     root = data_dir / "models"          # every folder it returns lies under root
    ...     def list_models(self):
    ...         return [ModelEntry(id="ft:tiny:org-a::ab12", path=..., owned_by="org-a",
    ...                            org="org-a", created=1700000000)]
    ...     def delete_model(self, model_id):   # optional; True if it existed
    ...         ...
    >>> registry.add_source(JobModels(), root=JobModels.root)
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

ModelKind = Literal["full", "adapter"]

_FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors",)


@dataclass(frozen=True)
class ModelEntry:
    """One servable model.

    id: what clients pass as `model`. path: the folder (None for a Hub id base model).
    kind: "full" (a complete causal LM) or "adapter" (a PEFT adapter applied on the base),
    detected from the folder when not given. org: the organization that may see it (None:
    everyone). deletable: whether `DELETE /v1/models/{id}` may remove it.
    """

    id: str
    path: Path | None
    owned_by: str = "tuneforge"
    org: str | None = None
    created: int = 0
    kind: ModelKind | None = None
    deletable: bool = False
    hub_id: str | None = None  # the Hub id to load from when path is None
    source: object | None = field(default=None, compare=False, repr=False)

    def visible_to(self, org_id: str) -> bool:
        return self.org is None or self.org == org_id


@runtime_checkable
class ModelSource(Protocol):
    """A provider of extra models (e.g. the fine-tuning job store).

    `list_models` is called on every listing/lookup, so it should be cheap (a DB query).
    `delete_model` is optional: sources without it list models that cannot be deleted.
    """

    def list_models(self) -> Iterable[ModelEntry]: ...


def detect_kind(folder: Path) -> ModelKind | None:
    """`adapter` / `full` for a folder with safetensors weights, None otherwise."""
    if (folder / "adapter_config.json").is_file():
        return "adapter" if any((folder / w).is_file() for w in _ADAPTER_WEIGHTS) else None
    if (folder / "config.json").is_file():
        return "full" if any((folder / w).is_file() for w in _FULL_WEIGHTS) else None
    return None


def is_inside(path: Path, root: Path) -> bool:
    """True if `path`, with symlinks resolved, is `root` or lies under it."""
    try:
        real = Path(os.path.realpath(path))
        real_root = Path(os.path.realpath(root))
    except OSError:
        return False
    return real == real_root or real_root in real.parents


def _created(folder: Path) -> int:
    try:
        return int(folder.stat().st_mtime)
    except OSError:
        return 0


class ModelRegistry:
    """Resolves model ids to folders inside the model store and registered sources.

    Thread-safe; listings of the store are cached for `ttl_s` seconds and rescanned on a miss,
    so a model folder copied into the store is served without a restart.
    """

    def __init__(
        self, model_dir: Path | str, base: ModelEntry | None = None, ttl_s: float = 2.0
    ) -> None:
        self.model_dir = Path(model_dir)
        self.base = base
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._scan_cache: tuple[float, dict[str, ModelEntry]] | None = None
        self._sources: list[
            tuple[ModelSource | Callable[[], Iterable[ModelEntry]], Path | None]
        ] = []

    # -- the seam -------------------------------------------------------------------------------

    def add_source(
        self,
        source: ModelSource | Callable[[], Iterable[ModelEntry]],
        root: Path | str | None = None,
    ) -> None:
        """Register extra models: an object with `list_models()` (and optionally
        `delete_model(id) -> bool`), or a plain callable returning `ModelEntry`s.

        With `root`, any entry whose folder is not inside `root` (symlinks resolved) is
        ignored. Entries are marked deletable when the source has `delete_model`.
        """
        with self._lock:
            self._sources.append((source, Path(root) if root is not None else None))

    # -- lookups ----------------------------------------------------------------------------------

    def list(self, org_id: str = "default") -> list[ModelEntry]:
        """Every model `org_id` may use, base model first, then by id."""
        entries = self._all(refresh=False)
        visible = [e for e in entries.values() if e.visible_to(org_id)]
        base_id = self.base.id if self.base else None
        return sorted(visible, key=lambda e: (e.id != base_id, e.id))

    def resolve(self, model_id: str, org_id: str = "default") -> ModelEntry | None:
        """The entry for `model_id` if it exists and `org_id` may use it, else None."""
        entry = self._all(refresh=False).get(model_id)
        if entry is None:
            entry = self._all(refresh=True).get(model_id)
        if entry is None or not entry.visible_to(org_id):
            return None
        return entry

    def delete(self, model_id: str, org_id: str = "default") -> bool:
        """Delete a deletable model (a fine-tune). False if it does not exist for `org_id`.

        Raises PermissionError for models that cannot be deleted (the base model, models
        of a source without `delete_model`).
        """
        entry = self.resolve(model_id, org_id)
        if entry is None:
            return False
        if not entry.deletable:
            raise PermissionError(f"model {model_id!r} cannot be deleted")
        if entry.source is not None:
            ok = bool(entry.source.delete_model(model_id))  # type: ignore[attr-defined]
        else:  # a fine-tune folder in the model store
            assert entry.path is not None and is_inside(entry.path, self.model_dir)
            shutil.rmtree(entry.path)
            ok = True
        with self._lock:
            self._scan_cache = None
        return ok

    # -- internals ------------------------------------------------------------------------------

    def _all(self, refresh: bool) -> dict[str, ModelEntry]:
        entries = dict(self._scan(refresh))
        with self._lock:
            sources = list(self._sources)
        for source, root in sources:
            produced = source.list_models() if isinstance(source, ModelSource) else source()
            deletable = hasattr(source, "delete_model")
            for entry in produced:
                if entry.path is None or (root is not None and not is_inside(entry.path, root)):
                    continue
                kind = entry.kind or detect_kind(entry.path)
                if kind is None:
                    continue
                entries.setdefault(
                    entry.id,
                    replace(entry, kind=kind, deletable=deletable, source=source),
                )
        if self.base is not None:
            entries[self.base.id] = self.base
        return entries

    def _scan(self, refresh: bool) -> dict[str, ModelEntry]:
        now = time.monotonic()
        with self._lock:
            if not refresh and self._scan_cache and now - self._scan_cache[0] < self._ttl_s:
                return self._scan_cache[1]
        found: dict[str, ModelEntry] = {}
        root = self.model_dir
        if root.is_dir():
            for folder in self._candidate_folders(root):
                if not is_inside(folder, root):
                    continue  # a symlink pointing out of the store
                kind = detect_kind(folder)
                if kind is None:
                    continue
                model_id = folder.relative_to(root).as_posix()
                found[model_id] = ModelEntry(
                    id=model_id,
                    path=folder,
                    owned_by=_owner(folder),
                    created=_created(folder),
                    kind=kind,
                    # Only fine-tunes TuneForge wrote (they carry tuneforge.json) can be deleted.
                    deletable=(folder / "tuneforge.json").is_file()
                    and (self.base is None or model_id != self.base.id),
                )
        with self._lock:
            self._scan_cache = (now, found)
        return found

    @staticmethod
    def _candidate_folders(root: Path) -> Iterable[Path]:
        for child in sorted(root.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue
            yield child
            if detect_kind(child) is None:  # `org/name` layout, as on the Hub
                for grandchild in sorted(child.iterdir()):
                    if grandchild.is_dir() and not grandchild.name.startswith("."):
                        yield grandchild


def _owner(folder: Path) -> str:
    """`owned_by` for a store folder: "tuneforge" for fine-tunes it made, else "system"."""
    meta = folder / "tuneforge.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
            return str(data.get("owned_by") or "tuneforge")
        except (OSError, ValueError):
            return "tuneforge"
    return "system"
