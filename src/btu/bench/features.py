"""The [CLS] features a cell keeps for the report's t-SNE figure (the BTU paper's Figure 4): the last layer's
first-token state (the last real token's, for a decoder such as GPT-2) of a seeded sample of clean test rows and
of poisoned test rows, under the cell's model (the victim for `none`, the defended model otherwise).

Stored as CACHE/features/CELL.npz (plain arrays; numpy reads them with allow_pickle=False)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from ..training.evaluate import cls_features

SAMPLE = 200  # rows of each kind: enough for a t-SNE picture, seconds on a CPU


def sample(n: int, k: int, seed: int) -> list[int]:
    return sorted(random.Random(f"{seed}:features").sample(range(n), min(n, k)))


def save_features(path, model, tokenizer, test, poison_test, seed: int, max_length: int = 128,
                  precision: str = "auto") -> Path | None:
    """Write the features of a sample of `test` (with labels) and of `poison_test`; None without both sets."""
    if test is None or poison_test is None or not len(test) or not len(poison_test):
        return None
    ci, pi = sample(len(test), SAMPLE, seed), sample(len(poison_test), SAMPLE, seed)
    clean = cls_features(model, tokenizer, [test.texts[i] for i in ci], max_length, precision)
    poisoned = cls_features(model, tokenizer, [poison_test.texts[i] for i in pi], max_length, precision)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, clean=clean.numpy(), poisoned=poisoned.numpy(),
             clean_labels=np.asarray([test.labels[i] for i in ci]), label_names=np.asarray(test.label_names))
    os.replace(tmp, path)
    return path


def load_features(path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError):
        return None
