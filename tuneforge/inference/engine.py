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

Loading a merged model takes seconds to minutes, so it happens on a loader thread: requests
for a model still loading wait off the queue (they count against `max_queue`), every other
lane keeps decoding, and the model joins the scheduler when it is ready. Everything derived
from a model's tokenizer (the tokenizer itself, its context length, the token-bytes tables)
is kept per model key in a `_Vocab`, and dropped when that model is evicted.

Prompts are measured before they are tokenized: `encode` and `prepare_chat` take a
`max_chars` bound and refuse longer text (`PromptTooLong`) without touching the tokenizer.
Tokenizing takes no engine lock: a fast tokenizer only mutates itself when a call asks for
truncation or padding other than what it has, and the engine never asks, so with both
switched off once (`_Vocab`) concurrent calls only read it (and run in parallel: the Rust
tokenizer releases the GIL). One long prompt never makes a short one wait.

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
from tuneforge.inference.sampling import adjusted_logits, biased_logits, draw, probabilities
from tuneforge.inference.tokens import IncrementalDetokenizer, StopMatcher, token_bytes_table

log = logging.getLogger("tuneforge.inference")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
_BASE_KEY = ""  # `_vocabs` key of the base model (merged models use their folder)
_SPARE_VOCABS = 2  # vocabs kept for models neither resident nor loading
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class EngineError(Exception):
    """A request the engine cannot serve; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class QueueFull(Exception):
    """The waiting queue is at `max_queue`."""


class PromptTooLong(EngineError):
    """Prompt text longer than `limit` characters: refused before tokenization."""

    def __init__(self, chars: int, limit: int) -> None:
        super().__init__(
            f"the prompt has {chars} characters, more than the {limit} that can fit",
            code="context_length_exceeded",
        )
        self.chars, self.limit = chars, limit


def _context_of(config: Any) -> int:
    return int(
        getattr(config, "max_position_embeddings", None)
        or getattr(config, "n_positions", None)
        or 2048
    )


class _Vocab:
    """What one model's tokenizer gives: the tokenizer, context length, token-bytes tables.

    The tables are built on first use (JSON mode, logprobs, the prompt-size bound) and live
    exactly as long as this object, which the engine drops with its model.
    """

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        # transformers' fast tokenizer resets the backend's truncation / padding on each call
        # when they differ from the call's (none): switch them off now, once, so that every
        # later call only reads the backend and calls from several threads cannot collide.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            if backend.truncation is not None:
                backend.no_truncation()
            if backend.padding is not None:
                backend.no_padding()
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._bytes: list[bytes | None] | None = None
        self._single: dict[int, int] | None = None
        self._max_chars: int | None = None

    def bytes_table(self) -> list[bytes | None]:
        """The raw bytes of every token id (None for special tokens)."""
        if self._bytes is None:
            table = token_bytes_table(self.tokenizer)
            single: dict[int, int] = {}
            for tid, raw in enumerate(table):
                if raw is not None and len(raw) == 1:
                    single.setdefault(raw[0], tid)
            self._single, self._bytes = single, table
        return self._bytes

    def single_byte(self) -> dict[int, int]:
        """byte value -> a token id that is exactly that byte."""
        self.bytes_table()
        assert self._single is not None
        return self._single

    def max_token_chars(self) -> int:
        """The most characters one token can stand for: a text of `k * max_token_chars()`
        characters has more than `k` tokens (a character is at least one byte, and special
        tokens match their own text)."""
        if self._max_chars is None:
            longest = max((len(raw) for raw in self.bytes_table() if raw), default=1)
            added = getattr(self.tokenizer, "added_tokens_decoder", {}).values()
            longest = max([longest, *(len(getattr(t, "content", "")) for t in added)])
            # Unicode composition (NFC / NFKC, e.g. Qwen's normalizer) can turn up to three
            # characters into one before tokenization: allow for it.
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            normalizer = repr(getattr(backend, "normalizer", None))
            if "NFC" in normalizer or "NFKC" in normalizer:
                longest *= 3
            self._max_chars = max(1, longest)
        return self._max_chars


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

    def __init__(self, model: Any, vocab: _Vocab, device: torch.device) -> None:
        self.model = model
        self.vocab = vocab
        self.tokenizer = tokenizer = vocab.tokenizer
        self.device = device
        config = model.config
        self.context_length = _context_of(config)
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
        # Merged models by key (their folder), LRU; touched by the scheduler thread only.
        self._full: collections.OrderedDict[str, _Model] = collections.OrderedDict()
        # Per model key (_BASE_KEY or a merged model's folder): tokenizer-derived data, LRU.
        self._vocabs: collections.OrderedDict[str, _Vocab] = collections.OrderedDict()
        self._vocab_lock = threading.Lock()  # creating / dropping vocabs
        self._cv = threading.Condition()
        self._waiting: collections.deque[tuple[GenerationRequest, RequestStream]] = (
            collections.deque()
        )
        # Merged models being loaded -> the requests parked until they are (scheduler thread);
        # loader threads hand results back through `_loaded` (under `_cv`).
        self._loading: dict[str, list[tuple[GenerationRequest, RequestStream]]] = {}
        self._loaded: list[tuple[str, _Model | Exception]] = []
        self._parked = 0  # requests in `_loading`, counted against max_queue (under `_cv`)
        self._joining_models: set[str] = set()
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
        vocab = _Vocab(tokenizer, _context_of(model.config))
        self._vocabs[_BASE_KEY] = vocab
        self._base = _Model(model, vocab, self.device)
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
        for parked in list(self._loading.values()):
            for _, stream in parked:
                stream.fail(error)
        for m in self._models():
            for seq in m.seqs:
                seq.stream.fail(error)

    # -- request-side helpers (called from handler threads) ------------------------------------

    @staticmethod
    def _key(entry: ModelEntry, base_id: str) -> str:
        """The model an entry runs on: the base (itself or with an adapter) or a merged one."""
        if entry.kind != "full" or entry.id == base_id or entry.path is None:
            return _BASE_KEY
        return str(entry.path)

    def _vocab(self, entry: ModelEntry) -> _Vocab:
        """The tokenizer-derived data of `entry`'s model, loaded from its folder on first use.

        Besides the base and resident merged models, a few more stay cached (requests are
        tokenized before their model is loaded); beyond that the least recently used go.
        """
        assert self._base is not None
        key = self._key(entry, self.base.id)
        with self._vocab_lock:
            vocab = self._vocabs.get(key)
            if vocab is not None:
                self._vocabs.move_to_end(key)
                return vocab
        from tuneforge.tokenize import ensure_chat_template

        tok = AutoTokenizer.from_pretrained(key, trust_remote_code=self.config.trust_remote_code)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        ensure_chat_template(tok)
        cfg = AutoConfig.from_pretrained(key, trust_remote_code=self.config.trust_remote_code)
        with self._vocab_lock:
            vocab = self._vocabs.setdefault(key, _Vocab(tok, _context_of(cfg)))
            self._trim_vocabs()
        return vocab

    def _trim_vocabs(self) -> None:
        """Drop vocabs of models neither resident nor loading beyond a small spare (locked)."""
        keep = {_BASE_KEY, *list(self._full), *list(self._loading)}
        spare = len(self._vocabs) - len(keep) - _SPARE_VOCABS
        for key in [k for k in self._vocabs if k not in keep][: max(0, spare)]:
            del self._vocabs[key]

    def max_token_chars(self, entry: ModelEntry) -> int:
        """The most characters one token of `entry`'s vocabulary stands for."""
        return self._vocab(entry).max_token_chars()

    def context_length(self, entry: ModelEntry) -> int:
        return self._vocab(entry).context_length

    def vocab_size(self, entry: ModelEntry) -> int:
        return len(self._vocab(entry).tokenizer)

    def prepare_chat(
        self,
        entry: ModelEntry,
        messages: list[dict],
        tools: list | None = None,
        max_chars: int | None = None,
    ) -> list[int]:
        """Prompt ids for a chat, rendered with the model's own chat template.

        The template is rendered to text first (no tokenizer call) and text over `max_chars`
        is refused (`PromptTooLong`) before it is tokenized. Raises ValueError for messages
        the template cannot render.
        """
        from tuneforge.tokenize.templates import normalize_messages, render_text

        tokenizer = self._vocab(entry).tokenizer
        try:
            (text,) = render_text([normalize_messages(messages)], tokenizer, tools, True)
        except ValueError:
            raise
        except Exception as err:  # jinja2 TemplateError and friends
            raise ValueError(f"the chat template cannot render these messages: {err}") from err
        _check_length(text, max_chars)
        # As `render_prompt` (what training uses): templates write their own BOS.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, entry: ModelEntry, text: str, max_chars: int | None = None) -> list[int]:
        """Token ids of `text`; over `max_chars` characters it is refused untokenized."""
        tokenizer = self._vocab(entry).tokenizer
        _check_length(text, max_chars)
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, entry: ModelEntry, ids: list[int]) -> str:
        return self._vocab(entry).tokenizer.decode(ids, skip_special_tokens=True)

    def chat_stop_ids(self, entry: ModelEntry) -> tuple[int, ...]:
        """End-of-turn tokens of chat templates present in the vocabulary."""
        vocab = self._vocab(entry).tokenizer.get_vocab()
        return tuple(vocab[t] for t in END_OF_TURN if t in vocab)

    def token_text(self, entry: ModelEntry, token_id: int) -> tuple[str, bytes]:
        """(text, raw bytes) of one token, for logprobs."""
        vocab = self._vocab(entry)
        tokenizer = vocab.tokenizer
        raw = vocab.bytes_table()[token_id]
        if raw is None:
            text = tokenizer.convert_ids_to_tokens(token_id) or ""
            return text, text.encode("utf-8")
        return raw.decode("utf-8", errors="replace"), raw

    def queue_depth(self) -> int:
        return len(self._waiting) + self._parked

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request (call on the event loop). Raises QueueFull or EngineError."""
        if not self.ready:
            raise EngineError("the model is still loading", status=503, code="model_loading")
        stream = RequestStream(request.n, len(request.prompt_ids))
        with self._cv:
            if self._stop:
                raise EngineError("the server is shutting down", status=503)
            if len(self._waiting) + self._parked >= self.config.max_queue:
                raise QueueFull
            self._waiting.append((request, stream))
            self._cv.notify()
        return stream

    # -- the scheduler thread ------------------------------------------------------------------

    def _models(self) -> list[_Model]:
        return ([self._base] if self._base else []) + list(self._full.values())

    def _running_rows(self) -> int:
        return sum(len(m.seqs) for m in self._models())

    def _run(self) -> None:
        while True:
            with self._cv:
                while (
                    not self._stop
                    and not self._waiting
                    and not self._loaded
                    and self._running_rows() == 0
                ):
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
        self._install_loaded()
        joining: dict[int, tuple[_Model, list]] = {}
        self._joining_adapters: set[str] = set()  # adapters this round needs: not evictable
        self._joining_models = set()  # merged models this round needs: not evictable
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
                lane = self._lane_for(request, stream)
            except EngineError as err:
                stream.fail(err)
                continue
            except Exception:
                log.exception("loading %s failed", request.model.id)
                stream.fail(EngineError(f"loading model {request.model.id!r} failed"))
                continue
            if lane is None:  # parked until its merged model is loaded
                continue
            model, adapter = lane
            if adapter is not None:
                self._joining_adapters.add(adapter)
            joining.setdefault(id(model), (model, []))[1].append((request, stream, adapter))
            free -= request.n
        for model, items in joining.values():
            self._guarded(model, self._prefill, items)

    # -- models and adapters ------------------------------------------------------------------

    def _lane_for(
        self, request: GenerationRequest, stream: RequestStream
    ) -> tuple[_Model, str | None] | None:
        """The lane (and adapter) for a request, or None when it was parked for a load."""
        assert self._base is not None
        entry = request.model
        if entry.id == self.base.id:
            self._base.last_used = time.monotonic()
            return self._base, None
        if entry.kind == "adapter":
            return self._base, self._adapter(entry)
        if entry.kind == "full":
            model = self._full_model(entry)
            if isinstance(model, str):  # wait for that load to finish
                with self._cv:
                    self._loading[model].append((request, stream))
                    self._parked += 1
                return None
            self._joining_models.add(self._key(entry, self.base.id))
            return model, None
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
            # peft injects the adapter's layers before it reads the weights: take them out
            # again, or the base and every other adapter would answer through them.
            log.warning("adapter %s failed to load: %s", entry.id, err)
            self._discard_adapter(name)
            raise EngineError(
                f"model {entry.id!r} cannot be applied to base model {self.base.id!r}: its "
                f"adapter files are unreadable or do not fit the base ({type(err).__name__})"
            ) from err
        base.model.eval()
        base.adapters[name] = str(entry.path)
        return name

    def _discard_adapter(self, name: str) -> None:
        """Remove a half-loaded adapter `name` from the base model."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        base = self._base
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
        base = self._base
        assert base is not None
        in_use = {s.adapter for s in base.seqs} | self._joining_adapters | {keep}
        while len(base.adapters) > limit:
            victim = next((a for a in base.adapters if a not in in_use), None)
            if victim is None:
                return
            del base.adapters[victim]
            base.model.delete_adapter(victim)

    def _full_model(self, entry: ModelEntry) -> _Model | str:
        """The resident merged model for `entry`, or the key of a load to wait for.

        A load is started on a loader thread if none is under way, after evicting an idle
        model to make room. When every slot is taken by a load, the request waits for one of
        them (then tries again); when they are all decoding, it is refused (503).
        """
        assert entry.path is not None
        key = str(entry.path)
        if key in self._full:
            self._full.move_to_end(key)
            return self._full[key]
        if key in self._loading:
            return key
        if self.config.max_full_models == 0:
            raise EngineError(f"model {entry.id!r}: serving merged models is disabled")
        while len(self._full) + len(self._loading) >= self.config.max_full_models:
            busy = self._joining_models | {k for k, m in self._full.items() if m.seqs}
            victim = next((k for k in self._full if k not in busy), None)
            if victim is None and self._loading:
                return next(iter(self._loading))
            if victim is None:
                raise EngineError(
                    "all merged-model slots are busy; retry shortly", status=503, code="busy"
                )
            self._evict_full(victim)
        self._loading[key] = []
        threading.Thread(
            target=self._load_full, args=(key, entry), name="tuneforge-loader", daemon=True
        ).start()
        return key

    def _load_full(self, key: str, entry: ModelEntry) -> None:
        """Loader thread: load a merged model and hand it to the scheduler."""
        from tuneforge.modeling import load as loading

        result: _Model | Exception
        try:
            model, tokenizer = loading.load_model_and_tokenizer(
                key,
                dtype=self.config.dtype,
                trust_remote_code=self.config.trust_remote_code,
                device=self.device,
            )
            model.eval()
            with self._vocab_lock:  # one tokenizer per model: reuse the request side's
                vocab = self._vocabs.setdefault(key, _Vocab(tokenizer, _context_of(model.config)))
            result = _Model(model, vocab, self.device)
        except Exception:
            log.exception("loading %s failed", entry.id)
            result = EngineError(f"loading model {entry.id!r} failed")
        with self._cv:
            self._loaded.append((key, result))
            self._cv.notify_all()

    def _install_loaded(self) -> None:
        """Scheduler thread: make finished loads resident; their parked requests go first."""
        with self._cv:
            done, self._loaded = self._loaded, []
        assert self._base is not None
        for key, result in done:
            failed, retry = [], []
            with self._cv:
                parked = self._loading.pop(key, [])
                self._parked -= len(parked)
                if isinstance(result, _Model):
                    self._full[key] = result
                    retry = parked
                else:  # requests for this model fail; those waiting for a slot try again
                    for item in parked:
                        mine = self._key(item[0].model, self.base.id) == key
                        (failed if mine else retry).append(item)
                self._waiting.extendleft(reversed(retry))
            if isinstance(result, Exception):
                with self._vocab_lock:
                    self._vocabs.pop(key, None)
                for _, stream in failed:
                    stream.fail(result)

    def _evict_full(self, key: str) -> None:
        """Forget a merged model and everything derived from it."""
        del self._full[key]
        with self._vocab_lock:
            self._vocabs.pop(key, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

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
                m.vocab.bytes_table()  # build the token-bytes tables once
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
            biased_logits(logits, [p.logit_bias for p in params]),
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
        table = m.vocab.bytes_table()
        single = m.vocab.single_byte()
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
                raw = m.vocab.bytes_table()[token] or b""
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


def _check_length(text: str, max_chars: int | None) -> None:
    if max_chars is not None and len(text) > max_chars:
        raise PromptTooLong(len(text), max_chars)


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
