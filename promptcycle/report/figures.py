"""The report's figures, drawn with Altair (Vega-Lite) from `ReportData` rows.

One function per figure; each returns a `Figure`: its chart (None when there is nothing to draw), a caption saying
how to read it, the rows behind it (for the HTML page's tables and the Prefect table artifacts) and whether it shows
simulated data — then its title says SIMULATED. Colours of the quality levels are the CLI's: critical red, warning
orange, ok yellow, target green, excellent purple.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from promptcycle.report.data import ReportData

__all__ = ["Figure", "LEVELS", "LEVEL_COLOURS", "build_figures", "heatmap_figure", "quality_figure",
           "candidates_figure", "canary_figure", "spend_figure"]

LEVELS = ("critical", "warning", "ok", "target", "excellent")
LEVEL_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "ok": "#e8c31a", "target": "#2ca02c",
                 "excellent": "#9c3fb5"}
SEVERITY_COLOURS = {"info": "#7f7f7f", "low": "#bcbd22", "medium": "#ff7f0e", "high": "#d62728", "critical": "#8b0000"}
DECISION_COLOURS = {"promote": "#2ca02c", "continue": "#1f77b4", "rollback": "#d62728"}
MODEL_COLOURS = ["#1b3a6b", "#00897b", "#6d4c41", "#5e35b1", "#ad1457", "#212121", "#0277bd", "#827717",
                 "#546e7a", "#4e342e"]  # dark, so that a line reads over the pale threshold bands
PHASE_COLOURS = {"baseline": "#1f77b4", "optimization": "#9467bd", "deployment": "#8c564b", "monitor": "#17becf"}


@dataclass
class Figure:
    """One figure of the report: `chart` is an Altair chart, or None with `missing` saying why."""

    key: str
    title: str
    caption: str
    chart: Any = None
    missing: str | None = None
    simulated: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)  # the numbers behind it, for tables

    @property
    def heading(self) -> str:
        return self.title + (" — SIMULATED" if self.simulated else "")

    def titled_spec(self) -> dict[str, Any]:
        """The chart's Vega-Lite spec with the heading as its title (for a static image that stands alone)."""
        spec = self.chart.to_dict()
        spec["title"] = {"text": self.heading, "anchor": "start", "fontSize": 15}
        return spec


def _figure(data: ReportData, key: str, subject: str) -> Figure:
    """Figure `key` before it is drawn: titled "<pipeline> — <subject>", whether its data is simulated and, when there
    is none, why (`ReportData.missing`)."""
    return Figure(key, f"{data.pipeline} — {subject}", caption="", simulated=data.simulated.get(key, False),
                  missing=data.missing.get(key))


def _alt():
    import altair as alt

    return alt


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _when(at: datetime | None) -> str:
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M UTC")


def _levels_legend(thresholds) -> str:
    t = thresholds
    return (f"critical < {t.critical:g} ≤ warning < {t.warning:g} ≤ ok < {t.target:g} ≤ target < {t.excellent:g} "
            "≤ excellent (points)")


def _level_scale(alt):
    return alt.Scale(domain=list(LEVELS), range=[LEVEL_COLOURS[x] for x in LEVELS])


# -- model × spectrum heatmap ----------------------------------------------------------------------------------

