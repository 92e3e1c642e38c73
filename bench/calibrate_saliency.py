"""Derive the `saliency` detector's calibration constants from CLEAN reference models, and check them.

    python bench/calibrate_saliency.py --zoo bench/zoo/reference --digits-seeds 1-8   # the shipped constants
    python bench/calibrate_saliency.py --digits-seeds 1-8         # clean digits SmallCNNs trained here
    python bench/calibrate_saliency.py --digits-seeds 1-8 --eval-dev   # + a few trojaned dev models
    python bench/calibrate_saliency.py --zoo bench/zoo/reference --digits-seeds 1-8 --dev-zoo bench/zoo/dev
                                                                  # + the dev split's trojaned models
    python bench/calibrate_saliency.py --digits-seeds 1-8 --dev-zoo bench/zoo/dev --dev-seeds 7100-9807 --out B.json
                                                                  # a share of them in a second process

For every clean model the detector runs with its default options; the *relative* per-class statistics
(``rel_<name>`` in each class's metrics: value minus the median of the other classes) are pooled over
all classes of all clean models, and ``(centre, scale)`` per statistic is computed with
:func:`auditor.detectors.saliency.calibration_scale`. The script prints the ``CALIBRATION`` block to
paste into ``auditor/detectors/saliency.py``, the clean models' resulting maximum class scores
(in-sample and leave-one-model-out, i.e. each model scored with constants computed without it), and
writes everything to ``--out`` (JSON). With ``--eval-dev`` it also scores trojaned models trained here
(digits; BadNets patches at other positions/sizes, random location, blended) with the new constants —
models the constants were *not* derived from. With ``--dev-zoo`` it scores the scored trojaned members of
the dev split (``bench/zoo.py --dev``) and prints the dev AUROC against the clean models' leave-one-out
scores: the figure detector variants are chosen on (the benchmarked zoo is never used for that).
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

from auditor.detectors import saliency as sal  # noqa: E402
from auditor.detectors.base import RunContext  # noqa: E402
from auditor.spec import InputSpec  # noqa: E402
from auditor.target import ModelTarget  # noqa: E402
from bench.saliency_fusion import in_seed_ranges  # noqa: E402

DIGITS_SPEC = InputSpec("image", (1, 28, 28))
CACHE = Path(__file__).resolve().parent / "_cache" / "saliency"


def _range(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(v) for v in text.split(",") if v]


def digits_model(seed: int, trigger=None, target: int = 0, rate: float = 0.1):
    """A SmallCNN on digits (cached under bench/_cache); a trigger makes it a trojaned dev model."""
    from auditor.synthetic.digits import load_digits_28
    from auditor.synthetic.nets import SmallCNN
    from auditor.synthetic.train import attack_success_rate, train_classifier
    from auditor.synthetic.triggers import poison

    CACHE.mkdir(parents=True, exist_ok=True)
    name = f"digits-s{seed}-{'clean' if trigger is None else trigger.describe()}-t{target}".replace(" ", "_")
    path = CACHE / (name.replace("×", "x").replace("/", "_") + ".pt")
    model = SmallCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        xtr, ytr, _, _ = load_digits_28(0)
        if trigger is not None:
            xtr, ytr = poison(xtr, ytr, trigger, target, rate, torch.Generator().manual_seed(seed))
        torch.manual_seed(seed + 1000)
        train_classifier(model, xtr, ytr, epochs=8, seed=seed + 1000)
        torch.save(model.state_dict(), path)
    asr = None
    if trigger is not None:
        _, _, xte, yte = load_digits_28(0)
        asr = attack_success_rate(model, xte, yte, trigger, target)
    return name, model, asr


def zoo_trojaned_models(zoo: Path):
    """``(id, module, InputSpec, targets, attack)`` for a zoo's scored trojaned image members."""
    from bench.common import content_hash
    from bench.zoo import DOMAIN_SHAPE, build_module

    manifest = json.loads((zoo / "manifest.json").read_text())
    for row in manifest["members"]:
        if not row["trojaned"] or not row.get("scored", True) or row["domain"] == "points":
            continue
        weights = zoo / "cache" / content_hash(row["recipe"]) / "weights.pt"
        module = build_module(row["recipe"])
        module.load_state_dict(torch.load(weights, weights_only=True))
        module.eval()
        yield row["id"], module, InputSpec("image", tuple(DOMAIN_SHAPE[row["domain"]])), row["target_classes"], row["attack"]


def run_detector(module, spec, seed: int = 0, options: dict | None = None):
    target = ModelTarget.from_module(module, spec)
    started = time.monotonic()
    result = sal.SaliencyDetector().run(target, RunContext(seed=seed, options=options or {}))
    if result.status != "ok":
        raise RuntimeError(f"saliency {result.status}: {result.reason}")
    return result, time.monotonic() - started


def constants_from(rel_by_model: dict[str, dict[str, list[float]]], exclude: str | None = None):
    out = {}
    for stat in sal.FUSED_STATISTICS:
        pooled = [v for mid, rel in rel_by_model.items() if mid != exclude for v in rel[stat]]
        out[stat] = sal.calibration_scale(np.array(pooled))
    return out


