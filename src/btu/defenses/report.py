"""Every defense's outputs: report.json, a readable report.md, and the console table."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_json, atomic_write_text
from ..report import table


def result_table(rows, markdown=False) -> str:
    """One row per model: CACC, ASR, ASR without trigger (when measured), dev CACC (when there is a dev set)."""
    show_floor = any("asr_no_trigger" in r for r in rows)
    show_dev = any("dev_cacc" in r for r in rows)
    return table([{"model": r["model"], "CACC": r.get("cacc"), "ASR": r.get("asr"),
                   **({"ASR without trigger": r.get("asr_no_trigger")} if show_floor else {}),
                   **({"dev CACC": r.get("dev_cacc")} if show_dev else {})} for r in rows], markdown=markdown)


def metrics_lines(metrics: dict) -> list[str]:
    """The filter's and the detector's numbers, in words."""
    lines = []
    f = metrics.get("filter")
    if f:
        line = f"Filter: removed {f['removed']} rows, kept {f['kept']}"
        if f.get("precision") is not None or f.get("recall") is not None:
            p, r = f.get("precision"), f.get("recall")
            line += (f"; against the ground-truth poison flags precision {p:.1f} %" if p is not None else "") + \
                    (f", recall {r:.1f} % ({f['poisoned_kept']} poisoned rows kept)" if r is not None else "")
        lines.append(line + ".")
    d = metrics.get("detector")
    if d:
        lines.append("Detector: " + ", ".join(f"{k.upper()} {v:.1f} %" for k, v in d.items()) + ".")
    return lines


def markdown_report(report: dict, title: str = "Defense report", sections: str = "") -> str:
    lines = [f"# {title}", ""]
    if report.get("defense"):
        preset = f" (preset `{report['preset']}`)" if report.get("preset") else ""
        stages = f", stages {' → '.join(report['stages'])}" if report.get("stages") else ""
        lines += [f"Defense: `{report['defense']}`{preset}{stages}."]
    d = report.get("data", {})
    if d:
        lines += [f"Training data: `{d.get('train')}` ({d.get('rows')} rows)."]
    if d.get("test"):
        lines += [f"Clean test set: `{d['test']}`. ASR rows: `{d.get('poison_test')}`, target `{d.get('target')}`."]
    if report.get("rows"):
        lines += ["", "## Results", "", result_table(report["rows"], markdown=True), "",
                  "*ASR without trigger*: the same rows without their trigger predicted as the target, "
                  "the ASR a model without the backdoor shows."]
    lines += [""] + metrics_lines(report.get("metrics", {})) if metrics_lines(report.get("metrics", {})) else []
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if sections:
        lines += ["", sections.rstrip()]
    if report.get("timings"):
        lines += ["", "## Time (seconds)", "", table([{k: v for k, v in report["timings"].items()}], markdown=True)]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path, title: str = "Defense report", sections: str = "") -> None:
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown_report(report, title, sections))