def heatmap_figure(data: ReportData) -> Figure:
    fig = _figure(data, "heatmap", "model × spectrum quality")
    if data.baseline is None:
        return fig
    alt = _alt()
    b, t = data.baseline, data.thresholds
    cells = b["cells"]
    fig.rows = [{"model": c["model"], "spectrum": c["spectrum"], "quality": c["quality"], "level": c["level"],
                 "n": c["n"], "errors": c["errors"]} for c in cells]
    by_model: dict[str, list[float]] = {}
    for c in cells:
        by_model.setdefault(c["model"], []).append(c["quality"])
    models = sorted(by_model, key=lambda m: -sum(by_model[m]) / len(by_model[m]))  # best first, as the CLI
    spectrums = [s for s in data.spectrums if any(c["spectrum"] == s for c in cells)] + sorted(
        {c["spectrum"] for c in cells} - set(data.spectrums))
    base = alt.Chart(alt.Data(values=fig.rows)).encode(
        x=alt.X("spectrum:N", sort=spectrums, title=None, axis=alt.Axis(labelAngle=-25, orient="top")),
        y=alt.Y("model:N", sort=models, title=None))
    rect = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("level:N", scale=_level_scale(alt), title="level",
                        legend=alt.Legend(orient="bottom", direction="horizontal",
                                          labelExpr=_legend_labels(t))),
        tooltip=["model:N", "spectrum:N", alt.Tooltip("quality:Q", format=".1f"), "level:N", "n:Q", "errors:Q"])
    text = base.mark_text(fontSize=13, fontWeight="bold").encode(
        text=alt.Text("quality:Q", format=".1f"),
        color=alt.condition(alt.FieldOneOfPredicate(field="level", oneOf=["ok"]), alt.value("#222"),
                            alt.value("white")))
    fig.chart = (rect + text).properties(width=max(90 * len(spectrums), 420), height=34 * len(models))
    when = b["finished_at"].strftime("%Y-%m-%d %H:%M UTC") if b["finished_at"] else "unfinished"
    limit = f", first {b['case_limit']} cases per spectrum" if b.get("case_limit") else ""
    fig.caption = (f"Baseline run {b['run_id']} (prompt {str(b['prompt_hash'])[:12]}, finished {when}{limit}): "
                   f"mean weighted score per model × spectrum, in points; overall {b['quality']:.1f} ({b['level']}). "
                   f"Levels: {_levels_legend(t)}.")
    return fig


def _legend_labels(t) -> str:
    labels = {"critical": f"critical < {t.critical:g}", "warning": f"warning {t.critical:g}–{t.warning:g}",
              "ok": f"ok {t.warning:g}–{t.target:g}", "target": f"target {t.target:g}–{t.excellent:g}",
              "excellent": f"excellent ≥ {t.excellent:g}"}
    expr = "datum.label"
    for level, label in labels.items():
        expr = f"datum.label == '{level}' ? '{label}' : ({expr})"
    return expr


# -- quality over time -----------------------------------------------------------------------------------------

