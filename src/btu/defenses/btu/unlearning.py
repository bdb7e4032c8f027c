"""Stage 2 of BTU: overwrite what a flagged token's embedding row learned.

`btu` is the paper's dimensional replacement (Eq. 7): in each flagged row, the dimensions
whose change from the pretrained value is at least the threshold d-bar take the padding
token's value; the others keep what they learned. `row`, `pr1`, `pr2` and `pn` are the
alternatives of the paper's Table 5.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError


def threshold_value(changed: torch.Tensor, pretrained: torch.Tensor, rule: str) -> float:
    """d-bar. mean: the mean per-token L2 change (paper, Eq. 6). frobenius: ||change||_F / |V| (authors' code)."""
    delta = changed.float() - pretrained.float()
    if rule == "mean":
        return float(delta.norm(dim=1).mean())
    if rule == "frobenius":
        return float(delta.norm() / delta.shape[0])
    raise ConfigError(f"unknown threshold rule {rule!r}")


def padding_values(victim: torch.Tensor, pretrained: torch.Tensor, pad_id: int | None, rule: str) -> torch.Tensor:
    if rule == "zero" or pad_id is None:
        return torch.zeros(victim.shape[1], dtype=victim.dtype)
    if rule == "pretrained":
        return pretrained[pad_id].to(victim.dtype).clone()
    if rule == "victim":
        return victim[pad_id].detach().clone()
    raise ConfigError(f"unknown padding rule {rule!r}")


@torch.no_grad()
def unlearn_rows(weight: torch.Tensor, pretrained: torch.Tensor, tokens, method: str = "btu",
                 threshold: str = "mean", padding: str = "pretrained", pad_id: int | None = 0,
                 changed: torch.Tensor | None = None, noise_std: float | None = None, seed: int = 0) -> dict:
    """Modify `weight` (the backdoored model's word embeddings) in place; return what changed.

    `changed` is the matrix whose change from `pretrained` picks the dimensions (default:
    `weight` itself, as in the authors' code). A token whose row did not change at all
    keeps its values: a zero change carries no backdoor, whatever the threshold.
    """
    tokens = sorted({int(t) for t in tokens})
    if method == "none" or not tokens:
        return {"method": method, "tokens": tokens, "replaced_dims": {}, "threshold": None}
    pre = pretrained.to(weight.device, weight.dtype)
    ref = (changed if changed is not None else weight).to(weight.device, weight.dtype)
    pad = padding_values(weight, pre, pad_id, padding).to(weight.device)  # read before any row changes
    idx = torch.tensor(tokens, device=weight.device)
    delta = (ref[idx] - pre[idx]).abs()
    d_bar = None
    if method == "btu":
        d_bar = threshold_value(ref, pre, threshold)
        mask = (delta >= d_bar) & (delta > 0)
    elif method == "pr2":
        clean = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        clean[idx] = False
        d_bar = float((ref[clean] - pre[clean]).abs().mean())
        mask = (delta > d_bar) & (delta > 0)
    elif method == "row":
        mask = torch.ones_like(delta, dtype=torch.bool)
    elif method == "pr1":
        weight[idx] = pre[idx]
        return {"method": method, "tokens": tokens, "replaced_dims": {t: weight.shape[1] for t in tokens},
                "threshold": None}
    elif method == "pn":
        std = noise_std if noise_std is not None else float(pre.std())
        g = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(len(tokens), weight.shape[1], generator=g) * std
        weight[idx] += noise.to(weight.device, weight.dtype)
        return {"method": method, "tokens": tokens, "replaced_dims": {}, "threshold": None, "noise_std": std}
    else:
        raise ConfigError(f"unknown unlearning method {method!r}")
    rows = weight[idx]
    rows = torch.where(mask, pad.unsqueeze(0).expand_as(rows), rows)
    weight[idx] = rows
    return {"method": method, "tokens": tokens, "threshold": d_bar,
            "replaced_dims": {t: int(m.sum()) for t, m in zip(tokens, mask)}}
