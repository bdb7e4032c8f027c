"""CUBE (Cui et al., "A Unified Evaluation of Textual Backdoor Learning", NeurIPS 2022 Datasets and Benchmarks) as a
data filter: a model trained briefly on the poisoned set represents its rows; poisoned rows, learned through their
trigger, gather in a cluster of their own; within each label the largest cluster is kept and the rest go.

1. Encoder: a model trained on the poisoned set. By default the victim (trained once per run, or cached by a grid,
   and shared with every other defense of the run); `encoder=fresh` trains CUBE's own copy of the pretrained model
   as OpenBackdoor does (10 epochs, lr 2e-5, batch 32; here `epochs`, `lr` or the run's, the run's batch size;
   seed offset 2).
2. Representations: its last layer's [CLS] state (the last real token's, for a decoder; `pooling=mean`: the mean
   over real tokens), PCA to 20 dimensions, UMAP to 2 (n_neighbors 100, min_dist 0), seeded with the run's seed:
   OpenBackdoor's settings.
3. Clustering: HDBSCAN over all rows (min_samples 100, min_cluster_size 5, epsilon 0: OpenBackdoor's).
4. Filtering, per label: the label's largest cluster stays; each other cluster goes, unless it holds half the
   label's rows or more (OpenBackdoor's guard against splitting a label in two).

Noise points (HDBSCAN's -1): OpenBackdoor counts them as one more cluster, dropped like a small one, or kept as the
label's "largest cluster" when they outnumber every real one (its clusters then go instead). Here (`noise=nearest`)
each noise point joins the cluster of its nearest clustered point in the UMAP plane: one at the edge of the clean
mass stays, one beside the poisoned cluster goes with it. `noise=drop` drops them (under the same half-the-label
guard; never kept as the largest), `noise=keep` keeps them. A label without any cluster keeps all its rows.

min_samples: HDBSCAN cannot make a cluster of fewer poisoned rows than about min_samples (100 by default; they merge
into a neighbouring clean cluster instead): on a small set, or at a low poison rate, lower it.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..training import train
from .base import Defense, register
from .filtering import keep_rows
from .options import Options, option

INSTALL = "pip install 'btu[cube]' (or: pip install umap-learn 'scikit-learn>=1.3')"


def libraries():
    """UMAP, HDBSCAN and PCA: CUBE's optional dependencies (umap-learn, scikit-learn >= 1.3), or a ConfigError
    naming the install."""
    try:
        from sklearn.cluster import HDBSCAN
        from sklearn.decomposition import PCA
        from umap import UMAP
    except ImportError as e:
        raise ConfigError(f"defense 'cube' needs umap-learn and scikit-learn >= 1.3 ({e}): {INSTALL}") from None
    return UMAP, HDBSCAN, PCA


@contextmanager
def torch_threads_kept():
    """UMAP's numba start-up resets the process's OpenMP thread count, which torch shares: the later training
    would then sum in another order (and differ in its last bits from a run without CUBE before it)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class CUBEOptions(Options):
    encoder: str = option("victim", "the model whose representations are clustered: the victim (trained on the "
                                    "poisoned set like any run's), or a fresh one trained for `epochs` "
                                    "(OpenBackdoor's)", choices=("victim", "fresh"))
    epochs: float = option(10.0, "encoder=fresh: epochs of CUBE's own encoder training on the poisoned set "
                                 "(OpenBackdoor's 10)", low=0, low_inclusive=False)
    lr: float | None = option(None, "encoder=fresh: the encoder's learning rate (none: the run's)", low=0,
                              low_inclusive=False)
    pooling: str = option("cls", "each row's representation: the last layer's [CLS] state, or the mean over its "
                                 "tokens", choices=("cls", "mean"))
    pca_components: int = option(20, "PCA dimensions before UMAP (0: none)", low=0)
    n_neighbors: int = option(100, "UMAP's neighbourhood size (at most the rows - 1)", low=2)
    min_dist: float = option(0.0, "UMAP's minimum distance between embedded points", low=0)
    n_components: int = option(2, "UMAP's output dimensions", low=1)
    min_samples: int = option(100, "HDBSCAN's min_samples (at most the rows)", low=1)
    min_cluster_size: int = option(5, "HDBSCAN's smallest cluster", low=2)
    noise: str = option("nearest", "HDBSCAN's noise points: join their nearest clustered point's cluster, are "
                                   "dropped, or are kept", choices=("nearest", "drop", "keep"))
    max_drop_share: float = option(0.5, "a cluster holding at least this share of its label's rows is never "
                                         "dropped (1: drop all but the largest)", low=0, high=1, low_inclusive=False)


def embed(features: np.ndarray, o: CUBEOptions, seed: int) -> np.ndarray:
    """PCA (when it reduces anything), then UMAP: deterministic for a seed (UMAP then runs single-threaded)."""
    UMAP, _, PCA = libraries()
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    with torch_threads_kept():
        if 0 < o.pca_components < min(x.shape):
            x = PCA(n_components=o.pca_components, random_state=seed).fit_transform(x)
        umap = UMAP(n_neighbors=max(2, min(o.n_neighbors, n - 1)), min_dist=o.min_dist,
                    n_components=o.n_components, random_state=seed, transform_seed=seed, n_jobs=1)
        return umap.fit_transform(x)


