"""Which models are in memory: the base, its LoRA adapters, merged fine-tunes, their vocabs.

Memory: one base model; PEFT LoRA adapters are loaded onto it on first use (peft's
multi-adapter `PeftModel`) and evicted least-recently-used beyond `max_adapters`; merged
full fine-tunes are separate models, also LRU (`max_full_models`). Models and adapters in
use (decoding, or joining this admission round) are never evicted.

Loading a merged model takes seconds to minutes, so it happens on a loader thread, which
hands the result to the scheduler through `on_loaded`; the scheduler makes it resident with
`install`. Everything derived from a model's tokenizer (a `Vocab`) is kept per model key
and dropped when that model is evicted; a few more are kept for requests tokenized before
their model is loaded.

`Residency` is driven by the scheduler thread, except `vocab` (and what reads it), which
handler threads call.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoConfig, DynamicCache

from tuneforge.inference.lanes import Lane
from tuneforge.inference.params import EngineError
from tuneforge.inference.quantize import quantize_for_decoding
from tuneforge.inference.registry import ModelEntry
from tuneforge.inference.vocab import Vocab
from tuneforge.tokenize.tokenizer import load_tokenizer

log = logging.getLogger("tuneforge.inference")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
BASE_KEY = ""  # model key of the base model (merged models use their folder)
_SPARE_VOCABS = 2  # vocabs kept for models neither resident nor loading


def context_of(config: Any) -> int:
    """A model config's context length (2048 when it names none)."""
    return int(
        getattr(config, "max_position_embeddings", None)
        or getattr(config, "n_positions", None)
        or 2048
    )


class LoadedModel:
    """A loaded model (the base, with its adapters, or a merged fine-tune) and its lane."""

    def __init__(self, model: Any, vocab: Vocab, device: torch.device) -> None:
        self.model = model
        self.vocab = vocab
        self.tokenizer = tokenizer = vocab.tokenizer
        self.device = device
        config = model.config
        self.context_length = context_of(config)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        eos = {tokenizer.eos_token_id, getattr(config, "eos_token_id", None)}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for value in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            eos.add(value)
        self.eos = frozenset(int(t) for t in eos if t is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.adapters: collections.OrderedDict[str, str] = collections.OrderedDict()  # name->path
        self.is_peft = False
        # transformers >= 5.2x names the cache argument `cache`; older versions `past_key_values`.
        forward = inspect.signature(type(model).forward).parameters
        self.cache_arg = "cache" if "cache" in forward else "past_key_values"
        self.last_used = time.monotonic()
        self.lane = Lane()  # rows decoded together (the engine's sequences)

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        adapters: list[str | None],
    ) -> torch.Tensor:
        """One forward pass extending `cache`; the last position's logits (B, V), float32.

        `adapters` names each row's adapter (None: the base alone)."""
        kwargs: dict[str, Any] = {self.cache_arg: cache}
        if self.is_peft:
            kwargs["adapter_names"] = [a or BASE_ADAPTER for a in adapters]
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        return out.logits[:, -1, :].float()  # (B, V)


