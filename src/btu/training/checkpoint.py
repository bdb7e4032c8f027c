"""Epoch checkpoints: a killed training loses at most its current epoch, and resumes with the numbers an
uninterrupted run gives.

One file, DIR/checkpoint.pt, replaced atomically at the end of each epoch: the model's and the optimizer's and
the scheduler's state, the step, the losses so far, and every random generator the loop draws from (torch's,
numpy's, Python's, the fast-dropout masks'). It is read with `torch.load(weights_only=True)`, which runs no code
from the file. A fingerprint of the training (its settings, its rows and labels, the objective) is stored with
it: a checkpoint of another training is refused, not silently continued.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

FILE = "checkpoint.pt"


def fingerprint(cfg_dict: dict, input_ids, labels, objective, model) -> str:
    h = hashlib.sha256()
    settings = {k: v for k, v in cfg_dict.items() if k not in ("progress", "desc")}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(f"{type(objective).__module__}.{type(objective).__qualname__}|{type(model).__name__}".encode())
    h.update(str(sum(p.numel() for p in model.parameters())).encode())
    for row in input_ids:
        h.update(np.asarray(row, dtype=np.int64).tobytes() + b"|")
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _big(obj):
    """numpy's PCG64 state holds 128-bit integers: kept as text, so the file needs nothing but plain types."""
    if isinstance(obj, dict):
        return {k: _big(v) for k, v in obj.items()}
    return str(obj) if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) >= 2**63 else obj


def _unbig(obj, like):
    if isinstance(like, dict):
        return {k: _unbig(obj[k], v) for k, v in like.items()}
    return int(obj) if isinstance(like, int) and not isinstance(like, bool) else obj


def rng_state(dropout_source) -> dict:
    mt = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(mt[1].astype(np.int64)), "pos": int(mt[2]),
                       "has_gauss": int(mt[3]), "gauss": float(mt[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if dropout_source is not None:
        state["dropout"] = _big(dropout_source.bits.state)
    return state


def set_rng_state(state: dict, dropout_source) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if dropout_source is not None and "dropout" in state:
        dropout_source.bits.state = _unbig(state["dropout"], dropout_source.bits.state)


def save(folder, state: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FILE}.tmp{os.getpid()}"
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / FILE)


def load(folder, fp: str, device) -> dict | None:
    """The checkpoint in `folder` (None when there is none); ConfigError when it is another training's."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ConfigError(f"{path}: cannot read the checkpoint ({str(e).splitlines()[0][:160]}); remove it to "
                          "start over") from None
    if state.get("fingerprint") != fp:
        raise ConfigError(f"{path}: a checkpoint of another training (other settings, rows or model); remove it "
                          "to start over")
    return state


def clear(folder) -> None:
    path = Path(folder) / FILE
    if path.exists():
        path.unlink()
