"""Model ids -> model folders: what the server lists and what it may load.

`ModelRegistry` answers two questions: which models does an organization see (`list`), and
which folder does a model id name (`resolve`). `resolve` looks one id up directly (a folder
check in the store, an indexed query in a source with `resolve_model`), never by listing
every organization's models: it runs on every inference request. An id reaches the file
system only after it passed `_store_parts` (one or two plain path segments, none starting
with "."), so `../` in an id cannot reach outside the store. Every folder is also checked,
after resolving symlinks, to lie inside its source's root (a symlink in the model store
pointing elsewhere is skipped).

Deleting (`delete`): the base model never (whatever id or folder names it); a fine-tune of a
source with `delete_model` by its organization; a folder of the model store, which belongs
to no organization, only by an admin (the operator's key), since every organization sees it.

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
   organization and folder, and optionally lets `DELETE /v1/models/{id}` remove them. A
   source may also offer `resolve_model(id) -> ModelEntry | None` (an indexed lookup);
   without it, `resolve` falls back to scanning its `list_models()`.

Example (the seam the job store plugs into):
    >>> class JobModels:
    ...     root = data_dir / "models"          # every folder it returns lies under root
    ...     def list_models(self):
    ...         return [ModelEntry(id="ft:tiny:org-a::ab12", path=..., owned_by="org-a",
    ...                            org="org-a", created=1700000000)]
    ...     def resolve_model(self, model_id):  # optional; one indexed lookup
    ...         ...
    ...     def delete_model(self, model_id):   # optional; True if it existed
    ...         ...
    >>> registry.add_source(JobModels(), root=JobModels.root)
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from tuneforge.modeling.folder import (
    MANIFEST_FILE,
    ManifestError,
    ModelKind,
    detect_kind,
    read_manifest,
)

__all__ = [
    "AdminOnly",
    "ModelEntry",
    "ModelKind",
    "ModelRegistry",
    "ModelSource",
    "NotDeletable",
    "detect_kind",
    "is_inside",
]


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

    `list_models` is called on every listing, so it should be cheap (a DB query). Optional:
    `resolve_model(id) -> ModelEntry | None`, used by lookups instead of a listing, and
    `delete_model(id) -> bool` (sources without it list models that cannot be deleted).
    """

    def list_models(self) -> Iterable[ModelEntry]: ...


class NotDeletable(PermissionError):
    """The model can never be deleted (the base model, a model of a read-only source)."""


