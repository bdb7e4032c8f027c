"""BTU's outputs: report.json, a readable report.md, and the console tables."""

from __future__ import annotations

from pathlib import Path

from ...io import atomic_write_json, atomic_write_text
from ...report import table


def result_table(rows, markdown=False) -> str:
    show_floor = any("asr_no_trigger" in r for r in rows)
    return table([{"model": r["model"], "CACC": r.get("cacc"), "ASR": r.get("asr"),
                   **({"ASR without trigger": r.get("asr_no_trigger")} if show_floor else {})} for r in rows],
                 markdown=markdown)


def flagged_table(flagged, markdown=False, limit=None) -> str:
    rows = []
    for f in flagged[:limit]:
        rounds = ", ".join(f"r{n}#{v['rank']}" for n, v in sorted(f["rounds"].items(), key=lambda kv: int(kv[0])))
        row = {"token": f["token"], "id": f["id"], "score": f"{f['score']:.3g}", "rounds (rank)": rounds,
               "rows": f["rows"]}
        if f.get("poisoned_rows") is not None:
            row["poisoned rows"] = f["poisoned_rows"]
        rows.append(row)
    return table(rows, markdown=markdown)


def markdown_report(report: dict, title: str = "BTU report") -> str:
    lines = [f"# {title}", ""]
    d = report.get("data", {})
    lines += [f"Training data: `{d.get('train')}` ({d.get('rows')} rows)."]
    if d.get("test"):
        lines += [f"Clean test set: `{d['test']}`. ASR rows: `{d.get('poison_test')}`, target `{d.get('target')}`."]
    if report.get("rows"):
        lines += ["", "## Results", "", result_table(report["rows"], markdown=True), "",
                  "*unlearning only*: the victim after the dimensional replacement, before any clean tuning. "
                  "*repair only*: the victim tuned on the same clean data without unlearning (the control). "
                  "*ASR without trigger*: the same rows without their trigger predicted as the target, "
                  "the ASR a model without the backdoor shows."]
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    lines += ["", "## Flagged tokens", "", flagged_table(report["flagged"], markdown=True)]
    fr = report.get("flagged_rows", {})
    lines += ["", f"{fr.get('flagged_rows')} of {fr.get('rows')} training rows carry a flagged token "
                  f"(tokens in more than {fr.get('max_share', 1):.0%} of the rows do not count)."]
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
    if report.get("timings"):
        lines += ["", "## Time (seconds)", "", table([{k: v for k, v in report["timings"].items()}], markdown=True)]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path, title="BTU report") -> None:
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown_report(report, title))
