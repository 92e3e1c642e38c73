"""report.sarif — SARIF 2.1.0 for code-scanning dashboards: one ``error`` result per flagged class."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from auditor.reports.json_report import clean_number
from auditor.scan import AuditReport

INFORMATION_URI = "https://github.com/auditor-ml/auditor"

RULES = (
    ("AUD001", "BackdoorTargetClass", "A class behaves like the target of a backdoor (trojan) trigger.",
     "One or more detectors found that a small, input-agnostic change drives many inputs into this class, "
     "or that the class is reachable through an anomalous shortcut. Inspect the recovered trigger in the "
     "HTML report before deploying the model."),
    ("AUD002", "SpuriousFeatureClass", "A class relies on a spurious feature.",
     "Class-maximising inputs share a feature that is not the object and that flips other inputs into "
     "the class when transplanted."),
    ("AUD003", "UnusualClass", "A class is a statistical outlier without a confirmed trigger.",
     "A detector's statistic for this class is an outlier, but no trigger was confirmed by transplanting it."),
)
_RULE_FOR_ROLE = {"backdoor target": 0, "spurious feature": 1, "unusual": 2}


def _artifact_uri(path: str) -> str:
    return PurePath(path).as_posix() if path else "model"


def to_sarif_dict(report: AuditReport) -> dict[str, Any]:
    uri = _artifact_uri(report.model.path)
    results = []
    for c in report.verdict.classes:
        if not c.flagged:
            continue
        role = next((r for r in ("backdoor target", "spurious feature", "unusual") if r in c.roles), "backdoor target")
        rule_index = _RULE_FOR_ROLE[role]
        by = ", ".join(c.flagged_by)
        results.append({
            "ruleId": RULES[rule_index][0],
            "ruleIndex": rule_index,
            "level": "error",
            "message": {"text": f"Class {c.index} ({c.label!r}) flagged as {role} by {by}."},
            "locations": [{
                "physicalLocation": {"artifactLocation": {"uri": uri, "index": 0}},
                "logicalLocations": [{"name": f"class {c.index}", "fullyQualifiedName": f"{uri}#class/{c.index}",
                                      "kind": "member"}],
            }],
            "partialFingerprints": {"auditorModelClass/v1": f"{report.model.sha256}:{c.index}"},
            "properties": {"classIndex": c.index, "label": c.label, "detectors": list(c.flagged_by),
                           "score": clean_number(c.score), "modelScore": clean_number(report.verdict.model_score)},
        })
    notifications = [
        {"level": "warning" if r.status == "skipped" else "error",
         "message": {"text": f"detector {r.name} {r.status}: {r.reason}"}}
        for r in report.results if r.status != "ok"
    ]
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "auditor",
                "version": report.tool_version,
                "informationUri": INFORMATION_URI,
                "rules": [
                    {"id": rid, "name": name, "shortDescription": {"text": short},
                     "fullDescription": {"text": full}, "defaultConfiguration": {"level": "error"}}
                    for rid, name, short, full in RULES
                ],
            }},
            "invocations": [{"executionSuccessful": report.verdict.status != "inconclusive",
                             "toolExecutionNotifications": notifications}],
            "artifacts": [{"location": {"uri": uri}, "hashes": {"sha-256": report.model.sha256 or "unknown"}}],
            "results": results,
            "properties": {"verdict": report.verdict.status, "modelScore": clean_number(report.verdict.model_score),
                           "seed": report.seed},
        }],
    }


def to_sarif(report: AuditReport) -> str:
    return json.dumps(to_sarif_dict(report), indent=2, ensure_ascii=True) + "\n"
