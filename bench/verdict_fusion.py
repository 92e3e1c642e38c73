"""Compare ways of fusing the default detectors' per-class evidence into one verdict, on the dev split.

    python bench/margin_sweep.py ...          # max_margin per class on the clean reference and dev models
    python bench/calibrate_saliency.py ...    # saliency per class on the same models
    python bench/verdict_fusion.py --saliency A.json B.json --margin M1.json M2.json [--seeds 6000-7007]

Each detector's class evidence is put in units of its own decision threshold (1 = at the threshold):
``saliency`` class score / 3.5, ``max_margin`` log p / log 0.05. A rule maps a class's pair to one
number; the model's fused score is the largest over its classes, a model is flagged when that reaches
the rule's threshold. "shipped" is the verdict of stop 24 (union of flags, larger model score with
`max_margin`'s 1 − p); "or" the same flags ranked by the larger strength; "or+sum" adds the agreement that
`auditor.verdict` adopted in stop 25 (bench/RESULTS.md §2c). Thresholds that are not fixed come from the
clean reference models only (the smallest step of 0.25 above their fused scores; for the agreement,
above their classes that neither detector flags alone). The benchmarked zoo is never read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors import saliency as sal  # noqa: E402
from bench.saliency_fusion import in_seed_ranges, merged, shipped_scores  # noqa: E402

MM_ALPHA = 0.05


def margin_strength(p: np.ndarray) -> np.ndarray:
    """log p / log α: 1 at max_margin's threshold, 0 at p = 1, 2 at α², ... (p floored at 1e-12)."""
    return np.log(np.clip(p, 1e-12, 1.0)) / math.log(MM_ALPHA)


def _shipped(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The fused model score as shipped until stop 25: saliency's squash (0.5 at its threshold) against
    max_margin's 1 − p (0.95 at its threshold), the larger; flags as "or"."""
    squashed = 1.0 / (1.0 + np.exp(-np.clip((a - 1.0) / 0.25, -60, 60)))
    return np.maximum(squashed, 1.0 - MM_ALPHA ** b)


#: candidate rules over (saliency strength a, max_margin strength b), per class. "or" flags as the shipped
#: verdict does and ranks by the larger strength (both detectors' model scores 0.5 at their thresholds).
RULES = {
    "shipped": _shipped,
    "or": lambda a, b: np.maximum(a, b),
    "sum": lambda a, b: np.maximum(a, 0) + b,
    "saliency": lambda a, b: a,
    "max_margin": lambda a, b: b,
}
FIXED_THRESHOLD = {"or": 1.0, "saliency": 1.0, "max_margin": 1.0}
#: rules whose flags are another rule's (their score only ranks differently)
FLAGS_AS = {"shipped": "or"}


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size))


def load(saliency_paths: list[Path], margin_paths: list[Path], seeds: str | None):
    sal_rows = merged([json.loads(p.read_text()) for p in saliency_paths])
    mm_rows = merged([json.loads(p.read_text()) for p in margin_paths])
    mm = {r["id"]: r for part in mm_rows.values() for r in part}
    models = []
    for part in ("clean", "dev"):
        for row in sal_rows[part]:
            if row["id"] not in mm or (part == "dev" and ("attack" not in row or not in_seed_ranges(row["id"], seeds))):
                continue
            a = shipped_scores(row["classes"], hybrid=False) / sal.DEFAULT_THRESHOLD
            b = margin_strength(np.array([c["p_value"] for c in mm[row["id"]]["classes"]]))
            models.append({"id": row["id"], "clean": part == "clean", "attack": row.get("attack", ""),
                           "targets": row.get("targets", []), "a": a, "b": b})
    return models


def agreement_threshold(clean: list[dict]) -> float:
    """The agreement's threshold: the smallest step of 0.25 above the summed strength of every class of a
    clean reference model that neither detector flags alone (so that, in sample, the agreement adds no
    clean flag to those the detectors raise themselves)."""
    sums = [float(s) for m in clean for a, b, s in zip(m["a"], m["b"], RULES["sum"](m["a"], m["b"]))
            if max(a, b) < 1.0]
    return math.ceil(max(sums) * 4 + 1e-9) / 4


