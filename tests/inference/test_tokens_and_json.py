"""Incremental detokenization, stop strings across tokens, and JSON-constrained decoding."""

from __future__ import annotations

import json
import random

import pytest

from tuneforge.inference.json_mode import START, JsonMachine
from tuneforge.inference.tokens import IncrementalDetokenizer, StopMatcher, token_bytes_table


def test_token_bytes_table_round_trips(tiny_tokenizer):
    table = token_bytes_table(tiny_tokenizer)
    assert len(table) == len(tiny_tokenizer)
    assert table[tiny_tokenizer.eos_token_id] is None  # special tokens have no bytes
    text = 'Hello! Café 😀 {"a": 1}'
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(table[i] for i in ids).decode("utf-8") == text


def test_detokenizer_never_splits_a_character(tiny_tokenizer):
    text = "naïve café — 😀 déjà vu"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    table = token_bytes_table(tiny_tokenizer)
    # The tiny vocabulary spells multi-byte characters with byte tokens: the case that matters.
    assert any(len(table[i]) == 1 and table[i][0] >= 0x80 for i in ids)
    detok = IncrementalDetokenizer(tiny_tokenizer, prompt_ids=[])
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.flush())
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_matcher_spanning_deltas():
    stop = StopMatcher(("END", "##"))
    out = []
    for piece in ["Hello E", "N", "xt and more E", "N", "D tail"]:
        text, hit = stop.add(piece)
        out.append(text)
        if hit:
            break
    assert "".join(out) == "Hello ENxt and more "
    assert hit
    # Held-back text that never becomes a stop string is released at the end.
    stop = StopMatcher(("ENDING",))
    text, hit = stop.add("the END")
    assert (text, hit) == ("the ", False)
    assert stop.flush() == "END"


VALID = [
    '{"a": 1}',
    "{}",
    ' { "k" : [1, -2.5e+3, true, false, null, "x\\u00e9\\n", {"n": []}] } ',
    '{"é": "😀", "z": 0.0, "e": 1E9}',
]
INVALID = [
    "[1]",
    '{"a" 1}',
    '{"a": 01}',
    '{"a": tru}',
    '{"a": 1,}',
    "{,}",
    '{"a": "\x01"}',
    "{} {}",
]


@pytest.mark.parametrize("text", VALID)
def test_json_machine_accepts_valid_objects(text):
    machine = JsonMachine()
    state = machine.feed(START, text.encode())
    assert machine.is_done(state)


@pytest.mark.parametrize("text", INVALID)
def test_json_machine_rejects_invalid_text(text):
    machine = JsonMachine()
    assert not machine.is_done(machine.feed(START, text.encode()))


def test_closing_completes_every_valid_prefix():
    machine = JsonMachine()
    for text in VALID:
        data = text.encode()
        for cut in range(len(data) + 1):
            state = machine.feed(START, data[:cut])
            if state is None:  # cut inside a multi-byte character is still a valid prefix
                continue
            closed = data[:cut] + machine.closing(state)
            assert isinstance(json.loads(closed), dict), closed


def test_closing_from_random_walks():
    """Random valid prefixes (one byte at a time from a JSON-ish alphabet) always close."""
    machine = JsonMachine()
    rng = random.Random(0)
    alphabet = list(b'{}[]":,-0123456789.eEtruefalsn \\u"abc\xc3\xa9\xf0\x9f\x98\x80')
    for _ in range(200):
        state, data = START, b""
        for _ in range(rng.randint(1, 40)):
            b = rng.choice(alphabet)
            nxt = machine.step(state, b)
            if nxt is not None and not machine.is_done(nxt):
                state, data = nxt, data + bytes([b])
        assert isinstance(json.loads(data + machine.closing(state)), dict)
