"""The CLI as a user (and a CI gate) sees it: exit codes, one-line errors, report files."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "auditor" / "assets" / "demo_trojaned.onnx"
CLEAN_TWIN = ROOT / "bench" / "demo" / "clean_twin.onnx"


def auditor(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_demo_flags_the_planted_target_and_exits_1(tmp_path):
    facts = json.loads((ROOT / "auditor/assets/demo_trojaned.json").read_text())
    out = tmp_path / "audit-demo"
    proc = auditor("demo", "--detectors", "max_margin", "--out", str(out), "--format", "html,json,sarif")
    assert proc.returncode == 1, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "auditor.report/1"
    assert report["verdict"] == "suspicious"
    assert report["flagged_classes"] == [facts["target_class"]]
    assert (out / "report.html").stat().st_size > 1000
    assert json.loads((out / "report.sarif").read_text())["runs"][0]["results"][0]["level"] == "error"
    assert "SUSPICIOUS" in proc.stderr


def test_clean_twin_exits_0(tmp_path):
    proc = auditor("scan", str(CLEAN_TWIN), "--detectors", "max_margin", "--out", str(tmp_path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "clean" and report["flagged_classes"] == []
    assert not (tmp_path / "report.html").exists()


def test_demo_detectors_flag_the_demo_and_pass_its_clean_twin(tmp_path):
    """The README's promise with every detector the demo runs: the target on the demo, nothing on its twin."""
    from auditor.cli import DEMO_DETECTORS, _demo_samples

    facts = json.loads((ROOT / "auditor/assets/demo_trojaned.json").read_text())
    demo = auditor("demo", "--out", str(tmp_path / "demo"), "--format", "json")
    assert demo.returncode == 1, demo.stderr
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert {name for name, d in report["detectors"].items() if d["status"] == "ok"} == set(DEMO_DETECTORS)
    assert report["flagged_classes"] == [facts["target_class"]]
    for name in DEMO_DETECTORS:  # each detector finds the target on its own
        assert report["detectors"][name]["flagged_classes"] == [facts["target_class"]], name

    samples = _demo_samples()  # the same held-out digits the demo uses, so data-hungry detectors run on both
    data = tmp_path / "clean.npz"
    np.savez(data, x=samples.x.numpy(), y=samples.y.numpy())
    twin = auditor("scan", str(CLEAN_TWIN), "--data", str(data), "--detectors", ",".join(DEMO_DETECTORS),
                   "--out", str(tmp_path / "twin"), "--format", "json")
    assert twin.returncode == 0, twin.stderr
    report = json.loads((tmp_path / "twin" / "report.json").read_text())
    assert report["verdict"] == "clean"
    assert {name for name, d in report["detectors"].items() if d["status"] == "ok"} == set(DEMO_DETECTORS)


