"""report.html — one self-contained page (inline CSS, images as base64 PNG, no scripts).

The template only sees plain values prepared here; Jinja2 runs with autoescape and StrictUndefined,
and the page carries a Content-Security-Policy that forbids scripts, so a hostile label cannot run.
"""

from __future__ import annotations

import math
from typing import Any

import jinja2

from auditor.detectors.base import EvidenceImage
from auditor.reports.pictures import png_data_uri
from auditor.scan import AuditReport
from auditor.verdict import AGREEMENT_THRESHOLD


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("auditor", "reports/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return "n/a"
    if f != 0 and (abs(f) >= 1e4 or abs(f) < 1e-3):
        return f"{f:.{digits}g}"
    return f"{f:.{digits}f}".rstrip("0").rstrip(".") if "." in f"{f:.{digits}f}" else f"{f}"


def _picture(img: EvidenceImage) -> dict[str, Any]:
    return {"uri": png_data_uri(img.pixels), "caption": img.caption, "kind": img.kind,
            "fidelity": [(k, _num(v)) for k, v in (img.fidelity or {}).items()]}


def view_model(report: AuditReport) -> dict[str, Any]:
    """Plain data for the template (kept separate so it can be tested without HTML)."""
    verdict = report.verdict
    ok_results = [r for r in report.results if r.status == "ok"]
    order = sorted(verdict.classes, key=lambda c: (not c.flagged, -(c.score if math.isfinite(c.score) else -1e9)))
    flagged = []
    for c in order:
        if not c.flagged:
            continue
        evidence = []
        for r in ok_results:
            ev = next((e for e in r.classes if e.index == c.index), None)
            if ev is None or r.name not in c.flagged_by:
                continue
            evidence.append({
                "detector": r.name, "role": ev.role or ("agreement" if c.by_agreement else "flagged"),
                "score": _num(ev.score), "z": _num(ev.z), "strength": _num(ev.strength, 2) if math.isfinite(ev.strength) else "",
                "metrics": [(k, _num(v)) for k, v in ev.metrics.items()],
                "description": ev.description, "images": [_picture(i) for i in ev.images],
            })
        flagged.append({"index": c.index, "label": c.label, "roles": list(c.roles), "by": list(c.flagged_by),
                        "agreement": _num(c.agreement, 2) if c.by_agreement else "",
                        "agreement_threshold": _num(AGREEMENT_THRESHOLD),
                        "evidence": evidence})
    rows = []
    for c in order:
        cells = []
        for r in ok_results:
            view = c.detectors.get(r.name)
            cells.append(None if view is None else {"score": _num(view.score), "z": _num(view.z, 2),
                                                    "flagged": view.flagged})
        rows.append({"index": c.index, "label": c.label, "flagged": c.flagged, "score": _num(c.score, 2),
                     "cells": cells})
    detectors = []
    for r in report.results:
        gallery = []
        for c in order:
            ev = next((e for e in r.classes if e.index == c.index), None)
            if ev is not None:
                gallery.extend({**_picture(i), "caption": f"class {c.index} ({c.label}): {i.caption}",
                                "flagged": ev.flagged} for i in ev.images)
        detectors.append({
            "name": r.name, "status": r.status, "reason": r.reason, "seconds": _num(r.seconds, 2),
            "model_score": _num(r.model_score), "threshold": _num(r.threshold), "description": r.description,
            "metrics": [(k, _num(v)) for k, v in r.metrics.items()],
            "fidelity": [(k, _num(v) if isinstance(v, (int, float)) else str(v)) for k, v in (r.fidelity or {}).items()],
            "images": [_picture(i) for i in r.images], "gallery": gallery,
            "flagged": [f"{i} ({report.labels[i]})" for i in r.flagged_classes],
        })
    return {
        "title": f"auditor report — {report.model.path}",
        "status": verdict.status,
        "headline": verdict.headline(report.labels),
        "model_score": _num(verdict.model_score),
        "notes": list(verdict.notes),
        "flagged": flagged,
        "columns": [r.name for r in ok_results],
        "rows": rows,
        "detectors": detectors,
        "model": [
            ("file", report.model.path), ("sha256", report.model.sha256), ("format", report.model.format),
            ("input", report.spec.describe()), ("classes", str(report.num_classes)),
            ("device", report.device), ("seed", str(report.seed)), ("auditor", report.tool_version),
        ] + _compute_row(report) + [("note", n) for n in report.model.notes],
        "timings": [(k, _num(v, 2)) for k, v in report.timings.items()],
        "fidelity_html": _fidelity_section(report),
    }


def _compute_row(report: AuditReport) -> list[tuple[str, str]]:
    """How much of the default detector work ran (auditor.compute), when the scan planned it."""
    plan = report.settings.get("compute")
    return [("compute", str(plan["summary"]))] if plan else []


def _fidelity_section(report: AuditReport) -> str:
    """The fidelity suite renders its own (already escaped) section when it ran."""
    if report.fidelity is None:
        return ""
    from auditor.fidelity import render_fidelity_section

    return render_fidelity_section(report.fidelity)


def to_html(report: AuditReport) -> str:
    vm = view_model(report)
    vm["fidelity_html"] = jinja2.utils.markupsafe.Markup(vm["fidelity_html"])
    return _env().get_template("report.html.j2").render(**vm)