class Residency:
    """The models in memory and their vocabs; loads and evicts them."""

    def __init__(
        self,
        base: ModelEntry,
        device: torch.device,
        on_loaded: Callable[[str, LoadedModel | Exception], None],
        *,
        dtype: str = "fp32",
        quantize: str = "none",
        trust_remote_code: bool = False,
        max_adapters: int = 8,
        max_full_models: int = 1,
    ) -> None:
        self.base_entry = base
        self.device = device
        self.dtype = dtype
        self.quantize = quantize
        self.trust_remote_code = trust_remote_code
        self.max_adapters = max_adapters
        self.max_full_models = max_full_models
        self._on_loaded = on_loaded
        self.quantized = (0, 0)  # the base's linear layers quantized, and left as they were
        self.base: LoadedModel | None = None
        # Merged models by key (their folder), LRU; touched by the scheduler thread only.
        self.full: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        # Merged models being loaded, by key, in the order their loads started.
        self.loading: dict[str, threading.Thread] = {}
        # Per model key (BASE_KEY or a merged model's folder): tokenizer-derived data, LRU.
        self._vocabs: collections.OrderedDict[str, Vocab] = collections.OrderedDict()
        self._vocab_lock = threading.Lock()  # creating / dropping vocabs
        self._joining_adapters: set[str] = set()  # this round needs them: not evictable
        self._joining_models: set[str] = set()  # this round needs them: not evictable

    @property
    def base_source(self) -> str | None:
        """Where the base model is loaded from: its folder, or its hub id."""
        entry = self.base_entry
        return str(entry.path) if entry.path is not None else entry.hub_id

    def models(self) -> list[LoadedModel]:
        """Every resident model, the base first."""
        return ([self.base] if self.base else []) + list(self.full.values())

    def load_base(self) -> None:
        """Load the base model (blocking)."""
        from tuneforge.modeling import load as loading

        model, tokenizer = loading.load_model_and_tokenizer(
            self.base_source,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            device=self.device,
        )
        model.eval()
        self.quantized = quantize_for_decoding(model, self.quantize)
        vocab = Vocab(tokenizer, context_of(model.config))
        self._vocabs[BASE_KEY] = vocab
        self.base = LoadedModel(model, vocab, self.device)

    # -- vocabs (called from handler threads) --------------------------------------------------

    def key(self, entry: ModelEntry) -> str:
        """The model an entry runs on: the base (itself or with an adapter) or a merged one."""
        if entry.kind != "full" or entry.id == self.base_entry.id or entry.path is None:
            return BASE_KEY
        return str(entry.path)

    def vocab(self, entry: ModelEntry) -> Vocab:
        """The tokenizer-derived data of `entry`'s model, loaded from its folder on first use.

        Besides the base and resident merged models, a few more stay cached (requests are
        tokenized before their model is loaded); beyond that the least recently used go.
        """
        assert self.base is not None
        key = self.key(entry)
        with self._vocab_lock:
            vocab = self._vocabs.get(key)
            if vocab is not None:
                self._vocabs.move_to_end(key)
                return vocab
        tok = load_tokenizer(key, trust_remote_code=self.trust_remote_code)
        cfg = AutoConfig.from_pretrained(key, trust_remote_code=self.trust_remote_code)
        with self._vocab_lock:
            vocab = self._vocabs.setdefault(key, Vocab(tok, context_of(cfg)))
            self._trim_vocabs()
        return vocab

    def _trim_vocabs(self) -> None:
        """Drop vocabs of models neither resident nor loading beyond a small spare (locked)."""
        keep = {BASE_KEY, *list(self.full), *list(self.loading)}
        spare = len(self._vocabs) - len(keep) - _SPARE_VOCABS
        for key in [k for k in self._vocabs if k not in keep][: max(0, spare)]:
            del self._vocabs[key]

    # -- placing a request (scheduler thread) --------------------------------------------------

    def new_round(self) -> None:
        """An admission round starts: nothing is joining yet."""
        self._joining_adapters = set()
        self._joining_models = set()

    def place(self, entry: ModelEntry) -> tuple[LoadedModel, str | None] | str:
        """The model (and adapter) to run `entry` on, or the key of a load to wait for.

        Raises EngineError for an entry that cannot be served (now)."""
        assert self.base is not None
        if entry.id == self.base_entry.id:
            self.base.last_used = time.monotonic()
            return self.base, None
        if entry.kind == "adapter":
            name = self._adapter(entry)
            self._joining_adapters.add(name)
            return self.base, name
        if entry.kind == "full":
            model = self._full_model(entry)
            if isinstance(model, str):
                return model
            self._joining_models.add(self.key(entry))
            return model, None
        raise EngineError(f"model {entry.id!r} has no servable weights")

    # -- adapters ------------------------------------------------------------------------------

    def _adapter(self, entry: ModelEntry) -> str:
        """Load (or touch) the adapter for `entry` on the base model; its peft name."""
        from peft import PeftModel

        base = self.base
        assert base is not None and entry.path is not None
        if not (entry.path / "adapter_model.safetensors").is_file():
            raise EngineError(f"model {entry.id!r}: only safetensors adapters are loaded")
        name = "a" + hashlib.sha1(str(entry.path.resolve()).encode()).hexdigest()[:12]
        if name in base.adapters:
            base.adapters.move_to_end(name)
            self._evict_adapters(self.max_adapters, keep=name)
            return name
        self._evict_adapters(self.max_adapters - 1)
        try:
            if not base.is_peft:
                base.model = PeftModel.from_pretrained(
                    base.model, str(entry.path), adapter_name=name, is_trainable=False
                )
                base.is_peft = True
            else:
                base.model.load_adapter(str(entry.path), adapter_name=name, is_trainable=False)
        except Exception as err:
            # peft injects the adapter's layers before it reads the weights: take them out
            # again, or the base and every other adapter would answer through them.
            log.warning("adapter %s failed to load: %s", entry.id, err)
            self._discard_adapter(name)
            raise EngineError(
                f"model {entry.id!r} cannot be applied to base model {self.base_entry.id!r}: "
                f"its adapter files are unreadable or do not fit the base ({type(err).__name__})"
            ) from err
        base.model.eval()
        base.adapters[name] = str(entry.path)
        return name

    def _discard_adapter(self, name: str) -> None:
        """Remove a half-loaded adapter `name` from the base model."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        base = self.base
        assert base is not None
        if base.is_peft:
            if name in base.model.peft_config:
                base.model.delete_adapter(name)
            return
        # The first adapter: the base is still a plain model, with LoRA layers wrapped around
        # some of its modules in place. Put the original modules back.
        for parent in list(base.model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer):
                    setattr(parent, child_name, child.get_base_layer())
        if hasattr(base.model, "peft_config"):
            del base.model.peft_config

    def _evict_adapters(self, limit: int, keep: str | None = None) -> None:
        """Unload least-recently-used adapters until at most `limit` remain.

        Adapters in use (decoding, or joining this round) stay: the limit is exceeded until
        they finish, and the next load or touch trims back down.
        """
        base = self.base
        assert base is not None
        in_use = {s.adapter for s in base.lane.rows} | self._joining_adapters | {keep}
        while len(base.adapters) > limit:
            victim = next((a for a in base.adapters if a not in in_use), None)
            if victim is None:
                return
            del base.adapters[victim]
            base.model.delete_adapter(victim)

    # -- merged models -------------------------------------------------------------------------

    def _full_model(self, entry: ModelEntry) -> LoadedModel | str:
        """The resident merged model for `entry`, or the key of a load to wait for.

        A load is started on a loader thread if none is under way, after evicting an idle
        model to make room. When every slot is taken by a load, the request waits for one of
        them (then tries again); when they are all decoding, it is refused (503).
        """
        assert entry.path is not None
        key = str(entry.path)
        if key in self.full:
            self.full.move_to_end(key)
            return self.full[key]
        if key in self.loading:
            return key
        if self.max_full_models == 0:
            raise EngineError(f"model {entry.id!r}: serving merged models is disabled")
        while len(self.full) + len(self.loading) >= self.max_full_models:
            busy = self._joining_models | {k for k, m in self.full.items() if m.lane.rows}
            victim = next((k for k in self.full if k not in busy), None)
            if victim is None and self.loading:
                return next(iter(self.loading))
            if victim is None:
                raise EngineError(
                    "all merged-model slots are busy; retry shortly", status=503, code="busy"
                )
            self._evict_full(victim)
        thread = threading.Thread(
            target=self._load_full, args=(key, entry), name="tuneforge-loader", daemon=True
        )
        self.loading[key] = thread
        thread.start()
        return key

    def _load_full(self, key: str, entry: ModelEntry) -> None:
        """Loader thread: load a merged model and hand it to the scheduler."""
        from tuneforge.modeling import load as loading

        result: LoadedModel | Exception
        try:
            model, tokenizer = loading.load_model_and_tokenizer(
                key,
                dtype=self.dtype,
                trust_remote_code=self.trust_remote_code,
                device=self.device,
            )
            model.eval()
            quantize_for_decoding(model, self.quantize)
            with self._vocab_lock:  # one tokenizer per model: reuse the request side's
                vocab = self._vocabs.setdefault(key, Vocab(tokenizer, context_of(model.config)))
            result = LoadedModel(model, vocab, self.device)
        except Exception:
            log.exception("loading %s failed", entry.id)
            result = EngineError(f"loading model {entry.id!r} failed")
        self._on_loaded(key, result)

    def install(self, key: str, result: LoadedModel | Exception) -> None:
        """Scheduler thread: a load ended; its model becomes resident, or its vocab goes."""
        self.loading.pop(key, None)
        if isinstance(result, LoadedModel):
            self.full[key] = result
        else:
            with self._vocab_lock:
                self._vocabs.pop(key, None)

    def _evict_full(self, key: str) -> None:
        """Forget a merged model and everything derived from it."""
        del self.full[key]
        with self._vocab_lock:
            self._vocabs.pop(key, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