def test_default_scan_runs_the_default_detectors(tmp_path):
    from auditor.detectors import registered

    proc = auditor("scan", str(DEMO), "--out", str(tmp_path), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    defaults = {name for name, entry in registered().items() if entry.info.default}
    assert set(report["detectors"]) == defaults == {"max_margin", "saliency"}
    assert report["flagged_classes"] == [json.loads((ROOT / "auditor/assets/demo_trojaned.json").read_text())["target_class"]]


def test_environment_variables_set_options(tmp_path):
    proc = auditor("scan", str(CLEAN_TWIN), "--out", str(tmp_path), env={
        "AUDITOR_DETECTORS": "max_margin", "AUDITOR_FORMAT": "sarif", "AUDITOR_OPTION": "max_margin.steps=20"})
    assert proc.returncode in (0, 1), proc.stderr
    assert (tmp_path / "report.sarif").exists() and not (tmp_path / "report.json").exists()


def test_strict_turns_skips_into_exit_3(tmp_path):
    proc = auditor("scan", str(CLEAN_TWIN), "--detectors", "max_margin,neural_cleanse", "--strict",
                   "--option", "max_margin.steps=20", "--out", str(tmp_path), "--format", "json")
    assert proc.returncode == 3
    assert "neural_cleanse skipped" in proc.stderr
    assert (tmp_path / "report.json").exists(), "the report is still written"


@pytest.mark.parametrize(
    "case, expected_code, message",
    [
        ("missing", 3, "not found"),
        ("text", 3, "not a readable ONNX"),
        ("truncated", 3, "ONNX"),
        ("pickle", 3, "--trust-pickle"),
        ("input-shape", 2, "does not match"),
        ("unknown-detector", 2, "unknown detector"),
        ("bad-format", 2, "--format"),
        ("bad-effort", 2, "--effort"),
        ("option-typo", 2, "did you mean 'steps'?"),
        ("option-detector-typo", 2, "did you mean 'max_margin'?"),
        ("threshold-typo", 2, "no detector is called 'maxmargin'"),
        ("option-value", 2, "max_margin: option steps='many' is not a valid int"),
        ("option-choice", 2, "saliency: option scale='bogus' must be"),
    ],
)
def test_bad_input_gives_one_line_and_the_right_exit_code(tmp_path, case, expected_code, message):
    args = ["scan"]
    if case == "missing":
        args += [str(tmp_path / "nope.onnx")]
    elif case == "text":
        (tmp_path / "readme.onnx").write_text("hello\n")
        args += [str(tmp_path / "readme.onnx")]
    elif case == "truncated":
        (tmp_path / "cut.onnx").write_bytes(DEMO.read_bytes()[:3000])
        args += [str(tmp_path / "cut.onnx")]
    elif case == "pickle":
        marker = tmp_path / "marker"
        (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
        args += [str(tmp_path / "evil.pt"), "--arch", "auditor.synthetic.nets:SmallCNN", "--input-shape", "1,28,28"]
    elif case == "input-shape":
        args += [str(DEMO), "--input-shape", "3,32,32"]
    elif case == "unknown-detector":
        args += [str(DEMO), "--detectors", "max_margin,telepathy"]
    elif case == "bad-format":
        args += [str(DEMO), "--format", "pdf"]
    elif case == "bad-effort":
        args += [str(DEMO), "--effort", "2"]
    elif case == "option-typo":  # a misspelt key must not silently run the default
        args += [str(DEMO), "--option", "max_margin.stpes=10"]
    elif case == "option-detector-typo":
        args += [str(DEMO), "--option", "max_margn.steps=10"]
    elif case == "threshold-typo":
        args += [str(DEMO), "--threshold", "maxmargin=0.1"]
    elif case == "option-value":
        args += [str(DEMO), "--option", "max_margin.steps=many"]
    elif case == "option-choice":  # a value only the detector can judge: still exit 2, no report
        args += [str(DEMO), "--detectors", "saliency", "--option", "saliency.scale=bogus"]
    proc = auditor(*args, "--out", str(tmp_path / "out"))
    assert proc.returncode == expected_code, proc.stderr
    line = one_line_error(proc)
    assert message in line
    assert not (tmp_path / "out" / "report.json").exists(), "no report after an error"
    if case == "pickle":
        assert not (tmp_path / "marker").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = auditor("scan", str(tmp_path / "nope.onnx"), "--debug")
    assert proc.returncode == 3 and "Traceback" in proc.stderr


def test_detectors_command_lists_the_registry():
    from auditor.detectors import registered

    proc = auditor("detectors", "--json")
    assert proc.returncode == 0
    listed = json.loads(proc.stdout)
    assert [d["name"] for d in listed] == list(registered())
    assert {"needs_gradients", "needs_data", "prefers_gpu", "options"} <= set(listed[0])
    assert "steps" in next(d for d in listed if d["name"] == "max_margin")["options"]


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_fidelity_command_and_scan_fidelity_write_their_figures(tmp_path):
    fast = ["--option", "fidelity.grids=2", "--option", "fidelity.methods=gradient,ixg",
            "--option", "fidelity.settings=full", "--option", "fidelity.randomisation_images=4",
            "--option", "fidelity.smoothing_kernels=5", "--option", "fidelity.am_steps=10"]
    proc = auditor("fidelity", str(DEMO), "--out", str(tmp_path / "fid"), *fast)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert figures and "Content-Security-Policy" in (tmp_path / "fid" / "fidelity.html").read_text()
    proc = auditor("scan", str(DEMO), "--fidelity", "--detectors", "max_margin", "--option", "max_margin.steps=20",
                   "--out", str(tmp_path / "scan"), "--format", "json,html", *fast)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads((tmp_path / "scan" / "report.json").read_text())
    assert report["fidelity"] and report["settings"]["fidelity"] == "ran"


def test_prior_train_writes_a_resumable_prior(tmp_path):
    import numpy as np

    from auditor.synthetic.digits import load_digits_28

    x, y, _, _ = load_digits_28(0)
    np.savez(tmp_path / "digits.npz", x=x[:64].numpy(), y=y[:64].numpy())
    for _ in range(2):  # the second run resumes from the saved state
        proc = auditor("prior", "train", "--data", str(tmp_path / "digits.npz"), "--out", str(tmp_path / "prior"),
                       "--steps", "4")
        assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "prior" / "prior.json").read_text())
    assert meta["steps_done"] == 4 and (tmp_path / "prior" / "unet").is_dir()
    assert meta["context_share"] == 0.4                   # the default: frames and textures mixed in
    bad = auditor("prior", "train", "--data", str(tmp_path), "--out", str(tmp_path / "p2"))
    assert bad.returncode == 2 and "--input-shape" in bad.stderr
