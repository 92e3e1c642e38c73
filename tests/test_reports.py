"""Report writers are pure functions of the results; SARIF is validated against the bundled schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from auditor.detectors.base import ClassEvidence, DetectorResult, EvidenceImage
from auditor.reports.html import to_html
from auditor.reports.json_report import to_dict, to_json
from auditor.reports.sarif import to_sarif_dict
from auditor.scan import AuditReport
from auditor.spec import InputSpec
from auditor.target import ModelInfo
from auditor.verdict import fuse

SCHEMA = Path(__file__).resolve().parents[1] / "auditor" / "reports" / "schemas" / "sarif-schema-2.1.0.json"


def validate_sarif(document: dict) -> None:
    """Validate against the official OASIS schema (bundled verbatim; it declares JSON Schema 2020-12).

    The upstream file has a known quirk (an ``anyOf`` nested under ``region.properties``) that makes the
    meta-schema check fail, so the schema itself is not meta-validated; documents are.
    """
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(document)


def test_the_bundled_schema_rejects_invalid_logs():
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif({"version": "2.1.0", "runs": [{"tool": {"driver": {}}, "results": []}]})
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "a"}},
                                                     "results": [{"level": "fatal", "message": {"text": "x"}}]}]})


def _report(flag: int | None, statuses=("ok",)) -> AuditReport:
    labels = ("cat", "dog <b>", "bird")
    results = []
    for i, status in enumerate(statuses):
        classes = tuple(
            ClassEvidence(index=k, score=float(k), z=3.0 if k == flag else 0.1, flagged=k == flag,
                          role="backdoor target" if k == flag else "", metrics={"m": 0.5},
                          images=(EvidenceImage(np.full((8, 8), 0.5), f"img {k}", kind="class_map"),))
            for k in range(3)
        ) if status == "ok" else ()
        results.append(DetectorResult(f"det{i}", status, "" if status == "ok" else "needs data", 1.0,
                                      0.9 if flag is not None else 0.1, 0.05, classes, "what was optimised"))
    return AuditReport("0.1.0", ModelInfo("m.onnx", "abc", "onnx"), InputSpec("image", (3, 8, 8)), labels, 0,
                       fuse(results, labels), tuple(results), {"total": 1.0})


def test_json_contract_keys():
    d = to_dict(_report(flag=1))
    assert d["schema"] == "auditor.report/1"
    assert set(d["model"]) >= {"path", "sha256", "format", "input_shape", "num_classes"}
    assert d["verdict"] == "suspicious" and d["flagged_classes"] == [1] and d["model_score"] == 0.9
    assert set(d["classes"][1]) >= {"index", "label", "flagged", "score", "detectors"}
    assert set(d["classes"][1]["detectors"]["det0"]) >= {"score", "z", "flagged"}
    assert set(d["detectors"]["det0"]) >= {"status", "reason", "seconds", "model_score"}
    assert "timings" in d
    json.loads(to_json(_report(flag=1)))


def test_nan_and_inf_become_null():
    d = to_dict(_report(flag=None))
    d2 = json.loads(to_json(_report(flag=None)))
    assert d == d2


@pytest.mark.parametrize("flag", [None, 2])
def test_sarif_validates_against_the_official_schema(flag):
    document = to_sarif_dict(_report(flag=flag, statuses=("ok", "skipped")))
    validate_sarif(document)
    results = document["runs"][0]["results"]
    assert len(results) == (0 if flag is None else 1)
    if flag is not None:
        assert results[0]["level"] == "error" and results[0]["properties"]["classIndex"] == flag
    notes = document["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert notes and "skipped" in notes[0]["message"]["text"]


def test_html_is_self_contained_and_escaped():
    html = to_html(_report(flag=1))
    assert "dog &lt;b&gt;" in html and "dog <b>" not in html
    assert "data:image/png;base64," in html
    assert "<script" not in html and "http://" not in html.replace("http-equiv", "")
    assert "Content-Security-Policy" in html
    assert html.index("Flagged classes") < html.index("<h2>Classes</h2>")


def test_inconclusive_when_nothing_ran():
    report = _report(flag=None, statuses=("skipped",))
    assert report.verdict.status == "inconclusive" and report.verdict.model_score is None
    html = to_html(report)
    assert 'class="banner inconclusive"' in html and "needs data" in html
