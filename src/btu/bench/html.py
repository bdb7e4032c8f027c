"""index.html: one self-contained page (no network, no files beside it) with every comparison table, sortable by
any column, and the figures inline."""

from __future__ import annotations

import base64
import html
from collections import OrderedDict

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th[data-col]').forEach(function (th) {
    th.addEventListener('click', function () {
      var col = +th.dataset.col, body = t.tBodies[0], asc = th.dataset.dir !== 'asc';
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y), r;
        if (!isNaN(nx) && !isNaN(ny)) r = nx - ny; else if (isNaN(nx) !== isNaN(ny)) r = isNaN(nx) ? 1 : -1;
        else r = String(x).localeCompare(String(y));
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      t.querySelectorAll('th[data-col]').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = asc ? 'asc' : 'desc';
    });
  });
});
"""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
th[data-col] { cursor: pointer; background: #f3f3f3; }
th[data-dir=asc]::after { content: " \\25B2"; } th[data-dir=desc]::after { content: " \\25BC"; }
.sd { color: #777; font-size: 85%; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }
"""


def _num(s: dict) -> tuple[str, str]:
    """(shown html, sort value) of a mean ± std."""
    if s["mean"] is None:
        return "–", ""
    sd = f' <span class="sd">±{s["std"]:.2f}</span>' if s["n"] > 1 else ""
    return f"{s['mean']:.2f}{sd}", f"{s['mean']:.6f}"


def summary_table(entries: list[dict]) -> str:
    attacks = list(OrderedDict.fromkeys(e["attack"] for e in entries))
    rows: OrderedDict[str, dict] = OrderedDict()
    for e in entries:
        rows.setdefault(e["defense"], {})[e["attack"]] = e
    esc = html.escape
    head1 = "<tr><th rowspan=2 data-col=0>defense</th>" + "".join(f"<th colspan=2>{esc(a)}</th>" for a in attacks) \
        + "<th rowspan=2 data-col=" + str(1 + 2 * len(attacks)) + ">n</th></tr>"
    head2 = "<tr>" + "".join(f"<th data-col={1 + 2 * i}>CACC</th><th data-col={2 + 2 * i}>ASR</th>"
                             for i in range(len(attacks))) + "</tr>"
    body = []
    for defense, by_attack in rows.items():
        cells = [f'<td data-v="{esc(defense)}">{esc(defense)}</td>']
        ns = set()
        for a in attacks:
            e = by_attack.get(a)
            for m in ("cacc", "asr"):
                shown, v = _num(e[m]) if e else ("", "")
                cells.append(f'<td data-v="{v}">{shown}</td>')
            if e:
                ns.add(e["n"])
        n = "/".join(map(str, sorted(ns)))
        cells.append(f'<td data-v="{max(ns) if ns else 0}">{n}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="sortable"><thead>{head1}{head2}</thead><tbody>{"".join(body)}</tbody></table>'


def html_page(summary: list[dict], figures: dict[str, bytes], n_cells: int, title: str = "btu results") -> str:
    esc = html.escape
    by: OrderedDict[tuple, list] = OrderedDict()
    for e in summary:
        by.setdefault((e["grid"], e["data"], e["model"]), []).append(e)
    parts = [f"<h1>{esc(title)}</h1>",
             f"<p>{n_cells} finished cells. CACC and ASR in %, mean over the seeds (± standard deviation where there "
             "are several); click a column to sort.</p>"]
    if not by:
        parts.append("<p><b>The store holds no finished cells.</b></p>")
    for (grid, data, model), entries in by.items():
        parts += [f"<h2>{esc(grid)}: {esc(data)}, {esc(model)}</h2>", summary_table(entries)]
    for name, png in figures.items():
        parts += [f"<h2>{esc(name.rsplit('.', 1)[0])}</h2>",
                  f'<img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">']
    return (f"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>{esc(title)}</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}<script>{SCRIPT}</script></body></html>\n")
