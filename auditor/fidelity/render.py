"""HTML for a :class:`~auditor.fidelity.suite.FidelityReport`: a pure function of the report.

``render_fidelity_section`` returns an escaped ``<section>`` the main report embeds;
``render_fidelity_page`` wraps it into a self-contained page (``auditor fidelity MODEL``).
Jinja2 runs with autoescape and StrictUndefined; pictures are inline base64 PNGs.
"""

from __future__ import annotations

import math
from typing import Any

import jinja2

from auditor.fidelity.aggatt import AggAttBin, signed_picture
from auditor.reports.pictures import png_data_uri

_GOOD_L = 0.9  # colouring only: L ≥ 0.9 is shown green, L < 0.5 red


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("auditor", "reports/templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _num(value: Any, digits: int = 2) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "—"
    return f"{f:.{digits}f}" if math.isfinite(f) else "n/a"


def _grade(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return "good" if value >= _GOOD_L else ("bad" if value < 0.5 else "")


def _bins(bins: tuple[AggAttBin, ...]) -> list[dict[str, Any]]:
    return [{"label": b.label, "count": b.count, "score": _num(b.mean_score), "share": _num(b.box_share),
             "mean": png_data_uri(signed_picture(b.mean_map), min_side=0),
             "median": png_data_uri(signed_picture(b.median_map), min_side=0)} for b in bins]


def view_model(report) -> dict[str, Any]:
    """Plain values for the template (testable without HTML)."""
    label = dict(report.labels)
    settings = sorted({s.setting for s in report.scores}, key=lambda s: (s != "DiFull", s))
    columns = [(setting, layer.role, layer.display) for setting in settings for layer in report.layers]
    rows = []
    for method in report.methods:
        cells = []
        for setting, role, _ in columns:
            s = report.score(method, setting, role)
            cells.append(None if s is None else {
                "value": _num(s.mean_L), "grade": _grade(s.mean_L), "up": _num(s.mean_L_upsampled),
                "empty": f"{100 * s.frac_no_positive:.0f} % of maps have no positive mass" if s.frac_no_positive >= 0.1 else ""})
        rows.append({"method": label.get(method, method), "cells": cells})
    aggatt = []
    for setting in settings:
        for layer in report.layers:
            group = [s for s in report.scores if s.setting == setting and s.role == layer.role and s.bins]
            if group:
                aggatt.append({"title": f"{setting} — {layer.display}",
                               "rows": [{"method": label.get(s.method, s.method), "L": _num(s.mean_L),
                                         "bins": _bins(s.bins)} for s in group]})
    randomisation = [{
        "method": label.get(c.method, c.method), "layer": c.layer,
        "stages": [{"name": name, "abs": _num(a), "signed": _num(sg), "ssim": _num(ss)}
                   for name, a, sg, ss in zip(c.stages, c.spearman_abs, c.spearman_signed, c.ssim)],
        "passes": c.passes} for c in report.randomisation]
    trigger = [{"method": label.get(t.method, t.method), "layer": t.layer, "share": _num(t.box_share_median),
                "mean": _num(t.box_share_mean), "area": _num(t.area_share, 3), "enrichment": _num(t.enrichment, 1),
                "hit": _num(t.pointing_hit), "bins": _bins(t.bins)} for t in report.trigger]
    return {
        "description": report.description,
        "grid": report.grid,
        "uniform": _num(1.0 / report.grid**2),
        "cell_source": report.cell_source,
        "layers": [{"role": c.role, "name": c.display} for c in report.layers],
        "columns": [{"setting": s, "layer": name} for s, _, name in columns],
        "rows": rows,
        "aggatt": aggatt,
        "smoothing": [{"method": label.get(s.method, s.method), "kernel": s.kernel, "sigma": _num(s.sigma),
                       "L": _num(s.mean_L, 3), "leak": _num(s.leakage, 3)} for s in report.smoothing],
        "randomisation": randomisation,
        "stage_names": list(report.randomisation[0].stages) if report.randomisation else [],
        "trigger": trigger,
        "trigger_description": report.trigger_description,
        "notes": list(report.notes),
        "seconds": _num(report.seconds, 1),
    }


def render_fidelity_section(report) -> str:
    """The suite's ``<section>`` (escaped HTML) for embedding in the main report."""
    return _env().get_template("fidelity.html.j2").render(standalone=False, title="", **view_model(report))


def render_fidelity_page(report, title: str = "auditor — explanation fidelity") -> str:
    """A self-contained page (inline CSS, no scripts) for ``auditor fidelity MODEL``."""
    return _env().get_template("fidelity.html.j2").render(standalone=True, title=title, **view_model(report))
