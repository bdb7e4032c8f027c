"""Experiments at scale: grid files, the SQLite results store, the artifact cache, executors and reports."""

from .grid import Cell, Grid, load_grid
from .run import run_bench
from .store import Store

__all__ = ["Cell", "Grid", "Store", "load_grid", "run_bench"]