def quality_figure(data: ReportData) -> Figure:
    fig = _figure(data, "quality", "quality over time per spectrum")
    if not data.quality:
        return fig
    alt = _alt()
    t = data.thresholds
    rows = [{**r, "at": _iso(r["at"]), "when": _when(r["at"])} for r in data.quality]
    fig.rows = [{k: r[k] for k in ("at", "model", "spectrum", "source", "quality", "n")} for r in rows]
    values = [r["quality"] for r in data.quality]
    low = max(0.0, min(min(values), t.critical - 5.0) - 2.0)
    times = [r["at"] for r in data.quality] + [a["at"] for a in data.alerts] + [d["at"] for d in data.deployments]
    start, end = min(times), max(times)
    pad = max((end - start) * 0.03, _minutes(5))
    x_scale = alt.Scale(type="utc", domain=[_iso(start - pad), _iso(end + pad)])
    models = [m for m in data.models if any(r["model"] == m for r in rows)] + sorted(
        {r["model"] for r in rows} - set(data.models))
    spectrums = [s for s in data.spectrums if any(r["spectrum"] == s for r in rows)] + sorted(
        {r["spectrum"] for r in rows} - set(data.spectrums))
    edges = [low, t.critical, t.warning, t.target, t.excellent, 100.0]
    bands = [{"level": level, "lo": max(lo, low), "hi": hi}
             for level, lo, hi in zip(LEVELS, edges[:-1], edges[1:]) if hi > low]
    deploys = [{**d, "at": _iso(d["at"]), "when": _when(d["at"]), "to": str(d["to_hash"])[:8]}
               for d in data.deployments]
    # One shape scale for the measurements (by source) and the alert events (by kind): a layer shares it.
    shapes = {"baseline": "circle", "probe": "square", "production": "diamond", "raised": "triangle-down",
              "repeated": "triangle-down", "escalated": "triangle-down", "recovered": "triangle-up"}
    shape_scale = alt.Scale(domain=list(shapes), range=list(shapes.values()))
    shape_legend = alt.Legend(title="point / alert event")
    shape = alt.Shape("source:N", scale=shape_scale, legend=shape_legend)
    panels = []
    for spectrum in spectrums:
        y_scale = alt.Scale(domain=[low, 100.0], clamp=True, zero=False)
        layers = [alt.Chart(alt.Data(values=[b])).mark_rect(opacity=0.13, color=LEVEL_COLOURS[b["level"]]).encode(
            y=alt.Y("lo:Q", scale=y_scale), y2="hi:Q") for b in bands]
        series = [r for r in rows if r["spectrum"] == spectrum]
        x = alt.X("at:T", scale=x_scale, title=None, axis=alt.Axis(format="%m-%d %H:%M", labelAngle=0))
        y = alt.Y("quality:Q", scale=y_scale, title="points")
        colour = alt.Color("model:N", scale=alt.Scale(domain=models, range=MODEL_COLOURS[:len(models)]),
                           legend=alt.Legend(title="model"))
        layers.append(alt.Chart(alt.Data(values=series)).mark_line(strokeWidth=1.6, opacity=0.85).encode(
            x=x, y=y, color=colour, detail="model:N"))
        layers.append(alt.Chart(alt.Data(values=series)).mark_point(filled=True, size=30).encode(
            x=x, y=y, color=colour, shape=shape,
            tooltip=["when:N", "model:N", "source:N", alt.Tooltip("quality:Q", format=".1f"), "n:Q"]))
        if deploys:
            layers.append(alt.Chart(alt.Data(values=deploys)).mark_rule(strokeDash=[5, 3], color="#333",
                                                                        strokeWidth=1.4).encode(
                x=alt.X("at:T", scale=x_scale),
                tooltip=["when:N", alt.Tooltip("kind:N", title="deployment"),
                         "status:N", alt.Tooltip("to:N", title="version"), "reason:N"]))
        marks = [{**a, "at": _iso(a["at"]), "when": _when(a["at"])} for a in data.alerts
                 if a["spectrum"] in (spectrum, "*")]  # "*": about the whole pipeline (e.g. stale data)
        if marks:
            layers.append(alt.Chart(alt.Data(values=marks)).mark_point(shape="triangle-down", size=110, filled=True,
                                                                       opacity=0.9).encode(
                x=alt.X("at:T", scale=x_scale), y=alt.value(7),
                fill=alt.Fill("severity:N", scale=alt.Scale(domain=list(SEVERITY_COLOURS),
                                                            range=list(SEVERITY_COLOURS.values())),
                              legend=alt.Legend(title="alert severity")),
                shape=alt.Shape("kind:N", scale=shape_scale, legend=shape_legend),
                tooltip=["when:N", "kind:N", "severity:N", "model:N",
                         "detector:N", "message:N"]))
        panels.append(alt.layer(*layers).properties(width=470, height=170,
                                                    title=alt.TitleParams(spectrum, fontSize=12)))
    fig.chart = alt.concat(*panels, columns=2).resolve_scale(color="shared", fill="shared", shape="shared")
    sources = sorted({r["source"] for r in data.quality})
    fig.caption = (f"Each line is one model on one spectrum, in points: completed baselines (at the time they "
                   f"finished) and monitor observations per period ({', '.join(sources)}). Shaded bands are the "
                   f"threshold levels ({_levels_legend(t)}); dashed vertical lines are deployments "
                   f"({len(data.deployments)}); triangles along the top are alert events ({len(data.alerts)}; "
                   "pointing down: raised, repeated or escalated, coloured by severity; up: recovered). Points: circle "
                   "a baseline, square the monitor's probe, diamond production outcomes. Times in UTC.")
    return fig


