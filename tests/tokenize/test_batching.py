"""Packing and batching: bins, collation, and packed logits equal to unpacked ones."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from tuneforge.tokenize import (
    IGNORE_INDEX,
    Encoded,
    collate_packed,
    collate_padded,
    encode,
    ensure_chat_template,
    length_grouped_batches,
    pack,
    padding_fraction,
)

EXAMPLES = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"prompt": "What is the capital of France?", "completion": " Paris is the capital of France."},
    {
        "messages": [
            {"role": "system", "content": "Please help."},
            {"role": "user", "content": "I lost my card yesterday."},
            {"role": "assistant", "content": "Sure, I have sent a reset link to your email."},
        ]
    },
    {"text": "0 1 2 3 4 5"},
    {"prompt": "Your balance", "completion": " is 120 dollars."},
]


# pack -------------------------------------------------------------------------------------------


def test_pack_best_fit_decreasing():
    # Longest first, each into the fullest bin it fits: 7 | 6+4 | 5+5 ... checked by hand.
    assert pack([5, 3, 2, 4], seq_len=7) == [[0, 2], [3, 1]]
    assert pack([6, 4, 5, 5, 7, 3], seq_len=10) == [[4, 5], [0, 1], [2, 3]]
    # Best fit, not first fit: the 2 goes into the bin with room 2, not the one with room 3.
    assert pack([7, 8, 2], seq_len=10) == [[1, 2], [0]]
    with pytest.raises(ValueError):
        pack([11], seq_len=10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=0, max_size=80), st.integers(64, 200))
def test_pack_is_a_valid_partition(lengths, seq_len):
    bins = pack(lengths, seq_len)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= seq_len for b in bins)
    # Best-fit decreasing never leaves two bins that could be merged into one.
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(loads) < 2 or loads[0] + loads[1] > seq_len
    assert pack(lengths, seq_len) == bins  # deterministic


# collate ----------------------------------------------------------------------------------------


def test_collate_packed_layout():
    a = Encoded([10, 11, 12], [IGNORE_INDEX, 11, 12])
    b = Encoded([20, 21], [20, 21])
    c = Encoded([30, 31, 32, 33], [30, 31, 32, 33])
    batch = collate_packed([a, b, c], [[0, 1], [2]], seq_len=6, pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 0], [30, 31, 32, 33, 0, 0]]
    I = IGNORE_INDEX  # noqa: E741
    assert batch["labels"].tolist() == [[I, 11, 12, I, 21, I], [I, 31, 32, 33, I, I]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.float32
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],  # the second example does not see the first
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding only sees itself
    ]
    assert collate_packed([a], [[0]], 3, 0, mask_dtype=torch.bfloat16)["attention_mask"].dtype == (
        torch.bfloat16
    )


def test_collate_padded():
    a, b = Encoded([1, 2, 3], [IGNORE_INDEX, 2, 3]), Encoded([4], [4])
    batch = collate_padded([a, b], pad_id=9, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 2, 3, IGNORE_INDEX],
        [4] + [IGNORE_INDEX] * 3,
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_length_grouped_batches_and_padding_fraction():
    lengths = [(i * 37) % 100 + 1 for i in range(1000)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) == 8 for b in batches)
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=3)
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=3, epoch=1)
    grouped = padding_fraction([[lengths[i] for i in b] for b in batches])
    plain = padding_fraction([lengths[i : i + 8] for i in range(0, 1000, 8)])
    assert grouped < 0.05 < 0.3 < plain
    assert padding_fraction([[4, 2], [3]]) == pytest.approx(2 / 11)
    assert padding_fraction([[4, 2], [3]], seq_len=8) == pytest.approx(7 / 16)
    assert padding_fraction([[3]], pad_to_multiple_of=4) == pytest.approx(1 / 4)


# packed == unpacked on real models --------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_dir", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_packed_logits_and_loss_equal_unpacked(model_dir, attn, request, tiny_tokenizer):
    path = request.getfixturevalue(model_dir)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()
    tok = copy.deepcopy(tiny_tokenizer)
    ensure_chat_template(tok)  # ChatML tokens are already in the vocabulary: no resize needed
    encs = [encode(ex, tok) for ex in EXAMPLES]
    seq_len = 64
    bins = pack([len(e) for e in encs], seq_len)
    assert any(len(b) > 1 for b in bins)
    batch = collate_packed(encs, bins, seq_len, tok.pad_token_id)

    with torch.no_grad():
        out = model(**batch)
        packed_logits = out.logits  # (B, T, V)
        unpacked, token_losses = {}, []
        for i, enc in enumerate(encs):
            ids = torch.tensor([enc.input_ids])
            logits = model(input_ids=ids).logits[0]  # (n, V)
            unpacked[i] = logits
            labels = torch.tensor(enc.labels[1:])
            loss = torch.nn.functional.cross_entropy(logits[:-1], labels, reduction="none")
            token_losses.append(loss[labels != IGNORE_INDEX])
    for b, row in enumerate(bins):
        pos = 0
        for i in row:
            n = len(encs[i])
            torch.testing.assert_close(
                packed_logits[b, pos : pos + n], unpacked[i], atol=1e-4, rtol=1e-4
            )
            pos += n
    torch.testing.assert_close(out.loss, torch.cat(token_losses).mean(), atol=1e-5, rtol=1e-5)

    # Without the block mask the examples do see each other: the check above can fail.
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    b, row = next((b, row) for b, row in enumerate(bins) if len(row) > 1)
    start, n = len(encs[row[0]]), len(encs[row[1]])
    assert not torch.allclose(leaky[b, start : start + n], unpacked[row[1]], atol=1e-3)


def test_packed_bf16_and_bool_masks(tiny_model_dir, tiny_tokenizer):
    encs = [encode(ex, tiny_tokenizer) for ex in EXAMPLES if "messages" not in ex]
    bins = pack([len(e) for e in encs], 48)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    with torch.no_grad():
        full = ref(**collate_packed(encs, bins, 48, 1)).logits
        # A boolean mask (True = attend) gives the same logits with sdpa.
        as_bool = ref(**collate_packed(encs, bins, 48, 1, mask_dtype=torch.bool)).logits
        torch.testing.assert_close(as_bool, full, atol=1e-5, rtol=1e-5)
        # bf16 weights with a bf16 mask: finite, and close to float32.
        half = ref.to(torch.bfloat16)
        out = half(**collate_packed(encs, bins, 48, 1, mask_dtype=torch.bfloat16)).logits
    assert torch.isfinite(out).all()
    assert (out.float() - full).abs().max() < 0.1