def loo_clean_flags(models: list[dict], rule: str) -> int:
    """Clean reference models flagged when the rule's threshold is derived without them (held-out clean
    false positives; for fixed-threshold rules the same as the in-sample count)."""
    clean = [m for m in models if m["clean"]]
    dev = [m for m in models if not m["clean"]]
    flagged = 0
    for m in clean:
        rest = [c for c in clean if c is not m] + dev
        r = evaluate(rest + [{**m, "clean": False, "attack": "_loo", "targets": []}], rule)
        flagged += r["by_attack"]["_loo"][1]
    return flagged


def evaluate(models: list[dict], rule: str) -> dict:
    if rule == "or+sum":  # a detector's own flag, or the two agreeing: the sum in units of the sum's threshold
        tau = agreement_threshold([m for m in models if m["clean"]])
        fused = {m["id"]: np.maximum(np.maximum(m["a"], m["b"]), RULES["sum"](m["a"], m["b"]) / tau) for m in models}
        return _summary(models, fused, 1.0) | {"threshold": tau}
    fused = {m["id"]: RULES[rule](m["a"], m["b"]) for m in models}
    neg = np.array([fused[m["id"]].max() for m in models if m["clean"]])
    dev = [m for m in models if not m["clean"]]
    pos = np.array([fused[m["id"]].max() for m in dev])
    if rule in FLAGS_AS:
        flags = evaluate(models, FLAGS_AS[rule])
        return {**flags, "auroc": auroc(pos, neg), "by_attack": {
            k: (auroc(np.array([fused[m["id"]].max() for m in dev if m["attack"] == k]), neg), *v[1:])
            for k, v in flags["by_attack"].items()}}
    return _summary(models, fused, FIXED_THRESHOLD.get(rule, math.ceil(neg.max() * 4 + 1e-9) / 4))


def _summary(models: list[dict], fused: dict[str, np.ndarray], threshold: float) -> dict:
    neg = np.array([fused[m["id"]].max() for m in models if m["clean"]])
    dev = [m for m in models if not m["clean"]]
    pos = np.array([fused[m["id"]].max() for m in dev])
    right = sum(int(np.argmax(fused[m["id"]])) in m["targets"] for m in dev)
    by_attack = {}
    for attack in sorted({m["attack"] for m in dev}):
        p = np.array([fused[m["id"]].max() for m in dev if m["attack"] == attack])
        by_attack[attack] = (auroc(p, neg), int((p >= threshold).sum()), p.size)
    return {"auroc": auroc(pos, neg), "threshold": threshold, "clean_flagged": int((neg >= threshold).sum()),
            "clean": neg.size, "dev_flagged": int((pos >= threshold).sum()), "dev": pos.size, "right": right,
            "by_attack": by_attack}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--saliency", type=Path, nargs="+", required=True, help="calibrate_saliency.py outputs")
    ap.add_argument("--margin", type=Path, nargs="+", required=True, help="margin_sweep.py outputs")
    ap.add_argument("--seeds", default=None, metavar="A-B[,C-D]", help="only dev models with these seeds")
    ap.add_argument("--rules", default=",".join([*RULES, "or+sum"]))
    a = ap.parse_args(argv)
    models = load(a.saliency, a.margin, a.seeds)
    print(f"{sum(m['clean'] for m in models)} clean reference models, {sum(not m['clean'] for m in models)} dev "
          f"trojaned models (seeds {a.seeds or 'all'})\n")
    print("| rule | dev AUROC | threshold | clean flagged (held out) | dev flagged | top class a target | by attack: AUROC (flagged/n) |")
    print("|---|---|---|---|---|---|---|")
    for rule in a.rules.split(","):
        r = evaluate(models, rule)
        attacks = "; ".join(f"{k} {v[0]:.2f} ({v[1]}/{v[2]})" for k, v in r["by_attack"].items())
        held_out = loo_clean_flags(models, rule)
        print(f"| {rule} | {r['auroc']:.3f} | {r['threshold']:.2f} | {r['clean_flagged']}/{r['clean']} ({held_out}) | "
              f"{r['dev_flagged']}/{r['dev']} | {r['right']}/{r['dev']} | {attacks} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
