"""The lane's tensor bookkeeping on small tensors, with transformers' real `DynamicCache`."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from tuneforge.inference.lanes import (
    Lane,
    concat_caches,
    drop_columns,
    left_pad,
    pad_left,
    pad_left_2d,
    select_rows,
)

LAYERS, HEADS, DIM = 2, 3, 4


def make_cache(batch: int, width: int, offset: float = 0.0) -> DynamicCache:
    """A cache whose entry [b, h, t, d] of layer l is offset + 1000 l + 100 b + t (+0.5 for values)."""
    cache = DynamicCache()
    for layer in range(LAYERS):
        base = offset + 1000 * layer + 100 * torch.arange(batch).view(batch, 1, 1, 1)
        keys = (base + torch.arange(width).view(1, 1, width, 1)).float()
        keys = keys.expand(batch, HEADS, width, DIM).contiguous()
        cache.update(keys, keys + 0.5, layer)
    return cache


def test_left_pad_right_aligns_prompts():
    ids, mask, positions = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_pad_left_adds_zero_columns_only_when_needed():
    t = torch.ones(2, 3, 4, 5)
    assert pad_left(t, 4) is t
    padded = pad_left(t, 6)
    assert padded.shape == (2, 3, 6, 5)
    assert padded[:, :, :2].eq(0).all() and padded[:, :, 2:].eq(1).all()
    m = torch.ones(2, 3, dtype=torch.long)
    assert pad_left_2d(m, 3) is m
    assert pad_left_2d(m, 5).tolist() == [[0, 0, 1, 1, 1]] * 2


def test_select_rows_repeats_and_reorders_every_layer():
    cache = make_cache(batch=2, width=3)
    select_rows(cache, torch.tensor([1, 1, 0]))
    for layer_idx, layer in enumerate(cache.layers):
        assert layer.keys.shape == layer.values.shape == (3, HEADS, 3, DIM)
        assert layer.keys[:, 0, 0, 0].tolist() == [1000 * layer_idx + b for b in (100, 100, 0)]
        assert torch.equal(layer.values, layer.keys + 0.5)
    assert cache.get_seq_length() == 3


def test_concat_caches_left_pads_both_to_the_width():
    cache, other = make_cache(batch=1, width=2), make_cache(batch=2, width=4, offset=10)
    concat_caches(cache, other, width=4)
    keys = cache.layers[0].keys
    assert keys.shape == (3, HEADS, 4, DIM)
    assert keys[0, 0, :, 0].tolist() == [0, 0, 0, 1]  # shorter row: zeros on the left
    assert keys[1, 0, :, 0].tolist() == [10, 11, 12, 13]
    assert keys[2, 0, :, 0].tolist() == [110, 111, 112, 113]
    assert cache.layers[1].values[0, 0, :, 0].tolist() == [0, 0, 1000.5, 1001.5]


def test_drop_columns_removes_the_oldest():
    cache = make_cache(batch=1, width=4)
    drop_columns(cache, 3)
    assert cache.layers[1].keys[0, 0, :, 0].tolist() == [1003]
    assert cache.get_seq_length() == 1


def lane_with(rows: list[str], cache: DynamicCache, mask: list[list[int]]) -> Lane:
    lane = Lane()
    n = len(rows)
    m = torch.tensor(mask)
    lane.join(rows, cache, m, m.sum(-1), torch.arange(n), torch.zeros(n, 7))
    return lane


def test_join_into_an_empty_lane_takes_the_tensors_as_they_are():
    cache = make_cache(batch=2, width=3)
    lane = lane_with(["a", "b"], cache, [[1, 1, 1], [0, 1, 1]])
    assert len(lane) == 2 and lane.cache is cache
    assert lane.positions.tolist() == [3, 2]


def test_join_merges_a_shorter_and_a_longer_cache():
    lane = lane_with(["a"], make_cache(batch=1, width=2), [[1, 1]])
    counts = torch.ones(2, 7)
    lane.join(
        ["b", "c"],
        make_cache(batch=2, width=3, offset=10),
        torch.tensor([[1, 1, 1], [0, 0, 1]]),
        torch.tensor([3, 1]),
        torch.tensor([8, 9]),
        counts,
    )
    assert lane.rows == ["a", "b", "c"]
    assert lane.mask.tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 1]]
    assert lane.positions.tolist() == [2, 3, 1]
    assert lane.next_tokens.tolist() == [0, 8, 9]
    assert lane.counts.sum(-1).tolist() == [0, 7, 7]
    keys = lane.cache.layers[0].keys
    assert keys.shape == (3, HEADS, 3, DIM)
    assert keys[0, 0, :, 0].tolist() == [0, 0, 1]
    assert keys[2, 0, :, 0].tolist() == [110, 111, 112]


def test_keep_drops_rows_then_columns_of_padding_in_every_row():
    cache = make_cache(batch=3, width=4)
    lane = lane_with(["a", "b", "c"], cache, [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    lane.keep([2, 1])
    assert lane.rows == ["c", "b"]
    assert lane.mask.tolist() == [[0, 1], [1, 1]]  # two leading all-padding columns gone
    assert lane.positions.tolist() == [1, 2]
    assert lane.next_tokens.tolist() == [2, 1]
    for layer in lane.cache.layers:
        assert layer.keys.shape == layer.values.shape == (2, HEADS, 2, DIM)
    assert lane.cache.layers[0].keys[:, 0, :, 0].tolist() == [[202, 203], [102, 103]]


def test_keep_nothing_resets_the_lane():
    lane = lane_with(["a"], make_cache(batch=1, width=2), [[1, 1]])
    lane.keep([])
    assert len(lane) == 0
    assert lane.cache is lane.mask is lane.positions is lane.next_tokens is lane.counts is None


def test_grow_adds_a_real_column_for_the_next_token():
    lane = lane_with(["a", "b"], make_cache(batch=2, width=2), [[1, 1], [0, 1]])
    mask = lane.grow()
    assert mask is lane.mask
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]


def test_growing_cache_writes_in_place_and_survives_lane_surgery():
    """`new_cache` layers hold exactly what a concatenating cache would, through decode
    steps, rows leaving or reordering, and trimmed columns; steps between surgeries reuse
    one buffer."""
    from tuneforge.inference.lanes import drop_columns, new_cache, select_rows

    cache = new_cache()
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    cache.update(keys, values, 0)
    buffers = set()
    for step in range(300):
        k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        got_k, got_v = cache.update(k, v, 0)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        assert torch.equal(got_k, keys) and torch.equal(got_v, values)
        buffers.add(cache.layers[0]._kbuf.data_ptr())
        if step == 50:
            select_rows(cache, torch.tensor([1, 0]))
            keys, values = keys[[1, 0]], values[[1, 0]]
        if step == 70:
            drop_columns(cache, 3)
            keys, values = keys[:, :, 3:], values[:, :, 3:]
    assert len(buffers) <= 5  # the first, after each surgery, and when the room runs out
