"""Executors: run a grid's pending cells and yield each record as it finishes.

Cells are grouped by the victim they need. The first cell of a group trains the victim and caches it; the rest
of the group starts only after it, so they load it instead of training it again. In process, that is the
grid's order; on Ray, the groups run side by side and each group's followers are submitted when its first
cell is done.
"""

from __future__ import annotations

from collections import OrderedDict

from ..errors import ConfigError
from .cell import run_cell


def victim_groups(cells) -> list[list]:
    groups: OrderedDict[str, list] = OrderedDict()
    for c in cells:
        groups.setdefault(c.victim_key, []).append(c)
    return list(groups.values())


def run_local(cells, cache_root, progress: bool = False):
    for group in victim_groups(cells):
        for cell in group:
            yield run_cell(cell, cache_root, progress)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'btu[ray]' (or pip install 'ray[default]')") \
            from None
    return ray


def _remote_cell(cell, cache_root, threads):
    import torch

    torch.set_num_threads(threads)
    return run_cell(cell, cache_root, False)


def run_ray(cells, cache_root, address: str | None = None, cpus_per_cell: int = 1, gpus_per_cell: float | None = None,
            num_cpus: int | None = None):
    """Cells as Ray tasks (cpus_per_cell CPUs each; one GPU each where the cluster has GPUs, unless told),
    on an existing cluster (`address`, e.g. "auto" or "ray://host:10001") or a local instance."""
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        kw = {"address": address} if address else {"num_cpus": num_cpus}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"--address {address}: cannot reach a Ray cluster ({e})") from None
    try:
        if gpus_per_cell is None:
            gpus_per_cell = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(_remote_cell).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0)
        pending, waiting = {}, {}
        for group in victim_groups(cells):
            first, rest = group[0], group[1:]
            pending[task.remote(first, str(cache_root), cpus_per_cell)] = first
            waiting[first.key] = rest
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            cell = pending.pop(ref)
            yield ray.get(ref)
            for follower in waiting.pop(cell.key, []):  # the victim is cached now
                pending[task.remote(follower, str(cache_root), cpus_per_cell)] = follower
    finally:
        if started_here:
            ray.shutdown()
