"""`export_gguf` / `tuneforge models export --format gguf` on tiny models, read back by
independent readers: transformers' GGUF loader (logits), `tuneforge models import` (weights),
llama.cpp's `gguf` reader (metadata). llama.cpp itself runs the exports in
test_gguf_llama_cpp.py; the real SmolLM2 in test_gguf_export_real.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tests.training.train_data import make_config, run_recipe, write_chat_jsonl
from tuneforge.cli import app
from tuneforge.modeling import gguf_export
from tuneforge.modeling.folder import load_merged
from tuneforge.modeling.gguf import read_gguf_info
from tuneforge.modeling.gguf_export import GGUFExportError, export_gguf
from tuneforge.modeling.ollama import CHATML, ModelfileError, chat_format
from tuneforge.modeling.tiny import build_model, save_model_folder
from tuneforge.tokenize.tokenizer import load_tokenizer

# Largest logit difference allowed, as a fraction of the largest logit: f32 is exact; f16
# keeps 11 significant bits, bf16 8, q8_0 8 per block of 32 with an f16 scale.
TOLERANCE = {"f32": 1e-6, "f16": 2e-3, "bf16": 2e-2, "q8_0": 4e-2}
TEXTS = ["Hello! How can I help you with your account today?", "Your balance is 120 dollars."]
SYSTEM = "You are a helpful bank assistant."  # write_chat_jsonl's, on every example


def gguf_field(path: Path, key: str):
    field = GGUFReader(path).fields.get(key)
    return None if field is None else field.contents()


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    return save_model_folder(build_model(tiny_tokenizer, arch="qwen2"), tiny_tokenizer, path)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA fine-tune of the tiny Llama (4 steps), as `tuneforge train` leaves it."""
    root = tmp_path_factory.mktemp("lora-run")
    train = write_chat_jsonl(root / "train.jsonl", 32, seed=0)
    cfg = make_config(tiny_model_dir, train, root / "run", method="lora", **{"optim.lr": 1e-2})
    assert run_recipe(cfg).result.status == "completed"
    return root / "run"


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("type", ["f32", "f16", "bf16", "q8_0"])
def test_transformers_reads_the_gguf_back_with_the_same_logits(
    arch, type, tiny_model_dir, tiny_qwen2_dir, tmp_path
):
    folder = tiny_model_dir if arch == "llama" else tiny_qwen2_dir
    out = export_gguf(folder, tmp_path / "m.gguf", type=type).path
    assert read_gguf_info(out).architecture == arch
    assert read_gguf_info(out).quantization == type.upper()
    tok = load_tokenizer(str(folder))
    ref = logits(AutoModelForCausalLM.from_pretrained(folder), tok)
    read = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    got = logits(read, tok)
    worst = (got - ref).abs().max() / ref.abs().max()
    assert worst <= TOLERANCE[type], f"{type}: {worst:.2e}"
    if type != "f32":
        assert worst > 0  # really the narrower type, not an f32 file under another name


def test_a_lora_run_exports_merged_and_imports_back_to_the_same_weights(lora_run, tmp_path):
    out = export_gguf(lora_run, tmp_path / "run.gguf", type="f32")
    merged = load_merged(lora_run, dtype=torch.float32)
    imported = tmp_path / "imported"
    result = CliRunner().invoke(app, ["models", "import", str(out.path), "-o", str(imported)])
    assert result.exit_code == 0, result.output
    weights = load_file(imported / "model.safetensors")
    expected = merged.state_dict()
    assert set(weights) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name
    # The merged weights are not the base's: the fine-tune travelled.
    base = AutoModelForCausalLM.from_pretrained(read_base(lora_run)).state_dict()
    assert any(not torch.equal(base[n], expected[n]) for n in expected)

    # The tokenizer and the chat template come back as training used them.
    tok, back = load_tokenizer(str(lora_run)), AutoTokenizer.from_pretrained(imported)
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi there"}]
    assert back.chat_template == tok.chat_template
    for text in [*TEXTS, "  spaces\tand\nnewlines 123", "<|im_start|>user\nhi<|im_end|>"]:
        assert back(text, add_special_tokens=False).input_ids == tok(text).input_ids, text
    assert back.apply_chat_template(chat, add_generation_prompt=True) == tok.apply_chat_template(
        chat, add_generation_prompt=True
    )
    # Replies end at <|im_end|> (end of turn) or <|endoftext|> (EOS).
    stops = json.loads((imported / "generation_config.json").read_text())["eos_token_id"]
    assert stops == tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])


def read_train(run: Path) -> str:
    return Path(
        json.loads((run / "tuneforge.json").read_text())["data"]["train"]["path"]
    ).read_text()