class AdminOnly(PermissionError):
    """Only an admin key may delete the model (a folder of the model store)."""


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

    Thread-safe; listings of the store are cached for `ttl_s` seconds, and lookups check the
    named folder directly, so a model folder copied into the store is served at once,
    without a restart.
    """

    def __init__(
        self, model_dir: Path | str, base: ModelEntry | None = None, ttl_s: float = 2.0
    ) -> None:
        self.model_dir = Path(model_dir)
        # The base is what every job trains from and every adapter runs on: never deletable,
        # whoever built the entry (resolve_base goes through a registry with no base set).
        self.base = replace(base, deletable=False) if base is not None else None
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
        """The entry for `model_id` if it exists and `org_id` may use it, else None.

        One direct lookup (no listing): the base, then the store folder the id names, then
        each source. Blocking (file system, database): call it off the event loop.
        """
        entry = self._lookup(model_id)
        if entry is None or not entry.visible_to(org_id):
            return None
        return entry

    def delete(self, model_id: str, org_id: str = "default", admin: bool = False) -> bool:
        """Delete a model. False if it does not exist for `org_id`.

        Raises NotDeletable for the base model (by any id or folder that names it) and models
        of a source without `delete_model`; AdminOnly for a store folder and `admin` False.
        """
        entry = self.resolve(model_id, org_id)
        if entry is None:
            return False
        if self._is_base(entry) or not entry.deletable:
            raise NotDeletable(f"model {model_id!r} cannot be deleted")
        if entry.source is not None:
            ok = bool(entry.source.delete_model(model_id))  # type: ignore[attr-defined]
        else:  # a folder of the model store: it belongs to no organization
            if not admin:
                raise AdminOnly(f"model {model_id!r} can only be deleted with an admin key")
            assert entry.path is not None and is_inside(entry.path, self.model_dir)
            shutil.rmtree(entry.path)
            ok = True
        with self._lock:
            self._scan_cache = None
        return ok

    # -- internals ------------------------------------------------------------------------------

    def _is_base(self, entry: ModelEntry) -> bool:
        """Whether `entry` is the base model or its folder holds or lies in the base's."""
        base = self.base
        if base is None:
            return False
        if entry.id == base.id:
            return True
        if entry.path is None or base.path is None:
            return False
        return is_inside(base.path, entry.path) or is_inside(entry.path, base.path)

    def _lookup(self, model_id: str) -> ModelEntry | None:
        # The same precedence as `_all`: the base, then the store, then sources in order.
        if self.base is not None and model_id == self.base.id:
            return self.base
        parts = _store_parts(model_id)
        if parts is not None:
            entry = self._store_entry(parts)
            if entry is not None:
                return entry
        with self._lock:
            sources = list(self._sources)
        for source, root in sources:
            finder = getattr(source, "resolve_model", None)
            if finder is not None:
                found = finder(model_id)
                produced: Iterable[ModelEntry] = [found] if found is not None else []
            else:
                listed = source.list_models() if isinstance(source, ModelSource) else source()
                produced = [e for e in listed if e.id == model_id]
            for entry in produced:
                admitted = _admit(entry, source, root)
                if admitted is not None:
                    return admitted
        return None

    def _all(self, refresh: bool) -> dict[str, ModelEntry]:
        entries = dict(self._scan(refresh))
        with self._lock:
            sources = list(self._sources)
        for source, root in sources:
            produced = source.list_models() if isinstance(source, ModelSource) else source()
            for entry in produced:
                admitted = _admit(entry, source, root)
                if admitted is not None:
                    entries.setdefault(entry.id, admitted)
        if self.base is not None:
            entries[self.base.id] = self.base
        return entries

    def _store_entry(self, parts: tuple[str, ...]) -> ModelEntry | None:
        """The store folder `parts` names, if `_scan` would list it."""
        root = self.model_dir
        folder = root.joinpath(*parts)
        if len(parts) == 2 and detect_kind(root / parts[0]) is not None:
            return None  # a folder inside a model is not listed as a model of its own
        if not folder.is_dir() or not is_inside(folder, root):
            return None
        return self._folder_entry(folder, "/".join(parts))

    def _folder_entry(self, folder: Path, model_id: str) -> ModelEntry | None:
        kind = detect_kind(folder)
        if kind is None:
            return None
        entry = ModelEntry(
            id=model_id,
            path=folder,
            owned_by=_owner(folder),
            created=_created(folder),
            kind=kind,
            # Only fine-tunes TuneForge wrote (they carry tuneforge.json) can be deleted, and
            # never the base (checked again, by folder, in `delete`).
            deletable=(folder / MANIFEST_FILE).is_file(),
        )
        return replace(entry, deletable=False) if self._is_base(entry) else entry

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
                model_id = folder.relative_to(root).as_posix()
                entry = self._folder_entry(folder, model_id)
                if entry is not None:
                    found[model_id] = entry
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


def _store_parts(model_id: str) -> tuple[str, ...] | None:
    """The path segments of a store id (`name` or `org/name`), or None if it cannot be one.

    Exactly what `_candidate_folders` lists: one or two segments, none empty or starting
    with "." (so no `..`, no hidden folders), no backslash or NUL; an absolute id has an
    empty first segment.
    """
    parts = tuple(model_id.split("/"))
    if not 1 <= len(parts) <= 2:
        return None
    for part in parts:
        if not part or part.startswith(".") or "\\" in part or "\x00" in part:
            return None
    return parts


def _admit(entry: ModelEntry, source: object, root: Path | None) -> ModelEntry | None:
    """A source's entry as served: inside the source's root, with weights, deletable when
    the source can delete."""
    if entry.path is None or (root is not None and not is_inside(entry.path, root)):
        return None
    kind = entry.kind or detect_kind(entry.path)
    if kind is None:
        return None
    return replace(entry, kind=kind, deletable=hasattr(source, "delete_model"), source=source)


def _owner(folder: Path) -> str:
    """`owned_by` for a store folder: "tuneforge" for fine-tunes it made, else "system"."""
    try:
        manifest = read_manifest(folder)
    except (OSError, ManifestError):
        return "tuneforge"
    if manifest is None:
        return "system"
    return str(manifest.owned_by or "tuneforge")