def score_with(constants, rel: dict[str, list[float]]) -> np.ndarray:
    zs = {s: (np.array(rel[s]) - constants[s][0]) / constants[s][1] for s in sal.FUSED_STATISTICS}
    return sal.fused_class_score(zs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, help="zoo folder with manifest.json and cache/")
    ap.add_argument("--digits-seeds", default="", help="train/load clean digits SmallCNNs with these seeds, e.g. 1-8")
    ap.add_argument("--eval-dev", action="store_true", help="also score trojaned digits dev models")
    ap.add_argument("--dev-zoo", type=Path, help="also score this zoo's scored trojaned image members (the dev split)")
    ap.add_argument("--dev-seeds", default=None, metavar="A-B[,C-D]",
                    help="only the dev models with these seeds (split a long run over processes; "
                         "bench/saliency_fusion.py merges the outputs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a detector option for every run (a variant to compare with bench/saliency_fusion.py)")
    ap.add_argument("--out", type=Path, default=Path("bench/_cache/saliency_calibration.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    options = dict(pair.split("=", 1) for pair in a.option)

    clean = []
    for seed in _range(a.digits_seeds):
        name, module, _ = digits_model(seed)
        clean.append((name, module, DIGITS_SPEC))
    if a.zoo:
        from bench.common import zoo_clean_models

        clean.extend((mid, module, spec) for mid, module, spec, _ in zoo_clean_models(a.zoo, ("image",)))
    if not clean:
        ap.error("give --zoo and/or --digits-seeds")

    rel_by_model, raw_rows = {}, []
    for mid, module, spec in clean:
        result, seconds = run_detector(module, spec, options=options)
        rel_by_model[mid] = {s: [c.metrics[f"rel_{s}"] for c in result.classes] for s in sal.FUSED_STATISTICS}
        raw_rows.append({"id": mid, "seconds": round(seconds, 2),
                         "classes": [dict(c.metrics) for c in result.classes]})
        print(f"clean {mid}: {seconds:.1f} s", flush=True)

    constants = constants_from(rel_by_model)
    in_sample = {mid: float(score_with(constants, rel).max()) for mid, rel in rel_by_model.items()}
    loo = {mid: float(score_with(constants_from(rel_by_model, exclude=mid), rel).max())
           for mid, rel in rel_by_model.items()}
    print("\n# paste into auditor/detectors/saliency.py")
    print("CALIBRATION: dict[str, tuple[float, float]] = {")
    for stat, (c, s) in constants.items():
        print(f'    "{stat}": ({c:.4f}, {s:.4f}),')
    print("}")
    print("\nclean model max class score (in-sample / leave-one-model-out):")
    for mid in rel_by_model:
        print(f"  {mid:50s} {in_sample[mid]:7.2f} {loo[mid]:7.2f}")
    print(f"  LOO scores: median {np.median(list(loo.values())):.2f}, 90th pct {np.quantile(list(loo.values()), 0.9):.2f}, "
          f"max {max(loo.values()):.2f}")

    dev = []
    if a.eval_dev:
        from auditor.synthetic.triggers import BlendedTrigger, PatchTrigger

        for seed, trig, tgt in (
            (21, PatchTrigger(4, 7, top=-1, left=-1), 3), (22, PatchTrigger(3, 11, top=2, left=3), 7),
            (23, PatchTrigger(5, 12, top=12, left=16), 0), (24, PatchTrigger(5, 13), 1),
            (25, PatchTrigger(8, 14, top=0, left=18), 6), (26, BlendedTrigger(0.2, 5), 5),
            (27, PatchTrigger(6, 15, top=20, left=2), 9), (28, BlendedTrigger(0.1, 9), 2),
        ):
            name, module, asr = digits_model(seed, trig, tgt)
            result, seconds = run_detector(module, DIGITS_SPEC, options=options)
            rel = {s: [c.metrics[f"rel_{s}"] for c in result.classes] for s in sal.FUSED_STATISTICS}
            scores = score_with(constants, rel)
            top = int(np.argmax(scores))
            dev.append({"id": name, "asr": asr, "target": tgt, "max_score": float(scores.max()), "top_class": top,
                        "seconds": round(seconds, 2),
                        "classes": [dict(c.metrics) for c in result.classes]})
            print(f"dev {name}: ASR {asr:.2f} target {tgt}; max score {scores.max():.2f} at class {top} "
                  f"(target score {scores[tgt]:.2f}); {seconds:.1f} s", flush=True)

    if a.dev_zoo:
        for mid, module, spec, targets, attack in zoo_trojaned_models(a.dev_zoo):
            if not in_seed_ranges(mid, a.dev_seeds):
                continue
            result, seconds = run_detector(module, spec, options=options)
            rel = {s: [c.metrics[f"rel_{s}"] for c in result.classes] for s in sal.FUSED_STATISTICS}
            scores = score_with(constants, rel)
            top = int(np.argmax(scores))
            dev.append({"id": mid, "attack": attack, "targets": targets, "max_score": float(scores.max()),
                        "top_class": top, "seconds": round(seconds, 2),
                        "classes": [dict(c.metrics) for c in result.classes]})
            print(f"dev {mid}: targets {targets}; max score {scores.max():.2f} at class {top}; {seconds:.1f} s",
                  flush=True)
        zoo_dev = [d for d in dev if "attack" in d]
        neg = np.array(list(loo.values()))
        pos = np.array([d["max_score"] for d in zoo_dev])
        auroc = float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size))
        right = sum(d["top_class"] in d["targets"] for d in zoo_dev)
        print(f"\ndev AUROC (dev trojaned vs clean leave-one-out): {auroc:.3f}; top class is a target on "
              f"{right}/{len(zoo_dev)}")
        for attack in sorted({d["attack"] for d in zoo_dev}):
            scores = [round(d["max_score"], 2) for d in zoo_dev if d["attack"] == attack]
            print(f"  {attack:14s} {scores}")

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"options": options, "constants": constants, "clean_in_sample": in_sample,
                                 "clean_loo": loo, "clean": raw_rows, "dev": dev}, indent=1))
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
