"""Compare candidate fusions of the `saliency` statistics offline, on the dev split only.

    python bench/calibrate_saliency.py --zoo bench/zoo/reference --digits-seeds 1-8 --dev-zoo bench/zoo/dev
    python bench/saliency_fusion.py [bench/_cache/saliency_calibration.json] [--sets "a,b,c;a,d"]
                                    [--rule top2|max|top3|mean] [--detail]

Reads the per-class metrics that ``calibrate_saliency.py`` saved for the clean reference models and the
dev split's trojaned models, and for each candidate set of statistics: calibrates every statistic's
relative value on the clean models (leave-one-model-out for the clean scores, as the detector's
constants would be), fuses with the detector's rule (mean of the two largest z's; ``--rule`` tries
another) and prints the dev AUROC and how often the top class is a true target. The benchmarked zoo is
never read, so a choice made here leaves it a blind test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors import saliency as sal  # noqa: E402

#: Candidate sets over the statistics every run reports (fused or not). A statistic a new variant adds
#: is compared by passing ``--sets`` (e.g. stop 15's ``window_margin``, bench/RESULTS.md §3).
DEFAULT_SETS = (
    "transplant_asr,map_concentration,shortcut_margin",
    "transplant_asr,map_concentration,shortcut_margin,sink_share",
    "transplant_asr,map_concentration,shortcut_margin,uap_flip",
    "transplant_asr,map_concentration,shortcut_margin,shortcut_flip",
    "transplant_asr,map_concentration,shortcut_margin,compactness",
    "map_concentration,shortcut_margin",
    "transplant_asr,shortcut_margin",
    "shortcut_margin",
)


def relative(rows: list[dict], stat: str) -> np.ndarray:
    """The detector's relative value of ``stat`` per class (``rel_`` when saved, else recomputed)."""
    if f"rel_{stat}" in rows[0]:
        return np.array([c[f"rel_{stat}"] for c in rows])
    return sal.relative_to_others(np.array([c[stat] for c in rows]))


#: Ways to fuse a class's calibrated z's into its score; ``top2`` is the detector's rule.
RULES = {
    "top2": lambda z: z[:, -2:].mean(axis=1),
    "max": lambda z: z[:, -1],
    "top3": lambda z: z[:, -3:].mean(axis=1),
    "mean": lambda z: z.mean(axis=1),
}


def scores(rel: dict[str, np.ndarray], constants: dict[str, tuple[float, float]], rule: str = "top2") -> np.ndarray:
    zs = {s: (rel[s] - c) / sc for s, (c, sc) in constants.items()}
    stacked = np.sort(np.stack(list(zs.values()), axis=1), axis=1)
    return RULES[rule](stacked)


def evaluate(clean: dict[str, dict], dev: list[dict], stats: list[str], rule: str = "top2") -> dict:
    def constants(exclude: str | None = None):
        return {s: sal.calibration_scale(np.concatenate([r[s] for mid, r in clean.items() if mid != exclude]))
                for s in stats}

    full = constants()
    loo = {mid: float(scores({s: r[s] for s in stats}, constants(mid), rule).max()) for mid, r in clean.items()}
    dev_rows = []
    for d in dev:
        sc = scores({s: d["rel"][s] for s in stats}, full, rule)
        dev_rows.append((d["id"], d.get("attack", ""), float(sc.max()), int(np.argmax(sc)) in d["targets"]))
    neg = np.array(list(loo.values()))
    pos = np.array([r[2] for r in dev_rows])
    auroc = float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size))
    threshold = np.ceil(neg.max() * 2 + 1e-9) / 2  # the detector's rule: half-integer above every clean LOO max
    return {"auroc": auroc, "right": sum(r[3] for r in dev_rows), "n": len(dev_rows), "threshold": threshold,
            "flagged": int((pos > threshold).sum()), "clean_max": float(neg.max()), "rows": dev_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("calibration", type=Path, nargs="?", default=Path("bench/_cache/saliency_calibration.json"))
    ap.add_argument("--sets", default=";".join(DEFAULT_SETS), help="';'-separated comma lists of statistics")
    ap.add_argument("--detail", action="store_true", help="print every dev model's score")
    ap.add_argument("--rule", choices=sorted(RULES), default="top2", help="how a class's z's are fused")
    a = ap.parse_args(argv)
    saved = json.loads(a.calibration.read_text())
    sets = [[s.strip() for s in group.split(",") if s.strip()] for group in a.sets.split(";") if group.strip()]
    names = sorted({s for group in sets for s in group})
    clean = {row["id"]: {s: relative(row["classes"], s) for s in names} for row in saved["clean"]}
    dev = [{"id": d["id"], "attack": d.get("attack", ""), "targets": d.get("targets", [d.get("target")]),
            "rel": {s: relative(d["classes"], s) for s in names}} for d in saved["dev"] if "attack" in d]
    print(f"{len(clean)} clean reference models, {len(dev)} dev trojaned models\n")
    print("| fused statistics | dev AUROC | top class a target | clean LOO max → threshold | dev flagged |")
    print("|---|---|---|---|---|")
    for stats in sets:
        r = evaluate(clean, dev, stats, a.rule)
        print(f"| {', '.join(stats)} | {r['auroc']:.3f} | {r['right']}/{r['n']} | {r['clean_max']:.2f} → "
              f"{r['threshold']:.1f} | {r['flagged']}/{r['n']} |")
        if a.detail:
            for mid, attack, score, right in r["rows"]:
                print(f"    {mid:40s} {attack:12s} {score:7.2f} {'target' if right else 'WRONG CLASS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
