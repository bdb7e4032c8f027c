"""`btu bench` and `btu report`: argument parsing and printing only."""

from __future__ import annotations

from pathlib import Path

GRID_HELP = ("A grid file (YAML) crosses lists: data, model, attack, defense, seed, with fixed run settings under "
             "`set`; README 'Experiments at scale' has the schema. Each cell's resolved configuration is hashed; "
             "results go to a SQLite store (default: GRID.sqlite beside the grid file) one transaction per finished "
             "cell, and a rerun skips the cells the store holds. Victims are cached (default: btu-artifacts/ beside "
             "the store) and shared by every defense of the same data, attack, model, settings and seed.")


def cmd_bench(a):
    from ..errors import ConfigError
    from .report import summarize, text_report
    from .run import run_bench
    from .store import Store

    if a.executor != "ray" and (a.address or a.num_cpus is not None or a.gpus_per_cell is not None):
        raise ConfigError("--address, --num-cpus and --gpus-per-cell are for --executor ray")
    if a.cpus_per_cell < 1:
        raise ConfigError(f"--cpus-per-cell must be >= 1, not {a.cpus_per_cell}")
    run = run_bench(a.grid, a.store, a.cache, executor=a.executor, address=a.address, dry_run=a.dry_run,
                    progress=not a.no_progress, cpus_per_cell=a.cpus_per_cell, gpus_per_cell=a.gpus_per_cell,
                    num_cpus=a.num_cpus, only=a.only)
    if a.dry_run:
        return
    store = Store(run.store, create=False)
    try:
        keys = {c.key for c in run.grid.cells}
        records = [r for r in store.records() if r["key"] in keys]
    finally:
        store.close()
    print()
    print(text_report(summarize(records)).rstrip())
    print(f"\n`btu report {run.store} --out DIR` writes the tables, figures and an HTML page.")


def cmd_report(a):
    from ..errors import ConfigError
    from .figures import make_figures
    from .report import latest, summarize, text_report, write_report
    from .store import Store

    store = Store(a.store, create=False)
    try:
        if a.grid and a.grid not in store.grids():
            raise ConfigError(f"--grid {a.grid}: the store holds the grids {', '.join(store.grids()) or '(none)'}")
        records, superseded = latest(store.records(grid=a.grid))
        failed = store.records(grid=a.grid, status="failed")
    finally:
        store.close()
    print(text_report(summarize(records)).rstrip())
    if superseded:
        print(f"\n{superseded} older cells are not in the table: a newer cell of the same labels and seed (run "
              f"with a changed configuration) supersedes each.")
    if failed:
        print(f"\n{len(failed)} failed cells are not in the table (`btu bench` runs them again).")
    if a.out:
        files = write_report(records, Path(a.out), make_figures(records) if not a.no_figures else {})
        print(f"\nwrote {a.out}/" + f", {a.out}/".join(files))


def register(sub):
    from ..cli import Compact

    s = sub.add_parser("bench", help="run a grid file of experiments into a SQLite results store (resumable)",
                       formatter_class=Compact, description="Run every cell of a grid file. " + GRID_HELP)
    s.add_argument("grid", metavar="GRID.yaml", help="the grid file")
    s.add_argument("--store", metavar="FILE", help="the SQLite results store (default: GRID.sqlite beside the grid)")
    s.add_argument("--cache", metavar="DIR", help="the artifact cache: victims, features (default: btu-artifacts "
                                                  "beside the store); on a Ray cluster, a path every worker sees")
    s.add_argument("--only", action="append", metavar="KEY=VALUE", help="run only the cells whose data, model, attack, "
                   "defense (label or name) or seed is VALUE (comma-separated values; repeatable): --only seed=0")
    s.add_argument("--dry-run", action="store_true", help="list the cells, what the store holds and what is cached; "
                                                          "run nothing")
    s.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local (default): one cell after another in this process | ray: cells as Ray tasks")
    s.add_argument("--address", metavar="ADDR", help="ray: an existing cluster (auto, or ray://HOST:PORT; default: "
                                                     "start a local instance)")
    s.add_argument("--num-cpus", type=int, metavar="N", help="ray: CPUs of the local instance (default: all)")
    s.add_argument("--cpus-per-cell", type=int, default=1, metavar="N", help="ray: CPUs per cell (default 1)")
    s.add_argument("--gpus-per-cell", type=float, metavar="N",
                   help="ray: GPUs per cell (default: 1 where the cluster has GPUs, else 0)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (one line per finished cell stays)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("report", help="tables, figures and an HTML page from a results store",
                       formatter_class=Compact,
                       description="Prints the comparison in the papers' layout (rows defenses, columns attacks, CACC "
                       "/ ASR as mean ± std over seeds) for each grid, data set and model of a `btu bench` store; "
                       "with --out, writes report.md, report.csv, report.json, the figures (PNG) and index.html (one "
                       "self-contained page, tables sortable, figures inline).")
    s.add_argument("store", metavar="STORE", help="a results store written by `btu bench`")
    s.add_argument("--out", metavar="DIR", help="write the report files here")
    s.add_argument("--grid", metavar="NAME", help="only this grid's cells")
    s.add_argument("--no-figures", action="store_true", help="tables only")
    s.set_defaults(func=cmd_report)
