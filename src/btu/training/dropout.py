"""Dropout masks from a fast random generator, for CPU training.

PyTorch's CPU dropout draws one Mersenne-Twister number per element (`bernoulli_`), a
large share of a small model's step on few cores. Here the masks come from numpy's
PCG64, 16 bits per element: the same Bernoulli(1 - p) keep mask scaled by 1 / (1 - p)
(benchmarks/training_tricks.py measures the rows/s against torch's).
p is rounded to a multiple of 1/65536 (0.1 becomes 0.100006).

`fast_dropout(seed)` swaps `torch.nn.functional.dropout` (which `nn.Dropout` and the
Hugging Face attention functions call) for the length of a training run, and puts the
original back on exit. CUDA tensors, eval mode and p outside (0, 1) go to the original.
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F

_LEVELS = 1 << 16
_lock = threading.Lock()


class MaskSource:
    """Keep masks drawn from one seeded PCG64 stream."""

    def __init__(self, seed: int):
        self.bits = np.random.PCG64(seed)

    def keep_mask(self, shape, p: float) -> tuple[torch.Tensor, float]:
        """A bool tensor, True with probability 1 - p' (p' = p rounded to 1/65536), and 1 / (1 - p')."""
        n = math.prod(shape)
        raw = self.bits.random_raw((n + 3) // 4).view(np.int16)[:n]  # uniform on [-32768, 32767]
        drop_levels = int(round(p * _LEVELS))
        keep = torch.from_numpy(raw).view(shape) >= drop_levels - _LEVELS // 2  # P(keep) = 1 - levels/65536
        return keep, _LEVELS / (_LEVELS - drop_levels)


def _make_dropout(source: MaskSource, original):
    def dropout(input, p=0.5, training=True, inplace=False):
        if not training or not 0.0 < p < 1.0 or input.device.type != "cpu" or not input.is_floating_point():
            return original(input, p, training, inplace)
        keep, scale = source.keep_mask(tuple(input.shape), p)
        mask = keep.to(input.dtype).mul_(scale)
        return input.mul_(mask) if inplace else input * mask

    dropout.__doc__ = original.__doc__
    return dropout


@contextlib.contextmanager
def fast_dropout(seed: int, enabled: bool = True):
    """Within this block, CPU dropout draws its masks from PCG64(seed). Yields the MaskSource (None when not
    enabled): its `bits.state` is what a checkpoint keeps to resume the same masks."""
    if not enabled:
        yield None
        return
    source = MaskSource(seed)
    with _lock:
        original = F.dropout
        F.dropout = _make_dropout(source, original)
    try:
        yield source
    finally:
        with _lock:
            F.dropout = original
