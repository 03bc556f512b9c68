"""The generation engine: one base model, its adapters and fine-tunes, continuous batching.

This module is the scheduler; the rest of the engine lives beside it:
- `residency`: which models are in memory (the base, LoRA adapters, merged fine-tunes, LRU),
  background loads, and each model's `Vocab` (`vocab`: encoding, chat rendering, tables).
- `lanes`: a lane's rows and their left-padded KV cache (joining, leaving, trimming).
- `decoding`: per-token decisions (sampling, logit_bias, stop strings, JSON mode, finish
  reasons) and the deltas they send.
- `params`: what goes in and out (`GenerationRequest`, `Delta`, `RequestStream`, errors).

Scheduling (one background thread): every running sequence of the base model and of all its
adapters sits in one *lane* and is decoded together, one token per step, with a KV cache;
peft's `adapter_names` lets each row of the batch use its own adapter (or none). Between two
decode steps, finished or cancelled sequences leave the lane and waiting requests join it:
they are prefilled together (left-padded), and their caches are merged into the lane's by
left-padding to a common length. This is continuous batching on a left-padded dense cache:
simple and model-agnostic (any Hugging Face causal LM with a `DynamicCache`), at the cost of
copying the cache when sequences join. Each merged full model has a lane of its own.

A merged model is loaded on a loader thread: requests for a model still loading wait off the
queue (*parked*; they count against `max_queue`), every other lane keeps decoding, and the
model joins the scheduler when it is ready.

Requests reach the thread through a bounded queue (`QueueFull` when full); results go back
to the asyncio side through `RequestStream`, an async iterator of `Delta` lists. A cancelled
stream (client gone) leaves the batch at the next step. Tokenizing (`encode`,
`prepare_chat`) happens on the caller's thread, without an engine lock.

Example:
    >>> engine = Engine(EngineConfig(), ModelEntry(id="tiny", path=Path("models/tiny")))
    >>> engine.load(); engine.start()
    >>> stream = engine.submit(GenerationRequest(entry, ids, SamplingParams(max_tokens=8)))
    >>> async for deltas in stream: ...
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.inference.constraint import Constraint, compile_grammar
from tuneforge.inference.decoding import Decoder, start_seqs
from tuneforge.inference.lanes import left_pad, new_cache, select_rows
from tuneforge.inference.params import (
    EngineError,
    GenerationRequest,
    PromptTooLong,
    QueueFull,
    RequestStream,
)
from tuneforge.inference.registry import ModelEntry
from tuneforge.inference.residency import LoadedModel, Residency
from tuneforge.modeling.dtype import DTypeChoice, resolve_dtype

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineError",
    "PromptTooLong",
    "QueueFull",
    "RequestStream",
]

log = logging.getLogger("tuneforge.inference")

_Parked = tuple[GenerationRequest, RequestStream]
_Joining = tuple[GenerationRequest, RequestStream, str | None]  # with the request's adapter


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs (a subset of `ServerSettings`, which the engine does not import)."""

    dtype: str = "auto"  # resolved by `tuneforge.modeling.dtype.resolve_dtype`
    quantize: str = "none"  # decode steps' weights (`tuneforge.inference.quantize`)
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


