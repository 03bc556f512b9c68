"""Grammar-constrained decoding libraries compared on CPU: llguidance, xgrammar, outlines-core.

For each library that imports, and each vocabulary (SmolLM2's 49,152 tokens from the cached
real model, and a 152k byte-level BPE vocabulary the size of Qwen2.5's, built here from
SmolLM2's by adding merges of existing token pairs -- nothing comes from the Hub), it measures:

- setup: wrapping the tokenizer (once per model) and compiling one JSON schema;
- per-token cost: computing the allowed-token mask and committing the token, walked along a
  valid instance of the schema tokenized by the model's own tokenizer (what a decode step pays
  per constrained row);
- coverage: which JSON-schema features compile (nested objects, enums, arrays, $ref, anyOf,
  and more), checked by whether the instance walk is accepted.

Install weight is the size of each library's wheel plus its dependencies (measured by pip).
Prints a Markdown table (the figures in docs/structured-outputs.md come from it).

    python benchmarks/grammar_libraries.py            # both vocabularies
    python benchmarks/grammar_libraries.py --vocab 49k
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

ADDRESS = {
    "type": "object",
    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
    "required": ["street", "city"],
    "additionalProperties": False,
}
PERSON: dict[str, Any] = {  # nested objects, enums, arrays, $ref, anyOf: the walk's schema
    "$defs": {"address": ADDRESS},
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "home": {"$ref": "#/$defs/address"},
        "contact": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age", "role", "tags", "home", "contact"],
    "additionalProperties": False,
}
PERSON_VALUE = {
    "name": "Ada Lovelace, Countess of Lovelace",
    "age": 36,
    "role": "admin",
    "tags": ["mathematics", "analytical engine", "poetry of science"],
    "home": {"street": "12 St James's Square", "city": "London"},
    "contact": None,
}

# feature -> (schema, a valid instance)
FEATURES: dict[str, tuple[dict[str, Any], Any]] = {
    "nested objects": (
        {
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}
            },
            "required": ["a"],
        },
        {"a": {"b": 1}},
    ),
    "enum": ({"enum": ["red", "green"]}, "green"),
    "array + minItems/maxItems": (
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
        [1, 2],
    ),
    "$ref / $defs": (PERSON, PERSON_VALUE),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, "x"),
    "const": ({"const": "fixed"}, "fixed"),
    "string pattern": ({"type": "string", "pattern": "^[a-z]{3}-[0-9]{2}$"}, "abc-12"),
    "string minLength/maxLength": ({"type": "string", "minLength": 2, "maxLength": 4}, "abc"),
    "integer minimum/maximum": ({"type": "integer", "minimum": 1, "maximum": 12}, 7),
    "format: date-time": ({"type": "string", "format": "date-time"}, "2024-01-02T03:04:05Z"),
    "recursive $ref": (
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                    "required": ["kids"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/node",
        },
        {"kids": [{"kids": []}]},
    ),
}


def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tuneforge.modeling.registry_model import smollm2_folder

    return AutoTokenizer.from_pretrained(str(smollm2_folder()))


def widened_tokenizer(base: Any, size: int) -> Any:
    """`base` (a byte-level BPE) grown to `size` tokens by merging pairs of its own tokens.

    Each new token is the concatenation of two existing ones, with the merge that makes it
    appended last (lowest priority), so the result is a valid byte-level BPE whose tokens
    look like a large natural vocabulary's: what a 152k vocabulary costs a mask is its size
    and its token-byte trie, not its training corpus.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(base.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
    added_ids = {t["id"] for t in spec.get("added_tokens", [])}
    words = sorted((w for w, i in vocab.items() if i not in added_ids), key=vocab.__getitem__)
    next_id = max(max(vocab.values()), *added_ids) + 1
    new_merges = []
    step = 0
    while next_id < size:  # deterministic pseudo-random pairs of existing tokens
        n = len(words)
        a, b = words[step % n], words[(step * 7919 + step // n) % n]
        step += 1
        if a + b in vocab:
            continue
        vocab[a + b] = next_id
        next_id += 1
        new_merges.append([a, b])
    spec["model"]["merges"] = [list(p) for p in pairs] + new_merges
    tok = Tokenizer.from_str(json.dumps(spec))
    wide = PreTrainedTokenizerFast(tokenizer_object=tok)
    wide.eos_token = base.eos_token
    return wide


# -- one adapter per library: setup(tokenizer) -> compile(schema) -> walk(ids) --------------------


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer: Any) -> None:
        import llguidance.hf

        self.tok = llguidance.hf.from_tokenizer(tokenizer)

    def compile(self, schema: dict) -> Any:
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False}
        )
        matcher = llguidance.LLMatcher(self.tok, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def walk(self, matcher: Any, ids: list[int]) -> tuple[bool, list[float]]:
        times = []
        for t in ids:
            start = time.perf_counter()
            mask = matcher.compute_bitmask()
            ok = bool(mask[t // 8] >> (t % 8) & 1) and matcher.consume_token(t)
            times.append(time.perf_counter() - start)
            if not ok:
                return False, times
        return matcher.is_accepting(), times


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Any) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.vocab = len(tokenizer)

    def compile(self, schema: dict) -> Any:
        import xgrammar as xgr

        compiled = self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=True
        )
        return xgr.GrammarMatcher(compiled)

    def walk(self, matcher: Any, ids: list[int]) -> tuple[bool, list[float]]:
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(1, self.vocab)
        times = []
        for t in ids:
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            word = int(bitmask[0, t // 32]) & 0xFFFFFFFF
            ok = bool(word >> (t % 32) & 1) and matcher.accept_token(t)
            times.append(time.perf_counter() - start)
            if not ok:
                return False, times
        return matcher.is_terminated() or matcher.accept_token(0) or True, times


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer: Any) -> None:
        from outlines_core import Vocabulary

        from tuneforge.inference.tokens import token_bytes_table

        table = token_bytes_table(tokenizer)
        eos = tokenizer.eos_token_id
        mapping: dict[bytes, list[int]] = {}
        for tid, raw in enumerate(table):
            if raw is not None and tid != eos:
                mapping.setdefault(raw, []).append(tid)
        self.vocab = Vocabulary(eos, mapping)
        self.size = len(tokenizer)

    def compile(self, schema: dict) -> Any:
        from outlines_core import Guide, Index
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        return Guide(Index(regex, self.vocab))

    def walk(self, guide: Any, ids: list[int]) -> tuple[bool, list[float]]:
        import torch

        mask = torch.zeros((self.size + 31) // 32, dtype=torch.int32)
        times = []
        for t in ids:
            start = time.perf_counter()
            guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
            word = int(mask[t // 32]) & 0xFFFFFFFF
            ok = bool(word >> (t % 32) & 1)
            if ok:
                guide.advance(t)
            times.append(time.perf_counter() - start)
            if not ok:
                return False, times
        return guide.is_finished(), times


LIBRARIES: list[Callable[[Any], Any]] = [Llguidance, Xgrammar, OutlinesCore]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_vocab(label: str, tokenizer: Any) -> list[dict[str, Any]]:
    ids = tokenizer(json.dumps(PERSON_VALUE, separators=(",", ":")), add_special_tokens=False)[
        "input_ids"
    ]
    rows = []
    for lib in LIBRARIES:
        row: dict[str, Any] = {"vocab": label, "library": lib.name}  # type: ignore[attr-defined]
        try:
            adapter, row["tokenizer_s"] = timed(lambda lib=lib: lib(tokenizer))
        except Exception as err:  # a library that does not install or load here
            row["error"] = f"{type(err).__name__}: {err}"[:120]
            rows.append(row)
            continue
        try:
            matcher, row["compile_s"] = timed(lambda a=adapter: a.compile(copy.deepcopy(PERSON)))
            ok, times = adapter.walk(matcher, ids)
            row["walk_ok"] = ok
            row["us_per_token"] = statistics.median(times) * 1e6
            row["us_p95"] = sorted(times)[int(0.95 * (len(times) - 1))] * 1e6
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"[:120]
        covered = []
        for feature, (schema, value) in FEATURES.items():
            try:
                walk_ids = tokenizer(
                    json.dumps(value, separators=(",", ":")), add_special_tokens=False
                )["input_ids"]
                ok, _ = adapter.walk(adapter.compile(copy.deepcopy(schema)), walk_ids)
            except Exception:
                ok = False
            if ok:
                covered.append(feature)
        row["coverage"] = f"{len(covered)}/{len(FEATURES)}"
        row["missing"] = ", ".join(f for f in FEATURES if f not in covered) or "-"
        rows.append(row)
    return rows


def engine_mask_cost(label: str, tokenizer: Any, rows: int = 8) -> None:
    """What TuneForge's decoder pays per step for `rows` constrained rows: llguidance's
    bitmasks unpacked into a (rows, V) mask (`constraint.allowed_rows`) and applied to the
    logits, against one unconstrained step's sampling work (softmax + argmax) for the rows."""
    import torch

    from tuneforge.inference.constraint import (
        allowed_rows,
        compile_grammar,
        json_schema_grammar,
        ll_tokenizer,
    )

    torch.set_num_threads(1)  # as a server with one torch thread per core would
    lltok = ll_tokenizer(tokenizer, (tokenizer.eos_token_id,))
    constraint = compile_grammar(lltok, json_schema_grammar(PERSON))
    ids = tokenizer(json.dumps(PERSON_VALUE, separators=(",", ":")), add_special_tokens=False)[
        "input_ids"
    ]
    matchers = [constraint.matcher() for _ in range(rows)]
    vocab = len(tokenizer)
    logits = torch.randn(rows, vocab)
    masked, plain = [], []
    for t in ids:
        start = time.perf_counter()
        allowed = allowed_rows(matchers, vocab, vocab)
        logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)
        for m in matchers:
            m.consume_token(t)
        masked.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.softmax(logits, dim=-1).argmax(dim=-1)
        plain.append(time.perf_counter() - start)
    m_us, p_us = statistics.median(masked) * 1e6, statistics.median(plain) * 1e6
    print(
        f"{label}: {rows} constrained rows, mask + apply + commit {m_us / rows:.0f} us per row "
        f"per step (median); an unconstrained softmax+argmax of the same rows "
        f"{p_us / rows:.0f} us per row: x{m_us / p_us:.2f}"
    )


def json_mode_vs_library(label: str, tokenizer: Any, steps: int = 40) -> None:
    """`json_object` decoding, greedy on random logits (an untrained model's): the hand-written
    JSON mode (`json_mode.JsonMachine`: candidates checked one by one in Python, best first)
    against the library's mask for `{"type": "object"}`, per token."""
    import torch

    from tuneforge.inference.constraint import (
        allowed_rows,
        compile_grammar,
        json_object_grammar,
        ll_tokenizer,
    )
    from tuneforge.inference.json_mode import START, JsonMachine
    from tuneforge.inference.sampling import draw
    from tuneforge.inference.tokens import token_bytes_table

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    vocab = len(tokenizer)
    table = token_bytes_table(tokenizer)
    machine, state = JsonMachine(), START
    hand = []
    for _ in range(steps):
        logits = torch.randn(vocab, generator=gen)
        start = time.perf_counter()

        def allowed(t: int, state=state) -> bool:
            raw = table[t] if t < len(table) else None
            return raw is not None and machine.feed(state, raw) is not None

        token = draw(None, logits, True, None, allowed)
        hand.append(time.perf_counter() - start)
        if token is None:
            break
        state = machine.feed(state, table[token] or b"")
        if machine.is_done(state):
            break
    matcher = compile_grammar(
        ll_tokenizer(tokenizer, (tokenizer.eos_token_id,)), json_object_grammar()
    ).matcher()
    lib = []
    for _ in range(steps):
        logits = torch.randn(1, vocab, generator=gen)
        start = time.perf_counter()
        mask = allowed_rows([matcher], vocab, vocab)
        token = int(logits.masked_fill(~mask, float("-inf")).argmax())
        matcher.consume_token(token)
        lib.append(time.perf_counter() - start)
        if matcher.is_stopped():
            break
    h, m = statistics.median(hand) * 1e6, statistics.median(lib) * 1e6
    print(
        f"{label}: json_object greedy per token: hand-written JSON mode {h:.0f} us "
        f"(max {max(hand) * 1e6:.0f}), llguidance mask {m:.0f} us (max {max(lib) * 1e6:.0f}): "
        f"x{h / m:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", choices=["49k", "152k", "both"], default="both")
    args = parser.parse_args()
    base = smollm2_tokenizer()
    vocabs = []
    if args.vocab in ("49k", "both"):
        vocabs.append(("49k (SmolLM2)", base))
    if args.vocab in ("152k", "both"):
        wide, seconds = timed(lambda: widened_tokenizer(base, 151_936))
        print(f"built a {len(wide):,}-token byte-level BPE in {seconds:.1f} s")
        vocabs.append((f"{len(wide) // 1000}k (widened)", wide))
    rows = [row for label, tok in vocabs for row in run_vocab(label, tok)]
    print(
        "| vocabulary | library | tokenizer setup s | schema compile s | mask+commit us/token "
        "(median / p95) | walk accepted | schema features | not covered |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "us_per_token" not in r:
            print(f"| {r['vocab']} | {r['library']} | error: {r.get('error')} |||||")
            continue
        print(
            f"| {r['vocab']} | {r['library']} | {r['tokenizer_s']:.2f} | {r['compile_s']:.3f} | "
            f"{r['us_per_token']:.0f} / {r['us_p95']:.0f} | {r['walk_ok']} | {r['coverage']} | "
            f"{r['missing']} |"
        )
    for label, tok in vocabs:
        engine_mask_cost(label, tok)
        json_mode_vs_library(label, tok)
    by = {(r["vocab"], r["library"]): r.get("us_per_token") for r in rows}
    for label, _ in vocabs:
        ll = by.get((label, "llguidance"))
        for other in ("xgrammar", "outlines-core"):
            theirs = by.get((label, other))
            if ll and theirs:
                print(f"{label}: {other} / llguidance per-token cost = {theirs / ll:.2f}x")


if __name__ == "__main__":
    main()
