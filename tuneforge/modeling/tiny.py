"""Tiny tokenizers and models built locally, for tests, benchmarks and the demo.

Nothing here downloads: a byte-level BPE tokenizer is trained with `tokenizers` on text
you pass in, and a randomly initialised causal LM of any supported architecture is built
from a small config. The results are ordinary Hugging Face objects and save as standard
model folders.

Example:
    >>> tok = train_tokenizer(["hello world", "goodbye world"], vocab_size=300)
    >>> model = build_model(tok, arch="llama", hidden_size=64, num_layers=2)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, PAD, IM_START, IM_END]

ARCHS = ("llama", "gpt2", "qwen2")


def train_tokenizer(
    corpus: Iterable[str], vocab_size: int = 1024, extra_special_tokens: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on `corpus`.

    The special tokens `<|endoftext|>` (EOS), `<|pad|>`, `<|im_start|>` and `<|im_end|>` get
    the first ids. No chat template is set: callers pick one.
    """
    specials = [*SPECIAL_TOKENS, *extra_special_tokens]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        model_max_length=4096,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
) -> PreTrainedModel:
    """Build a randomly initialised causal LM of architecture `arch` sized for `tokenizer`."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    vocab = len(tokenizer)
    ids = {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        config = AutoConfig.for_model(
            "gpt2",
            vocab_size=vocab,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
            n_inner=intermediate_size,
            **ids,
        )
    else:
        config = AutoConfig.for_model(
            arch,
            vocab_size=vocab,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=max(1, num_heads // 2),
            intermediate_size=intermediate_size or hidden_size * 4,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            **ids,
        )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def save_model_folder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: str | Path
) -> Path:
    """Save model (safetensors) and tokenizer into a standard Hugging Face folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
