"""Compare candidate fusions of the `saliency` statistics offline, on the dev split only.

    python bench/calibrate_saliency.py --zoo bench/zoo/reference --digits-seeds 1-8 --dev-zoo bench/zoo/dev
    python bench/saliency_fusion.py [bench/_cache/saliency_calibration.json] [--sets "a,b,c;a,d"]
                                    [--rule top2|max|top3|mean] [--scale reference|hybrid] [--detail]
                                    [--seeds 9500-9807]   # one draw's dev models (bench/zoo.py DEV_DRAWS)

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


#: Metric keys of the raw (not relative) fused values where they differ from the statistic's name.
RAW_METRIC = {"transplant_asr": "transplant_asr_mean"}


def spread(rows: list[dict], stat: str) -> np.ndarray:
    """The detector's within-model spread of ``stat`` per class (``--scale hybrid``)."""
    return sal.within_model_spread(np.array([c[RAW_METRIC.get(stat, stat)] for c in rows]))


def scores(rel: dict[str, np.ndarray], constants: dict[str, tuple[float, float]], rule: str = "top2",
           spreads: dict[str, np.ndarray] | None = None) -> np.ndarray:
    zs = {s: (rel[s] - c) / (np.maximum(sc, spreads[s]) if spreads else sc) for s, (c, sc) in constants.items()}
    stacked = np.sort(np.stack(list(zs.values()), axis=1), axis=1)
    return RULES[rule](stacked)


def shipped_scores(rows: list[dict], hybrid: bool) -> np.ndarray:
    """Class scores of one saved scan (a report's per-class metrics) under either z scale, with the
    detector's shipped constants: both scales from one scan."""
    stats = list(sal.FUSED_STATISTICS)
    spreads = {s: spread(rows, s) for s in stats} if hybrid else None
    return scores({s: relative(rows, s) for s in stats}, {s: sal.CALIBRATION[s] for s in stats}, "top2", spreads)


def merged(runs: list[dict]) -> dict:
    """Clean and dev rows of several calibration runs, each model once (the first run's row wins)."""
    out: dict[str, list[dict]] = {"clean": [], "dev": []}
    for part in out:
        seen: set[str] = set()
        for run in runs:
            for row in run.get(part, []):
                if row["id"] not in seen:
                    seen.add(row["id"])
                    out[part].append(row)
    return out


def in_seed_ranges(model_id: str, ranges: str | None) -> bool:
    """Whether the seed at the end of ``model_id`` lies in one of ``ranges`` ("A-B,C-D"; None: all)."""
    if ranges is None:
        return True
    seed = int(model_id.rsplit("-", 1)[1])
    bounds = [tuple(int(v) for v in part.split("-")) for part in ranges.split(",") if part]
    return any(lo <= seed <= hi for lo, hi in bounds)


def evaluate(clean: dict[str, dict], dev: list[dict], stats: list[str], rule: str = "top2",
             hybrid: bool = False) -> dict:
    def constants(exclude: str | None = None):
        return {s: sal.calibration_scale(np.concatenate([r[s] for mid, r in clean.items() if mid != exclude]))
                for s in stats}

    full = constants()
    loo = {mid: float(scores({s: r[s] for s in stats}, constants(mid), rule,
                             r["spread"] if hybrid else None).max()) for mid, r in clean.items()}
    dev_rows = []
    for d in dev:
        sc = scores({s: d["rel"][s] for s in stats}, full, rule, d["spread"] if hybrid else None)
        dev_rows.append((d["id"], d.get("attack", ""), float(sc.max()), int(np.argmax(sc)) in d["targets"]))
    neg = np.array(list(loo.values()))
    pos = np.array([r[2] for r in dev_rows])
    auroc = float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size))
    threshold = np.ceil(neg.max() * 2 + 1e-9) / 2  # the detector's rule: half-integer above every clean LOO max
    return {"auroc": auroc, "right": sum(r[3] for r in dev_rows), "n": len(dev_rows), "threshold": threshold,
            "flagged": int((pos > threshold).sum()), "clean_max": float(neg.max()), "rows": dev_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("calibration", type=Path, nargs="*", default=[Path("bench/_cache/saliency_calibration.json")],
                    help="outputs of calibrate_saliency.py; several are merged (clean and dev models by id)")
    ap.add_argument("--sets", default=";".join(DEFAULT_SETS), help="';'-separated comma lists of statistics")
    ap.add_argument("--detail", action="store_true", help="print every dev model's score")
    ap.add_argument("--rule", choices=sorted(RULES), default="top2", help="how a class's z's are fused")
    ap.add_argument("--scale", choices=("reference", "hybrid"), default="reference",
                    help="z scale: the clean models' only or the larger of it and the model's own spread")
    ap.add_argument("--seeds", default=None, metavar="A-B[,C-D]",
                    help="score only the dev models whose seed (the id's last part) is in these ranges")
    a = ap.parse_args(argv)
    saved = merged([json.loads(path.read_text()) for path in a.calibration])
    sets = [[s.strip() for s in group.split(",") if s.strip()] for group in a.sets.split(";") if group.strip()]
    names = sorted({s for group in sets for s in group})
    clean = {row["id"]: {**{s: relative(row["classes"], s) for s in names},
                         "spread": {s: spread(row["classes"], s) for s in names}} for row in saved["clean"]}
    dev = [{"id": d["id"], "attack": d.get("attack", ""), "targets": d.get("targets", [d.get("target")]),
            "rel": {s: relative(d["classes"], s) for s in names},
            "spread": {s: spread(d["classes"], s) for s in names}} for d in saved["dev"]
           if "attack" in d and in_seed_ranges(d["id"], a.seeds)]
    print(f"{len(clean)} clean reference models, {len(dev)} dev trojaned models\n")
    print("| fused statistics | dev AUROC | top class a target | clean LOO max → threshold | dev flagged |")
    print("|---|---|---|---|---|")
    for stats in sets:
        r = evaluate(clean, dev, stats, a.rule, a.scale == "hybrid")
        print(f"| {', '.join(stats)} | {r['auroc']:.3f} | {r['right']}/{r['n']} | {r['clean_max']:.2f} → "
              f"{r['threshold']:.1f} | {r['flagged']}/{r['n']} |")
        if a.detail:
            for mid, attack, score, right in r["rows"]:
                print(f"    {mid:40s} {attack:12s} {score:7.2f} {'target' if right else 'WRONG CLASS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
