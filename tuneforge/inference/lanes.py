"""A lane: the rows one model decodes together, and their left-padded KV cache.

Continuous batching on a dense cache: every row of a lane is aligned on the right (its
newest token in the last column), shorter rows are padded on the left and masked out.
Rows join (their cache is left-padded to a common width and appended) and leave (their
rows are dropped, then columns that are padding in every remaining row) between two decode
steps. Everything here is tensor bookkeeping; what a row *is* (the engine's sequence) is
opaque to it.

    cache:       per layer keys / values (B, heads, T, head_dim), a transformers `DynamicCache`
                 whose layers keep spare columns (`new_cache`), so a decode step writes its
                 column in place instead of copying the whole cache
    mask:        (B, T) 1 for real tokens
    positions:   (B,) position id of each row's next token
    next_tokens: (B,) the token each row feeds at the next step
    counts:      (B, V) how often each row has produced each token (penalties)

Example:
    >>> ids, mask, positions = left_pad([[5, 6, 7], [8]], pad_id=0)
    >>> mask.tolist()
    [[1, 1, 1], [0, 0, 1]]
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE_COLUMNS = 128  # columns a cache layer reserves beyond what it holds


def left_pad(
    prompts: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts as one right-aligned batch: ids and mask (B, T), position ids (B, T).

    Padding columns get position 0, real tokens count from 0 at their first real column.
    """
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - lengths[i] :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - lengths[i] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, width, D), zeros on the left."""
    missing = width - t.shape[2]
    if missing == 0:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3]))
    return torch.cat([pad, t], dim=2)


def pad_left_2d(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T) -> (B, width), zeros on the left."""
    missing = width - t.shape[1]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros((t.shape[0], missing)), t], dim=1)


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with spare columns.

    `DynamicLayer.update` concatenates, copying the whole cache at every decode step; this one
    writes the new columns into the buffers' spare room and hands back longer views. When
    the lane replaces `keys` / `values` (rows join or leave, columns are trimmed) the next
    update moves them into fresh buffers, with room again.
    """

    _views: tuple[torch.Tensor, torch.Tensor] | None = None
    _used = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._used + key_states.shape[-2]
        views = self._views
        if views is None or views[0] is not self.keys or views[1] is not self.values:
            self._adopt(key_states, value_states)  # keys / values were replaced (or unset)
            end = self._used + key_states.shape[-2]
        elif end > self._kbuf.shape[2]:
            self._adopt(key_states, value_states)
        self._kbuf[:, :, self._used : end] = key_states
        self._vbuf[:, :, self._used : end] = value_states
        self._used = end
        self.keys, self.values = self._kbuf[:, :, :end], self._vbuf[:, :, :end]
        self._views = (self.keys, self.values)
        return self.keys, self.values

    def _adopt(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Move the held keys / values into buffers with room for the new states and more."""
        held = self.keys.shape[2] if self.keys.dim() == 4 else 0
        capacity = held + key_states.shape[2] + SPARE_COLUMNS
        self._kbuf = _buffer(self.keys if held else key_states, capacity)
        self._vbuf = _buffer(self.values if held else value_states, capacity)
        if held:
            self._kbuf[:, :, :held] = self.keys
            self._vbuf[:, :, :held] = self.values
        self._used = held


def _buffer(like: torch.Tensor, columns: int) -> torch.Tensor:
    """An uninitialised (B, H, columns, D) tensor like `like` (B, H, T, D)."""
    return like.new_empty((like.shape[0], like.shape[1], columns, like.shape[3]))


def new_cache() -> DynamicCache:
    """An empty cache for a prefill whose layers are `GrowingLayer`s."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers: `DynamicLayer`s whose keys and values are set (a lane's cache has
    been through a forward pass), which transformers' types cannot say."""
    return cache.layers


def select_rows(cache: DynamicCache, index: torch.Tensor) -> None:
    """Keep (and repeat, or reorder) the cache's batch rows `index` (1-D), in place."""
    for layer in _layers(cache):
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)


def concat_caches(cache: DynamicCache, other: DynamicCache, width: int) -> None:
    """Append `other`'s rows below `cache`'s, both left-padded to `width` columns, in place."""
    for layer, new in zip(_layers(cache), _layers(other), strict=True):
        layer.keys = torch.cat([pad_left(layer.keys, width), pad_left(new.keys, width)])
        layer.values = torch.cat([pad_left(layer.values, width), pad_left(new.values, width)])


def drop_columns(cache: DynamicCache, count: int) -> None:
    """Drop the first `count` (oldest) columns of every layer, in place."""
    for layer in _layers(cache):
        layer.keys = layer.keys[:, :, count:, :]
        layer.values = layer.values[:, :, count:, :]


class Lane:
    """Rows decoded together: one opaque item per row and the tensors above.

    Empty (no rows) means every tensor is None.
    """

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T)
        self.positions: torch.Tensor | None = None  # (B,)
        self.next_tokens: torch.Tensor | None = None  # (B,)
        self.counts: torch.Tensor | None = None  # (B, V)

    def __len__(self) -> int:
        return len(self.rows)

    def reset(self) -> None:
        """Forget every row (and the cache)."""
        self.rows, self.cache, self.mask = [], None, None
        self.positions, self.next_tokens, self.counts = None, None, None

    def join(
        self,
        rows: list[Any],
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        tokens: torch.Tensor,
        counts: torch.Tensor,
    ) -> None:
        """Append rows (with their own cache), left-padding the shorter cache to a common width."""
        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
            self.positions, self.next_tokens, self.counts = positions, tokens, counts
            return
        assert self.cache is not None and self.mask is not None
        assert self.positions is not None and self.next_tokens is not None
        assert self.counts is not None
        width = max(self.mask.shape[1], mask.shape[1])
        concat_caches(self.cache, cache, width)
        self.mask = torch.cat([pad_left_2d(self.mask, width), pad_left_2d(mask, width)])
        self.positions = torch.cat([self.positions, positions])
        self.next_tokens = torch.cat([self.next_tokens, tokens])
        self.counts = torch.cat([self.counts, counts])
        self.rows = self.rows + rows

    def keep(self, keep: list[int]) -> None:
        """Keep only rows `keep` (in that order); then drop leading all-padding columns."""
        if not keep:
            self.reset()
            return
        assert self.cache is not None and self.mask is not None
        assert self.positions is not None and self.next_tokens is not None
        assert self.counts is not None
        index = torch.tensor(keep, device=self.mask.device)
        select_rows(self.cache, index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.next_tokens, self.counts = self.next_tokens[index], self.counts[index]
        self.rows = [self.rows[i] for i in keep]
        trim = int(self.mask.argmax(dim=1).min())  # first real column of the earliest row
        if trim > 0:
            drop_columns(self.cache, trim)
            self.mask = self.mask[:, trim:]

    def grow(self) -> torch.Tensor:
        """Add the mask column of the token about to be fed to every row; the new mask."""
        assert self.mask is not None
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self.mask
