"""The generation engine: one base model, its adapters and fine-tunes, continuous batching.

Memory: one base model; PEFT LoRA adapters are loaded onto it on first use (peft's
multi-adapter `PeftModel`) and evicted least-recently-used beyond `max_adapters`; merged
full fine-tunes are separate models, also LRU (`max_full_models`).

Scheduling (one background thread): every running sequence of the base model and of all its
adapters sits in one *lane* and is decoded together, one token per step, with a KV cache;
peft's `adapter_names` lets each row of the batch use its own adapter (or none). Between two
decode steps, finished or cancelled sequences leave the lane and waiting requests join it:
they are prefilled together (left-padded), and their caches are merged into the lane's by
left-padding to a common length. This is continuous batching on a left-padded dense cache:
simple and model-agnostic (any Hugging Face causal LM with a `DynamicCache`), at the cost of
copying the cache when sequences join. Each merged full model has a lane of its own.

    lane.cache: per layer keys/values (B, heads, T, head_dim), left-padded
    lane.mask:  (B, T) 1 for real tokens
    lane.positions: (B,) position id of each row's next token

Requests reach the thread through a bounded queue (`QueueFull` when full); results go back
to the asyncio side through `RequestStream`, an async iterator of `Delta` lists. A cancelled
stream (client gone) leaves the batch at the next step.

Example:
    >>> engine = Engine(EngineConfig(), ModelEntry(id="tiny", path=Path("models/tiny")))
    >>> engine.load(); engine.start()
    >>> stream = engine.submit(GenerationRequest(entry, ids, SamplingParams(max_tokens=8)))
    >>> async for deltas in stream: ...
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import inspect
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, DynamicCache

from tuneforge.inference.json_mode import START, JsonMachine, State
from tuneforge.inference.params import Delta, GenerationRequest, TokenLogprob
from tuneforge.inference.registry import ModelEntry
from tuneforge.inference.sampling import adjusted_logits, draw, probabilities
from tuneforge.inference.tokens import IncrementalDetokenizer, StopMatcher, token_bytes_table

log = logging.getLogger("tuneforge.inference")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class EngineError(Exception):
    """A request the engine cannot serve; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class QueueFull(Exception):
    """The waiting queue is at `max_queue`."""


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs (a subset of `ServerSettings`, which the engine does not import)."""

    dtype: str = "fp32"
    device: str | None = None
    max_batch_size: int = 16
    max_queue: int = 64
    max_adapters: int = 8
    max_full_models: int = 1
    torch_threads: int | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> EngineConfig:
        return cls(**{f: getattr(settings, f) for f in cls.__dataclass_fields__})


class RequestStream:
    """The asyncio side of one request: `async for deltas in stream` until all choices end.

    Created on the event loop (by `Engine.submit`); the engine thread pushes through
    `call_soon_threadsafe`. `cancel()` is safe from anywhere.
    """

    def __init__(self, n: int, prompt_tokens: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.n = n
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cancelled = False
        self.done = False
        self.remaining = n

    def _put(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def push(self, deltas: list[Delta]) -> None:
        self._put(deltas)

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self._put(None)

    def fail(self, error: Exception) -> None:
        if not self.done:
            self.done = True
            self._put(error)

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item


@dataclass
class _Seq:
    """One choice being generated."""

    stream: RequestStream
    index: int
    request: GenerationRequest
    adapter: str | None
    detok: IncrementalDetokenizer
    stop: StopMatcher
    generator: torch.Generator | None
    eos: frozenset[int]
    generated: list[int] = field(default_factory=list)
    json_state: State | None = None
    forced: list[int] = field(default_factory=list)
    forced_close: bool = False
    finished: bool = False


class _Model:
    """A loaded model (the base, with its adapters, or a merged fine-tune) and its lane."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        config = model.config
        self.context_length = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None)
            or 2048
        )
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
        # The lane: rows decoded together.
        self.seqs: list[_Seq] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T)
        self.positions: torch.Tensor | None = None  # (B,)
        self.next_tokens: torch.Tensor | None = None  # (B,)
        self.counts: torch.Tensor | None = None  # (B, V)


