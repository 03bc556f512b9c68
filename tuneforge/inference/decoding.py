"""Per-token decisions: which token each row takes next, the text it adds, when a choice ends.

One decode step gives logits (B, V) for the rows of a lane; `Decoder.step` turns them into
the next token of every row: logit_bias, presence / frequency penalties, temperature and
top-p (`sampling`), then a draw per row (seeded per choice when the request has a seed). In
JSON mode the grammar library's mask for "a JSON object" (see below) keeps the text valid
JSON, and `json_mode` keeps it closable: a drawn token is accepted only if the object can
still be closed within the budget, and once the budget is down to what closing needs the
closing bytes are forced. (The mask does the costly part in Rust; `json_mode` alone checked
candidates one by one in Python, 40 ms per token at 49k tokens, 157 ms at 152k:
benchmarks/grammar_libraries.py.) Each chosen token is detokenized incrementally, checked against
stop strings, and sent to its request's stream as a `Delta`; the finish reason is "stop"
(EOS, a stop string, a complete JSON object) or "length" (`max_tokens`, or a JSON object the
budget had to close).

A row with a grammar (`constraint`: a JSON schema, a forced tool call) has its own matcher:
before penalties and sampling, every token the grammar does not allow next gets -inf (one
bitmask per constrained row, computed by the grammar library), so any sampling setting draws
from the allowed tokens only; the chosen token is committed to the matcher, and the row ends
("stop") as soon as the grammar is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tuneforge.inference.constraint import allowed_rows
from tuneforge.inference.json_mode import START, JsonMachine, State
from tuneforge.inference.params import Delta, GenerationRequest, RequestStream, TokenLogprob
from tuneforge.inference.sampling import adjusted_logits, biased_logits, draw, probabilities
from tuneforge.inference.tokens import IncrementalDetokenizer, StopMatcher
from tuneforge.inference.vocab import Vocab


@dataclass
class Seq:
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
    matcher: Any = None  # the row's grammar matcher (llguidance), when constrained
    exhausted: bool = False  # the matcher allows no token at all (its grammar is complete)
    finished: bool = False


def start_seqs(
    items: list[tuple[GenerationRequest, RequestStream, str | None]],
    vocab: Vocab,
    eos: frozenset[int],
    device: torch.device,
) -> list[Seq]:
    """The sequences of joining requests (with their adapters): `n` per request, in order."""
    seqs = []
    for r, stream, adapter in items:
        json_state = START if r.params.json_object else None
        if json_state is not None:
            vocab.bytes_table()  # build the token-bytes tables once
        for choice in range(r.n):
            generator = None
            if r.params.seed is not None:
                generator = torch.Generator(device=device)
                generator.manual_seed((r.params.seed + choice) % (2**63))
            seqs.append(
                Seq(
                    stream=stream,
                    index=choice,
                    request=r,
                    adapter=adapter,
                    detok=IncrementalDetokenizer(vocab.tokenizer, r.prompt_ids),
                    stop=StopMatcher(r.params.stop),
                    generator=generator,
                    eos=frozenset() if r.params.ignore_eos else eos | set(r.extra_eos),
                    json_state=json_state,
                    matcher=r.constraint.matcher() if r.constraint is not None else None,
                )
            )
    return seqs


def _row(probs: torch.Tensor | None, row: int) -> torch.Tensor | None:
    """One row of the sampling probabilities (None when no row of the batch samples)."""
    return probs[row] if probs is not None else None


class Decoder:
    """Chooses tokens and emits deltas; holds nothing per model (the `Vocab` is passed in)."""

    def __init__(self) -> None:
        self._json = JsonMachine()

    def step(
        self,
        vocab: Vocab,
        eos: frozenset[int],
        seqs: list[Seq],
        logits: torch.Tensor,
        counts: torch.Tensor,
    ) -> torch.Tensor:
        """Choose each row's next token, emit text, mark finished rows. Returns (B,) ids.

        `logits` (B, V) are the model's for `seqs`' rows; `counts` (B, V) is updated in place.
        `eos` is the model's own (the token to end a JSON object that cannot be closed).
        """
        dev = logits.device
        params = [s.request.params for s in seqs]
        chosen = self._greedy(seqs, logits)
        if chosen is None:  # some row samples, is penalised, biased or constrained
            penalised = adjusted_logits(
                biased_logits(
                    self._grammar_masked(vocab, seqs, logits), [p.logit_bias for p in params]
                ),
                counts,
                torch.tensor([p.presence_penalty for p in params], device=dev),
                torch.tensor([p.frequency_penalty for p in params], device=dev),
            )
            probs: Any = None
            if any(p.temperature > 0 for p in params):
                temperature = torch.tensor([p.temperature for p in params], device=dev)
                top_p = torch.tensor([p.top_p for p in params], device=dev)
                probs = probabilities(penalised, temperature, top_p)
            chosen = [
                self._choose(vocab, eos, seq, row, probs, penalised) for row, seq in enumerate(seqs)
            ]
        rows = torch.arange(len(seqs), device=dev)
        tokens = torch.tensor(chosen, device=dev)
        counts[rows, tokens] += 1  # (rows are distinct: one token each)
        raw_logprobs = None
        if any(p.logprobs is not None for p in params):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        out: dict[int, tuple[RequestStream, list[Delta]]] = {}
        for row, seq in enumerate(seqs):
            row_logprobs = raw_logprobs[row] if raw_logprobs is not None else None
            delta = self._advance(vocab, seq, chosen[row], row_logprobs)
            out.setdefault(id(seq.stream), (seq.stream, []))[1].append(delta)
        for stream, deltas in out.values():
            stream.push(deltas)
            if stream.remaining == 0:
                stream.finish()
        return tokens

    @staticmethod
    def _grammar_masked(vocab: Vocab, seqs: list[Seq], logits: torch.Tensor) -> torch.Tensor:
        """`logits` with -inf on every token a constrained row's grammar does not allow next
        (a copy; the model's own logits stay as they are for logprobs)."""
        rows = [i for i, s in enumerate(seqs) if s.matcher is not None]
        if not rows:
            return logits
        allowed = allowed_rows(
            [seqs[i].matcher for i in rows], len(vocab.tokenizer), logits.shape[-1]
        ).to(logits.device)
        index = torch.tensor(rows, device=logits.device)
        masked = logits.clone()
        masked[index] = logits[index].masked_fill(~allowed, float("-inf"))
        for i, row_allowed in zip(rows, allowed.any(dim=-1).tolist(), strict=True):
            seqs[i].exhausted = not row_allowed
        return masked

    @staticmethod
    def _greedy(seqs: list[Seq], logits: torch.Tensor) -> list[int] | None:
        """Every row's argmax in one op (and one sync), when every row is plain greedy:
        temperature 0, no penalty, no bias, no JSON constraint. None otherwise."""
        for s in seqs:
            p = s.request.params
            if (
                p.temperature != 0
                or p.logit_bias
                or p.presence_penalty
                or p.frequency_penalty
                or s.json_state is not None
                or s.matcher is not None
            ):
                return None
        return logits.argmax(dim=-1).tolist()

    def _choose(
        self, vocab: Vocab, eos: frozenset[int], seq: Seq, row: int, probs: Any, penalised: Any
    ) -> int:
        params = seq.request.params
        greedy = params.temperature == 0
        if seq.exhausted:  # the grammar allows nothing more: end the row
            return next(iter(eos), 0)
        if seq.json_state is None:
            chosen = draw(_row(probs, row), penalised[row], greedy, seq.generator)
            assert chosen is not None  # None only when `allowed` rejects every token
            return chosen
        table = vocab.bytes_table()
        single = vocab.single_byte()
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

        token = draw(_row(probs, row), penalised[row], greedy, seq.generator, allowed)
        if token is None:  # nothing valid: close the object now
            closing = self._json.closing(seq.json_state)
            seq.forced = [single[b] for b in closing if b in single]
            seq.forced_close = True
            return seq.forced.pop(0) if seq.forced else next(iter(eos), 0)
        return token

    def _advance(self, vocab: Vocab, seq: Seq, token: int, logprobs: torch.Tensor | None) -> Delta:
        """Record `token` for `seq`; the Delta to send (text, logprobs, finish reason)."""
        params = seq.request.params
        seq.generated.append(token)
        seq.stream.completion_tokens += 1
        delta = Delta(index=seq.index, token_ids=[token])
        if params.logprobs is not None:
            assert logprobs is not None
            top: tuple[tuple[int, float], ...] = ()
            if params.logprobs > 0:
                values, ids = logprobs.topk(params.logprobs)
                top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
            delta.logprobs.append(TokenLogprob(token, float(logprobs[token]), top))
        finish = None
        text = ""
        stop_hit = False
        if seq.exhausted or (token in seq.eos and not seq.forced_close):
            finish = "stop"  # the EOS token itself adds no text
        else:
            text, stop_hit = seq.stop.add(seq.detok.add(token))
            if stop_hit:
                finish = "stop"
            elif seq.json_state is not None:
                raw = vocab.bytes_table()[token] or b""
                seq.json_state = self._json.feed(seq.json_state, raw)
                if self._json.is_done(seq.json_state):
                    finish = "length" if seq.forced_close else "stop"
            if seq.matcher is not None and finish is None:
                seq.matcher.consume_token(token)
                if seq.matcher.is_stopped() or seq.matcher.is_error():
                    finish = "stop"  # the grammar is complete: nothing may follow
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
