"""BTU's parts of the report: the flagged tokens, the rows that carry them, the repair set."""

from __future__ import annotations

from pathlib import Path

from ...report import table
from ..report import markdown_report as _markdown_report
from ..report import result_table
from ..report import write_report as _write_report

__all__ = ["result_table", "flagged_table", "btu_sections", "markdown_report", "write_report"]


def flagged_table(flagged, markdown=False, limit=None) -> str:
    rows = []
    for f in flagged[:limit]:
        rounds = ", ".join(f"r{n}#{v['rank']}" for n, v in sorted(f["rounds"].items(), key=lambda kv: int(kv[0])))
        row = {"token": f["token"], "id": f["id"], "score": f"{f['score']:.3g}", "rounds (rank)": rounds,
               "rows": f["rows"]}
        if f.get("poisoned_rows") is not None:
            row["poisoned rows"] = f["poisoned_rows"]
        ev = f.get("evidence") or {}
        if ev:
            row["leans to"] = f"{ev['leans_to']} {100 * ev['purity']:.0f} %" if "leans_to" in ev else ""
            row["disputed"] = f"{100 * ev['dispute']:.0f} % (ordinary {100 * ev['ordinary_dispute']:.0f} %)" \
                if "dispute" in ev else ""
        if "decision" in f:
            row["decision"] = f["decision"]
        rows.append(row)
    return table(rows, markdown=markdown)


def btu_sections(report: dict) -> str:
    """The Markdown of BTU's own findings: flagged tokens, the rows that carry them, examples, the repair set."""
    lines = []
    if report.get("rows") and any(r["model"] == "unlearning only" for r in report["rows"]):
        lines += ["*unlearning only*: the victim after the dimensional replacement, before any clean tuning. "
                  "*repair only*: the victim tuned on the same clean data without unlearning (the control).", ""]
    lines += ["## Flagged tokens", "", flagged_table(report.get("flagged", []), markdown=True)]
    fr = report.get("flagged_rows", {})
    if fr:
        lines += ["", f"{fr.get('flagged_rows')} of {fr.get('rows')} training rows carry a flagged token to unlearn "
                      f"(tokens in more than {fr.get('max_share', 1):.0%} of the rows do not count)."]
    if report.get("decide") == "evidence":
        lines += ["", "*decision*: unlearn a flagged token when its rows lean to one label and a judge fitted "
                      "without them (a logistic regression on the pretrained model's features) disputes that label "
                      "far more often than ordinary rows' (*disputed*); keep it otherwise (a task word)."]
    if fr.get("precision") is not None:
        lines += [f"Against the ground-truth poison flags: precision {fr['precision']:.1f} %, "
                  f"recall {fr['recall']:.1f} % ({fr['true_positives']} of {fr['poisoned_rows']} poisoned rows)."]
    if report.get("examples"):
        lines += ["", "## Example rows", ""]
        for tok, rows in report["examples"].items():
            for r in rows:
                lines.append(f"- `{tok}`: {r}")
    if report.get("repair"):
        rp = report["repair"]
        lines += ["", f"Repair data: {rp['source']} ({rp['rows']} rows), {rp['epochs']:g} epoch(s), lr {rp['lr']:g}."]
    return "\n".join(lines) + "\n"


def markdown_report(report: dict, title: str = "BTU report") -> str:
    return _markdown_report(report, title, btu_sections(report))


def write_report(report: dict, out: Path, title="BTU report") -> None:
    _write_report(report, out, title, btu_sections(report))
