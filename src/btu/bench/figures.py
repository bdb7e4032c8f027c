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


def make_figures(records) -> dict[str, bytes]:
    """name -> PNG bytes, for every figure the records allow (none without matplotlib)."""
    if _plt() is None:
        return {}
    figs = {}
    for ab in ablations(records):
        figs[_safe(ab["name"]) + ".png"] = ablation_png(ab)
    return figs


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
