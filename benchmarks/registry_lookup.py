"""Model lookup per request: by id (now) vs listing every organization's models (before).

Every chat / completions request resolves its `model`. Before issue 11 that listed every
fine-tune and checkpoint of every organization from the job store and then picked one id;
now it is one indexed query. This builds a job store with N fine-tunes (default 3,000 over
10 organizations) and times both paths in one run, on the same registry:

    python benchmarks/registry_lookup.py               # 3,000 fine-tunes
    python benchmarks/registry_lookup.py --models 10000 --lookups 200

Prints ms per lookup for each path and the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tuneforge.inference.registry import ModelRegistry
from tuneforge.jobs import JobStore
from tuneforge.jobs.db import Model
from tuneforge.jobs.spec import JobCreate
from tuneforge.server.jobs import JobsState


def seed_fine_tunes(
    store: JobStore, work_dir: Path, n: int, *, orgs: int = 10, base: str = "tiny"
) -> list[tuple[str, Path]]:
    """`n` fine-tune rows over `orgs` organizations, as the worker writes them, behind one
    real job (its training file written in `work_dir`). No folder is made.

    Returns each model's (id, folder): `ft:{base}:org-{i % orgs}::m{i:06d}`, its folder
    `store.job_dir("m{i:06d}") / "output"`.
    """
    train = work_dir / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(12)
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = store.add_file("org-0", "train.jsonl", "fine-tune", train)
    job = store.create_job("org-0", JobCreate(model=base, training_file=f.id))
    models = [
        (f"ft:{base}:org-{i % orgs}::m{i:06d}", store.job_dir(f"m{i:06d}") / "output")
        for i in range(n)
    ]
    with store.session() as s:
        for k in range(orgs):
            store._ensure_org(s, f"org-{k}")
        s.add_all(
            Model(
                id=model_id,
                org_id=f"org-{i % orgs}",
                job_id=job.id,
                created_at=i,
                base_model=base,
                path=str(folder),
            )
            for i, (model_id, folder) in enumerate(models)
        )
    return models


def build_store(root: Path, n: int, orgs: int = 10) -> tuple[JobStore, str]:
    """A job store with `n` fine-tune rows; one of them (returned) has a model folder (the
    files lookups check for; nothing is loaded)."""
    store = JobStore.open(root / "data")
    target, folder = seed_fine_tunes(store, root, n, orgs=orgs)[n - 3]
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return store, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=3000, help="Fine-tunes in the store.")
    parser.add_argument("--lookups", type=int, default=50, help="Lookups timed per path.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store, target = build_store(root, args.models)
        (root / "models").mkdir()
        state = JobsState(root / "data")
        state._store = store
        registry = ModelRegistry(root / "models")
        registry.add_source(state, root=store.data_dir)
        org = target.split(":")[2]

        def by_listing() -> object:  # what resolve did before: list everything, pick one
            return registry._all(refresh=False).get(target)

        def by_id() -> object:
            return registry.resolve(target, org)

        results = {}
        for name, lookup in (("listing (before)", by_listing), ("by id (now)", by_id)):
            assert lookup() is not None
            start = time.perf_counter()
            for _ in range(args.lookups):
                lookup()
            results[name] = (time.perf_counter() - start) / args.lookups * 1000
        store.close()
    print(f"model lookup with {args.models} fine-tunes ({args.lookups} lookups each)")
    for name, ms in results.items():
        print(f"  {name:<18} {ms:9.3f} ms/lookup")
    before, now = results["listing (before)"], results["by id (now)"]
    print(f"  speed-up           {before / now:9.1f}x")


if __name__ == "__main__":
    main()
