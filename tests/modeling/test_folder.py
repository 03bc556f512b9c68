"""The model folder: manifest round trips, the reader's contract, the checkpoint layout, and
an import of the module that starts neither torch nor transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.modeling.folder import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    checkpoint_name,
    checkpoint_steps,
    detect_kind,
    export_model,
    is_model_folder,
    read_folder,
    read_manifest,
    write_manifest,
)
from tuneforge.tokenize.tokenizer import end_of_turn_ids, load_tokenizer

# A manifest as `FinetuneRecipe._write_manifest` writes it (keys in its order).
WRITTEN = {
    "tuneforge_version": "0.1.0",
    "base_model": "Qwen/Qwen2.5-0.5B",
    "parent_model": None,
    "task": "chat",
    "method": "lora",
    "data": {
        "train": {
            "path": "train.jsonl",
            "sha256": "ab" * 32,
            "examples": 10,
            "dropped_too_long": 0,
            "truncated": 1,
        },
        "replay": {
            "path": "old.jsonl",
            "sha256": "cd" * 32,
            "changed_since_parent": False,
            "examples": 2,
            "fraction": 0.1667,
        },
        "valid": {"path": "valid.jsonl", "sha256": "ef" * 32, "examples": 3},
    },
    "config": {"optim": {"lr": 0.0002}, "model": {"name_or_path": "Qwen/Qwen2.5-0.5B"}},
    "metrics": {"step": 5, "valid_loss": float("nan")},
}


def _adapter(folder: Path, base: str | None, weights: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA"} | ({"base_model_name_or_path": base} if base else {})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def _full(folder: Path, weights: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_manifest_round_trips_what_the_trainer_writes(tmp_path):
    write_manifest(tmp_path, WRITTEN)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert list(raw) == list(WRITTEN) and list(raw["data"]) == ["train", "replay", "valid"]
    assert raw["parent_model"] is None  # a None that was set is written
    assert raw["metrics"]["valid_loss"] != raw["metrics"]["valid_loss"]  # NaN stays NaN
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    assert manifest.base_model == "Qwen/Qwen2.5-0.5B" and manifest.lr == 0.0002
    assert manifest.train_data == Path("train.jsonl")
    assert manifest.data.replay.fraction == 0.1667
    # Written again, the file is the same.
    before = (tmp_path / MANIFEST_FILE).read_text()
    write_manifest(tmp_path, manifest)
    assert (tmp_path / MANIFEST_FILE).read_text() == before


def test_manifest_keeps_unknown_keys_and_sets_nothing_unasked(tmp_path):
    for content in ({"demo_base": {"layers": 2}}, {"old": True}, {"base_model": "gpt2"}):
        (tmp_path / MANIFEST_FILE).write_text(json.dumps(content))
        assert read_manifest(tmp_path).to_json() == content
    assert Manifest(base_model="gpt2").to_json() == {"base_model": "gpt2"}
    assert Manifest.of({"labels": ["a", "b"]}).labels == ["a", "b"]


def test_write_manifest_is_atomic(tmp_path, monkeypatch):
    write_manifest(tmp_path, {"base_model": "gpt2"})

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dump", broken)
    with pytest.raises(RuntimeError):
        write_manifest(tmp_path, {"base_model": "other"})
    assert read_manifest(tmp_path).base_model == "gpt2"
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_FILE]  # no temporary file left


def test_broken_manifests_raise_manifest_error(tmp_path):
    assert read_manifest(tmp_path) is None
    for text in ("{not json", "[1, 2]", '{"base_model": 3}'):
        (tmp_path / MANIFEST_FILE).write_text(text)
        with pytest.raises(ManifestError):
            read_manifest(tmp_path)
    assert issubclass(ManifestError, ValueError)
    with pytest.raises(ManifestError):
        Manifest.of({"parent_model": ["a"]})


def test_kind_needs_safetensors_weights(tmp_path):
    assert detect_kind(_full(tmp_path / "full")) == "full"
    assert detect_kind(_full(tmp_path / "bin", weights=False)) is None
    assert detect_kind(_adapter(tmp_path / "lora", "gpt2")) == "adapter"
    assert detect_kind(_adapter(tmp_path / "lora-bin", "gpt2", weights=False)) is None
    (tmp_path / "empty").mkdir()
    assert detect_kind(tmp_path / "empty") is None
    assert is_model_folder(tmp_path / "bin") and is_model_folder(tmp_path / "lora-bin")
    assert not is_model_folder(tmp_path / "empty")


def test_reader_of_an_adapter_keeps_both_bases(tmp_path):
    folder = _adapter(tmp_path / "v2", base="runs/v1")
    write_manifest(folder, {"base_model": "gpt2", "parent_model": "runs/v1"})
    found = read_folder(folder)
    assert found.kind == "adapter" and found.is_adapter and found.is_model
    assert found.adapter_base == "runs/v1" and found.base_model == "gpt2"
    assert found.parent_model == "runs/v1"
    assert found.loads_on == "runs/v1"  # what the adapter's weights apply to
    no_base = read_folder(_adapter(tmp_path / "bare", base=None))
    assert no_base.adapter_base is None and no_base.loads_on is None
    write_manifest(no_base.path, {"base_model": "gpt2"})
    assert read_folder(no_base.path).loads_on == "gpt2"


def test_reader_of_a_full_folder_and_of_a_plain_one(tmp_path):
    found = read_folder(_full(tmp_path / "full"))
    assert found.kind == "full" and not found.is_adapter and found.loads_on is None
    assert found.manifest is None and found.base_model is None and found.parent_model is None
    assert not found.has_tokenizer
    # Reading is lazy: a broken manifest fails where it is read, not where the folder is.
    (tmp_path / "full" / MANIFEST_FILE).write_text("{")
    broken = read_folder(tmp_path / "full")
    assert broken.kind == "full"
    with pytest.raises(ManifestError):
        _ = broken.base_model


def test_width_is_the_hidden_size_of_the_model_or_of_an_adapters_base(tmp_path, tiny_model_dir):
    assert read_folder(tiny_model_dir).width == 64
    adapter = _adapter(tmp_path / "a", base=str(tiny_model_dir))
    assert read_folder(adapter).width == 64
    assert read_folder(_adapter(tmp_path / "hub", base="gpt2")).width is None  # not a folder
    assert read_folder(tmp_path / "nothing").width is None


def test_checkpoint_layout(tmp_path):
    assert checkpoint_name(120) == "step-000120"
    assert checkpoint_steps(tmp_path / "missing") == []
    for step in (20, 100, 3):
        (tmp_path / checkpoint_name(step)).mkdir()
        (tmp_path / checkpoint_name(step) / "trainer_state.json").write_text("{}")
    (tmp_path / checkpoint_name(200)).mkdir()  # no trainer_state.json yet: incomplete
    (tmp_path / ".tmp-step-000300-1").mkdir()  # an interrupted save
    assert checkpoint_steps(tmp_path) == [(s, tmp_path / checkpoint_name(s)) for s in (3, 20, 100)]


def test_export_copies_the_model_without_training_state(tmp_path):
    source = _adapter(tmp_path / "run", "gpt2")
    write_manifest(source, {"base_model": "gpt2"})
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"):
        (source / name).write_bytes(b"x")
    (source / "checkpoints" / "step-000001").mkdir(parents=True)
    (source / "merged").mkdir()
    (source / "merged" / "config.json").write_text("{}")
    dest = export_model(source, tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "merged",
        MANIFEST_FILE,
    ]
    with pytest.raises(FileExistsError):
        export_model(source, dest)


def test_tokenizer_and_end_of_turn(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    assert tok.pad_token is not None and tok.chat_template
    (eot,) = end_of_turn_ids(tok)
    assert tok.convert_ids_to_tokens(eot) == "<|im_end|>"
    assert read_folder(tiny_model_dir).end_of_turn_ids == [eot]
    # An adapter without a tokenizer ends its replies where its base does.
    adapter = _adapter(tmp_path / "lora", str(tiny_model_dir))
    assert read_folder(adapter).end_of_turn_ids == [eot]
    tok.chat_template = None
    assert end_of_turn_ids(tok) == []


def test_importing_the_folder_module_starts_no_torch():
    code = (
        "import sys, tuneforge, tuneforge.modeling, tuneforge.modeling.folder; "
        "import tuneforge.jobs.worker; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
