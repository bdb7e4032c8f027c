"""Run one cell of a grid: take its poisoned data and its victim from the cache (or make them and cache them),
run its defense through the runner every command uses, and return the record the store keeps.

A plain function of (cell, cache folder): the in-process executor calls it, and so does each Ray task.
"""

from __future__ import annotations

import platform
import subprocess
import time
import traceback
from functools import lru_cache
from pathlib import Path

from ..errors import BtuError
from .artifacts import ArtifactCache
from .features import save_features
from .grid import Cell, digest


@lru_cache(maxsize=1)
def git_commit() -> dict:
    """The commit of the btu checkout that runs (and whether it had uncommitted changes), where it is one."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def provenance() -> dict:
    import os

    import torch

    from .. import __version__
    from ..experiment import environment

    machine = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    return {"btu": __version__, **environment(), "git": git_commit(), "machine": machine}


class SharedArtifacts:
    """The artifacts a defense declares shareable (Defense.shared_artifacts), kept in this process for the cells
    of one victim group: BTU's detection runs once for every BTU variant with the same detection options."""

    def __init__(self):
        self.group, self.items = None, {}

    def _at(self, group: str) -> dict:
        if group != self.group:  # a new group: the last one's artifacts will not be asked for again
            self.group, self.items = group, {}
        return self.items

    def get(self, group: str, defense) -> dict:
        items = self._at(group)
        return {name: items[(name, digest(deps))] for name, deps in defense.shared_artifacts().items()
                if (name, digest(deps)) in items}

    def keep(self, group: str, defense, artifacts: dict) -> None:
        items = self._at(group)
        for name, deps in defense.shared_artifacts().items():
            if name in artifacts:
                items[(name, digest(deps))] = artifacts[name]


MEMO = SharedArtifacts()


def run_cell(cell: Cell, cache_root, progress: bool = False) -> dict:
    """The store's record of one cell: status done with its metrics, or failed with the error."""
    start, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S")
    record = {"key": cell.key, "grid": cell.grid, "data": cell.labels["data"], "model": cell.labels["model"],
              "attack": cell.labels["attack"], "defense": cell.labels["defense"], "defense_name": cell.defense,
              "seed": cell.seed, "config": {**cell.config(), "preset": cell.preset, "labels": cell.labels},
              "started": started, "provenance": provenance()}
    try:
        report, artifacts = _run(cell, ArtifactCache(cache_root), progress)
        record.update(status="done", metrics=report.get("metrics"), report=report,
                      timings=report.get("timings"), artifacts=artifacts)
    except KeyboardInterrupt:
        raise
    except BtuError as e:
        record.update(status="failed", error=str(e))
    except Exception:  # a bug: the traceback goes into the store, and the other cells still run
        record.update(status="failed", error=traceback.format_exc())
    record["seconds"] = time.perf_counter() - start
    return record


def _run(cell: Cell, cache: ArtifactCache, progress: bool) -> tuple[dict, dict]:
    from ..defenses.base import get_defense
    from ..defenses.options import from_dict
    from ..defenses.runner import Context, RunSettings, make_defense, run_defense
    from ..experiment import AttackConfig, DataConfig, apply_attack, load_splits
    from ..models import load_tokenizer

    settings = RunSettings(**cell.settings, seed=cell.seed, progress=progress, controls=True)
    t0 = time.perf_counter()
    paths = dict(cell.data_path)
    clean_data = paths.pop("clean_data", None)
    poison_config = cell.poison_config(settings.max_length)
    poison_key = digest(poison_config)
    poisoned = cache.poisoned(poison_key)
    if poisoned is not None:
        splits, attack_record = poisoned
    else:
        splits = load_splits(DataConfig(**paths), cell.seed)
        acfg = AttackConfig(**cell.attack) if cell.attack else AttackConfig()
        window = {"tokenizer": load_tokenizer(cell.model_path), "max_length": settings.max_length} \
            if cell.attack else {}
        splits, attack_record = apply_attack(splits, acfg, cell.seed, **window)
        cache.save_poisoned(poison_key, splits, attack_record,
                            {"made_by": cell.key, "config": poison_config})
    data_seconds = time.perf_counter() - t0
    cached = cache.victim(cell.victim_key)
    kw = dict(dev=splits.dev, test=splits.test, poison_test=splits.poison_test, target=splits.target,
              victim=cached, checkpoints=cache.checkpoints(cell.key),
              victim_seconds=cache.victim_seconds(cell.victim_key) if cached is not None else None)
    if cell.defense == "none":
        ctx = Context(splits.train, cell.model_path, settings, **kw)
        model = ctx.victim()
        with ctx.timed("measure"):
            measured = ctx.measure(model)
        metrics = {k: measured.get(k) for k in ("cacc", "asr", "asr_no_trigger", "dev_cacc") if k in measured}
        report = {"defense": "none", "metrics": metrics, "rows": [{"model": "no defense", **measured}],
                  "timings": dict(ctx.timings), "attack": attack_record or None}
        reused = []
    else:
        defense = make_defense(cell.defense, from_dict(get_defense(cell.defense).Options, cell.options))
        shared = MEMO.get(cell.victim_key, defense)
        res = run_defense(cell.defense, splits.train, cell.model_path, options=defense.options, preset=cell.preset,
                          settings=settings, extra_report={"attack": attack_record or None}, artifacts=dict(shared),
                          clean_data=clean_data if cell.gets_clean_data else None, **kw)
        ctx, report, model = res.context, res.report, res.model
        MEMO.keep(cell.victim_key, defense, ctx.artifacts)
        reused = sorted(shared)
    report["timings"]["data"] = data_seconds
    artifacts = {"victim": {"key": cell.victim_key, "cached": cached is not None},
                 "poisoned": {"key": poison_key, "cached": poisoned is not None}, "reused": reused}
    t0 = time.perf_counter()
    feats = save_features(cache.root / "features" / f"{cell.key}.npz", model, ctx.tokenizer, ctx.test,
                          ctx.poison_test, cell.seed, settings.max_length, settings.precision)
    report["timings"]["features"] = time.perf_counter() - t0
    if feats is not None:
        artifacts["features"] = str(feats.resolve())
    if cached is None and ctx.has_victim:
        cache.save_victim(cell.victim_key, ctx.victim(), ctx.tokenizer,
                          {"made_by": cell.key, "config": cell.victim_config(), "seconds": ctx.victim_seconds})
    return report, artifacts