def _minutes(n: int):
    from datetime import timedelta

    return timedelta(minutes=n)


# -- the last optimization's candidates ------------------------------------------------------------------------

def candidates_figure(data: ReportData) -> Figure:
    fig = _figure(data, "candidates", "the last optimization's candidates")
    o = data.optimization
    if o is None:
        return fig
    alt = _alt()
    cands = o["candidates"]
    fig.rows = [{k: c[k] for k in ("candidate", "status", "dev_quality", "dev_delta", "decision", "effect", "ci_low",
                                   "ci_high", "adjusted_p_value")} for c in cands]
    screened = sorted([c for c in cands if c["dev_delta"] is not None], key=lambda c: -(c["dev_quality"] or 0))
    confirmed = [c for c in cands if c["effect"] is not None and c["ci_low"] is not None]
    panels = []
    if screened:
        order = [c["candidate"] for c in screened]
        panels.append(alt.Chart(alt.Data(values=screened)).mark_bar().encode(
            x=alt.X("dev_delta:Q", title="Δ vs the current prompt on dev (points)"),
            y=alt.Y("candidate:N", sort=order, title=None),
            color=alt.Color("status:N", legend=alt.Legend(title="status")),
            tooltip=["candidate:N", "status:N", alt.Tooltip("dev_quality:Q", format=".2f"),
                     alt.Tooltip("dev_delta:Q", format="+.2f")]).properties(
            width=360, height=max(22 * len(screened), 60), title="screening on dev"))
    if confirmed:
        level = f"{100 * o['ci_level']:.0f}% " if o.get("ci_level") else ""
        order = [c["candidate"] for c in sorted(confirmed, key=lambda c: -c["effect"])]
        y = alt.Y("candidate:N", sort=order, title=None)
        refs = _references(o.get("min_effect"), "x")
        layers = [
            alt.Chart(alt.Data(values=refs)).mark_rule(strokeDash=[4, 3], strokeWidth=1.5).encode(
                x="x:Q", color=_reference_colour(alt, refs), tooltip=["what:N", "x:Q"]),
            alt.Chart(alt.Data(values=confirmed)).mark_rule(strokeWidth=3).encode(
                x=alt.X("ci_low:Q", title=f"effect on test with its {level}CI (points)"), x2="ci_high:Q", y=y,
                tooltip=["candidate:N", alt.Tooltip("effect:Q", format="+.2f"), alt.Tooltip("ci_low:Q", format="+.2f"),
                         alt.Tooltip("ci_high:Q", format="+.2f"), "decision:N",
                         alt.Tooltip("adjusted_p_value:Q", format=".2g", title="p (adjusted)")]),
            alt.Chart(alt.Data(values=confirmed)).mark_point(filled=True, size=90).encode(
                x="effect:Q", y=y, shape=alt.Shape("decision:N", legend=alt.Legend(title="decision")),
                tooltip=["candidate:N", alt.Tooltip("effect:Q", format="+.2f"), "decision:N"]),
        ]
        panels.append(alt.layer(*layers).resolve_scale(color="independent").properties(
            width=360, height=max(30 * len(confirmed), 60), title="confirmation on test (paired)"))
    if not panels:
        fig.missing = (f"optimization {o['run_id']} recorded {len(cands)} candidate(s) but none was screened "
                       "(all rejected before any evaluation)")
        return fig
    fig.chart = alt.hconcat(*panels).resolve_scale(color="independent", shape="independent")
    when = o["finished_at"].strftime("%Y-%m-%d %H:%M UTC") if o["finished_at"] else "not finished"
    spend = o.get("spend") or {}
    fig.caption = (f"Optimization {o['run_id']} ({o['status']}, {when}): outcome {o['outcome']} — {o['reason']} "
                   f"Left: each screened candidate's dev quality minus the current prompt's. Right: each candidate "
                   f"confirmed on test, its paired effect over the current prompt with its confidence interval "
                   f"({o.get('test') or 'paired test'}); promotion needs a significant effect (Holm-adjusted p at most "
                   f"the level) of at least the minimum effect, and no spectrum shown worse. "
                   f"{len(cands)} candidates, {len(screened)} screened, {len(confirmed)} confirmed; "
                   f"{spend.get('calls', 0):,} calls, ${spend.get('cost_usd', 0.0):.4f}.")
    return fig


