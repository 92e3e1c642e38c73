"""Stop 30 (bench/RESULTS.md §5): the diffusion probe's frame candidate with and without the colour scan.

    python bench/frame_scan_eval.py --reference REF.json [REF.json ...] --rows NAME=ROWS.json [...]

``--reference``: diffusion_bench.py rows of the clean reference models, run with the variant's options
(``--option frame_scan=true``). The variant's frame threshold per bundled prior comes from them by the
committed calibration rule (bench/diffusion_calibrate.py: largest clean null + 0.1, never below 0.5);
the texture thresholds stay the committed ones. ``--rows``: diffusion_bench.py rows to score, each
named ``shipped`` or ``scan`` in the name's prefix (``shipped:judge=...``); shipped rows are scored with
the committed calibration, scan rows with the variant's. Per row: the true class, whether it is flagged
with the frame candidate, its frame flip rate (moved inward), the true feature's own flip rate, and for
clean rows whether any class is flagged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from diffusion_calibrate import null_of  # noqa: E402
from diffusion_summary import rescore  # noqa: E402

MARGIN, FLOOR = 0.1, 0.5
#: a row's domain from its id (every zoo id starts with it)
DOMAINS = ("digits", "shapes")


def domain_of(row_id: str) -> str:
    return next(d for d in DOMAINS if row_id.startswith(d))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", nargs="+", type=Path, required=True)
    ap.add_argument("--rows", nargs="+", required=True, metavar="VARIANT:NAME=FILE")
    args = ap.parse_args()
    committed = json.loads((ROOT / "bench" / "diffusion_calibration.json").read_text())["priors"]
    reference = [r for f in args.reference for r in json.loads(f.read_text())
                 if r["status"] == "ok" and r["kind"] == "clean"]
    thresholds = {"shipped": {d: committed[d]["thresholds"] for d in DOMAINS}, "scan": {}}
    for d in DOMAINS:
        nulls = {r["id"]: null_of(r)["frame"] for r in reference if domain_of(r["id"]) == d}
        frame = round(max(FLOOR, max(nulls.values()) + MARGIN), 3)
        thresholds["scan"][d] = {**committed[d]["thresholds"], "frame": frame}
        top = sorted(nulls.items(), key=lambda kv: -kv[1])[:3]
        print(f"{d}: {len(nulls)} reference models, frame null max {max(nulls.values()):.3f} → threshold {frame} "
              f"(committed {committed[d]['thresholds']['frame']}); largest: "
              + ", ".join(f"{i} {v:.2f}" for i, v in top))
    for spec in args.rows:
        label, path = spec.split("=", 1)
        variant = label.split(":")[0]
        rows = json.loads(Path(path).read_text())
        print(f"\n{label} ({path}, {variant} thresholds)")
        found = flagged_clean = n_spurious = n_clean = 0
        for r in rows:
            if r["status"] != "ok":
                print(f"  {r['id']:42s} {r['status']}: {r['reason'][:80]}")
                continue
            rescore(r, thresholds[variant][domain_of(r["id"])])
            if r["kind"] == "spurious":
                n_spurious += 1
                t = r["truth_class"]
                c = r["class_flips"][str(t)]
                hit = t in r["flagged"] and r["flagged_candidates"][r["flagged"].index(t)] == "frame"
                found += hit
                print(f"  {r['id']:42s} class {t}: frame {c['frame']:.2f} (inward {c['frame_moved_inward']:.2f}), "
                      f"true feature {r['true_feature_flip']:.2f}, flagged {r['flagged']} "
                      f"{'FOUND' if hit else 'missed'}")
            else:
                n_clean += 1
                flagged_clean += bool(r["flagged"])
                if r["flagged"]:
                    print(f"  {r['id']:42s} clean, flagged {r['flagged']} {r['flagged_candidates']}")
        if n_spurious:
            print(f"  spurious: frame found on {found} of {n_spurious}")
        if n_clean:
            print(f"  clean: {flagged_clean} of {n_clean} flagged")


if __name__ == "__main__":
    main()
