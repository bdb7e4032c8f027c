"""`btu bench`: expand a grid file, skip the cells the store holds, run the rest, store each as it finishes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BtuError
from .artifacts import ArtifactCache
from .grid import load_grid
from .store import Store


class CellsFailed(BtuError):
    """Some cells failed (their errors are in the store); the others are stored."""

    exit_code = 1


@dataclass
class BenchRun:
    grid: object
    store: Path
    cache: Path
    cached: list = field(default_factory=list)  # cells the store already held
    ran: list = field(default_factory=list)  # records of the cells run now
    victims_trained: int = 0


def default_store(grid_path) -> Path:
    p = Path(grid_path)
    return p.with_suffix(".sqlite")


def default_cache(store_path) -> Path:
    """btu-artifacts beside the store: grids whose stores share a folder share their victims."""
    return Path(store_path).parent / "btu-artifacts"


def select(cells, only: list[str]) -> list:
    """The cells matching every KEY=VALUE of --only (keys: data, model, attack, defense, seed; a label or name)."""
    from ..errors import ConfigError

    keep = list(cells)
    for item in only or []:
        key, sep, value = item.partition("=")
        if not sep or key not in ("data", "model", "attack", "defense", "seed"):
            raise ConfigError(f"--only {item}: expects KEY=VALUE with KEY one of data, model, attack, defense, seed")
        values = set(value.split(","))
        if key == "seed":
            keep = [c for c in keep if str(c.seed) in values]
        elif key == "defense":
            keep = [c for c in keep if c.labels["defense"] in values or c.defense in values]
        else:
            keep = [c for c in keep if c.labels[key] in values]
    if not keep:
        raise ConfigError(f"--only {' '.join(only)}: matches no cell of the grid")
    return keep


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def format_metrics(m: dict | None) -> str:
    m = m or {}
    parts = [f"{k.upper()} {m[k]:.2f}" for k in ("cacc", "asr") if isinstance(m.get(k), (int, float))]
    return " ".join(parts) or "no test metrics"


def check_models(specs) -> None:
    """Every model loads (its tokenizer, here), before any training: a typo fails now, not after hours."""
    from ..models import load_tokenizer

    for spec in sorted(specs):
        load_tokenizer(spec)


def run_bench(grid_path, store_path=None, cache_path=None, executor: str = "local", address=None,
              dry_run: bool = False, progress: bool = True, echo=None, cpus_per_cell: int = 1,
              gpus_per_cell: float | None = None, num_cpus: int | None = None, only=None) -> BenchRun:
    if echo is None:
        def echo(line):  # one line per finished cell, flushed: a log file follows the run as it goes
            print(line, flush=True)
    grid = load_grid(grid_path)
    if only:
        grid.cells = select(grid.cells, only)
    store_path = Path(store_path) if store_path else default_store(grid_path)
    cache_path = Path(cache_path) if cache_path else default_cache(store_path)
    store = Store(store_path)
    try:
        done = store.done()
        cache = ArtifactCache(cache_path)
        run = BenchRun(grid, store_path, cache_path)
        todo = []
        for c in grid.cells:
            (run.cached if c.key in done else todo).append(c)
        victims = {c.victim_key for c in todo}
        to_train = {k for k in victims if cache.victim(k) is None}
        echo(f"grid {grid.name}: {len(grid.cells)} cells, {len(run.cached)} in {store_path}, {len(todo)} to run "
             f"({_n(len(to_train), 'victim')} to train, {len(victims) - len(to_train)} cached in {cache_path})")
        if not dry_run:
            check_models({c.model_path for c in todo})
        if dry_run:
            for i, c in enumerate(grid.cells, 1):
                state = "stored" if c.key in done else \
                    ("to run, victim cached" if cache.victim(c.victim_key) else "to run")
                echo(f"  [{i}/{len(grid.cells)}] {c.key}  {c.describe()}: {state}")
            return run
        if executor == "ray":
            from .executors import run_ray

            records = run_ray(todo, cache_path, address=address, cpus_per_cell=cpus_per_cell,
                              gpus_per_cell=gpus_per_cell, num_cpus=num_cpus)
        else:
            from .executors import run_local

            records = run_local(todo, cache_path, progress)
        by_key = {c.key: c for c in todo}
        start = time.perf_counter()
        for i, rec in enumerate(records, 1):
            store.put(rec)
            cache.clear_checkpoints(rec["key"])
            run.ran.append(rec)
            victim = (rec.get("artifacts") or {}).get("victim") or {}
            if rec["status"] == "done" and victim and not victim.get("cached"):
                run.victims_trained += 1
            cell = by_key[rec["key"]]
            if rec["status"] == "done":
                note = ", victim cached" if victim.get("cached") else ""
                echo(f"[{i}/{len(todo)}] {cell.describe()}: {format_metrics(rec.get('metrics'))} "
                     f"({rec['seconds']:.0f} s{note})")
            else:
                echo(f"[{i}/{len(todo)}] {cell.describe()}: FAILED: {rec['error'].strip().splitlines()[-1]}")
        failed = [r for r in run.ran if r["status"] != "done"]
        if todo:
            echo(f"ran {_n(len(todo), 'cell')} in {time.perf_counter() - start:.0f} s; "
                 f"{_n(run.victims_trained, 'victim')} trained; results in {store_path}")
        if failed:
            raise CellsFailed(f"{len(failed)} of {len(todo)} cells failed (the first: "
                              f"{failed[0]['error'].strip().splitlines()[-1]}); a rerun tries them again"
                              + ("; the others are stored" if len(failed) < len(todo) else ""))
        return run
    finally:
        store.close()
