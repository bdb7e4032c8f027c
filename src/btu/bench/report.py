"""`btu report STORE`: the papers' layout from a results store (rows defenses, columns attacks, CACC / ASR as
mean ± std over seeds, n per cell), to the terminal and to report.md, report.csv, report.json and index.html."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import OrderedDict
from pathlib import Path

from ..io import atomic_write_text
from ..report import table

METRICS = ("cacc", "asr", "asr_no_trigger", "dev_cacc")


def _stats(values) -> dict:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def latest(records) -> tuple[list[dict], int]:
    """The newest finished cell per (grid, data, model, attack, defense, seed), and how many older ones it
    supersedes: a cell whose configuration changed (a new option, another default) gets a new key, and the
    older record must not count as a second seed."""
    newest: dict[tuple, dict] = {}
    for r in records:
        label = (r["grid"], r["data"], r["model"], r["attack"], r["defense"], r["seed"])
        if label not in newest or str(r.get("started") or "") >= str(newest[label].get("started") or ""):
            newest[label] = r
    kept = {id(r) for r in newest.values()}
    return [r for r in records if id(r) in kept], len(records) - len(kept)


def summarize(records) -> list[dict]:
    """One entry per (grid, data, model, defense, attack): each metric's mean, std and n over the seeds, the
    seeds, and the no-defense model's CACC / ASR on the same victims."""
    groups: OrderedDict[tuple, list] = OrderedDict()
    for r in records:
        groups.setdefault((r["grid"], r["data"], r["model"], r["defense"], r["attack"]), []).append(r)
    out = []
    for (grid, data, model, defense, attack), rs in groups.items():
        entry = {"grid": grid, "data": data, "model": model, "defense": defense, "attack": attack,
                 "seeds": sorted(r["seed"] for r in rs), "n": len(rs)}
        for m in METRICS:
            entry[m] = _stats((r.get("metrics") or {}).get(m) for r in rs)
        nd = [(r.get("metrics") or {}).get("no_defense") or {} for r in rs]
        entry["no_defense"] = {m: _stats(x.get(m) for x in nd) for m in ("cacc", "asr")}
        entry["seconds"] = _stats(r.get("seconds") for r in rs)
        out.append(entry)
    return out


def _pm(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.2f}" + (f"±{s['std']:.2f}" if s["n"] > 1 else "")


def cell_text(e: dict) -> str:
    return f"{_pm(e['cacc'])} / {_pm(e['asr'])}" + (f" (n={e['n']})" if e["n"] != 1 else "")


def blocks(summary) -> list[tuple[str, list[dict]]]:
    """(title, rows): one comparison table per grid x data x model; rows are defenses, columns attacks."""
    by: OrderedDict[tuple, list] = OrderedDict()
    for e in summary:
        by.setdefault((e["grid"], e["data"], e["model"]), []).append(e)
    out = []
    for (grid, data, model), es in by.items():
        attacks = list(OrderedDict.fromkeys(e["attack"] for e in es))
        rows: OrderedDict[str, dict] = OrderedDict()
        for e in es:
            rows.setdefault(e["defense"], {"defense": e["defense"]})[e["attack"]] = cell_text(e)
        out.append((f"{grid}: {data}, {model} (CACC / ASR, mean ± std over seeds)",
                    [{"defense": r["defense"], **{a: r.get(a, "") for a in attacks}} for r in rows.values()]))
    return out


def text_report(summary) -> str:
    parts = []
    for title, rows in blocks(summary):
        parts += [title, table(rows), ""]
    return "\n".join(parts).rstrip() + "\n" if parts else "(the store holds no finished cells)\n"


def markdown(summary, figures: list[str] = ()) -> str:
    lines = ["# Results", ""]
    for title, rows in blocks(summary):
        lines += [f"## {title}", "", table(rows, markdown=True), ""]
    lines += ["Each cell: CACC / ASR in %, mean ± standard deviation over the seeds; n = number of seeds where it is "
              "not 1.", ""]
    for f in figures:
        lines += [f"![{Path(f).stem}]({f})", ""]
    return "\n".join(lines)


def csv_text(summary) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["grid", "data", "model", "defense", "attack", "n", "seeds"]
               + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
               + ["no_defense_cacc_mean", "no_defense_asr_mean", "seconds_mean"])
    for e in summary:
        w.writerow([e["grid"], e["data"], e["model"], e["defense"], e["attack"], e["n"],
                    " ".join(map(str, e["seeds"]))]
                   + [e[m][s] for m in METRICS for s in ("mean", "std")]
                   + [e["no_defense"]["cacc"]["mean"], e["no_defense"]["asr"]["mean"], e["seconds"]["mean"]])
    return buf.getvalue()


FIGURE_MANIFEST = ".btu-report-figures.json"  # the figures the last report wrote into its folder


def write_report(records, out: Path, figures: dict[str, bytes] | None = None) -> list[str]:
    """report.md, report.csv, report.json, index.html and the figures (name -> PNG bytes) in `out`."""
    from .html import html_page

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    figures = figures or {}
    for name, png in figures.items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(png)
        tmp.replace(out / name)
    # the figures an earlier report wrote here and this one has not: gone, so the folder matches its index.html
    # (only those listed in the manifest: other files in the folder are the user's)
    manifest = out / FIGURE_MANIFEST
    try:
        earlier = json.loads(manifest.read_text())
    except (OSError, ValueError):
        earlier = []
    for name in earlier:
        if isinstance(name, str) and name not in figures and "/" not in name and name.endswith(".png"):
            (out / name).unlink(missing_ok=True)
    atomic_write_text(manifest, json.dumps(sorted(figures)))
    atomic_write_text(out / "report.md", markdown(summary, list(figures)))
    atomic_write_text(out / "report.csv", csv_text(summary))
    cells = [{k: r.get(k) for k in ("key", "grid", "data", "model", "attack", "defense", "seed", "metrics",
                                    "timings", "artifacts", "seconds", "started")}
             | {"config": r.get("config"), "provenance": r.get("provenance")} for r in records]
    atomic_write_text(out / "report.json", json.dumps({"summary": summary, "cells": cells}, indent=1, default=str))
    atomic_write_text(out / "index.html", html_page(summary, figures, len(records)))
    return ["report.md", "report.csv", "report.json", "index.html", *figures]
