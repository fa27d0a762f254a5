"""The report as one self-contained HTML file: Vega, Vega-Lite and vega-embed are inlined, nothing is fetched.

The JavaScript bundle comes from vl-convert (the package Altair uses for offline embedding and static export), so
the file opens in a browser with no network. Charts render as SVG (`renderer: "svg"`), which a browser test can find
in the DOM. Every figure has a heading (with SIMULATED when its data came from the simulator), a caption saying how
to read it, and — when there is nothing to draw — a sentence saying what is missing and which command produces it.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from promptcycle.report.data import ReportData
from promptcycle.report.figures import Figure

__all__ = ["render_html", "javascript_bundle", "TABLE_ROWS"]

TABLE_ROWS = 40  # rows of each figure's table shown on the page (the newest, for time series)

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1180px; color: #222; line-height: 1.45; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; font-size: 14px; }
.simulated { background: #fff4d6; border: 1px solid #e5b300; padding: 8px 12px; border-radius: 4px; margin: 12px 0; }
.badge { background: #e5b300; color: #222; font-size: 12px; padding: 1px 6px; border-radius: 3px;
         vertical-align: middle; margin-left: 6px; }
.missing { background: #f3f3f3; border-left: 4px solid #999; padding: 10px 14px; color: #333; }
.caption { font-size: 14px; color: #444; max-width: 1100px; }
.figure { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 4px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f6f6f6; } td.text { text-align: left; }
details { margin: 6px 0 10px; } summary { cursor: pointer; color: #245; font-size: 14px; }
nav a { margin-right: 14px; font-size: 14px; }
"""


def _cache_dir() -> Path:
    root = os.environ.get("PROMPTCYCLE_CACHE_DIR") or \
        str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "promptcycle")
    return Path(root) / "report"


def javascript_bundle() -> str:
    """vega-embed with Vega and Vega-Lite, as one script (from vl-convert, offline).

    vl-convert bundles it on the fly (seconds of CPU), so it is kept in `PROMPTCYCLE_CACHE_DIR/report/` under the
    vl-convert and Vega-Lite versions; a cache that cannot be read or written only costs the bundling again."""
    from importlib.metadata import version

    from altair.utils._importers import vl_version_for_vl_convert

    vl_version = vl_version_for_vl_convert()
    path = _cache_dir() / f"vega-embed-{version('vl-convert-python')}-{vl_version}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    import vl_convert as vlc  # only when bundling: importing it costs a second or two

    bundle = vlc.javascript_bundle(vl_version=vl_version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(bundle, encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass
    return bundle


def _cell(value: Any) -> str:
    if value is None:
        return "<td>–</td>"
    if isinstance(value, float):
        return f"<td>{value:,.4g}</td>" if abs(value) < 1e-2 and value else f"<td>{value:,.2f}</td>"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"<td>{value:,}</td>"
    return f'<td class="text">{html.escape(str(value))}</td>'


def _table(rows: list[dict[str, Any]], *, newest_last: bool) -> str:
    if not rows:
        return ""
    shown = rows[-TABLE_ROWS:] if newest_last else rows[:TABLE_ROWS]
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in shown[0])
    body = "".join("<tr>" + "".join(_cell(v) for v in r.values()) + "</tr>" for r in shown)
    more = (f" (the {'last' if newest_last else 'first'} {len(shown)} of {len(rows)})"
            if len(shown) < len(rows) else f" ({len(rows)} rows)")
    return (f"<details><summary>the numbers{more}</summary><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></details>")


def _section(fig: Figure, index: int) -> tuple[str, dict[str, Any] | None]:
    badge = '<span class="badge">SIMULATED</span>' if fig.simulated else ""
    parts = [f'<section id="{fig.key}" class="report-section" data-figure="{fig.key}">',
             f"<h2>{html.escape(fig.title)}{badge}</h2>"]
    spec = None
    if fig.chart is None:
        parts.append(f'<p class="missing" data-missing="{fig.key}">Nothing to show yet: '
                     f"{html.escape(fig.missing or 'no data')}</p>")
    else:
        if fig.missing:
            parts.append(f'<p class="missing">{html.escape(fig.missing)}</p>')
        parts.append(f'<div class="figure" id="figure-{index}" data-chart="{fig.key}"></div>')
        parts.append(f'<p class="caption">{html.escape(fig.caption)}</p>')
        parts.append(_table(fig.rows, newest_last=fig.key in ("quality", "spend", "canary")))
        spec = fig.chart.to_dict()
    parts.append("</section>")
    return "\n".join(parts), spec


def render_html(data: ReportData, figures: list[Figure], *, bundle: str | None = None) -> str:
    """The whole page. `bundle` is the inlined JavaScript (default: `javascript_bundle()`)."""
    sections, specs = [], {}
    for i, fig in enumerate(figures):
        text, spec = _section(fig, i)
        sections.append(text)
        if spec is not None:
            specs[f"figure-{i}"] = spec
    banner = ""
    if data.any_simulated:
        which = ", ".join(f.title.split(" — ", 1)[-1] for f in figures if f.simulated)
        banner = ('<p class="simulated"><b>SIMULATED.</b> These figures come from promptcycle\'s built-in simulated '
                  f"LLM world ({html.escape(which)}): they describe the simulator, not real models or real "
                  "production traffic.</p>")
    if data.empty:
        banner += (f'<p class="missing" data-missing="all">The store holds nothing for pipeline '
                   f"{html.escape(data.pipeline)} yet. Start with <code>promptcycle baseline --pipeline "
                   f"{html.escape(data.pipeline)}</code>.</p>")
    nav = "".join(f'<a href="#{f.key}">{html.escape(f.title.split(" — ", 1)[-1])}</a>' for f in figures)
    t = data.thresholds
    badge = ' <span class="badge">SIMULATED</span>' if data.any_simulated else ""
    script = ""
    if specs:
        script = (f"<script>{(bundle if bundle is not None else javascript_bundle())}</script>\n<script>\n"
                  f"const specs = {json.dumps(specs)};\n"
                  "const rendered = [];\n"
                  "for (const [id, spec] of Object.entries(specs)) {\n"
                  "  rendered.push(vegaEmbed('#' + id, spec, {renderer: 'svg', actions: false})\n"
                  "    .catch(err => { document.getElementById(id).textContent = 'could not draw this figure: ' + err; "
                  "throw err; }));\n"
                  "}\n"
                  "Promise.allSettled(rendered).then(r => { document.body.dataset.rendered = "
                  "r.filter(x => x.status === 'fulfilled').length + '/' + r.length; });\n"
                  "</script>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>promptcycle report — {html.escape(data.pipeline)}</title>
<style>{_STYLE}</style>
</head>
<body data-figures="{len(specs)}">
<h1>promptcycle — {html.escape(data.pipeline)}{badge}</h1>
<p class="meta">Generated {data.generated_at:%Y-%m-%d %H:%M:%S} UTC from the metrics store. Quality levels:
critical &lt; {t.critical:g} ≤ warning &lt; {t.warning:g} ≤ ok &lt; {t.target:g} ≤ target &lt; {t.excellent:g} ≤
excellent (points). This file needs no network: its charts' code is inside it.</p>
{banner}
<nav>{nav}</nav>
{chr(10).join(sections)}
{script}
</body>
</html>
"""