def _references(min_effect: float | None, axis: str) -> list[dict[str, Any]]:
    """The rules an effect is read against: no effect, and the minimum effect a promotion needs."""
    refs = [{axis: 0.0, "what": "no effect"}]
    if min_effect is not None:
        unit = "point" if min_effect == 1 else "points"
        refs.append({axis: min_effect, "what": f"minimum effect ({min_effect:g} {unit})"})
    return refs


def _reference_colour(alt, refs: list[dict[str, Any]]):
    scale = alt.Scale(domain=[r["what"] for r in refs], range=["#555", "#2ca02c"][:len(refs)])
    return alt.Color("what:N", scale=scale, legend=alt.Legend(title="reference"))


# -- the canary's progress -------------------------------------------------------------------------------------

def canary_figure(data: ReportData) -> Figure:
    fig = _figure(data, "canary", "the canary's progress per look")
    c = data.canary
    if c is None or not c["looks"]:
        return fig
    alt = _alt()
    looks = [{**x, "at": _iso(x["at"])} for x in c["looks"]]
    fig.rows = [{k: x[k] for k in ("look", "at", "split_pct", "n_control", "n_treatment", "action", "effect", "ci_low",
                                   "ci_high")} for x in looks]
    x = alt.X("look:O", title="look", axis=alt.Axis(labelAngle=0))
    with_effect = [r for r in looks if r["effect"] is not None]
    refs = _references(c.get("min_effect"), "y")
    effect_layers = [alt.Chart(alt.Data(values=refs)).mark_rule(strokeDash=[4, 3], strokeWidth=1.5).encode(
        y="y:Q", color=_reference_colour(alt, refs))]
    if with_effect:
        effect_layers += [
            alt.Chart(alt.Data(values=with_effect)).mark_area(opacity=0.25, color="#1f77b4").encode(
                x=x, y=alt.Y("ci_low:Q", title="treatment − control (points)"), y2="ci_high:Q"),
            alt.Chart(alt.Data(values=with_effect)).mark_line(color="#1f77b4", point=True).encode(
                x=x, y="effect:Q",
                tooltip=["look:O", alt.Tooltip("effect:Q", format="+.2f"), alt.Tooltip("ci_low:Q", format="+.2f"),
                         alt.Tooltip("ci_high:Q", format="+.2f"), "action:N", "n_treatment:Q", "n_control:Q"]),
        ]
    effect = alt.layer(*effect_layers).properties(width=330, height=200,
                                                  title="effect with its confidence sequence")
    split = alt.Chart(alt.Data(values=looks)).mark_line(interpolate="step-after", point=alt.OverlayMarkDef(
        filled=True, size=70)).encode(
        x=x, y=alt.Y("split_pct:Q", title="% of requests to the new version", scale=alt.Scale(domain=[0, 100])),
        tooltip=["look:O", "split_pct:Q", "next_split_pct:Q", "action:N", "reason:N"]).properties(
        width=250, height=200, title="traffic split")
    arms = [{"look": r["look"], "arm": arm, "requests": r[f"n_{arm}"]} for r in looks for arm in ("control",
                                                                                                    "treatment")]
    counts = alt.Chart(alt.Data(values=arms)).mark_bar().encode(
        x=x, xOffset="arm:N", y=alt.Y("requests:Q", title="scored requests (cumulative)"),
        color=alt.Color("arm:N", scale=alt.Scale(domain=["control", "treatment"], range=["#7f7f7f", "#1f77b4"]),
                        legend=alt.Legend(title="arm")),
        tooltip=["look:O", "arm:N", "requests:Q"]).properties(width=250, height=200, title="requests per arm")
    fig.chart = alt.hconcat(effect, split, counts).resolve_scale(color="independent")
    last = c["looks"][-1]
    mode = "shadow (paired)" if c.get("mode") == "shadow" else "traffic split"
    fig.caption = (f"Canary {c['canary_id']} ({mode}) of version {str(c['treatment_hash'])[:8]} against "
                   f"{str(c['control_hash'])[:8]}: {c['status']} after {len(c['looks'])} look(s) — "
                   f"{c['reason'] or last['reason']} "
                   "Left: the treatment's effect over control at each look with its always-valid confidence "
                   "sequence; middle: the share of requests sent to the new version; right: scored requests per arm.")
    return fig


