"""The one HTML style and escaping of posagent's pages: `posagent bundle html` and the collector's.

Self-contained (no external assets): a bundle page is a single file an operator
can mail or archive; the collector's pages use the same sheet.
"""

from __future__ import annotations

import html
from typing import Any

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
header{background:#1f2a44;color:#fff;padding:.7rem 1.5rem;display:flex;gap:1.5rem;align-items:baseline}
header a{color:#fff;text-decoration:none}header .brand{font-weight:600;font-size:1.1rem}
header .right{margin-left:auto;font-size:.85rem;opacity:.85}
main{padding:1rem 1.5rem;max-width:1300px}
h1{font-size:1.3rem;margin:.2rem 0 .8rem}h2{font-size:1.05rem;margin:1.4rem 0 .5rem}
.card{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:.8rem 1rem;margin-bottom:1rem}
form.filters{display:flex;flex-wrap:wrap;gap:.6rem;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:.78rem;color:#556}
form.filters input,form.filters select{font:inherit;padding:.25rem .4rem;border:1px solid #c5ccd8;border-radius:4px;min-width:9rem}
button,.button{font:inherit;padding:.3rem .9rem;border:1px solid #1f2a44;border-radius:4px;background:#1f2a44;color:#fff;text-decoration:none;cursor:pointer}
.button.light{background:#fff;color:#1f2a44}
.chips{display:flex;flex-wrap:wrap;gap:.4rem}
.chip{display:inline-block;padding:.15rem .6rem;border-radius:999px;background:#e8ecf3;color:#1d2330;text-decoration:none;font-size:.85rem}
.chip.on{background:#1f2a44;color:#fff}.chip b{margin-left:.3rem}
table.list{border-collapse:collapse;width:100%;background:#fff}
table.list th{font-size:.78rem;text-transform:uppercase;color:#556;text-align:left;border-bottom:2px solid #dde2ea;padding:.35rem .5rem}
table.list td{border-bottom:1px solid #eef1f5;padding:.35rem .5rem;vertical-align:top}
table.list tr:hover td{background:#f7f9fc}
table.facts td,table.facts th{text-align:left;padding:.15rem 1rem .15rem 0;vertical-align:top}
table.facts th{color:#556;font-weight:500;white-space:nowrap}
.sev{display:inline-block;padding:0 .45rem;border-radius:3px;font-size:.8rem;font-weight:600}
.sev-critical{background:#fde2e4;color:#a4001d}.sev-error{background:#ffe9d6;color:#a14400}
.sev-warning{background:#fff5cc;color:#7a5b00}.sev-info,.sev-{background:#e8ecf3;color:#445}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em}
pre{background:#f6f8fb;border:1px solid #e3e7ee;border-radius:4px;padding:.7rem;overflow:auto;white-space:pre-wrap;margin:0}
img.shot{display:block;width:100%;height:auto;border:1px solid #ccd;border-radius:4px}
.svgwrap{overflow-x:auto}svg text{font-size:11px}
.muted{color:#778}.pager{margin-top:.6rem;display:flex;gap:.6rem;align-items:center}
details{margin:.3rem 0}summary{cursor:pointer}
.error{color:#a4001d}
.lead{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1.25fr);gap:1.2rem;align-items:start}
@media (max-width:900px){.lead{grid-template-columns:minmax(0,1fr)}}
.lead h2{font-size:.95rem;margin:1rem 0 .3rem;color:#556}.summary{font-size:1.05rem}
.lead-shot a{display:block}h3{font-size:.95rem;margin:.8rem 0 .3rem}
.cut{color:#7a5b00;font-size:.85rem;margin:.3rem 0}

body.page{margin:2rem;max-width:1100px;background:#fff}
.ok{color:#080}
"""


def esc(v: Any) -> str:
    """HTML-escape any value, quotes included; None is the empty string."""
    return html.escape("" if v is None else str(v), quote=True)
