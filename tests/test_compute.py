"""The compute plan: large models get a deterministic, reported share of the default work."""

from __future__ import annotations

from dataclasses import replace

import pytest
from torch import nn

from auditor.compute import REFERENCE_MAX_FLOPS, calibration_note, forward_flops, parse_effort, plan
from auditor.detectors.base import RunContext
from auditor.detectors.saliency import _DEFAULTS, SaliencyDetector, _work_counts
from auditor.errors import UsageError
from auditor.scan import plan_compute, scan
from auditor.spec import InputSpec
from auditor.target import ModelTarget


def test_forward_flops_counts_the_graph_that_runs():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    target = ModelTarget.from_module(linear, InputSpec("image", (1, 28, 28)))
    assert forward_flops(target) == 2 * 28 * 28 * 10


def test_zoo_sized_models_run_the_calibrated_defaults(digits_twins):
    compute = plan_compute(digits_twins.trojaned, ["max_margin", "saliency"], {})
    assert compute.effort == 1.0
    assert compute.planned_flops < compute.budget_flops


def test_a_model_over_budget_runs_a_reported_share_and_still_ranks_its_target_first(digits_twins):
    full = plan_compute(digits_twins.trojaned, ["max_margin"], {})
    compute = plan_compute(digits_twins.trojaned, ["max_margin"], {}, budget_flops=full.planned_flops / 10)
    assert compute.efforts["max_margin"] == pytest.approx(0.1)
    report = scan(digits_twins.trojaned, ["max_margin"], RunContext(seed=0), compute=compute)
    result = report.result("max_margin")
    assert result.metrics["starts"] < 30 and result.metrics["steps"] < 300
    assert result.metrics["effort"] == pytest.approx(0.1, rel=0.1)
    assert "reduced effort" in result.description
    assert report.settings["compute"]["efforts"]["max_margin"] == pytest.approx(0.1)
    top = max(result.classes, key=lambda c: c.score)
    assert top.index == digits_twins.target_class
    clean = scan(digits_twins.clean, ["max_margin"], RunContext(seed=0), compute=compute)
    assert clean.verdict.status == "clean"


def test_the_budget_comes_first_from_detectors_that_tolerate_less_work():
    linear = ModelTarget.from_module(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), InputSpec("image", (1, 28, 28)))
    flops = forward_flops(linear)
    work = {"tolerant": (100.0, 0.1), "strict": (100.0, 1.0), "fixed": (0.0, 1.0)}
    within = plan(linear, work, budget_flops=150 * flops)
    assert within.efforts["tolerant"] == pytest.approx(0.5) and within.efforts["strict"] == 1.0
    beyond = plan(linear, work, budget_flops=55 * flops)
    assert beyond.efforts["tolerant"] == pytest.approx(0.05) and beyond.efforts["strict"] == pytest.approx(0.5)
    assert within.efforts["fixed"] == beyond.efforts["fixed"] == 1.0
    assert plan(linear, work, budget_flops=1000 * flops).effort == 1.0
    assert plan(linear, work, effort=0.3).efforts == {"tolerant": 0.3, "strict": 0.3, "fixed": 0.3}


def test_one_detectors_effort_can_be_fixed_by_option(digits_twins):
    compute = plan_compute(digits_twins.trojaned, ["max_margin", "saliency"], {"max_margin": {"effort": "0.5"}})
    assert compute.efforts == {"max_margin": 0.5, "saliency": 1.0}
    assert "--option max_margin.effort" in compute.describe()
    with pytest.raises(UsageError, match="max_margin.effort"):
        plan_compute(digits_twins.trojaned, ["max_margin"], {"max_margin": {"effort": "7"}})


def test_options_set_by_the_user_are_not_scaled():
    counts = _work_counts(RunContext(effort=0.1, options={"starts": "7"}))
    assert counts["starts"] == 7
    assert counts["uap_batch"] < _DEFAULTS["uap_batch"]


def test_saliency_shrinks_samples_before_steps():
    half = _work_counts(RunContext(effort=0.5))
    assert half["starts"] == _DEFAULTS["starts"] // 2 and half["steps"] == _DEFAULTS["steps"]
    tenth = _work_counts(RunContext(effort=0.1))
    assert tenth["steps"] < _DEFAULTS["steps"]
    ran = SaliencyDetector.planned_passes(10, RunContext(options=tenth))
    assert ran < 0.2 * SaliencyDetector.planned_passes(10, RunContext())


@pytest.mark.parametrize("text", ["0", "1.5", "lots", "-1"])
def test_bad_effort_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--effort"):
        parse_effort(text)


def test_auto_effort_is_none_and_numbers_pass():
    assert parse_effort("auto") is None and parse_effort(None) is None
    assert parse_effort("0.25") == 0.25


def test_a_network_far_beyond_the_calibration_population_is_said_to_be_extrapolated(digits_twins):
    assert calibration_note("saliency", REFERENCE_MAX_FLOPS, forward_flops(digits_twins.clean)) == ""
    assert calibration_note("max_margin", None, 1e12) == ""  # a within-model null needs no population
    note = calibration_note("saliency", REFERENCE_MAX_FLOPS, 1.1e9)
    assert "extrapolated" in note and "92×" in note
    # the scan puts it in the verdict's notes, for the calibrated detector only
    small = plan_compute(digits_twins.clean, ["max_margin", "saliency"], {}, effort=0.1)
    report = scan(digits_twins.clean, ["max_margin", "saliency"], RunContext(seed=0),
                  compute=replace(small, forward_flops=1.1e9))
    assert [n for n in report.verdict.notes if "extrapolated" in n] == [calibration_note("saliency", REFERENCE_MAX_FLOPS, 1.1e9)]
    assert report.verdict.status != "inconclusive"
    assert not [n for n in scan(digits_twins.clean, ["max_margin"], RunContext(seed=0), compute=small).verdict.notes
                if "extrapolated" in n]
