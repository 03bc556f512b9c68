"""Resolving a model id (every inference request does) is one indexed lookup, not a listing of
every organization's models: with 3,000 fine-tunes in the job store, `registry.resolve` never
calls `list_models`, runs at most three queries, and stays fast."""

from __future__ import annotations

import shutil
import time

from sqlalchemy import event

from benchmarks.registry_lookup import seed_fine_tunes
from tuneforge.inference.registry import ModelRegistry
from tuneforge.jobs import JobStore
from tuneforge.server.jobs import JobsState

N_MODELS = 3000


def test_resolve_is_one_lookup_not_a_listing(model_store, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    store = JobStore.open(data_dir)
    target, folder = seed_fine_tunes(store, tmp_path, N_MODELS, base="tiny-llama")[N_MODELS - 3]
    assert target == f"ft:tiny-llama:org-7::m{N_MODELS - 3:06d}"
    shutil.copytree(model_store / "acme" / "support:v1", folder)
    state = JobsState(data_dir)
    state._store = store
    registry = ModelRegistry(model_store)
    registry.add_source(state, root=store.data_dir)

    listings = []
    real_list = JobsState.list_models
    monkeypatch.setattr(
        JobsState, "list_models", lambda self: listings.append(1) or real_list(self)
    )
    queries: list[str] = []
    for engine in {store.engine, store.read_engine}:
        event.listen(engine, "before_cursor_execute", lambda *a: queries.append(a[2]))

    entry = registry.resolve(target, "org-7")
    assert entry is not None and entry.id == target and entry.kind == "adapter"
    assert registry.resolve(target, "org-3") is None  # another organization's
    assert registry.resolve("ft:tiny-llama:org-7::nope", "org-7") is None
    assert listings == []
    assert 0 < len(queries) <= 3 * 3

    start = time.perf_counter()
    for _ in range(50):
        assert registry.resolve(target, "org-7") is not None
    per_lookup_ms = (time.perf_counter() - start) / 50 * 1000
    assert per_lookup_ms < 25, per_lookup_ms  # the listing took ~265 ms per lookup
    # Listing (GET /v1/models) still lists, by organization (rows without a folder: skipped).
    assert target in {e.id for e in registry.list("org-7")}
    assert target not in {e.id for e in registry.list("org-3")}
    store.close()
