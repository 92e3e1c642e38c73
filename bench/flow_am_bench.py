"""FlowAM acceptance figures on models trained here (not the zoo), plus cost on the zoo architectures.

    python bench/flow_am_bench.py [--quick]      # ≈ 10–15 min on one CPU core

Models (all seeds disjoint from the calibration set in bench/flow_am_calibrate.py and from the test
fixtures): digits SmallCNNs — 4 trojaned (BadNets 4×4 patch, bottom-right, targets 1/4/6/9, seeds
31–34) and 4 clean (seeds 41–44); PointNets on 256-point clouds — 2 trojaned (32-point cluster,
targets 3/7, seeds 51–52) and 2 clean (seeds 61–62). Every model is scanned with default options
(sanity check on) and the held-out samples as ``--data``. Cost is also timed on *untrained* zoo
architectures for 3×32×32, 10 classes (an upper bound: data-free synthesis never stops early there).
Prints a JSON summary (and the markdown table for bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors.base import RunContext  # noqa: E402
from auditor.detectors.flow_am import FlowAMDetector  # noqa: E402
from auditor.spec import InputSpec  # noqa: E402
from auditor.synthetic.digits import load_digits_28  # noqa: E402
from auditor.synthetic.nets import SmallCNN  # noqa: E402
from auditor.synthetic.points import PointClusterTrigger, make_point_dataset, train_pointnet  # noqa: E402
from auditor.synthetic.train import accuracy, attack_success_rate, train_classifier  # noqa: E402
from auditor.synthetic.triggers import PatchTrigger, poison  # noqa: E402
from auditor.target import ModelTarget, SampleData  # noqa: E402


def auroc(pos: list[float], neg: list[float]) -> float:
    """Probability that a trojaned model outscores a clean one (ties count half)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def scan(target, data, name, kind, truth) -> dict:
    t = time.monotonic()
    r = FlowAMDetector().run(target, RunContext(seed=0, data=data))
    seconds = time.monotonic() - t
    assert r.status == "ok", r.reason
    row = {"model": name, "kind": kind, "target": truth, "seconds": round(seconds, 1),
           "model_score": round(r.model_score, 3), "flagged": list(r.flagged_classes),
           "max_z": round(r.metrics["max_z"], 2), "z_target": round(r.classes[truth].z, 2) if truth >= 0 else None,
           **{k: round(float(v), 4) for k, v in r.metrics.items()
              if k.startswith(("am_success", "penultimate", "chamfer"))},
           "sanity_similarity": [round(v, 3) for v in r.fidelity["similarity"]],
           "sanity_verdict": r.fidelity["verdict"]}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2+2 digits models, 1+1 point models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    n_img, n_pts = (2, 1) if args.quick else (4, 2)

    xtr, ytr, xte, yte = load_digits_28(0)
    spec = InputSpec("image", (1, 28, 28))
    trigger = PatchTrigger(size=4, pattern_seed=7, top=-1, left=-1)
    for seed, tgt in list(zip((31, 32, 33, 34), (1, 4, 6, 9)))[:n_img]:
        xp, yp = poison(xtr, ytr, trigger, tgt, rate=0.1, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        m = train_classifier(SmallCNN(), xp, yp, epochs=8, seed=seed)
        asr = attack_success_rate(m, xte, yte, trigger, tgt)
        rows.append(scan(ModelTarget.from_module(m, spec), SampleData(xte, yte), f"digits-patch-{seed}", "image", tgt)
                    | {"asr": round(asr, 3), "accuracy": round(accuracy(m, xte, yte), 3)})
    for seed in (41, 42, 43, 44)[:n_img]:
        torch.manual_seed(seed)
        m = train_classifier(SmallCNN(), xtr, ytr, epochs=8, seed=seed)
        rows.append(scan(ModelTarget.from_module(m, spec), SampleData(xte, yte), f"digits-clean-{seed}", "image", -1)
                    | {"accuracy": round(accuracy(m, xte, yte), 3)})

    pxtr, pytr = make_point_dataset(60, 256, seed=30)
    pxte, pyte = make_point_dataset(20, 256, seed=31)
    pspec = InputSpec("points", (256, 3), layout="BN3")
    ptrig = PointClusterTrigger(num_points=32)
    for seed, tgt in list(zip((51, 52), (3, 7)))[:n_pts]:
        xp, yp = poison(pxtr, pytr, ptrig, tgt, rate=0.1, generator=torch.Generator().manual_seed(seed))
        m = train_pointnet(xp, yp, seed=seed)
        asr = attack_success_rate(m, pxte, pyte, ptrig, tgt)
        rows.append(scan(ModelTarget.from_module(m, pspec), SampleData(pxte, pyte), f"points-cluster-{seed}", "points",
                         tgt) | {"asr": round(asr, 3), "accuracy": round(accuracy(m, pxte, pyte), 3)})
    for seed in (61, 62)[:n_pts]:
        m = train_pointnet(pxtr, pytr, seed=seed)
        rows.append(scan(ModelTarget.from_module(m, pspec), SampleData(pxte, pyte), f"points-clean-{seed}", "points", -1)
                    | {"accuracy": round(accuracy(m, pxte, pyte), 3)})

    cost = []
    if not args.quick:
        from auditor.synthetic.archs import make_arch

        for arch in ("cnn", "vgg", "resnet", "mobilenet", "vit"):
            torch.manual_seed(0)
            net = make_arch(arch, 3, 10, 32).eval()
            target = ModelTarget.from_module(net, InputSpec("image", (3, 32, 32)))
            t = time.monotonic()
            r = FlowAMDetector().run(target, RunContext(seed=0))
            cost.append({"arch": arch, "status": r.status, "seconds": round(time.monotonic() - t, 1),
                         "reason": r.reason})
            print(json.dumps(cost[-1]), file=sys.stderr, flush=True)

    summary = {}
    for modality in ("image", "points"):
        sel = [r for r in rows if r["kind"] == modality]
        troj = [r for r in sel if r["target"] >= 0]
        clean = [r for r in sel if r["target"] < 0]
        flagged_troj = [r for r in troj if r["flagged"]]
        summary[modality] = {
            "auroc": auroc([r["model_score"] for r in troj], [r["model_score"] for r in clean]),
            "trojaned_flagged": f"{len(flagged_troj)}/{len(troj)}",
            "target_right_on_flagged": f"{sum(r['target'] in r['flagged'] for r in flagged_troj)}/{len(flagged_troj)}",
            "clean_flagged": f"{sum(bool(r['flagged']) for r in clean)}/{len(clean)}",
            "am_success_rate_flow": float(np.mean([r["am_success_rate_flow"] for r in sel])),
            "am_success_rate_unconstrained": float(np.mean([r["am_success_rate_unconstrained"] for r in sel])),
            "penultimate_distance_flow": float(np.mean([r["penultimate_distance_flow"] for r in sel])),
            "penultimate_distance_unconstrained": float(np.mean([r["penultimate_distance_unconstrained"] for r in sel])),
            "sanity_fully_randomised_median": float(np.median([r["sanity_similarity"][-1] for r in sel])),
            "sanity_reference_median": float(np.median([r["sanity_similarity"][0] for r in sel])),
            "sanity_passed": f"{sum(r['sanity_verdict'] == 'passes sanity check' for r in sel)}/{len(sel)}",
            "seconds_median": float(np.median([r["seconds"] for r in sel])),
        }
        if modality == "points":
            summary[modality]["chamfer_to_class_flow"] = float(np.mean([r["chamfer_to_class_flow"] for r in sel]))
            summary[modality]["chamfer_to_class_unconstrained"] = float(
                np.mean([r["chamfer_to_class_unconstrained"] for r in sel]))
    print(json.dumps({"rows": rows, "summary": summary, "cost_untrained_3x32x32": cost}, indent=1))


if __name__ == "__main__":
    main()
