"""Exporting a model folder to one GGUF file for llama.cpp and Ollama: the inverse of
`tuneforge.modeling.gguf.import_gguf`.

The file is written with llama.cpp's own `gguf` package, which also owns the names on both
sides: tensor names (`gguf.get_tensor_name_map`, the table transformers' GGUF reader, and so
`import_gguf`, maps back with) and metadata keys (the writer's `add_*` methods). What training
fixed travels with the weights, so llama.cpp renders and ends a chat as TuneForge did:

- the tokenizer as TuneForge loads it (`load_tokenizer`): vocabulary, merges, the llama.cpp
  pre-tokenizer that splits text as this one does, BOS / EOS / end-of-turn / pad ids, and the
  chat template (ChatML where the model had none, as in training);
- generation defaults (`general.sampling.*`) from the model's `generation_config.json`.

A LoRA run is merged into its base first (`folder.load_merged`). Llama-family models are
exported (Llama, Mistral and SmolLM as llama.cpp's `llama`, Qwen2 / Qwen2.5 as `qwen2`); others
are refused with the reason.

Example:
    >>> export_gguf("runs/bank-v1", "bank-v1.gguf", type="q8_0")
    GGUFExport(path=PosixPath('bank-v1.gguf'), architecture='llama', ...)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge import __version__
from tuneforge.fsutil import atomic_path
from tuneforge.modeling.folder import read_folder
from tuneforge.modeling.gguf import GGUFError

EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0")
# Hugging Face model_type -> llama.cpp architecture. llama.cpp runs Mistral and SmolLM as llama.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# Why the others are refused, for the error message.
_REFUSED_WHY = (
    "the export writes the Llama family only (Llama, Mistral, SmolLM, Qwen2/2.5), whose tensor "
    "layout and metadata it checks against llama.cpp and transformers' GGUF reader"
)
# A token-less id in a vocabulary padded up to the embedding's rows (llama.cpp's spelling).
_PAD_TOKEN = "[PAD{}]"
# OpenAI's (and TuneForge's server's) sampling defaults, written where the model sets none.
_DEFAULT_SAMPLING = {"temperature": 1.0, "top_p": 1.0}


class GGUFExportError(GGUFError):
    """A model that cannot be exported; the message is one line, fit for the command line."""


@dataclass(frozen=True)
class GGUFExport:
    """What an export wrote."""

    path: Path
    architecture: str  # llama.cpp's name, e.g. "llama"
    type: str  # f32 | f16 | bf16 | q8_0
    n_tensors: int
    n_bytes: int  # the file's size
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    end_of_turn_ids: list[int] = field(default_factory=list)
    stop_tokens: list[str] = field(default_factory=list)  # texts of eos and end-of-turn
    sampling: dict[str, float] = field(default_factory=dict)
    modelfile: Path | None = None  # with ollama=True
    ollama_command: str | None = None  # `ollama create NAME -f MODELFILE`


Progress = Callable[[int, int], None]  # (bytes written, bytes in all)


def export_gguf(
    source: str | Path,
    out: str | Path,
    type: str = "f16",
    progress: Progress | None = None,
    ollama: bool = False,
) -> GGUFExport:
    """Write the model folder `source` (full weights or a LoRA adapter) as the GGUF file `out`.

    `type`: f32 (exact), f16 / bf16 (2-D weights halved; norms stay f32, as llama.cpp's own
    converter does), q8_0 (2-D weights quantized in blocks of 32 with gguf's `quants`).
    The file is written to a temporary name and renamed into place: an interrupted export
    leaves nothing behind and never a half-written `out`. With `ollama`, an Ollama Modelfile
    is written next to it (`tuneforge.modeling.ollama`); its chat template is checked before
    anything is written.

    Raises:
        GGUFExportError: unknown type, unsupported architecture or tokenizer, not enough disk.
        ModelfileError: with `ollama`, a chat template Ollama's template cannot express.
    """
    import torch

    from tuneforge.modeling.folder import load_merged
    from tuneforge.modeling.ollama import chat_format, write_modelfile
    from tuneforge.tokenize.tokenizer import end_of_turn_ids, load_tokenizer

    source, out = Path(source), Path(out)
    if type not in EXPORT_TYPES:
        raise GGUFExportError(f"unknown type {type!r}: use one of {', '.join(EXPORT_TYPES)}")
    if out.is_dir():
        raise GGUFExportError(f"{out}: is a folder; give the .gguf file to write")
    folder = read_folder(source)
    if folder.kind is None:
        raise GGUFExportError(f"{source}: not a model folder (no safetensors weights)")
    arch = _architecture(_model_type(source, folder.loads_on))
    tok_source = str(source) if folder.has_tokenizer else folder.loads_on
    if tok_source is None:
        raise GGUFExportError(f"{source}: no tokenizer in the folder and no base to take it from")
    tokenizer = load_tokenizer(tok_source)
    chat = chat_format(tokenizer) if ollama else None
    model = load_merged(source, dtype=torch.float32)
    config = model.config
    _check_config(config)

    vocab = _vocabulary(tokenizer, model.get_input_embeddings().num_embeddings)
    eot = [i for i in end_of_turn_ids(tokenizer) if i != tokenizer.eos_token_id]
    sampling = generation_defaults(source)
    tensors = list(_tensors(model, arch))
    qtypes = [_qtype(type, array) for _, array in tensors]
    data_bytes = sum(_nbytes(a, q) for (_, a), q in zip(tensors, qtypes, strict=True))
    _check_disk(out, data_bytes + vocab.approx_bytes)

    import gguf

    file_type = {
        "f32": "ALL_F32",
        "f16": "MOSTLY_F16",
        "bf16": "MOSTLY_BF16",
        "q8_0": "MOSTLY_Q8_0",
    }
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(_model_name(source))
        writer.add_description(f"exported by TuneForge {__version__}")
        writer.add_file_type(gguf.LlamaFileType[file_type[type]])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, config)
        _add_tokenizer(writer, tokenizer, vocab, eot, config)
        writer.add_sampling_temp(sampling["temperature"])
        writer.add_sampling_top_p(sampling["top_p"])
        if "top_k" in sampling:
            writer.add_sampling_top_k(int(sampling["top_k"]))
        for (name, array), qtype in zip(tensors, qtypes, strict=True):
            shape = (
                gguf.quant_shape_to_byte_shape(array.shape, qtype) if _quantized(qtype) else None
            )
            dtype = np.uint8 if shape is not None else _FLOAT_NP[qtype]
            writer.add_tensor_info(
                name, shape or array.shape, np.dtype(dtype), _nbytes(array, qtype), qtype
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        done = 0
        for (_, array), qtype in zip(tensors, qtypes, strict=True):
            data = gguf.quants.quantize(array, qtype)
            writer.write_tensor_data(data)
            done += data.nbytes
            if progress is not None:
                progress(done, data_bytes)
        writer.close()
    result = GGUFExport(
        path=out,
        architecture=arch,
        type=type,
        n_tensors=len(tensors),
        n_bytes=out.stat().st_size,
        chat_template=tokenizer.chat_template,
        bos_token_id=vocab.bos,
        eos_token_id=tokenizer.eos_token_id,
        end_of_turn_ids=eot,
        stop_tokens=stop_texts(tokenizer, eot),
        sampling=sampling,
    )
    if chat is not None:
        path, command = write_modelfile(source, result, *chat)
        result = dataclasses.replace(result, modelfile=path, ollama_command=command)
    return result


# -- the model --------------------------------------------------------------------------------


def _model_type(source: Path, base: str | None) -> str:
    """config.json's model_type (an adapter's: its base's)."""
    config = source / "config.json"
    if not config.is_file() and base is not None:
        config = Path(base) / "config.json"
    try:
        return str(json.loads(config.read_text()).get("model_type", "?"))
    except (OSError, ValueError):
        from transformers import AutoConfig

        return str(AutoConfig.from_pretrained(base or str(source)).model_type)


def _architecture(model_type: str) -> str:
    if model_type not in ARCHITECTURES:
        raise GGUFExportError(
            f"architecture {model_type!r} is not supported for GGUF export: {_REFUSED_WHY} "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[model_type]


def _rope(config: Any) -> dict[str, Any]:
    """The rope parameters (transformers 5: `rope_parameters`; 4.x: `rope_theta` / `rope_scaling`)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    scaling = getattr(config, "rope_scaling", None)
    if scaling and "rope_type" not in params:
        params["rope_type"] = scaling.get("rope_type") or scaling.get("type")
    return params


def _check_config(config: Any) -> None:
    rope_type = _rope(config).get("rope_type") or "default"
    if rope_type != "default":
        raise GGUFExportError(
            f"rope scaling {rope_type!r} is not supported for GGUF export (plain RoPE only)"
        )
    if getattr(config, "mlp_bias", False):
        raise GGUFExportError("a Llama with MLP biases is not supported for GGUF export")


def _head_dim(config: Any) -> int:
    return int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )


def _add_hyperparameters(writer: Any, config: Any) -> None:
    """The keys transformers' GGUF reader maps back to this config (`GGUF_CONFIG_MAPPING`)."""
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(_head_dim(config))
    if _head_dim(config) * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))
    writer.add_vocab_size(int(config.vocab_size))


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs, per head.

    The inverse of transformers' `LlamaTensorProcessor._reverse_permute_weights` (which
    `import_gguf` runs); llama.cpp's `convert_hf_to_gguf.py` does the same. w: (n_head * hd, ...).
    """
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tensors(model: Any, arch: str) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array) for every weight, in the model's order; tied heads once."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue  # recomputed by llama.cpp from rope.freq_base
            raise GGUFExportError(f"weight {hf_name!r} has no GGUF name for {arch}")
        array = tensor.detach().to("cpu").float().numpy()
        if arch == "llama" and ".attn_q." in name:
            array = _permute(array, heads)
        elif arch == "llama" and ".attn_k." in name:
            array = _permute(array, kv_heads)
        yield name, np.ascontiguousarray(array)


def _qtype(type: str, array: np.ndarray) -> Any:
    """The GGML type of one tensor: 1-D tensors (norms, biases) stay F32, as llama.cpp's
    converter keeps them; rows whose length is no multiple of the block fall back to F16."""
    from gguf import GGMLQuantizationType as Q
    from gguf.constants import GGML_QUANT_SIZES

    if type == "f32" or array.ndim < 2:
        return Q.F32
    if type == "q8_0" and array.shape[-1] % GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16
    return {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[type]


def _quantized(qtype: Any) -> bool:
    from gguf import GGMLQuantizationType as Q

    return qtype not in (Q.F32, Q.F16)


def _nbytes(array: np.ndarray, qtype: Any) -> int:
    from gguf.constants import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return array.size // block * size


def _float_np() -> dict[Any, type]:
    from gguf import GGMLQuantizationType as Q

    return {Q.F32: np.float32, Q.F16: np.float16}


_FLOAT_NP = _float_np()


def _check_disk(out: Path, need: int) -> None:
    """Refuse before writing when the file would not fit (with a 5% margin)."""
    parent = out.parent if out.parent.exists() else Path.cwd()
    free = shutil.disk_usage(parent).free
    if free < need * 1.05:
        raise GGUFExportError(
            f"not enough disk space for {out.name}: needs about {need / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free in {parent}"
        )


def _model_name(source: Path) -> str:
    return source.resolve().name


# -- the tokenizer ------------------------------------------------------------------------------


@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE)
    pre: str  # tokenizer.ggml.pre: llama.cpp's name of the pre-tokenizer
    bos: int | None

    @property
    def approx_bytes(self) -> int:
        return sum(len(t) + 12 for t in self.tokens) + sum(len(m) + 8 for m in self.merges)


def _pre_tokenizer(backend: dict[str, Any]) -> str:
    """llama.cpp's name for the way this tokenizer splits text before BPE.

    The splits match transformers' `GGUF_PRE_TOKENIZER_SPLITS` (what `import_gguf` rebuilds a
    tokenizer from), so a round trip keeps the split; GPT-2's own regex is llama.cpp's "gpt-2",
    and single digits before it (SmolLM's tokenizer.json) its "smollm".
    """
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    digits_first = kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
    if digits_first and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        # The first name of each split in transformers' table is llama.cpp's canonical one.
        for name in ("qwen2", "llama-bpe", "gpt-4o", "tekken"):
            if GGUF_PRE_TOKENIZER_SPLITS.get(name) == regex:
                return name
    raise GGUFExportError(
        f"the tokenizer splits text in a way (pre-tokenizer {'+'.join(map(str, kinds))}) that "
        "TuneForge cannot name for llama.cpp: supported are GPT-2's, SmolLM's, Qwen2's and "
        "Llama 3's byte-level BPE"
    )


def _vocabulary(tokenizer: Any, n_vocab: int) -> _Vocab:
    """The byte-level BPE vocabulary as GGUF stores it, padded to the embedding's `n_vocab` rows."""
    from gguf import TokenType

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model") or {}
    decoder = (backend.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
        raise GGUFExportError(
            "only byte-level BPE tokenizers (GPT-2 style: SmolLM, Qwen, Llama 3) are exported "
            f"to GGUF; this one is {model.get('type')} with a {decoder} decoder"
        )
    pre = _pre_tokenizer(backend)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > n_vocab:
        raise GGUFExportError(
            f"the tokenizer has {len(by_id)} tokens but the model only {n_vocab} embeddings"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(_PAD_TOKEN.format(i))
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    bos = tokenizer.bos_token_id
    return _Vocab(tokens, [int(t) for t in types], merges, "gpt2", pre, bos)


def adds_token(tokenizer: Any, token_id: int | None, first: bool) -> bool:
    """Whether plain tokenization adds `token_id` at the start (first) or end of a text."""
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(ids) > len(plain) and (ids[0] if first else ids[-1]) == token_id


def _add_tokenizer(writer: Any, tokenizer: Any, vocab: _Vocab, eot: list[int], config: Any) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    bos = vocab.bos if vocab.bos is not None else getattr(config, "bos_token_id", None)
    for add, value in (
        (writer.add_bos_token_id, bos),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if value is not None:
            add(int(value))
    if eot:
        writer.add_eot_token_id(eot[0])
    # Chat prompts are tokenized without added tokens (the template writes its own BOS);
    # plain text as the tokenizer does it.
    writer.add_add_bos_token(adds_token(tokenizer, vocab.bos, first=True))
    writer.add_add_eos_token(adds_token(tokenizer, tokenizer.eos_token_id, first=False))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def stop_texts(tokenizer: Any, eot: list[int]) -> list[str]:
    """The texts of the tokens that end a reply: end-of-turn first, then EOS."""
    ids = [*eot, tokenizer.eos_token_id]
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in ids if i is not None))


def generation_defaults(source: Path) -> dict[str, float]:
    """Sampling defaults: the model's `generation_config.json` where it sets them, else
    OpenAI's (temperature 1, top_p 1), which TuneForge's server uses too."""
    path = source / "generation_config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        config = {}
    sampling = dict(_DEFAULT_SAMPLING)
    for key in ("temperature", "top_p", "top_k"):
        if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool):
            sampling[key] = float(config[key])
    return sampling
