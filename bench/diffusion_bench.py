"""Benchmark of the diffusion bias probe (bundled priors, 2 CPU cores, 1 thread per run).

    python bench/diffusion_bench.py [--planted N] [--zoo ids|spurious|clean|trojaned] [--zoo-dir DIR]
                                    [--with-data] [--option KEY=VALUE ...] [--out bench/diffusion_results.json]
    python bench/diffusion_summary.py bench/diffusion_results.json

Models: (a) digits SmallCNNs trained here with a planted white frame on 95 % of one class (plus clean
twins) — development models, seeds 100+, not zoo members; (b) the zoo's members (``--zoo-dir``:
bench/zoo, or bench/zoo/reference for the calibration run of bench/diffusion_calibrate.py) whose input
shape has a bundled prior. Per model: seconds, mean activation score, model score, flagged classes
and their candidate, the true spurious class's flip rate, per-class flip rates, prior fit, the
randomisation Spearman per stage. Rows are appended; a model already in ``--out`` is not rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.detectors import RunContext, create  # noqa: E402
from auditor.spec import InputSpec  # noqa: E402
from auditor.target import ModelTarget, SampleData  # noqa: E402


def planted(seed: int, spurious_class: int | None):
    from auditor.synthetic.digits import load_digits_28
    from auditor.synthetic.nets import SmallCNN
    from auditor.synthetic.spurious import FrameFeature, plant_spurious, spurious_flip_rate
    from auditor.synthetic.train import train_classifier

    xtr, ytr, xte, yte = load_digits_28(seed)
    feature = FrameFeature(colour=(1.0, 1.0, 1.0), width=2)
    true_flip = None
    if spurious_class is not None:
        xtr, ytr = plant_spurious(xtr, ytr, feature, spurious_class, 0.95, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = train_classifier(SmallCNN(), xtr, ytr, epochs=8, seed=seed)
    if spurious_class is not None:
        true_flip = spurious_flip_rate(model, xte, yte, feature, spurious_class)
    return ModelTarget.from_module(model, InputSpec("image", (1, 28, 28))), true_flip


def summarise(mid, kind, result, truth, true_flip, seconds):
    row = {"id": mid, "kind": kind, "status": result.status, "reason": result.reason, "seconds": round(seconds, 1),
           "truth_class": truth, "true_feature_flip": true_flip}
    if result.status == "ok":
        row.update({
            "mean_activation": round(result.metrics["mean_activation_score"], 3),
            "model_score": round(result.model_score, 4),
            "flagged": list(result.flagged_classes),
            "max_flip": round(result.model_score, 3),
            "truth_flip": round(result.classes[truth].metrics["flip_rate"], 3) if truth is not None else None,
            "truth_candidate": (result.classes[truth].description.split(":")[1].split("(")[0].strip()
                                if truth is not None else None),
            "flagged_candidates": [result.classes[c].description.split(":")[1].split("(")[0].strip()
                                   for c in result.flagged_classes],
            "prior_class_coverage": round(result.metrics["prior_class_coverage"], 3),
            "frame_scan": bool(result.metrics["frame_scan"]),
            "class_flips": {f"{c.index}": {k.removeprefix("flip_rate_"): round(v, 3) for k, v in c.metrics.items()
                                           if k.startswith("flip_rate_")} for c in result.classes},
            "randomisation_spearman": [round(v, 3) for v in result.fidelity["spearman"]],
            "prior_dominated": result.fidelity["prior_dominated"],
        })
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--planted", type=int, default=2, help="planted-frame digits models (and as many clean)")
    ap.add_argument("--zoo", default="", help="comma-separated zoo ids, or 'spurious', or 'spurious+clean'")
    ap.add_argument("--zoo-dir", default=str(ROOT / "bench" / "zoo"),
                    help="bench/zoo (scored) or bench/zoo/reference (clean calibration models)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "diffusion_results.json"))
    ap.add_argument("--with-data", action="store_true",
                    help="pass the zoo's held-out samples (data/<domain>.npz; never training data) as --data")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="detector option, as `auditor scan --option diffusion.KEY=VALUE` (repeatable)")
    args = ap.parse_args()
    options = dict(o.split("=", 1) for o in args.option)
    torch.set_num_threads(1)
    rows = []
    out = Path(args.out)
    if out.exists():
        rows = json.loads(out.read_text())
    done = {r["id"] for r in rows}
    det = create("diffusion")
    for i in range(args.planted):
        for spurious in ((3 + 4 * i) % 10, None):
            mid = f"planted-digits-{'frame' if spurious is not None else 'clean'}-{i}"
            if mid in done:
                continue
            target, true_flip = planted(100 + i, spurious)
            t0 = time.monotonic()
            r = det.run(target, RunContext(seed=0, options=options))
            rows.append(summarise(mid, "spurious" if spurious is not None else "clean", r, spurious, true_flip,
                                  time.monotonic() - t0))
            out.write_text(json.dumps(rows, indent=1))
    if args.zoo:
        from auditor.loading import load_model

        zoo_dir = Path(args.zoo_dir)
        manifest = json.loads((zoo_dir / "manifest.json").read_text())
        wanted = args.zoo.split(",")
        # kinds first, then ids in the order given (so a long run measures what matters first)
        order = {name: i for i, name in enumerate(wanted)}
        members = sorted(manifest["members"], key=lambda m: min(
            order.get(m["id"], len(order)),
            order.get("spurious" if m["spurious"] else "trojaned" if m["trojaned"] else "clean", len(order))))
        for m in members:
            kind = "spurious" if m["spurious"] else ("trojaned" if m["trojaned"] else "clean")
            if m["id"] not in wanted and kind not in wanted:
                continue
            if m["id"] in done or m["domain"] == "points":
                continue
            target = load_model(zoo_dir / m["file"])
            # all-to-all models have no single target class
            truth = m["spurious_class"] if m["spurious"] else (m["target_classes"] or [None])[0] if m["trojaned"] else None
            data = None
            if args.with_data:
                held = np.load(zoo_dir / "data" / f"{m['domain']}.npz")
                data = SampleData(torch.from_numpy(held["x"]).float(), torch.from_numpy(held["y"]).long(),
                                  source="zoo held-out samples")
            t0 = time.monotonic()
            r = det.run(target, RunContext(seed=0, options=options, data=data))
            rows.append(summarise(m["id"], kind + ("/" + m["attack"] if m["trojaned"] else ""), r, truth,
                                  m.get("spurious_flip_rate"), time.monotonic() - t0))
            out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
