"""Self-contained HTML reports for calibrate and backtest: one file, no network to open it.

Charts are drawn with plotly, whose JavaScript is inlined once per page
(``include_plotlyjs=True``), so a report mailed to sales or opened offline renders the same.
plotly is a maintained, pure-Python wheel (no compiled dependencies, unlike matplotlib's
stack), and its charts are interactive: hovering a band shows its counts, hovering the curve
shows each threshold's leads. Data are binned here, in Python, so the page carries counts,
not every contact's score.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from leadscore.calibration import Calibration, Point, fmt

_MAX_CURVE_POINTS = 2000  # a longer curve is thinned for the chart (the JSON keeps every one)
_HIST_BINS = 30
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1b1f24;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
.meta{color:#57606a;font-size:.9rem}.words p{margin:.35rem 0;font-size:1.02rem}
table{border-collapse:collapse;font-size:.9rem;margin-top:.5rem}
th,td{padding:.25rem .7rem;border-bottom:1px solid #d0d7de;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}.chart{min-height:420px}
"""


def _page(title: str, meta: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>"
        + "".join(body)
        + "</body></html>"
    )


class _Charts:
    """Renders figures to HTML divs, inlining plotly's JavaScript with the first one only."""

    def __init__(self) -> None:
        self._first = True

    def render(self, fig: go.Figure, div_id: str) -> str:
        fig.update_layout(template="plotly_white", height=420, margin={"t": 50, "b": 50})
        out = fig.to_html(
            full_html=False,
            include_plotlyjs=self._first,  # inline: the page opens with no network
            include_mathjax=False,
            div_id=div_id,
            config={"displaylogo": False, "responsive": True},
        )
        self._first = False
        return f"<div class='chart'>{out}</div>"


def _band_label(lo: float, hi: float, last: bool) -> str:
    return f"{fmt(lo)} to {fmt(hi)}" if lo != hi else fmt(lo)


def _thin(points: Sequence[Point], keep: Point) -> list[Point]:
    if len(points) <= _MAX_CURVE_POINTS:
        return list(points)
    step = len(points) / _MAX_CURVE_POINTS
    picked = [points[int(i * step)] for i in range(_MAX_CURVE_POINTS)] + [points[-1], keep]
    unique = {p.threshold: p for p in picked}
    return sorted(unique.values(), key=lambda p: -p.threshold)


def histogram(
    scores: Sequence[float], labels: Sequence[bool], bins: int = _HIST_BINS
) -> dict[str, Any]:
    """Equal-width bins over the scores, with each group's share per bin (for the chart)."""
    if not scores:
        return {"edges": [], "converted": [], "rest": []}
    lo, hi = min(scores), max(scores)
    width = (hi - lo) / bins if hi > lo else 1.0
    conv = [0] * bins
    rest = [0] * bins
    for s, y in zip(scores, labels, strict=True):
        i = min(int((s - lo) / width), bins - 1)
        if y:
            conv[i] += 1
        else:
            rest[i] += 1
    nc, nr = max(sum(conv), 1), max(sum(rest), 1)
    return {
        "edges": [lo + i * width for i in range(bins + 1)],
        "converted": [c / nc for c in conv],
        "rest": [r / nr for r in rest],
        "counts": (conv, rest),
    }


