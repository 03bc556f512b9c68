"""Tiny LoRA adapters for inference and server tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuneforge.modeling.tiny import build_model
from tuneforge.modeling.trainable import LoraSpec, apply_lora


def build_adapter(tokenizer, base_dir: Path, out: Path, seed: int, arch: str = "llama") -> Path:
    """A LoRA adapter with random (non-zero) weights, so it changes the base model's outputs."""
    model = build_model(tokenizer, arch=arch)  # same seed as the base: identical weights
    peft_model = apply_lora(model, LoraSpec(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(out, safe_serialization=True)
    (out / "tuneforge.json").write_text(json.dumps({"base_model": str(base_dir)}))
    return out
