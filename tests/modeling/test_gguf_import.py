"""`import_gguf` / `tuneforge models import` on the registry's real SmolLM2-135M-Instruct GGUF.

The imported folder is checked with plain `transformers` only (no TuneForge code loads it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.modeling.gguf import GGUFImportError, import_gguf, read_gguf_info, sha256_file

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model_and_tokenizer(smollm2):
    return AutoModelForCausalLM.from_pretrained(smollm2), AutoTokenizer.from_pretrained(smollm2)


@pytest.mark.real_model
def test_import_writes_a_folder_plain_transformers_loads(smollm2, model_and_tokenizer):
    model, tok = model_and_tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.float32
    # SmolLM2 ties lm_head to embed_tokens: the folder has no separate lm_head tensor.
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with safe_open(smollm2 / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names
    assert not any(n.startswith("lm_head") for n in names)
    assert tok.model_max_length == 8192
    assert not list(smollm2.parent.glob(f".{smollm2.name}.*"))  # no staging folder left


@pytest.mark.real_model
def test_chat_template_is_the_models_own(model_and_tokenizer):
    _, tok = model_and_tokenizer
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's default system prompt
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


@pytest.mark.real_model
def test_manifest_records_the_dequantized_source(smollm2, smollm2_gguf):
    manifest = json.loads((smollm2 / "tuneforge.json").read_text())
    assert manifest["architecture"] == "llama"
    assert manifest["dtype"] == "fp32"
    source = manifest["import"]
    assert source["format"] == "gguf"
    assert source["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source["sha256"] == sha256_file(smollm2_gguf)
    assert source["quantization"] == "Q4_1"
    assert source["dequantized"] is True
    assert source["tensor_types"]["Q4_1"] > 200


@pytest.mark.real_model
def test_greedy_chat_reply_stops_at_end_of_turn(smollm2, model_and_tokenizer):
    model, tok = model_and_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert json.loads((smollm2 / "generation_config.json").read_text())["eos_token_id"] == im_end
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False)
    reply = out[0, ids.shape[1] :].tolist()
    assert reply[-1] == im_end and len(reply) < 40  # stopped by itself, at end of turn
    assert "Paris" in tok.decode(reply, skip_special_tokens=True)


@pytest.mark.real_model
def test_logits_match_transformers_reading_the_gguf(smollm2_gguf, model_and_tokenizer):
    model, tok = model_and_tokenizer
    direct = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.real_model
def test_cli_imports_in_bf16_and_says_it_dequantized(smollm2_gguf, tmp_path):
    out = tmp_path / "smollm2-bf16"
    result = CliRunner().invoke(
        app, ["models", "import", str(smollm2_gguf), "-o", str(out), "--dtype", "bf16"]
    )
    assert result.exit_code == 0, result.output
    assert "dequantized from Q4_1" in result.output
    assert str(out) in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    assert json.loads((out / "tuneforge.json").read_text())["dtype"] == "bf16"


# Refusals: no real model needed ------------------------------------------------------------


def _write_gguf(path: Path, arch: str) -> Path:
    """A minimal valid GGUF file of architecture `arch` with one F32 tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_refuses_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("not a model")
    with pytest.raises(GGUFImportError, match="not a GGUF file"):
        import_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_an_unsupported_architecture(tmp_path):
    path = _write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    assert read_gguf_info(path).architecture == "rwkv6"
    with pytest.raises(GGUFImportError, match="architecture 'rwkv6' is not supported"):
        import_gguf(path, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["rwkv.gguf"]  # nothing staged or left


def test_refuses_a_non_empty_out_dir(tmp_path):
    path = _write_gguf(tmp_path / "tiny.gguf", "llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GGUFImportError, match="not an empty folder"):
        import_gguf(path, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_refuses_a_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    result = CliRunner().invoke(app, ["models", "import", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "not a GGUF file" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("source", ["Qwen/Qwen2.5-0.5B-Instruct", "FOLDER"])
def test_cli_says_a_hub_id_or_folder_needs_no_import(tmp_path, source):
    source = str(tmp_path) if source == "FOLDER" else source
    result = CliRunner().invoke(app, ["models", "import", source])
    assert result.exit_code == 0, result.output
    assert "no import needed" in result.output
