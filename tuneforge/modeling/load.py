"""Loading base models and tokenizers, and finding the parts of any Hugging Face causal LM."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from tuneforge.tokenize.tokenizer import load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str | torch.dtype = "fp32",
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, object]:
    """Load a causal LM and its tokenizer from a local folder or a Hub id.

    Only safetensors weights are accepted. A tokenizer without a pad token gets the EOS (or
    UNK) token as pad; one without a chat template gets the default ChatML template.

    Example:
        >>> model, tok = load_model_and_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", "bf16")
    """
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # ensure_chat_template added <|im_start|> / <|im_end|> (e.g. to GPT-2's vocabulary).
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model, tokenizer


def load_classifier(
    name_or_path: str,
    labels: list[str],
    dtype: str | torch.dtype = "fp32",
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, object]:
    """Load a causal LM's body under a new sequence-classification head, and its tokenizer.

    The result is the architecture's `*ForSequenceClassification` (e.g.
    `LlamaForSequenceClassification`): the LM head is dropped and a linear `score` head over
    the last non-pad token is initialised. `id2label` / `label2id` go into the config, so the
    saved folder loads with `AutoModelForSequenceClassification` and names its classes.

    Example:
        >>> model, tok = load_classifier("Qwen/Qwen2.5-0.5B", ["billing", "card", "other"])
    """
    from transformers import AutoModelForSequenceClassification

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    # The head pools the last token that is not padding: it must know the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model, tokenizer


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip training wrappers (DDP/FSDP `.module`, torch.compile `._orig_mod`).

    The result is the user-facing model (a `PreTrainedModel` or a `PeftModel`), whose
    state dict and `save_pretrained` carry no wrapper prefixes.
    """
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or (
            hasattr(model, "module") and type(model).__name__ in ("FullyShardedDataParallel",)
        ):
            model = model.module
        else:
            return model


def base_causal_lm(model: nn.Module) -> PreTrainedModel:
    """The Hugging Face `*ForCausalLM` inside `model` (through PEFT and training wrappers)."""
    model = unwrap_model(model)
    if hasattr(model, "get_base_model"):  # PeftModel: LoRA layers are injected in place
        model = model.get_base_model()
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"expected a Hugging Face causal LM, got {type(model).__name__}")
    return model


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Split a causal LM into its transformer body (ids -> hidden states) and its LM head.

    Uses the `base_model_prefix` every Hugging Face model declares (`model` for Llama/Qwen,
    `transformer` for GPT-2), so it works for any AutoModelForCausalLM.
    """
    lm = base_causal_lm(model)
    body = lm.base_model
    head = lm.get_output_embeddings()
    if body is lm or head is None:
        raise TypeError(f"{type(lm).__name__}: cannot separate the transformer body from its head")
    return body, head


_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "transformer.h",
    "transformer.layers",
    "transformer.blocks",
    "gpt_neox.layers",
    "model.decoder.layers",
    "layers",
)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Find the stack of transformer blocks of any causal LM.

    Returns (qualified name inside the `*ForCausalLM`, ModuleList). Known layouts are tried
    first (model.layers, transformer.h, gpt_neox.layers, ...); otherwise the largest
    ModuleList whose children all share one class is taken.
    """
    lm = base_causal_lm(model)
    for path in _BLOCK_PATHS:
        node: nn.Module | None = lm
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return path, node
    best: tuple[str, nn.ModuleList] | None = None
    best_size = 0
    for name, module in lm.named_modules():
        uniform = isinstance(module, nn.ModuleList) and len({type(m) for m in module}) == 1
        if uniform:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise TypeError(f"{type(lm).__name__}: no stack of transformer blocks found")
    return best
