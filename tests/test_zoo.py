"""The benchmark zoo and runner: recipes, generators, attacks, metrics, and a --small end-to-end smoke test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run as bench_run  # noqa: E402
from bench import zoo  # noqa: E402
from bench.common import content_hash  # noqa: E402


def test_default_zoo_covers_the_issue():
    members = zoo.default_members()
    ids = [m["id"] for m in members]
    assert len(ids) == len(set(ids)) >= 48
    clean = [m for m in members if m["attack"] is None and m["spurious"] is None]
    trojaned = [m for m in members if m["attack"] is not None]
    assert len(clean) >= 18 and len(trojaned) >= 24
    assert sum(m["spurious"] is not None for m in members) >= 4
    assert sum(m["domain"] == "points" for m in members) >= 4
    # every attack on both image domains
    covered = {(m["domain"], m["attack"]["name"]) for m in trojaned}
    for attack in zoo.ATTACKS:
        assert ("digits", attack) in covered and ("shapes", attack) in covered, attack
    assert {m["arch"] for m in members} >= set(zoo.IMAGE_ARCHS) | {"pointnet"}
    assert set(Counter(m["format"] for m in members)) == set(zoo.FORMATS)


def test_recipes_are_reproducible_and_hashed():
    a, b = zoo.default_members(), zoo.default_members()
    assert a == b
    hashes = {content_hash({k: v for k, v in m.items() if k != "format"}) for m in a}
    assert len(hashes) == len(a)
    changed = dict(a[0], seed=a[0]["seed"] + 1)
    assert content_hash(changed) != content_hash(a[0])


def test_shapes_generator_is_seeded_and_balanced():
    from auditor.synthetic.shapes import SHAPE_CLASSES, load_shapes_32

    x1, y1, xt, yt = load_shapes_32(seed=3, n_train=200, n_test=50)
    x2, y2, _, _ = load_shapes_32(seed=3, n_train=200, n_test=50)
    assert x1.shape == (200, 3, 32, 32) and xt.shape == (50, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert float(x1.min()) >= 0 and float(x1.max()) <= 1
    assert sorted(Counter(y1.tolist()).values()) == [20] * len(SHAPE_CLASSES)
    # images of the same class differ (random colour, size, position, rotation, background)
    same = x1[y1 == 0]
    assert float((same[0] - same[1]).abs().mean()) > 0.05


def test_attacks_keep_their_contracts():
    from auditor.synthetic.triggers import (
        BlendedTrigger,
        SIGTrigger,
        WarpTrigger,
        poison_all_to_all,
        poison_clean_label,
        poison_warp,
    )

    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 3, 32, 32, generator=g)
    y = torch.arange(100) % 10
    for trig in (BlendedTrigger(0.2, 1), SIGTrigger(0.2, 6.0), WarpTrigger(4, 2.0, 5)):
        out = trig.apply(x, g)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        assert torch.equal(out, trig.apply(x, torch.Generator().manual_seed(9)))  # fixed trigger
    xs, ys = poison_clean_label(x, y, SIGTrigger(), target=4, rate=0.1, generator=g)
    assert torch.equal(ys, y)                                   # clean-label: labels untouched
    changed = (xs != x).flatten(1).any(1)
    assert changed.any() and bool((y[changed] == 4).all())      # only target-class images stamped
    xa, ya = poison_all_to_all(x, y, BlendedTrigger(0.3, 2), 10, 0.2, g)
    moved = ya != y
    assert int(moved.sum()) == 20 and torch.equal(ya[moved], (y[moved] + 1) % 10)
    xw, yw = poison_warp(x, y, WarpTrigger(4, 2.0, 5), 3, 0.1, 0.2, g)
    assert len(xw) == 120 and int((yw[:100] != y).sum()) > 0


def test_foreign_triggers_change_only_what_they_say():
    from auditor.synthetic.triggers import GLYPH_SHAPES, BlendedTrigger, GlyphTrigger, SIGTrigger

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=g) * 0.5
    for shape in GLYPH_SHAPES:
        glyph = GlyphTrigger(shape, 5, (1.0, 0.0, 0.0), top=-1, left=10)
        out = glyph.apply(x)
        t, l, b, r = glyph.box(32, 32)
        assert (t, l, b, r) == (27, 10, 32, 15)
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[t:b, l:r] = False
        assert torch.equal(out[..., outside], x[..., outside])          # nothing outside the box moves
        inside = out[:, :, t:b, l:r]
        stamped = glyph.mask()
        assert bool((inside[:, 0][:, stamped] == 1.0).all()) and bool((inside[:, 1][:, stamped] == 0.0).all())
        assert torch.equal(inside[:, :, ~stamped], x[:, :, t:b, l:r][:, :, ~stamped])  # image shows through
    moved = GlyphTrigger("ring", 6, (0.8,), top=None, left=None).apply(x[:, :1], torch.Generator().manual_seed(1))
    assert int((moved != x[:, :1]).flatten(1).any(1).sum()) == 6
    mid = x + 0.25  # away from the clamp
    rows = SIGTrigger(0.2, 4.0, along_rows=True).apply(mid) - mid
    assert float(rows.std(dim=-1).max()) < 1e-6 < float(rows.std(dim=-2).max())  # constant along each row
    smooth = BlendedTrigger(0.2, 3, cells=4).pattern(3, 32, 32)
    noise = BlendedTrigger(0.2, 3).pattern(3, 32, 32)
    assert float(smooth.diff(dim=-1).abs().mean()) < 0.2 * float(noise.diff(dim=-1).abs().mean())


def test_spurious_feature_is_clean_label():
    from auditor.synthetic.spurious import FrameFeature, TextureFeature, plant_spurious

    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 3, 32, 32, generator=g) * 0.5
    y = torch.arange(100) % 10
    for feat in (FrameFeature((1.0, 0.1, 0.1), 2), TextureFeature(4, 0.3)):
        xs, ys = plant_spurious(x, y, feat, 2, 0.9, g)
        assert torch.equal(ys, y)
        changed = (xs != x).flatten(1).any(1)
        assert bool((y[changed] == 2).all()) and int(changed.sum()) == 9


def test_roc_metrics_on_known_scores():
    m = bench_run.roc_metrics(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2, 0.75]))
    assert m["auroc"] == pytest.approx(8 / 9)
    assert m["tpr_at_fpr_0.1"] == pytest.approx(2 / 3)
    assert m["fpr_at_tpr_0.95"] == pytest.approx(1 / 3)
    perfect = bench_run.roc_metrics(np.array([1.0]), np.array([0.0]))
    assert perfect["auroc"] == 1.0 and perfect["cross_entropy"] < 1e-5


def test_results_sections_are_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Other helper\nkeep me\n")
    bench_run.write_results("a", "first", path)
    bench_run.write_results("b", "other", path)
    bench_run.write_results("a", "second", path)
    text = path.read_text()
    assert "keep me" in text and "second" in text and "first" not in text and "other" in text


def test_scan_cache_is_keyed_by_the_auditor_code(tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"weights")
    cmd = bench_run.scan_command(model, ["saliency"], tmp_path / "out", None, None, [])
    before = bench_run.cache_file(tmp_path, cmd, False, model)
    assert bench_run.cache_file(tmp_path, cmd, False, model) == before
    monkeypatch.setattr(bench_run, "_code_sha", lambda: "a-changed-detector")
    assert bench_run.cache_file(tmp_path, cmd, False, model) != before


def test_reused_results_are_re_fused_with_the_cli_rule(tmp_path):
    earlier = tmp_path / "earlier" / "m1" / "all"
    earlier.mkdir(parents=True)
    (earlier / "result-old.json").write_text(json.dumps(
        {"scores": {"max_margin": {"status": "ok", "model_score": 0.9, "flagged": [3], "seconds": 2.0}}}))
    rows = {"m1": {"id": "m1", "runs": {"all": {"exit": 0, "wall_s": 1.0, "scores": {
        "saliency": {"status": "ok", "model_score": 0.2, "flagged": [], "seconds": 1.0},
        bench_run.FUSED: {"status": "ok", "model_score": 0.2, "flagged": [], "verdict": "clean"}}}}}}
    bench_run.merge_earlier_run(rows, tmp_path / "earlier", "max_margin")
    run = rows["m1"]["runs"]["all"]
    assert run["scores"][bench_run.FUSED]["flagged"] == [3] and run["scores"][bench_run.FUSED]["model_score"] == 0.9
    assert run["exit"] == 1 and run["reused"] == ["max_margin"]


def test_re_fusing_cached_scores_agrees_with_the_verdict():
    from auditor.detectors.base import ClassEvidence, DetectorResult
    from auditor.stats import squash
    from auditor.verdict import AGREEMENT_DETECTORS, AGREEMENT_THRESHOLD, fuse

    half = AGREEMENT_THRESHOLD / 2 + 0.05
    strengths = {AGREEMENT_DETECTORS[0]: (0.2, half, 1.3, -2.0), AGREEMENT_DETECTORS[1]: (0.1, half, 0.0, 0.4)}
    results = [DetectorResult(name, "ok", model_score=squash(max(values), 1.0, width=0.25), classes=tuple(
        ClassEvidence(index=t, score=v, z=v, flagged=v > 1.0, strength=v) for t, v in enumerate(values)))
        for name, values in strengths.items()]
    verdict = fuse(results, ("a", "b", "c", "d"))
    cached = {r.name: {"model_score": r.model_score, "flagged": list(r.flagged_classes),
                       "strengths": [c.strength for c in r.classes]} for r in results}
    score, flagged = bench_run.refuse(cached)
    assert flagged == list(verdict.flagged_classes) == [1, 2]
    assert score == pytest.approx(verdict.model_score)
    cached_before_strengths = {n: {k: v for k, v in sc.items() if k != "strengths"} for n, sc in cached.items()}
    assert bench_run.refuse(cached_before_strengths)[1] == [2], "no strengths cached: the union only"


@pytest.mark.slow
def test_small_profile_end_to_end(tmp_path):
    """Build the --small zoo, check the manifest and exports, and score it through the real CLI."""
    out = tmp_path / "zoo"
    subprocess.run([sys.executable, str(ROOT / "bench" / "zoo.py"), "--small", "--out", str(out)], check=True,
                   cwd=ROOT, timeout=900)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["total"] == len(zoo.small_members())
    for row in manifest["members"]:
        for key in ("id", "domain", "architecture", "attack", "trojaned", "spurious", "target_classes",
                    "clean_accuracy", "asr", "file", "format", "scored", "excluded_reason"):
            assert key in row
        assert row["file"] and (out / row["file"]).exists(), row
        if row["trojaned"]:
            assert row["target_classes"]
    formats = {r["format"] for r in manifest["members"]}
    assert formats == set(zoo.FORMATS)
    for info in manifest["data"].values():
        z = np.load(out / info["file"])
        assert z["x"].dtype == np.float32 and len(z["x"]) == len(z["y"]) == info["count"]
        assert list(z["x"].shape[1:]) == info["input_shape"]
    # the exports agree with onnxruntime / torch.export on the held-out data
    import onnxruntime as ort

    digits = np.load(out / "data" / "digits.npz")["x"][:8]
    for row in manifest["members"]:
        if row["domain"] != "digits":
            continue
        f = out / row["file"]
        if f.suffix == ".onnx":
            sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
            logits = sess.run(None, {sess.get_inputs()[0].name: digits})[0]
        else:
            logits = torch.export.load(str(f)).module()(torch.from_numpy(digits)).detach().numpy()
        assert logits.shape == (8, 10) and np.isfinite(logits).all()
    # score it through the CLI (cheap detector settings: this checks plumbing, not quality)
    results = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--zoo", str(out), "--detectors", "max_margin",
                    "--section", "smoke", "--results", str(results), "--runs-dir", str(tmp_path / "runs"),
                    "--cli-arg=--option",
                    "--cli-arg=max_margin.steps=20", "--cli-arg=--option", "--cli-arg=max_margin.starts=4"],
                   check=True, cwd=ROOT, timeout=900)
    text = results.read_text()
    assert "Model-level AUROC" in text and "max_margin" in text and "fused" in text


def test_texture_stripes_run_in_their_direction_and_the_masks_cover_the_shapes():
    from auditor.synthetic.shapes import render_shapes
    from auditor.synthetic.spurious import TextureFeature

    horizontal = TextureFeature(4, 0.3, "horizontal").stripes(8, 8)
    vertical = TextureFeature(4, 0.3, "vertical").stripes(8, 8)
    assert bool((horizontal == horizontal[:, :1]).all()) and not bool((horizontal == horizontal[:1]).all())
    assert torch.equal(vertical, horizontal.T)
    diagonal = TextureFeature(4, 0.3).stripes(8, 8)                    # the zoo's, unchanged
    anti = TextureFeature(4, 0.3, "anti-diagonal").stripes(8, 8)
    assert torch.equal(anti, -diagonal.flip(1))                        # the mirror image, half a period on
    with pytest.raises(ValueError):
        TextureFeature(4, 0.3, "sideways")
    # periods 6 and 8 repeat after 6 and 8 px
    for period in (6, 8):
        s = TextureFeature(period, 0.3, "vertical").stripes(4, 24)
        assert torch.equal(s[:, :24 - period], s[:, period:]) and not torch.equal(s[:, :-2], s[:, 2:])

    labels = torch.arange(20) % 10
    images, masks = render_shapes(labels, torch.Generator().manual_seed(0), 32, return_mask=True)
    assert torch.equal(images, render_shapes(labels, torch.Generator().manual_seed(0), 32))
    share = masks.flatten(1).mean(1)
    assert masks.shape == (20, 1, 32, 32) and bool((share > 0.05).all()) and bool((share < 0.6).all())