def cluster(points: np.ndarray, o: CUBEOptions) -> np.ndarray:
    """HDBSCAN's cluster per point (-1: noise; with noise=nearest, the nearest clustered point's cluster)."""
    _, HDBSCAN, _ = libraries()
    n = len(points)
    with torch_threads_kept():
        ids = HDBSCAN(min_cluster_size=max(2, min(o.min_cluster_size, n)), min_samples=max(1, min(o.min_samples, n)),
                      cluster_selection_epsilon=0.0, copy=True).fit_predict(points)
    noise, placed = ids < 0, ids >= 0
    if o.noise == "nearest" and noise.any() and placed.any():
        from sklearn.neighbors import NearestNeighbors

        nearest = NearestNeighbors(n_neighbors=1).fit(points[placed]).kneighbors(points[noise],
                                                                                 return_distance=False)[:, 0]
        ids = ids.copy()
        ids[noise] = ids[placed][nearest]
    return ids


def select(ids: np.ndarray, labels, o: CUBEOptions) -> tuple[np.ndarray, list[dict]]:
    """Per label: keep its largest cluster and any holding max_drop_share of its rows or more; drop the other
    clusters (and noise, with noise=drop). Returns the keep mask and, per label, its clusters' sizes."""
    labels = np.asarray(labels)
    keep = np.ones(len(ids), dtype=bool)
    summary = []
    for y in sorted(set(labels.tolist())):
        rows = labels == y
        sizes = Counter(ids[rows].tolist())
        clusters = {c: s for c, s in sizes.items() if c >= 0}
        largest = max(clusters, key=lambda c: (clusters[c], -c)) if clusters else None
        dropped = []
        if largest is not None:
            groups = dict(clusters) | ({-1: sizes[-1]} if o.noise == "drop" and -1 in sizes else {})
            dropped = [c for c, s in groups.items() if c != largest and s < o.max_drop_share * rows.sum()]
            keep[rows & np.isin(ids, dropped)] = False
        summary.append({"label": int(y), "rows": int(rows.sum()), "largest": largest,
                        "clusters": {int(c): int(s) for c, s in sorted(sizes.items())},
                        "dropped_clusters": sorted(int(c) for c in dropped),
                        "dropped_rows": int((rows & ~keep).sum())})
    return keep, summary


def features(model, tokenizer, ctx, pooling: str):
    """Each training row's representation under `model`: [CLS] (the bench's t-SNE features) or the token mean."""
    if pooling == "mean":
        from .btu.evidence import pooled_features

        return pooled_features(model, tokenizer, ctx.input_ids, precision=ctx.settings.precision).numpy()
    from ..training.evaluate import cls_features

    return cls_features(model, tokenizer, ctx.train.texts, ctx.settings.max_length, ctx.settings.precision).numpy()


@register
class CUBE(Defense):
    """CUBE: cluster the victim's representations (or a fresh encoder's); keep each label's largest cluster."""

    name = "cube"
    summary = ("CUBE: embed the rows with the victim (UMAP), cluster them (HDBSCAN), keep each label's largest "
               "cluster")
    needs = frozenset({"pretrained", "victim"})  # encoder=fresh: its own encoder instead of the victim
    Options = CUBEOptions
    stage = "data"
    result_name = "CUBE filter + training"
    quick_options = dict(epochs=1.0, n_neighbors=15, min_samples=5)

    def required(self):
        libraries()  # before any training: a missing optional dependency is a ConfigError naming the install
        return set(self.needs) - ({"victim"} if self.options.encoder == "fresh" else set())

    def filter(self, ctx, state):
        o = self.options
        if o.encoder == "victim":
            model = ctx.victim()
        else:
            with ctx.timed("cube_encoder"):
                model = ctx.pretrained()
                train(model, ctx.tokenizer, input_ids=ctx.input_ids, labels=ctx.train.labels,
                      config=ctx.train_config("CUBE encoder training", epochs=o.epochs, lr=o.lr, seed_offset=2))
        with ctx.timed("cube_clustering"):
            points = embed(features(model, ctx.tokenizer, ctx, o.pooling), o, ctx.settings.seed)
            ids = cluster(points, o)
            keep, per_label = select(ids, ctx.train.labels, o)
        names = ctx.train.label_names
        state.notes["cube"] = {
            "labels": [{**s, "label": names[s["label"]]} for s in per_label],
            "clusters": int(len(set(ids.tolist()) - {-1})), "noise": o.noise,
            "dropped": int((~keep).sum())}
        return keep_rows(ctx, keep.tolist(), (~keep).astype(float).tolist(), state.notes["cube"])

    def report(self, ctx, state) -> dict:
        return {"cube": state.notes["cube"]} if "cube" in state.notes else {}

    def markdown(self, report: dict) -> str:
        r = report.get("cube")
        if not r:
            return ""
        from ..report import table

        rows = [{"label": s["label"], "rows": s["rows"], "clusters (id: rows)": _sizes(s["clusters"]),
                 "kept cluster": s["largest"], "dropped rows": s["dropped_rows"]} for s in r["labels"]]
        return "\n".join(["## CUBE clusters", "",
                          f"HDBSCAN found {r['clusters']} clusters (-1: noise, handled: {r['noise']}); each label "
                          "keeps its largest.", "", table(rows, markdown=True), "",
                          f"{r['dropped']} rows dropped."]) + "\n"

    def console(self, report: dict) -> str:
        r = report.get("cube")
        if not r:
            return ""
        parts = [f"{s['label']}: {_sizes(s['clusters'])} -> dropped {s['dropped_rows']}" for s in r["labels"]]
        return f"CUBE: {r['clusters']} clusters; " + "; ".join(parts) + f"; {r['dropped']} rows dropped."


def _sizes(clusters: dict) -> str:
    return ", ".join(f"{c}: {n}" for c, n in clusters.items())