def calibration_html(
    cal: Calibration,
    scores: Sequence[float],
    labels: Sequence[bool],
    words: list[str],
    meta: dict[str, Any],
) -> str:
    """The calibrate report: words, band chart, precision/recall curve, score distributions."""
    charts = _Charts()
    score_name = str(meta.get("score", "total"))
    rec = cal.recommended
    body = ["<div class='words'>", *(f"<p>{html.escape(w)}</p>" for w in words), "</div>"]

    # 1. Conversion rate by band, base rate marked.
    n = len(cal.bands)
    x = [_band_label(b.lo, b.hi, i == n - 1) for i, b in enumerate(cal.bands)]
    fig = go.Figure(
        go.Bar(
            x=x,
            y=[b.rate for b in cal.bands],
            customdata=[[b.contacts, b.converted] for b in cal.bands],
            hovertemplate="score %{x}<br>%{customdata[0]:,} contacts, %{customdata[1]:,} "
            "converted<br>rate %{y:.1%}<extra></extra>",
            marker_color="#2f81f7",
            name="conversion rate",
        )
    )
    fig.add_hline(
        y=cal.base_rate,
        line_dash="dash",
        line_color="#cf222e",
        annotation_text=f"base rate {cal.base_rate:.1%}",
        annotation_position="top left",
    )
    fig.update_layout(
        title=f"Conversion rate by {score_name} score band",
        xaxis_title=f"{score_name} score at as_of (each band from its lower edge up to, "
        "not including, its upper edge; the last includes it)",
        yaxis_title="converted in the window",
        yaxis_tickformat=".0%",
    )
    body += ["<h2>Conversion rate by score band</h2>", charts.render(fig, "bands")]

    # 2. Precision/recall curve, the recommended threshold marked.
    pts = _thin(cal.curve, rec)
    fig = go.Figure(
        go.Scatter(
            x=[p.recall for p in pts],
            y=[p.precision for p in pts],
            mode="lines",
            line_color="#2f81f7",
            customdata=[[p.threshold, p.leads] for p in pts],
            hovertemplate="score >= %{customdata[0]:,.2f}<br>%{customdata[1]:,} leads<br>"
            "recall %{x:.1%}, precision %{y:.1%}<extra></extra>",
            name="score >= threshold",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[rec.recall],
            y=[rec.precision],
            mode="markers+text",
            marker={"size": 13, "color": "#cf222e", "symbol": "star"},
            text=[f"recommended: {fmt(rec.threshold)}"],
            textposition="top right",
            name=f"recommended ({cal.policy})",
            hovertemplate=f"threshold {fmt(rec.threshold)}<br>{rec.leads:,} leads<br>"
            "recall %{x:.1%}, precision %{y:.1%}<extra></extra>",
        )
    )
    fig.add_hline(y=cal.base_rate, line_dash="dot", line_color="#57606a")
    fig.update_layout(
        title="Precision and recall of score >= threshold",
        xaxis_title="recall (share of converters sent to sales)",
        yaxis_title="precision (share of sent leads that convert)",
        xaxis_tickformat=".0%",
        yaxis_tickformat=".0%",
    )
    body += ["<h2>Precision / recall</h2>", charts.render(fig, "curve")]

    # 3. Score distribution, converters against the rest.
    hist = histogram(scores, labels)
    edges = hist["edges"]
    if edges:
        mids = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        width = edges[1] - edges[0]
        fig = go.Figure()
        for key, name, color in (
            ("rest", "did not convert", "#8c959f"),
            ("converted", "converted", "#1a7f37"),
        ):
            fig.add_trace(
                go.Bar(
                    x=mids,
                    y=hist[key],
                    width=width,
                    name=name,
                    marker_color=color,
                    opacity=0.6,
                    hovertemplate=f"{name}<br>score around %{{x:,.1f}}<br>"
                    "%{y:.1%} of the group<extra></extra>",
                )
            )
        fig.add_vline(x=rec.threshold, line_dash="dash", line_color="#cf222e")
        fig.update_layout(
            barmode="overlay",
            title="Score distribution: converters against the rest",
            xaxis_title=f"{score_name} score at as_of",
            yaxis_title="share of the group",
            yaxis_tickformat=".0%",
        )
        body += ["<h2>Score distribution</h2>", charts.render(fig, "distribution")]

    body.append(_band_table(cal))
    title = "leadscore calibration"
    info = (
        f"as of {meta.get('as_of')}, window {meta.get('window')}, score {score_name}, "
        f"rules {meta.get('rules')}, {meta.get('events')}"
    )
    return _page(title, info, body)


