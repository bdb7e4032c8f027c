"""Tokenize once, then batch by length: padding to the longest row of a batch of similar
lengths wastes far less compute than padding every batch to 128 tokens."""

from __future__ import annotations

import random

import torch


def encode(tokenizer, texts, max_length: int = 128) -> list[list[int]]:
    """Token ids per text, truncated, with the tokenizer's special tokens, no padding."""
    texts = list(texts)
    if not texts:  # fast tokenizers fail on an empty batch (IndexError)
        return []
    out = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    return [list(ids) for ids in out["input_ids"]]


def length_bucketed_batches(lengths, batch_size: int, seed: int, shuffle: bool = True,
                            bucket_factor: int = 50) -> list[list[int]]:
    """Shuffle, sort by length within windows of bucket_factor batches, then shuffle the batches.

    Rows of similar length share a batch while the order stays random across epochs.
    Without shuffle, rows are sorted by length (fastest for evaluation).
    """
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: lengths[i])
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    window = batch_size * bucket_factor
    batches = []
    for start in range(0, n, window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(ids: list[list[int]], pad_id: int, pad_to: int | None = None, padding_side: str = "right"):
    """input_ids and attention_mask tensors padded to the longest row (or to pad_to)."""
    width = pad_to or max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, x in enumerate(ids):
        x = x[:width]
        if padding_side == "left":
            input_ids[r, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[r, width - len(x):] = 1
        else:
            input_ids[r, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, :len(x)] = 1
    return input_ids, mask