# -- spend over time -------------------------------------------------------------------------------------------

def spend_figure(data: ReportData) -> Figure:
    fig = _figure(data, "spend", "spend over time")
    if not data.spend:
        return fig
    alt = _alt()
    total, calls, rows = 0.0, 0, []
    for r in data.spend:
        total += r["cost_usd"]
        calls += r["calls"]
        rows.append({"at": _iso(r["paid_at"]), "when": _when(r["paid_at"]), "run_id": r["run_id"], "kind": r["kind"],
                     "phase": r["phase"],
                     "calls": r["calls"], "cost_usd": round(r["cost_usd"], 6), "cumulative_usd": round(total, 6),
                     "cumulative_calls": calls})
    fig.rows = rows
    phases = list(dict.fromkeys([p for p in PHASE_COLOURS if any(r["phase"] == p for r in rows)]
                                + [r["phase"] for r in rows]))
    colour = alt.Color("phase:N", scale=alt.Scale(domain=phases, range=[PHASE_COLOURS.get(p, "#7f7f7f")
                                                                        for p in phases]),
                       legend=alt.Legend(title="phase"))
    x = alt.X("at:T", title=None, scale=alt.Scale(type="utc"), axis=alt.Axis(format="%m-%d %H:%M", labelAngle=0))
    line = alt.Chart(alt.Data(values=rows)).mark_line(interpolate="step-after", color="#444").encode(
        x=x, y=alt.Y("cumulative_usd:Q", title="cumulative cost (USD)"))
    points = alt.Chart(alt.Data(values=rows)).mark_point(filled=True, size=80).encode(
        x=x, y="cumulative_usd:Q", color=colour,
        tooltip=["when:N", "run_id:N", "kind:N", "phase:N", "calls:Q",
                 alt.Tooltip("cost_usd:Q", format="$.4f"), alt.Tooltip("cumulative_usd:Q", format="$.4f")])
    per_phase = {}
    for r in rows:
        p = per_phase.setdefault(r["phase"], {"phase": r["phase"], "cost_usd": 0.0, "calls": 0, "runs": 0})
        p["cost_usd"] += r["cost_usd"]
        p["calls"] += r["calls"]
        p["runs"] += 1
    bars = alt.Chart(alt.Data(values=list(per_phase.values()))).mark_bar().encode(
        y=alt.Y("phase:N", sort=phases, title=None), x=alt.X("cost_usd:Q", title="cost (USD)"), color=colour,
        tooltip=["phase:N", alt.Tooltip("cost_usd:Q", format="$.4f"), "calls:Q", "runs:Q"]).properties(
        width=260, height=30 * len(per_phase), title="by phase")
    fig.chart = alt.hconcat((line + points).properties(width=520, height=220, title="cumulative, per paying run"),
                            bars)
    fig.caption = (f"{len(rows)} paying runs, {calls:,} calls (every request sent, retries included), "
                   f"${total:.4f} in all. Each point is one run (baseline, optimization arm, deployment smoke test, "
                   "monitor probe) at its last paid call. Costs use the models' configured prices per token"
                   + (" — the simulator's calls cost nothing real." if fig.simulated else "."))
    return fig


def build_figures(data: ReportData) -> list[Figure]:
    """Every figure of the report, in page order."""
    return [heatmap_figure(data), quality_figure(data), candidates_figure(data), canary_figure(data),
            spend_figure(data)]
