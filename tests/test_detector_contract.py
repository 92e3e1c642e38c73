"""One contract test, parametrised over every registered detector (timm/torchvision style)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from auditor.detectors import Detector, RunContext, register, registered
from auditor.detectors.base import COMMON_OPTIONS, count_hooks
from auditor.target import SampleData

# Cheap settings so the contract runs in seconds; detectors' defaults are measured in bench/.
FAST_OPTIONS: dict[str, dict[str, str]] = {
    "max_margin": {"steps": "40", "starts": "6"},
    "neural_cleanse": {"steps": "30"},
    "saliency": {"pool": "300", "steps": "20", "uap_steps": "6", "heldout": "16", "starts": "6"},
    "flow_am": {"sanity": "false", "steps": "60"},
    "diffusion": {"fast": "true"},
}

NAMES = sorted(registered())


class _RecordingOptions(dict):
    """Options that remember every key a detector asked for (RunContext.option and work_count test
    membership first), so the contract can check that it reads only the keys it declares."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def __contains__(self, key) -> bool:
        self.asked.add(key)
        return super().__contains__(key)


def _context(name: str, twins, seed: int = 0, with_data: bool = True) -> RunContext:
    data = SampleData(twins.x_test[:200], twins.y_test[:200], "digits test split") if with_data else None
    return RunContext(seed=seed, data=data, options=_RecordingOptions(FAST_OPTIONS.get(name, {})))


def _runnable(name: str) -> bool:
    return "image" in registered()[name].info.modalities


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_scores_and_valid_schema(name, digits_twins):
    if not _runnable(name):
        pytest.skip(f"{name} does not take images")
    target = digits_twins.trojaned
    hooks = count_hooks(target.model)
    context = _context(name, digits_twins)
    first = registered()[name]().run(target, context)
    second = registered()[name]().run(target, _context(name, digits_twins))
    declared = {*registered()[name].info.options, *COMMON_OPTIONS}
    assert set(FAST_OPTIONS.get(name, {})) <= declared, "the contract's own options must exist"
    assert context.options.asked <= declared, f"reads undeclared options {context.options.asked - declared}"
    assert count_hooks(target.model) == hooks, "detector left hooks on the model"
    assert not target.model.training, "detector left the model in training mode"
    assert all(not p.requires_grad for p in target.model.parameters())
    assert first.status in ("ok", "skipped"), f"{name} failed: {first.reason}"
    if first.status == "skipped":
        assert first.reason, "a skip must say why"
        return
    assert first.name == name and first.seconds >= 0
    assert 0.0 <= first.model_score <= 1.0
    assert [c.index for c in first.classes] == list(range(target.num_classes))
    for c in first.classes:
        assert isinstance(c.flagged, bool)
        assert math.isfinite(c.score) or not c.valid
        for img in c.images:
            assert img.pixels.ndim in (2, 3) and img.caption
            assert np.nanmin(img.pixels) >= -1e-6 and np.nanmax(img.pixels) <= 1 + 1e-6
    finite = [c for c in first.classes if math.isfinite(c.strength)]
    for c in finite:  # strength is the evidence in units of the detector's own threshold
        assert c.flagged == (c.strength > 1.0), f"class {c.index}: strength {c.strength} vs flagged {c.flagged}"
    if finite:  # and every model score is 0.5 where the detector's decision turns
        assert (first.model_score > 0.5) == bool(first.flagged_classes)
    assert first.description, "results must say what was optimised/measured"
    assert [c.score for c in first.classes] == [c.score for c in second.classes], "not deterministic"
    assert first.model_score == second.model_score
    assert first.flagged_classes == second.flagged_classes


@pytest.mark.parametrize("name", NAMES)
def test_declared_work_grows_at_most_linearly_with_classes(name):
    cls = registered()[name]
    assert 0.0 < cls.info.tolerated_effort <= 1.0
    assert cls.info.calibrated_flops is None or cls.info.calibrated_flops > 0
    ten, forty = cls.planned_passes(10, RunContext()), cls.planned_passes(40, RunContext())
    assert 0.0 <= ten and forty <= 4 * ten, "the compute plan assumes work linear in the classes"


@pytest.mark.parametrize("name", NAMES)
def test_skips_with_reason_when_needs_are_unmet(name, digits_twins):
    info = registered()[name].info
    target = digits_twins.trojaned
    if info.needs_gradients:
        no_grad = replace(target, differentiable=False)
        result = registered()[name]().run(no_grad, _context(name, digits_twins))
        assert result.status == "skipped" and "gradient" in result.reason
    if info.needs_data:
        result = registered()[name]().run(target, _context(name, digits_twins, with_data=False))
        assert result.status == "skipped" and "--data" in result.reason
    if not info.needs_gradients and not info.needs_data:
        pytest.skip("detector has no needs to withhold")


class _ExplodingModel(torch.nn.Module):
    """Works for a few calls, then raises: detectors must clean up hooks on the error path too."""

    def __init__(self, inner: torch.nn.Module, calls_before_failure: int = 3):
        super().__init__()
        self.inner = inner
        self.remaining = calls_before_failure

    def forward(self, x):
        self.remaining -= 1
        if self.remaining < 0:
            raise RuntimeError("planted failure")
        return self.inner(x)


@pytest.mark.parametrize("name", NAMES)
def test_no_hooks_left_after_an_exception(name, digits_twins):
    if not _runnable(name):
        pytest.skip(f"{name} does not take images")
    base = digits_twins.trojaned
    model = _ExplodingModel(base.model).eval()
    target = replace(base, model=model)
    result = registered()[name]().run(target, _context(name, digits_twins))
    assert count_hooks(model) == 0
    assert result.status in ("failed", "skipped", "ok")
    if result.status == "failed":
        assert "planted failure" in result.reason


def test_registry_refuses_duplicate_names():
    name = NAMES[0]
    with pytest.raises(ValueError, match="already registered"):

        @register(name, summary="dup", reference="none")
        class Duplicate(Detector):
            def _run(self, target, context):  # pragma: no cover
                raise AssertionError


def test_time_budget_turns_into_failed_timeout(digits_twins):
    result = registered()["max_margin"]().run(
        digits_twins.trojaned, RunContext(seed=0, time_budget_s=0.0, options={"steps": "1000"})
    )
    assert result.status == "failed" and result.reason.startswith("timeout")


@pytest.mark.parametrize("name", NAMES)
def test_every_detector_honours_its_time_budget(name, digits_twins):
    """A spent budget must end the detector with ``failed: timeout`` (detectors call check_time)."""
    if not _runnable(name):
        pytest.skip(f"{name} does not take images")
    context = replace(_context(name, digits_twins), time_budget_s=0.0)
    result = registered()[name]().run(digits_twins.trojaned, context)
    if result.status == "skipped":
        pytest.skip(result.reason)
    assert result.status == "failed" and result.reason.startswith("timeout"), (result.status, result.reason)
