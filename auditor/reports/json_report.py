"""report.json — the public, versioned machine-readable contract (schema ``auditor.report/1``)."""

from __future__ import annotations

import json
import math
from typing import Any

from auditor.scan import AuditReport

SCHEMA = "auditor.report/1"


def clean_number(value: Any, digits: int = 6) -> Any:
    """Finite floats rounded to ``digits`` significant digits (stable across thread counts); NaN/Inf → None."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    if not math.isfinite(f):
        return None
    return float(f"{f:.{digits}g}")


def to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, str) or obj is None or isinstance(obj, bool):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalar
        obj = obj.item()
    if isinstance(obj, (int, float)):
        return clean_number(obj)
    return str(obj)


def to_dict(report: AuditReport) -> dict[str, Any]:
    verdict = report.verdict
    classes = []
    for c in verdict.classes:
        detectors = {}
        for r in report.results:
            if r.name not in c.detectors:
                continue
            view = c.detectors[r.name]
            ev = next(e for e in r.classes if e.index == c.index)
            detectors[r.name] = {"score": view.score, "z": view.z, "strength": view.strength, "flagged": view.flagged,
                                 "role": view.role, "metrics": dict(ev.metrics)}
        classes.append({"index": c.index, "label": c.label, "flagged": c.flagged, "score": c.score,
                        "roles": list(c.roles), "flagged_by": list(c.flagged_by), "agreement": c.agreement,
                        "by_agreement": c.by_agreement, "detectors": detectors})
    return to_plain({
        "schema": SCHEMA,
        "tool_version": report.tool_version,
        "model": {
            "path": report.model.path,
            "sha256": report.model.sha256,
            "format": report.model.format,
            "modality": report.spec.modality,
            "input_shape": list(report.spec.shape),
            "layout": report.spec.layout,
            "num_classes": report.num_classes,
            "notes": list(report.model.notes),
        },
        "seed": report.seed,
        "device": report.device,
        "verdict": verdict.status,
        "model_score": verdict.model_score,
        "flagged_classes": list(verdict.flagged_classes),
        "notes": list(verdict.notes),
        "classes": classes,
        "detectors": {
            r.name: {
                "status": r.status,
                "reason": r.reason,
                "seconds": r.seconds,
                "model_score": r.model_score,
                "threshold": r.threshold,
                "flagged_classes": list(r.flagged_classes),
                "description": r.description,
                "metrics": dict(r.metrics),
                "fidelity": dict(r.fidelity) if r.fidelity else None,
            }
            for r in report.results
        },
        "fidelity": report.fidelity.to_dict() if report.fidelity is not None else None,
        "settings": dict(report.settings),
        "timings": dict(report.timings),
    })


def to_json(report: AuditReport) -> str:
    # ensure_ascii: hostile labels (bidi overrides, control characters) stay visible as escapes
    return json.dumps(to_dict(report), indent=2, ensure_ascii=True, sort_keys=False) + "\n"
