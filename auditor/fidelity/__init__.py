"""Explanation fidelity: how far each picture in the report can be trusted, measured.

Public API::

    run_fidelity(target, context, *, maps=None, triggered=None) -> FidelityReport
    render_fidelity_section(report) -> str   # <section> for the main HTML report
    render_fidelity_page(report, title=...) -> str   # self-contained page (auditor fidelity MODEL)
    attach_badges(result, target, context, *, rerun=None, grid=2) -> DetectorResult

See :mod:`auditor.fidelity.suite` for what is measured and the options.
"""

from auditor.fidelity.badges import attach_badges
from auditor.fidelity.layers import LayerChoice, choose_layers
from auditor.fidelity.randomisation import RandomisationCurve
from auditor.fidelity.render import render_fidelity_page, render_fidelity_section
from auditor.fidelity.suite import (
    FidelityReport,
    MethodScore,
    SmoothingScore,
    SuiteOptions,
    TriggeredInputs,
    TriggerScore,
    run_fidelity,
)

__all__ = [
    "FidelityReport", "LayerChoice", "MethodScore", "RandomisationCurve", "SmoothingScore", "SuiteOptions",
    "TriggerScore", "TriggeredInputs", "attach_badges", "choose_layers", "render_fidelity_page",
    "render_fidelity_section", "run_fidelity",
]