def _band_table(cal: Calibration) -> str:
    rows = "".join(
        f"<tr><td>{fmt(b.lo)}</td><td>{fmt(b.hi)}</td><td>{b.contacts:,}</td>"
        f"<td>{b.converted:,}</td><td>{b.rate:.2%}</td></tr>"
        for b in cal.bands
    )
    return (
        "<h2>Bands</h2><table><tr><th>from</th><th>to</th><th>contacts</th><th>converted</th>"
        f"<th>rate</th></tr>{rows}</table>"
    )


def backtest_html(result: dict[str, Any], meta: dict[str, Any]) -> str:
    """The backtest report: firings per trigger, score quantiles, stages, what changed."""
    charts = _Charts()
    sides = [s for s in ("baseline", "candidate") if result.get(s)]
    body: list[str] = ["<div class='words'>"]
    body += [f"<p>{html.escape(w)}</p>" for w in meta.get("words", [])]
    body.append("</div>")
    colors = {"baseline": "#8c959f", "candidate": "#2f81f7"}

    triggers = sorted({t for s in sides for t in result[s]["triggers"]})
    fig = go.Figure()
    for s in sides:
        fig.add_trace(
            go.Bar(
                x=triggers,
                y=[result[s]["triggers"].get(t, 0) for t in triggers],
                name=f"{s}: {result[s]['rules']}",
                marker_color=colors[s],
            )
        )
    fig.update_layout(title="Trigger firings", barmode="group", yaxis_title="firings")
    body += ["<h2>Trigger firings</h2>", charts.render(fig, "triggers")]

    fig = go.Figure()
    for s in sides:
        q = result[s]["score_quantiles"]
        keys = list(q)
        fig.add_trace(
            go.Scatter(
                x=keys, y=[q[k] for k in keys], mode="lines+markers", name=s, line_color=colors[s]
            )
        )
    fig.update_layout(title="Total score quantiles at the end", yaxis_title="total score")
    body += ["<h2>Score distribution</h2>", charts.render(fig, "quantiles")]

    for field_name, label in (("stages", "stage"), ("grades", "grade"), ("segments", "segment")):
        keys = sorted({k for s in sides for k in result[s].get(field_name, {})})
        if not keys:
            continue
        fig = go.Figure()
        for s in sides:
            fig.add_trace(
                go.Bar(
                    x=keys,
                    y=[result[s][field_name].get(k, 0) for k in keys],
                    name=s,
                    marker_color=colors[s],
                )
            )
        fig.update_layout(title=f"Contacts per {label}", barmode="group", yaxis_title="contacts")
        body += [f"<h2>Contacts per {label}</h2>", charts.render(fig, field_name)]

    changed = result.get("changed") or []
    if changed:
        rows = "".join(
            f"<tr><td class='l'>{html.escape(c['contact'])}</td>"
            f"<td class='l'>{html.escape(', '.join(c['newly_reach']))}</td>"
            f"<td class='l'>{html.escape(', '.join(c['no_longer_reach']))}</td>"
            f"<td>{fmt(c['baseline_total'])}</td><td>{fmt(c['candidate_total'])}</td>"
            f"<td class='l'>{html.escape('; '.join(c['why']))}</td></tr>"
            for c in changed[:50]
        )
        body.append(
            f"<h2>Contacts whose triggers change ({len(changed):,}; top 50 movers)</h2>"
            "<table><tr><th class='l'>contact</th><th class='l'>newly reach</th>"
            "<th class='l'>no longer reach</th><th>baseline total</th><th>candidate total</th>"
            f"<th class='l'>why</th></tr>{rows}</table>"
        )
    info = f"events {meta.get('events')}" + (
        f", outcomes as of {meta['as_of']}, window {meta['window']}" if meta.get("as_of") else ""
    )
    return _page("leadscore backtest", info, body)
