"""Calibrate FlowAM's outlier threshold on clean models that the tests and the bench never score.

    python bench/flow_am_calibrate.py --zoo bench/zoo/reference   # the shipped constants
    python bench/flow_am_calibrate.py                             # the earlier dev set only (≈ 5 min)

``--zoo`` scans the clean reference population built by ``bench/zoo.py --reference`` (every zoo
architecture of every domain, seeds disjoint from the benchmarked zoo) in addition to the dev set.
The dev set: clean digits SmallCNNs (seeds 11–14) and clean 10-class PointNets (seeds 11–13, 256 points),
runs ``flow_am`` data-free and with ``--data`` (held-out samples), and prints the largest
leave-one-out robust z of any class per modality. Those maxima set the thresholds
``Z_THRESHOLD`` in ``auditor/detectors/flow_am.py`` (see the rule written there). The
seeds are disjoint from the test fixtures (digits seeds 0/100, point seeds 0/1) and from the zoo.

The statistic itself (max of the z's of the log flow-divergence ratio and of the logit gap) was chosen
on *other* development models: trojaned digits SmallCNNs (seeds 21–23, targets 5/8/0) and one trojaned
PointNet (256 points, 24-point cluster → class 2) — never on the test fixtures or the zoo.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors.base import RunContext  # noqa: E402
from auditor.detectors.flow_am import FlowAMDetector  # noqa: E402
from auditor.spec import InputSpec  # noqa: E402
from auditor.synthetic.digits import load_digits_28  # noqa: E402
from auditor.synthetic.nets import SmallCNN  # noqa: E402
from auditor.synthetic.points import make_point_dataset, train_pointnet  # noqa: E402
from auditor.synthetic.train import accuracy, train_classifier  # noqa: E402
from auditor.target import ModelTarget, SampleData  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, help="reference zoo folder (bench/zoo.py --reference)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    if a.zoo:
        from bench.common import zoo_clean_models

        for mid, module, spec, data in zoo_clean_models(a.zoo):
            rows += _scan(ModelTarget.from_module(module, spec), data, spec.modality, mid,
                          accuracy(module, data.x, data.y))
    xtr, ytr, xte, yte = load_digits_28(0)
    for seed in (11, 12, 13, 14):
        torch.manual_seed(seed)
        m = train_classifier(SmallCNN(), xtr, ytr, epochs=8, seed=seed)
        rows += _scan(ModelTarget.from_module(m, InputSpec("image", (1, 28, 28))), SampleData(xte, yte),
                      "image", f"digits-cnn-{seed}", accuracy(m, xte, yte))
    pxtr, pytr = make_point_dataset(60, 256, seed=20)
    pxte, pyte = make_point_dataset(20, 256, seed=21)
    for seed in (11, 12, 13):
        m = train_pointnet(pxtr, pytr, seed=seed)
        rows += _scan(ModelTarget.from_module(m, InputSpec("points", (256, 3), layout="BN3")),
                      SampleData(pxte, pyte), "points", f"points-pointnet-{seed}", accuracy(m, pxte, pyte))
    summary = {}
    for modality in ("image", "points"):
        zs = [r["max_z"] for r in rows if r["modality"] == modality]
        summary[modality] = max(zs)
    print(json.dumps({"runs": rows, "max_clean_z": summary}, indent=1))


def _scan(target, data, modality, name, acc):
    out = []
    for mode in ("data-free", "data"):
        t = time.monotonic()
        r = FlowAMDetector().run(target, RunContext(seed=0, data=data if mode == "data" else None,
                                                    options={"sanity": "0"}))
        assert r.status == "ok", r.reason
        out.append({"model": name, "modality": modality, "mode": mode, "accuracy": round(acc, 3),
                    "max_z": round(max(c.z for c in r.classes), 2), "seconds": round(time.monotonic() - t, 1)})
        print(out[-1], file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    main()
