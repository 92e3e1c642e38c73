"""The fused verdict: each detector's own flags, the agreement of the default pair, commensurate scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auditor.detectors.base import ClassEvidence, DetectorResult
from auditor.detectors.max_margin import SCORE_WIDTH, p_value_strength
from auditor.stats import squash
from auditor.verdict import AGREEMENT_DETECTORS, AGREEMENT_ROLE, AGREEMENT_THRESHOLD, fuse

LABELS = ("cat", "dog", "bird")


def _result(name: str, strengths: tuple[float, ...], threshold: float = 1.0) -> DetectorResult:
    """A detector whose class t has evidence ``strengths[t]`` (in units of its threshold)."""
    classes = tuple(ClassEvidence(index=t, score=s, z=s, flagged=s > 1.0, role="backdoor target" if s > 1.0 else "",
                                  strength=s) for t, s in enumerate(strengths))
    return DetectorResult(name, "ok", model_score=squash(max(strengths), 1.0, width=0.25), threshold=threshold,
                          classes=classes, description="test")


def test_two_half_convinced_detectors_flag_the_class_they_agree_on():
    half = AGREEMENT_THRESHOLD / 2 + 0.05
    saliency, margin = AGREEMENT_DETECTORS
    verdict = fuse([_result(saliency, (0.1, half, 0.3)), _result(margin, (0.2, half, 0.0))], LABELS)
    assert verdict.status == "suspicious" and verdict.flagged_classes == (1,)
    dog = verdict.classes[1]
    assert dog.by_agreement and dog.roles == (AGREEMENT_ROLE,)
    assert set(dog.flagged_by) == set(AGREEMENT_DETECTORS)
    assert "together" in verdict.headline(LABELS)
    assert verdict.model_score > 0.5


def test_agreement_needs_both_detectors_on_the_same_class():
    half = AGREEMENT_THRESHOLD / 2 + 0.05
    saliency, margin = AGREEMENT_DETECTORS
    split = fuse([_result(saliency, (half, 0.0, 0.0)), _result(margin, (0.0, half, 0.0))], LABELS)
    assert split.status == "clean" and split.model_score < 0.5
    alone = fuse([_result(saliency, (0.9, 0.0, 0.0))], LABELS)
    assert alone.status == "clean" and math.isnan(alone.classes[0].agreement)
    other_pair = fuse([_result("flow_am", (half, 0.0, 0.0)), _result(margin, (half, 0.0, 0.0))], LABELS)
    assert other_pair.status == "clean", "only the calibrated pair is summed"


def test_negative_evidence_does_not_cancel_a_detectors_own_flag():
    saliency, margin = AGREEMENT_DETECTORS
    verdict = fuse([_result(saliency, (-3.0, 0.0, 0.0)), _result(margin, (1.5, 0.0, 0.0))], LABELS)
    assert verdict.flagged_classes == (0,) and verdict.classes[0].flagged_by == (margin,)
    assert not verdict.classes[0].by_agreement and verdict.classes[0].agreement == pytest.approx(1.5)


def test_fused_score_is_one_half_where_the_verdict_turns():
    saliency, margin = AGREEMENT_DETECTORS
    at = fuse([_result(saliency, (AGREEMENT_THRESHOLD / 2, 0.0, 0.0)),
               _result(margin, (AGREEMENT_THRESHOLD / 2, 0.0, 0.0))], LABELS)
    assert at.model_score == pytest.approx(0.5)
    stronger = fuse([_result(saliency, (AGREEMENT_THRESHOLD / 2 + 0.1, 0.0, 0.0)),
                     _result(margin, (AGREEMENT_THRESHOLD / 2, 0.0, 0.0))], LABELS)
    assert stronger.model_score > at.model_score


def test_max_margin_scores_one_half_at_its_p_value_threshold():
    strength = p_value_strength(np.array([1.0, 0.05, 0.0025, 0.0]), 0.05)
    assert strength[:3] == pytest.approx([0.0, 1.0, 2.0]) and np.isfinite(strength[3])
    assert squash(float(strength[1]), 1.0, width=SCORE_WIDTH) == pytest.approx(0.5)
    assert np.isnan(p_value_strength(np.array([0.5]), 1.0)).all()


def test_reports_say_when_a_class_is_flagged_by_agreement():
    from auditor.reports.html import to_html
    from auditor.reports.json_report import to_dict
    from auditor.reports.sarif import to_sarif_dict
    from auditor.scan import AuditReport
    from auditor.spec import InputSpec
    from auditor.target import ModelInfo

    half = AGREEMENT_THRESHOLD / 2 + 0.05
    saliency, margin = AGREEMENT_DETECTORS
    results = (_result(saliency, (0.1, half, 0.3)), _result(margin, (0.2, half, 0.0)))
    report = AuditReport("0.1.0", ModelInfo("m.onnx", "abc", "onnx"), InputSpec("image", (1, 8, 8)), LABELS, 0,
                         fuse(results, LABELS), results, {"total": 1.0})
    html = to_html(report)
    assert "neither reaches its own" in html and html.count("× its threshold") == 2
    row = to_dict(report)["classes"][1]
    assert row["by_agreement"] and row["flagged_by"] == list(AGREEMENT_DETECTORS)
    assert row["detectors"][saliency]["strength"] == pytest.approx(half)
    (sarif,) = to_sarif_dict(report)["runs"][0]["results"]
    assert sarif["properties"]["detectors"] == list(AGREEMENT_DETECTORS) and AGREEMENT_ROLE in sarif["message"]["text"]