def read_base(run: Path) -> str:
    return json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_metadata_says_how_to_prompt_and_where_a_reply_ends(tiny_model_dir, tmp_path):
    out = export_gguf(tiny_model_dir, tmp_path / "m.gguf", type="q8_0")
    tok = load_tokenizer(str(tiny_model_dir))
    im_end, eos = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert out.end_of_turn_ids == [im_end] and out.eos_token_id == eos
    assert out.stop_tokens == ["<|im_end|>", "<|endoftext|>"]
    path = out.path
    assert gguf_field(path, "tokenizer.ggml.model") == "gpt2"
    assert gguf_field(path, "tokenizer.ggml.pre") == "gpt-2"
    assert gguf_field(path, "tokenizer.ggml.eot_token_id") == im_end
    assert gguf_field(path, "tokenizer.ggml.eos_token_id") == eos
    assert gguf_field(path, "tokenizer.ggml.add_bos_token") is False
    # The tiny tokenizer has no template of its own: the ChatML default training used.
    assert gguf_field(path, "tokenizer.chat_template") == tok.chat_template
    assert "<|im_start|>" in tok.chat_template
    assert gguf_field(path, "general.sampling.temp") == 1.0
    assert read_gguf_info(path).eos_token_ids == [eos, im_end]
    # Special tokens are control tokens (llama.cpp never splits them, never prints them).
    types = gguf_field(path, "tokenizer.ggml.token_type")
    assert types[im_end] == 3 and types[eos] == 3


def test_refuses_other_architectures_and_types_before_writing(
    tiny_gpt2_dir, tiny_model_dir, tmp_path
):
    with pytest.raises(GGUFExportError, match="architecture 'gpt2' is not supported"):
        export_gguf(tiny_gpt2_dir, tmp_path / "m.gguf")
    with pytest.raises(GGUFExportError, match="unknown type 'q4'"):
        export_gguf(tiny_model_dir, tmp_path / "m.gguf", type="q4")
    with pytest.raises(GGUFExportError, match="not a model folder"):
        export_gguf(tmp_path, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_refuses_when_the_disk_is_too_small(tiny_model_dir, tmp_path, monkeypatch):
    real = gguf_export.shutil.disk_usage

    def small(path):  # the disk as it is, with 100 kB free
        return real(path)._replace(free=100_000)

    monkeypatch.setattr(gguf_export.shutil, "disk_usage", small)
    with pytest.raises(GGUFExportError, match=r"not enough disk space for m.gguf: needs about"):
        export_gguf(tiny_model_dir, tmp_path / "m.gguf", type="f32")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_export_leaves_the_old_file_and_no_temporary(tiny_model_dir, tmp_path):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"old")

    def interrupt(done, total):
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny_model_dir, target, type="f32", progress=interrupt)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_ollama_modelfile_has_template_stops_and_the_training_system_prompt(lora_run, tmp_path):
    out = str(tmp_path / "Bank Bot.gguf")
    args = ["models", "export", str(lora_run), "--format", "gguf", "--ollama", "--type", "q8_0"]
    result = CliRunner().invoke(app, [*args, "-o", out])
    assert result.exit_code == 0, result.output
    modelfile = tmp_path / "Bank Bot.Modelfile"
    assert f"ollama create bank-bot -f '{modelfile}'" in result.output
    text = modelfile.read_text()
    assert text.startswith("FROM ./Bank Bot.gguf\n")
    assert f'TEMPLATE """{CHATML.go_template()}"""' in text
    assert f'SYSTEM """{SYSTEM}"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER temperature 1" in text
    assert read_gguf_info(tmp_path / "Bank Bot.gguf").quantization == "Q8_0"


def test_ollama_template_is_checked_against_the_models_own(tiny_model_dir, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    fmt, default_system = chat_format(tok)
    assert fmt is CHATML and default_system is None
    chat = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "V"},
    ]
    assert fmt.render(chat, True) == tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    # A template of another shape is refused before anything is written.
    folder = tmp_path / "alpaca"
    tok.chat_template = (
        "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant:\n{% endif %}"
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    save_model_folder(model, tok, folder)
    with pytest.raises(ModelfileError, match="chat template is not one TuneForge can write"):
        export_gguf(folder, tmp_path / "a.gguf", ollama=True)
    assert not (tmp_path / "a.gguf").exists()
    # Without --ollama the GGUF is written, carrying that template for llama.cpp.
    out = export_gguf(folder, tmp_path / "a.gguf").path
    assert gguf_field(out, "tokenizer.chat_template") == tok.chat_template


def test_cli_exports_a_fine_tuned_model_of_the_store_by_its_id(lora_run, tmp_path):
    from tuneforge.jobs import JobCreate, JobStore

    store = JobStore.open(tmp_path / "data")
    train = tmp_path / "upload.jsonl"
    train.write_text(read_train(lora_run))
    f = store.add_file("org-a", "train.jsonl", "fine-tune", train)
    job = store.create_job("org-a", JobCreate(model="tiny-base", training_file=f.id))
    model_id = store.register_model(job, lora_run)
    out = tmp_path / "ft.gguf"
    args = ["models", "export", model_id, "--format", "gguf", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert f"{model_id} -> {out} (llama, f16," in result.output
    assert read_gguf_info(out).quantization == "F16"
    missing = CliRunner().invoke(app, [*args[:2], "ft:nope", *args[3:]])
    assert missing.exit_code == 1 and "neither a model folder nor" in missing.output


@pytest.mark.real_model
def test_smollm2s_template_is_chatml_with_its_default_system_prompt(smollm2):
    # Its template writes <|im_start|>, which is also its BOS token: part of the turn, since
    # tokenizing adds no BOS (and the GGUF says add_bos false).
    fmt, default_system = chat_format(load_tokenizer(str(smollm2)))
    assert fmt is CHATML
    assert default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
