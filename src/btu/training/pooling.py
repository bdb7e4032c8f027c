"""One pooled vector per row from a layer's hidden states, the way the classifier's own head pools.

Defenses that attach a small head to a layer (a honeypot on a lower layer, a shallow expert) need the row's
representation there: the mean over real tokens (robust at a lower layer, where [CLS] has not gathered the
sentence yet), the first token ([CLS]), or, for a decoder, its last real token; or the largest value of each
feature over the real tokens (max), where one token, a rare-word trigger, is not diluted by the row's length.
"""

from __future__ import annotations

import torch

POOLINGS = ("mean", "cls", "max")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "mean", decoder: bool = False,
         left_padded: bool = False) -> torch.Tensor:
    """hidden [batch, seq, d], attention_mask [batch, seq] -> [batch, d] (float32)."""
    h = hidden.float()
    if how == "mean":
        m = attention_mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "max":
        real = attention_mask.bool().unsqueeze(-1)
        return h.masked_fill(~real, float("-inf")).amax(1).masked_fill(~real.any(1), 0.0)
    if how != "cls":
        raise ValueError(f"pooling must be one of {POOLINGS}, not {how!r}")
    if not decoder:
        return h[:, 0]
    n = h.shape[1]
    last = torch.full((len(h),), n - 1, device=h.device) if left_padded else attention_mask.sum(1) - 1
    return h[torch.arange(len(h), device=h.device), last]
