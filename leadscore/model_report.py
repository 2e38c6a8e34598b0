"""`leadscore train --html`: one self-contained page on how good a trained model is and why.

Plain HTML with inline SVG (no script, no network): the calibration curve (predicted against
observed conversion by decile of the held-out rows), the lift by decile, the quality figures,
the features that move the likelihood most, and what the leakage guard refused.
"""

from __future__ import annotations

from html import escape
from typing import Any

_W, _H, _PAD = 420, 300, 40


def _calibration_svg(deciles: list[dict[str, Any]]) -> str:
    top = max([1.0, *(d["predicted"] for d in deciles), *(d["observed"] for d in deciles)])

    def xy(p: float, o: float) -> tuple[float, float]:
        return (
            _PAD + p / top * (_W - 2 * _PAD),
            _H - _PAD - o / top * (_H - 2 * _PAD),
        )

    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1f6feb">'
        f"<title>decile {d['decile']}: predicted {d['predicted']:.1%}, "
        f"observed {d['observed']:.1%} ({d['rows']} leads)</title></circle>"
        for d in deciles
        for x, y in [xy(d["predicted"], d["observed"])]
    )
    x0, y0 = xy(0, 0)
    x1, y1 = xy(top, top)
    return (
        f'<svg width="{_W}" height="{_H}" role="img" aria-label="calibration curve">'
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#999" stroke-dasharray="4"/>'
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>'
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>'
        f'<text x="{_W / 2}" y="{_H - 8}" text-anchor="middle">predicted</text>'
        f'<text x="12" y="{_H / 2}" transform="rotate(-90 12 {_H / 2})" '
        f'text-anchor="middle">observed</text>{dots}</svg>'
    )


def _lift_svg(deciles: list[dict[str, Any]]) -> str:
    lifts = [d.get("lift") or 0.0 for d in deciles]
    top = max([1.0, *lifts])
    width = (_W - 2 * _PAD) / max(1, len(lifts))
    bars = []
    for i, (d, lift) in enumerate(zip(deciles, lifts, strict=True)):
        h = lift / top * (_H - 2 * _PAD)
        x = _PAD + i * width
        bars.append(
            f'<rect x="{x + 2:.1f}" y="{_H - _PAD - h:.1f}" width="{width - 4:.1f}" '
            f'height="{h:.1f}" fill="#2da44e"><title>decile {d["decile"]}: lift {lift:.2f}'
            f"</title></rect>"
        )
    base_y = _H - _PAD - 1 / top * (_H - 2 * _PAD)
    return (
        f'<svg width="{_W}" height="{_H}" role="img" aria-label="lift by decile">'
        f'<line x1="{_PAD}" y1="{base_y:.1f}" x2="{_W - _PAD}" y2="{base_y:.1f}" '
        f'stroke="#999" stroke-dasharray="4"/>{"".join(bars)}'
        f'<text x="{_W / 2}" y="{_H - 8}" text-anchor="middle">deciles, likeliest first; '
        f"dashed: base rate</text></svg>"
    )


def model_html(doc: dict[str, Any]) -> str:
    """The report page for a model document (what `leadscore train` writes)."""
    holdout = doc["quality"]["holdout"]
    training = doc["training"]
    deciles = holdout["calibration"]
    figures = "".join(
        f"<tr><th>{escape(name)}</th><td>{value}</td></tr>"
        for name, value in (
            ("AUC (held out)", holdout["auc"]),
            ("AUC (cross-validated, training rows)", doc["quality"].get("cross_validated_auc")),
            ("Brier score", holdout["brier"]),
            ("log loss", holdout["log_loss"]),
            ("lift in the top decile", holdout["lift_top_decile"]),
            ("base rate", f"{holdout['base_rate']:.1%}"),
            ("rows: trained / held out", f"{training['train_rows']} / {training['holdout_rows']}"),
            (
                "converters / non-converters",
                f"{training['converters']} / {training['non_converters']}",
            ),
        )
    )
    table = "".join(
        f"<tr><td>{d['decile']}</td><td>{d['rows']}</td><td>{d['predicted']:.1%}</td>"
        f"<td>{d['observed']:.1%}</td><td>{d['lift']}</td></tr>"
        for d in deciles
    )
    importance = "".join(
        f"<tr><td>{escape(f['feature'])}</td><td>{f['spread']}</td></tr>"
        for f in training.get("importance", [])[:15]
    )
    refused = training.get("refused_as_leaky") or []
    leaky = (
        "<p><b>Refused by the leakage guard</b> (each alone predicts the outcome almost "
        "perfectly, so it is most likely filled in after it; <code>--keep COL</code> uses it "
        "anyway): " + ", ".join(f"{escape(r['column'])} (AUC {r['auc']})" for r in refused) + "</p>"
        if refused
        else "<p>No column was refused by the leakage guard.</p>"
    )
    label = doc.get("label") or {}
    title = f"leadscore model: {escape(str(label.get('table') or label.get('rules') or ''))}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:.3em .6em;
text-align:left}}.charts{{display:flex;gap:2em;flex-wrap:wrap}}</style></head><body>
<h1>{title}</h1>
<p>Label: <b>{escape(str(label.get("label", "")))}</b>. Every figure is measured on held-out
rows the model never saw while it was fitted.</p>
<table>{figures}</table>
{leaky}
<div class="charts"><figure>{_calibration_svg(deciles)}<figcaption>Calibration: each dot is a
tenth of the held-out leads; on the dashed line, predicted = observed.</figcaption></figure>
<figure>{_lift_svg(deciles)}<figcaption>Lift: conversion in each tenth over the base
rate.</figcaption></figure></div>
<h2>Calibration by decile</h2>
<table><tr><th>decile</th><th>leads</th><th>predicted</th><th>observed</th><th>lift</th></tr>
{table}</table>
<h2>Features that move the likelihood most</h2>
<p>Spread (standard deviation) of each feature's contribution to the logit over the training
rows.</p>
<table><tr><th>feature</th><th>spread</th></tr>{importance}</table>
</body></html>
"""
