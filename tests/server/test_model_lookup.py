"""Resolving a model id (every inference request does) is one indexed lookup, not a listing of
every organization's models: with 3,000 fine-tunes in the job store, `registry.resolve` never
calls `list_models`, runs at most three queries, and stays fast."""

from __future__ import annotations

import json
import shutil
import time

from sqlalchemy import event

from tuneforge.inference.registry import ModelRegistry
from tuneforge.jobs import JobStore
from tuneforge.jobs.db import Model
from tuneforge.jobs.spec import JobCreate
from tuneforge.server.jobs import JobsState

N_MODELS = 3000


def _store_with_fine_tunes(data_dir, tmp_path, n: int) -> tuple[JobStore, str]:
    """`n` fine-tune rows over 10 organizations (one real job; rows as the worker writes)."""
    store = JobStore.open(data_dir)
    train = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(12)
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = store.add_file("org-0", "train.jsonl", "fine-tune", train)
    job = store.create_job("org-0", JobCreate(model="tiny-llama", training_file=f.id))
    with store.session() as s:
        for k in range(10):
            store._ensure_org(s, f"org-{k}")
        s.add_all(
            Model(
                id=f"ft:tiny-llama:org-{i % 10}::m{i:05d}",
                org_id=f"org-{i % 10}",
                job_id=job.id,
                created_at=i,
                base_model="tiny-llama",
                path=str(store.job_dir(f"m{i:05d}") / "output"),
            )
            for i in range(n)
        )
    return store, job.id


def test_resolve_is_one_lookup_not_a_listing(model_store, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    store, _ = _store_with_fine_tunes(data_dir, tmp_path, N_MODELS)
    target = f"ft:tiny-llama:org-7::m{N_MODELS - 3:05d}"
    shutil.copytree(model_store / "acme" / "support:v1", store.job_dir(target[-6:]) / "output")
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
