"""The rows that generate together, and their KV cache, for continuous batching.

Each running chat is one row of a left-padded batch: its tokens sit at the right end of the
row, a mask marks them, and it carries its own positions, so a row computes what it would
alone. Rows join and leave between two decoding steps, as in TGI's first Python server:

- `prefill` runs the prompts of the chats that arrived, left-padded to one width, into a cache
  of their own;
- `merge` joins two sets of rows: the narrower one is padded on the left (its cache with zeros,
  its mask with 0) to the other's width, then the caches are concatenated along the batch;
- `keep` filters rows out (those that ended) and drops the columns that only padding fills now,
  so the width stays that of the longest running chat.

The cache is transformers' DynamicCache: Llama 4's chunked-attention layers keep the last
`sliding_window - 1` columns (DynamicSlidingWindowLayer, whose `cumulative_length` is the
width the masks are sized against), its full-attention layers all of them (DynamicLayer); any
other causal LM of the worker has DynamicLayers only. A cache layer of another kind is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Rows:
    """Chats generating together: one row each, in a cache `width` columns wide.

    Attributes:
        chats (list[Any]): the running chats (workers.llama4.worker.Chat), row order.
        cache (Any): their KV cache (transformers DynamicCache), rows along dim 0.
        mask (torch.Tensor): [rows, width], 1 where a row has a token, 0 for padding.
        last_ids (torch.Tensor): [rows], the token each row feeds at the next step.
        positions (torch.Tensor): [rows], that token's position in its own chat.
    """

    chats: list[Any]
    cache: Any
    mask: torch.Tensor
    last_ids: torch.Tensor
    positions: torch.Tensor

    @property
    def width(self) -> int:
        return self.mask.shape[1]


def prefill(model: Any, chats: list[Any], pad_id: int) -> tuple[Rows, torch.Tensor]:
    """Runs the chats' prompts together (left-padded); returns their rows (last_ids still to
    set: the first tokens are sampled from the logits) and the last position's logits, float,
    [rows, vocab]."""
    device = model.device
    width = max(len(c.prompt_ids) for c in chats)
    input_ids = torch.tensor(
        [[pad_id] * (width - len(c.prompt_ids)) + c.prompt_ids for c in chats], device=device
    )
    mask = torch.tensor(
        [[0] * (width - len(c.prompt_ids)) + [1] * len(c.prompt_ids) for c in chats],
        device=device,
    )
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True, logits_to_keep=1,
    )
    _check_layers(out.past_key_values)
    lengths = torch.tensor([len(c.prompt_ids) for c in chats], device=device)
    rows = Rows(chats=list(chats), cache=out.past_key_values, mask=mask,
                last_ids=torch.zeros_like(lengths), positions=lengths)
    return rows, out.logits[:, -1, :].float()


def decode(model: Any, rows: Rows) -> torch.Tensor:
    """One decoding step: each row feeds its last token; returns the next token's logits,
    float, [rows, vocab]."""
    rows.mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows.chats), 1)], dim=-1)
    out = model(
        input_ids=rows.last_ids.unsqueeze(-1), attention_mask=rows.mask,
        position_ids=rows.positions.unsqueeze(-1), past_key_values=rows.cache, use_cache=True,
        logits_to_keep=1,
    )
    rows.cache = out.past_key_values
    rows.positions = rows.positions + 1
    return out.logits[:, -1, :].float()


def merge(a: Rows | None, b: Rows) -> Rows:
    """Rows a and b as one batch (a's rows first), right-aligned to the wider width."""
    if a is None or not a.chats:
        return b
    width = max(a.width, b.width)
    for layer_a, layer_b in zip(a.cache.layers, b.cache.layers, strict=True):
        keys_a, values_a = _widened(layer_a, width)
        keys_b, values_b = _widened(layer_b, width)
        layer_a.keys = torch.cat([keys_a, keys_b])
        layer_a.values = torch.cat([values_a, values_b])
        _set_width(layer_a, width)
    return Rows(
        chats=a.chats + b.chats,
        cache=a.cache,
        mask=torch.cat([_pad_mask(a.mask, width), _pad_mask(b.mask, width)]),
        last_ids=torch.cat([a.last_ids, b.last_ids]),
        positions=torch.cat([a.positions, b.positions]),
    )


def keep(rows: Rows, kept: list[int]) -> Rows:
    """Only the rows at indices `kept`, without the columns that are padding in all of them."""
    if len(kept) == len(rows.chats):
        return rows
    index = torch.tensor(kept, device=rows.mask.device, dtype=torch.long)
    mask = rows.mask[index]
    filled = mask.any(dim=0).nonzero()
    drop = int(filled[0]) if len(filled) else mask.shape[1]
    width = mask.shape[1] - drop
    for layer in rows.cache.layers:
        held = _held(layer, width)
        layer.keys = layer.keys[index, :, layer.keys.shape[-2] - held:]
        layer.values = layer.values[index, :, layer.values.shape[-2] - held:]
        _set_width(layer, width)
    return Rows(
        chats=[rows.chats[i] for i in kept],
        cache=rows.cache,
        mask=mask[:, drop:],
        last_ids=rows.last_ids[index],
        positions=rows.positions[index],
    )


def _check_layers(cache: Any) -> None:
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise NotImplementedError(
                f"continuous batching joins DynamicLayer and DynamicSlidingWindowLayer caches; "
                f"this model's cache has a {type(layer).__name__}"
            )


def _held(layer: Any, width: int) -> int:
    """How many of a row's `width` columns the layer keeps (a sliding window keeps the last
    sliding_window - 1)."""
    window = getattr(layer, "sliding_window", None)
    return width if window is None else min(width, window - 1)


def _widened(layer: Any, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's keys and values padded on the left with zeros to hold `width` columns."""
    pad = _held(layer, width) - layer.keys.shape[-2]
    if pad == 0:
        return layer.keys, layer.values
    shape = (*layer.keys.shape[:2], pad, layer.keys.shape[-1])
    zeros = layer.keys.new_zeros(shape)
    return torch.cat([zeros, layer.keys], dim=-2), torch.cat([zeros, layer.values], dim=-2)


def _set_width(layer: Any, width: int) -> None:
    if hasattr(layer, "cumulative_length"):  # a sliding window: what the masks are sized by
        layer.cumulative_length = width


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    pad = width - mask.shape[1]
    return mask if pad == 0 else torch.cat([mask.new_zeros(mask.shape[0], pad), mask], dim=-1)