class Engine:
    """Loads models and runs the batching scheduler. Thread-safe public methods."""

    def __init__(self, config: EngineConfig, base: ModelEntry) -> None:
        self.config = config
        self.base = base
        self.ready = False
        self.failed: str | None = None
        self._base: _Model | None = None
        self._full: collections.OrderedDict[str, _Model] = collections.OrderedDict()
        self._tokenizers: dict[str, Any] = {}
        self._contexts: dict[str, int] = {}
        self._bytes: dict[int, list[bytes | None]] = {}
        self._single_byte: dict[int, dict[int, int]] = {}
        self._tok_lock = threading.Lock()
        self._cv = threading.Condition()
        self._waiting: collections.deque[tuple[GenerationRequest, RequestStream]] = (
            collections.deque()
        )
        self._stop = False
        self._thread: threading.Thread | None = None
        self._json = JsonMachine()
        self._joining_adapters: set[str] = set()
        self.device = torch.device(
            config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the base model (blocking). Sets `ready`, or `failed` with the reason."""
        from tuneforge.modeling.load import load_model_and_tokenizer

        if self.ready:
            return
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        source = str(self.base.path) if self.base.path is not None else self.base.hub_id
        try:
            model, tokenizer = load_model_and_tokenizer(
                source,
                dtype=self.config.dtype,
                trust_remote_code=self.config.trust_remote_code,
                device=self.device,
            )
        except Exception as err:
            self.failed = f"loading {source} failed: {err}"
            raise
        model.eval()
        self._base = _Model(model, tokenizer, self.device)
        self.ready = True

    def start(self) -> None:
        """Start the scheduler thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tuneforge-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        error = EngineError("the server is shutting down", status=503)
        for _, stream in self._waiting:
            stream.fail(error)
        for m in self._models():
            for seq in m.seqs:
                seq.stream.fail(error)

    # -- request-side helpers (called from handler threads) ------------------------------------

    def _tokenizer_for(self, entry: ModelEntry) -> Any:
        assert self._base is not None
        if entry.kind != "full" or entry.id == self.base.id or entry.path is None:
            return self._base.tokenizer  # adapters share the base tokenizer (and vocabulary)
        key = str(entry.path)
        if key not in self._tokenizers:
            from tuneforge.tokenize import ensure_chat_template

            with self._tok_lock:
                tok = AutoTokenizer.from_pretrained(
                    key, trust_remote_code=self.config.trust_remote_code
                )
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token or tok.unk_token
                ensure_chat_template(tok)
                self._tokenizers[key] = tok
        return self._tokenizers[key]

    def context_length(self, entry: ModelEntry) -> int:
        assert self._base is not None
        if entry.kind != "full" or entry.id == self.base.id or entry.path is None:
            return self._base.context_length
        key = str(entry.path)
        if key not in self._contexts:
            cfg = AutoConfig.from_pretrained(key, trust_remote_code=self.config.trust_remote_code)
            self._contexts[key] = int(
                getattr(cfg, "max_position_embeddings", None)
                or getattr(cfg, "n_positions", None)
                or 2048
            )
        return self._contexts[key]

    def vocab_size(self, entry: ModelEntry) -> int:
        return len(self._tokenizer_for(entry))

    def prepare_chat(
        self, entry: ModelEntry, messages: list[dict], tools: list | None = None
    ) -> list[int]:
        """Prompt ids for a chat, rendered with the model's own chat template.

        Raises ValueError for messages the template cannot render.
        """
        from tuneforge.tokenize.templates import render_prompt

        tokenizer = self._tokenizer_for(entry)
        with self._tok_lock:
            try:
                return list(render_prompt(messages, tokenizer, tools))
            except ValueError:
                raise
            except Exception as err:  # jinja2 TemplateError and friends
                raise ValueError(f"the chat template cannot render these messages: {err}") from err

    def encode(self, entry: ModelEntry, text: str) -> list[int]:
        tokenizer = self._tokenizer_for(entry)
        with self._tok_lock:
            return list(tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, entry: ModelEntry, ids: list[int]) -> str:
        return self._tokenizer_for(entry).decode(ids, skip_special_tokens=True)

    def chat_stop_ids(self, entry: ModelEntry) -> tuple[int, ...]:
        """End-of-turn tokens of chat templates present in the vocabulary."""
        vocab = self._tokenizer_for(entry).get_vocab()
        return tuple(vocab[t] for t in END_OF_TURN if t in vocab)

    def token_text(self, entry: ModelEntry, token_id: int) -> tuple[str, bytes]:
        """(text, raw bytes) of one token, for logprobs."""
        tokenizer = self._tokenizer_for(entry)
        raw = self._bytes_table(tokenizer)[token_id]
        if raw is None:
            text = tokenizer.convert_ids_to_tokens(token_id) or ""
            return text, text.encode("utf-8")
        return raw.decode("utf-8", errors="replace"), raw

    def queue_depth(self) -> int:
        return len(self._waiting)

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request (call on the event loop). Raises QueueFull or EngineError."""
        if not self.ready:
            raise EngineError("the model is still loading", status=503, code="model_loading")
        stream = RequestStream(request.n, len(request.prompt_ids))
        with self._cv:
            if self._stop:
                raise EngineError("the server is shutting down", status=503)
            if len(self._waiting) >= self.config.max_queue:
                raise QueueFull
            self._waiting.append((request, stream))
            self._cv.notify()
        return stream

    # -- tokens tables ------------------------------------------------------------------------

    def _bytes_table(self, tokenizer: Any) -> list[bytes | None]:
        key = id(tokenizer)
        if key not in self._bytes:
            table = token_bytes_table(tokenizer)
            self._bytes[key] = table
            single: dict[int, int] = {}
            for tid, raw in enumerate(table):
                if raw is not None and len(raw) == 1:
                    single.setdefault(raw[0], tid)
            self._single_byte[key] = single
        return self._bytes[key]

    # -- the scheduler thread ------------------------------------------------------------------

    def _models(self) -> list[_Model]:
        return ([self._base] if self._base else []) + list(self._full.values())

    def _running_rows(self) -> int:
        return sum(len(m.seqs) for m in self._models())

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and self._running_rows() == 0:
                    self._cv.wait()
                if self._stop:
                    return
            try:
                self._admit()
                for m in self._models():
                    if m.seqs:
                        self._guarded(m, self._decode_step)
            except Exception:  # keep serving; the failing lane was reset by _guarded
                log.exception("scheduler step failed")

    def _guarded(self, m: _Model, fn, *args) -> None:
        try:
            fn(m, *args)
        except Exception as err:
            log.exception("generation failed")
            error = EngineError(f"generation failed: {err}", status=500)
            for seq in m.seqs:
                seq.stream.fail(error)
            for item in args[0] if args else ():
                item[1].fail(error)
            self._reset_lane(m)

    @staticmethod
    def _reset_lane(m: _Model) -> None:
        m.seqs, m.cache, m.mask, m.positions, m.next_tokens, m.counts = (
            [],
            None,
            None,
            None,
            None,
            None,
        )

    def _admit(self) -> None:
        """Move waiting requests into lanes while rows are free; prefill them together."""
        joining: dict[int, tuple[_Model, list]] = {}
        self._joining_adapters: set[str] = set()  # adapters this round needs: not evictable
        free = self.config.max_batch_size - self._running_rows()
        while True:
            with self._cv:
                if not self._waiting:
                    break
                request, stream = self._waiting[0]
                if stream.cancelled:
                    self._waiting.popleft()
                    stream.finish()
                    continue
                busy = self._running_rows() > 0 or joining
                if request.n > free and busy:
                    break
                self._waiting.popleft()
            try:
                model, adapter = self._lane_for(request.model)
            except EngineError as err:
                stream.fail(err)
                continue
            except Exception as err:
                log.exception("loading %s failed", request.model.id)
                stream.fail(EngineError(f"loading model {request.model.id!r} failed: {err}"))
                continue
            if adapter is not None:
                self._joining_adapters.add(adapter)
            joining.setdefault(id(model), (model, []))[1].append((request, stream, adapter))
            free -= request.n
        for model, items in joining.values():
            self._guarded(model, self._prefill, items)

    # -- models and adapters ------------------------------------------------------------------

    def _lane_for(self, entry: ModelEntry) -> tuple[_Model, str | None]:
        assert self._base is not None
        if entry.id == self.base.id:
            self._base.last_used = time.monotonic()
            return self._base, None
        if entry.kind == "adapter":
            return self._base, self._adapter(entry)
        if entry.kind == "full":
            return self._full_model(entry), None
        raise EngineError(f"model {entry.id!r} has no servable weights")

    def _adapter(self, entry: ModelEntry) -> str:
        """Load (or touch) the adapter for `entry` on the base model; its peft name."""
        from peft import PeftModel

        base = self._base
        assert base is not None and entry.path is not None
        if not (entry.path / "adapter_model.safetensors").is_file():
            raise EngineError(f"model {entry.id!r}: only safetensors adapters are loaded")
        name = "a" + hashlib.sha1(str(entry.path.resolve()).encode()).hexdigest()[:12]
        if name in base.adapters:
            base.adapters.move_to_end(name)
            self._evict_adapters(self.config.max_adapters, keep=name)
            return name
        self._evict_adapters(self.config.max_adapters - 1)
        try:
            if not base.is_peft:
                base.model = PeftModel.from_pretrained(
                    base.model, str(entry.path), adapter_name=name, is_trainable=False
                )
                base.is_peft = True
            else:
                base.model.load_adapter(str(entry.path), adapter_name=name, is_trainable=False)
        except Exception as err:
            raise EngineError(
                f"model {entry.id!r} cannot be applied to base model {self.base.id!r}: {err}"
            ) from err
        base.model.eval()
        base.adapters[name] = str(entry.path)
        return name

    def _evict_adapters(self, limit: int, keep: str | None = None) -> None:
        """Unload least-recently-used adapters until at most `limit` remain.

        Adapters in use (decoding, or joining this round) stay: the limit is exceeded until
        they finish, and the next load or touch trims back down.
        """
        base = self._base
        assert base is not None
        in_use = {s.adapter for s in base.seqs} | self._joining_adapters | {keep}
        while len(base.adapters) > limit:
            victim = next((a for a in base.adapters if a not in in_use), None)
            if victim is None:
                return
            del base.adapters[victim]
            base.model.delete_adapter(victim)

    def _full_model(self, entry: ModelEntry) -> _Model:
        from tuneforge.modeling.load import load_model_and_tokenizer

        assert entry.path is not None
        key = str(entry.path)
        if key in self._full:
            self._full.move_to_end(key)
            return self._full[key]
        if self.config.max_full_models == 0:
            raise EngineError(f"model {entry.id!r}: serving merged models is disabled")
        while len(self._full) >= self.config.max_full_models:
            victim = next((k for k, m in self._full.items() if not m.seqs), None)
            if victim is None:
                raise EngineError(
                    "all merged-model slots are busy; retry shortly", status=503, code="busy"
                )
            del self._full[victim]
        model, tokenizer = load_model_and_tokenizer(
            key,
            dtype=self.config.dtype,
            trust_remote_code=self.config.trust_remote_code,
            device=self.device,
        )
        model.eval()
        loaded = _Model(model, tokenizer, self.device)
        self._tokenizers.setdefault(key, tokenizer)
        self._full[key] = loaded
        return loaded

    # -- prefill and decode ---------------------------------------------------------------------

    def _forward(self, m: _Model, ids, mask, positions, cache, adapters: list[str | None]):
        kwargs: dict[str, Any] = {m.cache_arg: cache}
        if m.is_peft:
            kwargs["adapter_names"] = [a or BASE_ADAPTER for a in adapters]
        with torch.inference_mode():
            out = m.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        return out.logits[:, -1, :].float()  # (B, V)

    def _prefill(self, m: _Model, items: list[tuple[GenerationRequest, RequestStream, Any]]):
        """Run the prompts of joining requests, sample their first tokens, merge into the lane."""
        dev = m.device
        lengths = [len(r.prompt_ids) for r, _, _ in items]
        width = max(lengths)
        ids = torch.full((len(items), width), m.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, (r, _, _) in enumerate(items):
            ids[i, width - lengths[i] :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - lengths[i] :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(dev), mask.to(dev), positions.to(dev)
        cache = DynamicCache()
        logits = self._forward(m, ids, mask, positions, cache, [a for _, _, a in items])
        # One row per choice: the n choices of a request share its prompt's cache.
        rows = [i for i, (r, _, _) in enumerate(items) for _ in range(r.n)]
        index = torch.tensor(rows, device=dev)
        if rows != list(range(len(items))):
            _select_rows(cache, index)
            mask, logits = mask[index], logits[index]
        seqs = []
        for r, stream, adapter in items:
            json_state = START if r.params.json_object else None
            if json_state is not None:
                self._bytes_table(m.tokenizer)  # build the token-bytes tables once
            for choice in range(r.n):
                generator = None
                if r.params.seed is not None:
                    generator = torch.Generator(device=dev)
                    generator.manual_seed((r.params.seed + choice) % (2**63))
                seqs.append(
                    _Seq(
                        stream=stream,
                        index=choice,
                        request=r,
                        adapter=adapter,
                        detok=IncrementalDetokenizer(m.tokenizer, r.prompt_ids),
                        stop=StopMatcher(r.params.stop),
                        generator=generator,
                        eos=frozenset() if r.params.ignore_eos else m.eos | set(r.extra_eos),
                        json_state=json_state,
                    )
                )
        counts = torch.zeros((len(seqs), logits.shape[-1]), device=dev)
        positions = mask.sum(-1)  # (B,) next position id per row
        tokens = self._sample(m, seqs, logits, counts)
        keep = [i for i, s in enumerate(seqs) if not s.finished]
        if not keep:
            return
        keep_t = torch.tensor(keep, device=dev)
        if len(keep) != len(seqs):
            _select_rows(cache, keep_t)
        self._merge(
            m,
            [seqs[i] for i in keep],
            cache,
            mask[keep_t],
            positions[keep_t],
            tokens[keep_t],
            counts[keep_t],
        )

    def _merge(self, m: _Model, seqs, cache, mask, positions, tokens, counts) -> None:
        """Append rows to the lane, left-padding the shorter cache to a common length."""
        if not m.seqs:
            m.seqs, m.cache, m.mask = seqs, cache, mask
            m.positions, m.next_tokens, m.counts = positions, tokens, counts
            return
        t_old, t_new = m.mask.shape[1], mask.shape[1]
        width = max(t_old, t_new)
        for old_layer, new_layer in zip(m.cache.layers, cache.layers, strict=True):
            old_layer.keys = torch.cat(
                [_pad_left(old_layer.keys, width), _pad_left(new_layer.keys, width)]
            )
            old_layer.values = torch.cat(
                [_pad_left(old_layer.values, width), _pad_left(new_layer.values, width)]
            )
        m.mask = torch.cat([_pad_left_2d(m.mask, width), _pad_left_2d(mask, width)])
        m.positions = torch.cat([m.positions, positions])
        m.next_tokens = torch.cat([m.next_tokens, tokens])
        m.counts = torch.cat([m.counts, counts])
        m.seqs = m.seqs + seqs

    def _decode_step(self, m: _Model) -> None:
        """Feed each row its last token, sample the next, drop finished rows."""
        live = [i for i, s in enumerate(m.seqs) if not s.stream.cancelled]
        for s in m.seqs:
            if s.stream.cancelled:
                s.finished = True
                s.stream.finish()
        if len(live) != len(m.seqs):
            self._keep_rows(m, live)
            if not m.seqs:
                return
        m.mask = torch.cat([m.mask, torch.ones_like(m.mask[:, :1])], dim=1)
        logits = self._forward(
            m,
            m.next_tokens[:, None],
            m.mask,
            m.positions[:, None],
            m.cache,
            [s.adapter for s in m.seqs],
        )
        m.positions = m.positions + 1
        m.next_tokens = self._sample(m, m.seqs, logits, m.counts)
        keep = [i for i, s in enumerate(m.seqs) if not s.finished]
        if len(keep) != len(m.seqs):
            self._keep_rows(m, keep)

    def _keep_rows(self, m: _Model, keep: list[int]) -> None:
        if not keep:
            self._reset_lane(m)
            return
        index = torch.tensor(keep, device=m.device)
        _select_rows(m.cache, index)
        m.mask, m.positions = m.mask[index], m.positions[index]
        m.next_tokens, m.counts = m.next_tokens[index], m.counts[index]
        m.seqs = [m.seqs[i] for i in keep]
        # Drop leading columns that are padding in every remaining row.
        trim = int(m.mask.argmax(dim=1).min())
        if trim > 0:
            for layer in m.cache.layers:
                layer.keys = layer.keys[:, :, trim:, :]
                layer.values = layer.values[:, :, trim:, :]
            m.mask = m.mask[:, trim:]

    # -- sampling and output ----------------------------------------------------------------

    def _sample(
        self, m: _Model, seqs: list[_Seq], logits: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        """Choose each row's next token, emit text, mark finished rows. Returns (B,) ids."""
        dev = logits.device
        params = [s.request.params for s in seqs]
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        penalised = adjusted_logits(
            logits,
            counts,
            torch.tensor([p.presence_penalty for p in params], device=dev),
            torch.tensor([p.frequency_penalty for p in params], device=dev),
        )
        temperature = torch.tensor([p.temperature for p in params], device=dev)
        probs = probabilities(
            penalised, temperature, torch.tensor([p.top_p for p in params], device=dev)
        )
        chosen: list[int] = []
        out: dict[int, tuple[RequestStream, list[Delta]]] = {}
        for row, seq in enumerate(seqs):
            token = self._choose(m, seq, row, probs, penalised)
            chosen.append(token)
            counts[row, token] += 1
            delta = self._advance(m, seq, token, raw_logprobs[row])
            out.setdefault(id(seq.stream), (seq.stream, []))[1].append(delta)
        for stream, deltas in out.values():
            stream.push(deltas)
            if stream.remaining == 0:
                stream.finish()
        return torch.tensor(chosen, device=dev)

    def _choose(self, m: _Model, seq: _Seq, row: int, probs, penalised) -> int:
        params = seq.request.params
        greedy = params.temperature == 0
        if seq.json_state is None:
            return draw(probs[row], penalised[row], greedy, seq.generator)
        table = self._bytes_table(m.tokenizer)
        single = self._single_byte[id(m.tokenizer)]
        budget = params.max_tokens - len(seq.generated)
        if not seq.forced:
            closing = self._json.closing(seq.json_state)
            if len(closing) >= budget and all(b in single for b in closing):
                seq.forced = [single[b] for b in closing]
                seq.forced_close = True
        if seq.forced:
            return seq.forced.pop(0)

        def allowed(token: int) -> bool:
            raw = table[token] if token < len(table) else None
            if raw is None:
                return False
            state = self._json.feed(seq.json_state, raw)
            if state is None:
                return False
            return self._json.is_done(state) or len(self._json.closing(state)) <= budget - 1

        token = draw(probs[row], penalised[row], greedy, seq.generator, allowed)
        if token is None:  # nothing valid: close the object now
            closing = self._json.closing(seq.json_state)
            seq.forced = [single[b] for b in closing if b in single]
            seq.forced_close = True
            return seq.forced.pop(0) if seq.forced else next(iter(m.eos), 0)
        return token

    def _advance(self, m: _Model, seq: _Seq, token: int, logprobs: torch.Tensor) -> Delta:
        """Record `token` for `seq`; the Delta to send (text, logprobs, finish reason)."""
        params = seq.request.params
        seq.generated.append(token)
        seq.stream.completion_tokens += 1
        delta = Delta(index=seq.index, token_ids=[token])
        if params.logprobs is not None:
            top: tuple[tuple[int, float], ...] = ()
            if params.logprobs > 0:
                values, ids = logprobs.topk(params.logprobs)
                top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
            delta.logprobs.append(TokenLogprob(token, float(logprobs[token]), top))
        finish = None
        text = ""
        stop_hit = False
        if token in seq.eos and not seq.forced_close:
            finish = "stop"  # the EOS token itself adds no text
        else:
            text, stop_hit = seq.stop.add(seq.detok.add(token))
            if stop_hit:
                finish = "stop"
            elif seq.json_state is not None:
                raw = self._bytes_table(m.tokenizer)[token] or b""
                seq.json_state = self._json.feed(seq.json_state, raw)
                if self._json.is_done(seq.json_state):
                    finish = "length" if seq.forced_close else "stop"
        if finish is None and len(seq.generated) >= params.max_tokens:
            finish = "length"
        if finish is not None:
            if not stop_hit:  # release what the detokenizer and stop matcher held back
                tail, stop_hit = seq.stop.add(seq.detok.flush())
                text += tail
                if stop_hit:
                    finish = "stop"
                else:
                    text += seq.stop.flush()
            seq.finished = True
            seq.stream.remaining -= 1
            delta.finish_reason = finish  # type: ignore[assignment]
        delta.text = text
        return delta


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, width, D), zeros on the left."""
    missing = width - t.shape[2]
    if missing == 0:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3]))
    return torch.cat([pad, t], dim=2)


def _pad_left_2d(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[1]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros((t.shape[0], missing)), t], dim=1)


def _select_rows(cache: DynamicCache, index: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)
