"""The report's figures, as PNG bytes, from the store's records.

- ablation lines: where the cells of one defense differ in exactly one option (BTU's alpha, its rounds: the
  paper's Tables 4 and 6), CACC and ASR against that option, one line per attack, mean over the seeds;
- detection distance curves (the BTU paper's Figure 1): from a BTU cell's report;
- t-SNE of the defended and undefended models' features of clean and poisoned rows (the BTU paper's Figure 4):
  from the features a cell stored.
"""

from __future__ import annotations

import io
import statistics
import textwrap
from collections import OrderedDict


def _plt():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return buf.getvalue()


def _x(value):
    """A plottable x for an option value: a number, or a list's length (rounds [1, 2, 3] -> 3)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return float(len(value))
    return None


def ablations(records) -> list[dict]:
    """[{title, option, series: {attack: [(x, cacc, asr), ...]}}] for each defense whose cells (of one grid, data
    and model) differ in one option only."""
    groups: OrderedDict[tuple, list] = OrderedDict()
    for r in records:
        if r["defense_name"] != "none":
            groups.setdefault((r["grid"], r["data"], r["model"], r["defense_name"]), []).append(r)
    out = []
    for (grid, data, model, defense), rs in groups.items():
        opts = [r["config"]["options"] for r in rs]
        varying = [k for k in opts[0] if len({repr(o.get(k)) for o in opts}) > 1]
        if len(varying) != 1 or any(r["config"].get("preset") != rs[0]["config"].get("preset") for r in rs):
            continue
        key = varying[0]
        if any(_x(o[key]) is None for o in opts):
            continue
        points: OrderedDict[str, dict] = OrderedDict()
        for r in rs:
            m = r.get("metrics") or {}
            points.setdefault(r["attack"], {}).setdefault(_x(r["config"]["options"][key]), []).append(
                (m.get("cacc"), m.get("asr")))
        series = {}
        for attack, by_x in points.items():
            series[attack] = [(x, _mean(v[0] for v in vals), _mean(v[1] for v in vals))
                              for x, vals in sorted(by_x.items())]
        if all(len(s) >= 2 for s in series.values()):
            label = f"number of {key}" if isinstance(opts[0][key], list) else key
            out.append({"title": f"{grid}: {defense} on {data}, {model}", "option": label, "name": f"{grid}-{defense}"
                        f"-{key}", "series": series})
    return out


def _mean(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.fmean(vals) if vals else None


def ablation_png(ab: dict) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for attack, pts in ab["series"].items():
        xs = [p[0] for p in pts]
        for ax, i in ((axes[0], 1), (axes[1], 2)):
            ax.plot(xs, [p[i] for p in pts], marker="o", label=attack)
    for ax, what in zip(axes, ("CACC (%)", "ASR (%)")):
        ax.set_xlabel(ab["option"])
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(ab["title"], fontsize=10)
    fig.tight_layout()
    return _png(fig)


def first_seed(records) -> list[dict]:
    """Of each (grid, data, model, attack, defense), the record of the smallest seed: one figure, not one per seed."""
    best: OrderedDict[tuple, dict] = OrderedDict()
    for r in records:
        k = (r["grid"], r["data"], r["model"], r["attack"], r["defense"])
        if k not in best or r["seed"] < best[k]["seed"]:
            best[k] = r
    return list(best.values())


def curves_png(record) -> bytes | None:
    """Figure 1: embedding distance over detection training, the flagged tokens against the band of the rest."""
    rounds = [r for r in (record.get("report") or {}).get("rounds", []) if r.get("curves")]
    if not rounds:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(rounds), figsize=(4.2 * len(rounds), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rounds):
        c = r["curves"]
        if c["clean_mean"]:
            ax.fill_between(c["steps"], c["clean_p05"], c["clean_p95"], color="tab:blue", alpha=0.2,
                            label="other tokens 5-95 %")
            ax.plot(c["steps"], c["clean_mean"], color="tab:blue", label="other tokens, mean")
            ax.plot(c["steps"], c["clean_max"], color="tab:blue", ls=":", lw=1, label="other tokens, max")
        for token, ys in c["tokens"].items():
            ax.plot(c["steps"], ys, lw=1.8, label=f"flagged '{token}'")
        ax.set_title(f"round {r['round']}")
        ax.set_xlabel("training step")
        ax.set_ylabel("L2 distance from pretrained")
        ax.legend(fontsize=6)  # each round flags its own tokens
    fig.suptitle(f"{record['grid']}: detection on {record['data']} + {record['attack']} (seed {record['seed']})",
                 fontsize=10)
    fig.tight_layout()
    return _png(fig)


def tsne_png(title: str, panels: list[tuple[str, dict]]) -> bytes | None:
    """Figure 4: t-SNE of the [CLS] features, clean rows by label and poisoned rows, one panel per model."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), squeeze=False)
    for ax, (name, f) in zip(axes[0], panels):
        x = np.concatenate([f["clean"], f["poisoned"]])
        n = len(f["clean"])
        emb = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=0).fit_transform(x)
        names = [str(v) for v in f["label_names"]]
        for lab in sorted(set(f["clean_labels"].tolist())):
            m = f["clean_labels"] == lab
            ax.scatter(emb[:n][m, 0], emb[:n][m, 1], s=6, alpha=0.6, label=f"clean: {names[lab]}")
        ax.scatter(emb[n:, 0], emb[n:, 1], s=8, marker="x", color="black", alpha=0.7, label="poisoned")
        ax.set_title(textwrap.shorten(name, 48, placeholder=" ..."), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def tsne_figures(records) -> dict[str, bytes]:
    """One t-SNE figure per (grid, data, model, attack): no defense beside each defense, at the first seed."""
    from .features import load_features

    groups: OrderedDict[tuple, list] = OrderedDict()
    for r in first_seed(records):
        if (r.get("artifacts") or {}).get("features"):
            groups.setdefault((r["grid"], r["data"], r["model"], r["attack"]), []).append(r)
    out = {}
    for (grid, data, model, attack), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["defense_name"] != "none")  # no defense first
        panels = [(("no defense" if r["defense_name"] == "none" else r["defense"]), f) for r in rs
                  if (f := load_features(r["artifacts"]["features"])) is not None]
        if len(panels) >= 1:
            png = tsne_png(f"{grid}: [CLS] features on {data} + {attack}, {model}", panels)
            if png is not None:
                out[_safe(f"{grid}-{data}-{attack}-tsne") + ".png"] = png
    return out


def make_figures(records) -> dict[str, bytes]:
    """name -> PNG bytes, for every figure the records allow (none without matplotlib)."""
    if _plt() is None:
        return {}
    figs = {}
    for ab in ablations(records):
        figs[_safe(ab["name"]) + ".png"] = ablation_png(ab)
    drawn = set()
    for r in first_seed(records):
        rounds = (r.get("report") or {}).get("rounds")
        key = (r["grid"], r["data"], r["model"], r["attack"], repr(rounds))
        if r["defense_name"] in ("btu", "btu-detect") and rounds and key not in drawn:
            drawn.add(key)  # variants that shared one detection share its figure
            png = curves_png(r)
            if png is not None:
                figs[_safe(f"{r['grid']}-{r['data']}-{r['attack']}-{r['defense']}-distances") + ".png"] = png
    figs.update(tsne_figures(records))
    return figs


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