class Engine:
    """Loads models and runs the batching scheduler. Thread-safe public methods."""

    def __init__(self, config: EngineConfig, base: ModelEntry) -> None:
        self.config = config
        self.base = base
        self.ready = False
        self.failed: str | None = None
        self.device = torch.device(
            config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        # What the models are held in, decided by `load` ("auto": bf16 where it is fast).
        self.dtype: DTypeChoice | None = None
        self._models = Residency(
            base,
            self.device,
            self._on_loaded,
            dtype=config.dtype,
            quantize=config.quantize,
            trust_remote_code=config.trust_remote_code,
            max_adapters=config.max_adapters,
            max_full_models=config.max_full_models,
        )
        self._cv = threading.Condition()
        self._waiting: collections.deque[_Parked] = collections.deque()
        # Merged models being loaded -> the requests parked until they are (scheduler thread);
        # loader threads hand results back through `_loaded` (under `_cv`).
        self._loading: dict[str, list[_Parked]] = {}
        self._loaded: list[tuple[str, LoadedModel | Exception]] = []
        self._parked = 0  # requests in `_loading`, counted against max_queue (under `_cv`)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._decoder = Decoder()

    @property
    def _base(self) -> LoadedModel | None:
        return self._models.base

    @property
    def _full(self) -> collections.OrderedDict[str, LoadedModel]:
        return self._models.full

    # -- lifecycle -----------------------------------------------------------------------------

    def load(self) -> None:
        """Resolve the dtype and load the base model (blocking). Sets `ready`, or `failed`
        with the reason."""
        if self.ready:
            return
        if self.config.torch_threads:  # before the dtype probe, whose verdict depends on it
            torch.set_num_threads(self.config.torch_threads)
        try:
            self.dtype = resolve_dtype(self.config.dtype, self.device)
            self._models.dtype = self.dtype.name
            self._models.load_base()
        except Exception as err:
            self.failed = f"loading {self._models.base_source} failed: {err}"
            raise
        self.ready = True

    def quantized_note(self) -> str:
        """What `quantize` did to the base model, for the startup line ("" for none)."""
        done, skipped = self._models.quantized
        if self.config.quantize == "none":
            return ""
        kept = f", {skipped} kept as they were (shapes the kernel does not take)" if skipped else ""
        return f"; decode steps read {self.config.quantize} weights in {done} linear layers{kept}"

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
        for m in self._models.models():
            for seq in m.lane.rows:
                seq.stream.fail(error)

    # -- request-side helpers (called from handler threads) ------------------------------------

    def max_token_chars(self, entry: ModelEntry) -> int:
        """The most characters one token of `entry`'s vocabulary stands for."""
        return self._models.vocab(entry).max_token_chars()

    def context_length(self, entry: ModelEntry) -> int:
        return self._models.vocab(entry).context_length

    def vocab_size(self, entry: ModelEntry) -> int:
        return len(self._models.vocab(entry).tokenizer)

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
        return self._models.vocab(entry).prepare_chat(messages, tools, max_chars)

    def compile_constraint(self, entry: ModelEntry, grammar: str) -> Constraint:
        """`grammar` compiled for `entry`'s tokenizer (call off the event loop; ValueError with
        the reason when the grammar library refuses it)."""
        return compile_grammar(self._models.vocab(entry).ll_tokenizer(), grammar)

    def tool_family(self, entry: ModelEntry) -> str:
        """The tool-call format of `entry`'s chat template (`tool_calls.tool_family`)."""
        return self._models.vocab(entry).tool_family

    def encode(self, entry: ModelEntry, text: str, max_chars: int | None = None) -> list[int]:
        """Token ids of `text`; over `max_chars` characters it is refused untokenized."""
        return self._models.vocab(entry).encode(text, max_chars)

    def decode(self, entry: ModelEntry, ids: list[int]) -> str:
        return self._models.vocab(entry).decode(ids)

    def chat_stop_ids(self, entry: ModelEntry) -> tuple[int, ...]:
        """Tokens that end a chat reply: EOS and the chat template's end-of-turn token."""
        return self._models.vocab(entry).chat_stop_ids

    def token_text(self, entry: ModelEntry, token_id: int) -> tuple[str, bytes]:
        """(text, raw bytes) of one token, for logprobs."""
        return self._models.vocab(entry).token_text(token_id)

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

    def _running_rows(self) -> int:
        return sum(len(m.lane) for m in self._models.models())

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
                for m in self._models.models():
                    if m.lane.rows:
                        self._guarded(m, self._decode_step)
            except Exception:  # keep serving; the failing lane was reset by _guarded
                log.exception("scheduler step failed")

    def _guarded(self, m: LoadedModel, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(m, *args)
        except Exception as err:
            log.exception("generation failed")
            error = EngineError(f"generation failed: {err}", status=500)
            for seq in m.lane.rows:
                seq.stream.fail(error)
            for item in args[0] if args else ():
                item[1].fail(error)
            m.lane.reset()

    def _admit(self) -> None:
        """Move waiting requests into lanes while rows are free; prefill them together."""
        self._install_loaded()
        joining: dict[int, tuple[LoadedModel, list[_Joining]]] = {}
        self._models.new_round()  # models and adapters this round needs are not evictable
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
                place = self._models.place(request.model)
            except EngineError as err:
                stream.fail(err)
                continue
            except Exception:
                log.exception("loading %s failed", request.model.id)
                stream.fail(EngineError(f"loading model {request.model.id!r} failed"))
                continue
            if isinstance(place, str):  # parked until that merged model is loaded
                with self._cv:
                    self._loading.setdefault(place, []).append((request, stream))
                    self._parked += 1
                continue
            model, adapter = place
            joining.setdefault(id(model), (model, []))[1].append((request, stream, adapter))
            free -= request.n
        for model, items in joining.values():
            self._guarded(model, self._prefill, items)

    # -- background loads ----------------------------------------------------------------------

    def _on_loaded(self, key: str, result: LoadedModel | Exception) -> None:
        """Loader thread: hand a finished load to the scheduler."""
        with self._cv:
            self._loaded.append((key, result))
            self._cv.notify_all()

    def _install_loaded(self) -> None:
        """Scheduler thread: make finished loads resident; their parked requests go first."""
        with self._cv:
            done, self._loaded = self._loaded, []
        for key, result in done:
            self._models.install(key, result)
            failed: list[_Parked] = []
            retry: list[_Parked] = []
            with self._cv:
                parked = self._loading.pop(key, [])
                self._parked -= len(parked)
                if isinstance(result, LoadedModel):
                    retry = parked
                else:  # requests for this model fail; those waiting for a slot try again
                    for item in parked:
                        mine = self._models.key(item[0].model) == key
                        (failed if mine else retry).append(item)
                self._waiting.extendleft(reversed(retry))
            if isinstance(result, Exception):
                for _, stream in failed:
                    stream.fail(result)

    # -- prefill and decode ---------------------------------------------------------------------

    def _prefill(self, m: LoadedModel, items: list[_Joining]) -> None:
        """Run the prompts of joining requests, sample their first tokens, merge into the lane."""
        dev = m.device
        ids, mask, positions = left_pad([r.prompt_ids for r, _, _ in items], m.pad_id)
        ids, mask, positions = ids.to(dev), mask.to(dev), positions.to(dev)
        cache = new_cache()
        logits = m.forward(ids, mask, positions, cache, [a for _, _, a in items])
        # One row per choice: the n choices of a request share its prompt's cache.
        rows = [i for i, (r, _, _) in enumerate(items) for _ in range(r.n)]
        index = torch.tensor(rows, device=dev)
        if rows != list(range(len(items))):
            select_rows(cache, index)
            mask, logits = mask[index], logits[index]
        seqs = start_seqs(items, m.vocab, m.eos, dev)
        counts = torch.zeros((len(seqs), logits.shape[-1]), device=dev)
        positions = mask.sum(-1)  # (B,) next position id per row
        tokens = self._decoder.step(m.vocab, m.eos, seqs, logits, counts)
        keep = [i for i, s in enumerate(seqs) if not s.finished]
        if not keep:
            return
        keep_t = torch.tensor(keep, device=dev)
        if len(keep) != len(seqs):
            select_rows(cache, keep_t)
        m.lane.join(
            [seqs[i] for i in keep],
            cache,
            mask[keep_t],
            positions[keep_t],
            tokens[keep_t],
            counts[keep_t],
        )

    def _decode_step(self, m: LoadedModel) -> None:
        """Feed each row its last token, sample the next, drop finished rows."""
        lane = m.lane
        live = [i for i, s in enumerate(lane.rows) if not s.stream.cancelled]
        for s in lane.rows:
            if s.stream.cancelled:
                s.finished = True
                s.stream.finish()
        if len(live) != len(lane.rows):
            lane.keep(live)
            if not lane.rows:
                return
        assert lane.next_tokens is not None and lane.positions is not None
        assert lane.cache is not None and lane.counts is not None
        mask = lane.grow()
        logits = m.forward(
            lane.next_tokens[:, None],
            mask,
            lane.positions[:, None],
            lane.cache,
            [s.adapter for s in lane.rows],
        )
        lane.positions = lane.positions + 1
        lane.next_tokens = self._decoder.step(m.vocab, m.eos, lane.rows, logits, lane.counts)
        keep = [i for i, s in enumerate(lane.rows) if not s.finished]
        if len(keep) != len(lane.rows):
            lane.keep(keep)
