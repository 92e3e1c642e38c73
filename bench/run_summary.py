"""Per-detector figures that live in each scan's report.json rather than in bench/run.py's tables.

    python bench/run_summary.py --section calibrated

Reads ``bench/_runs/<profile>-<section>/<member>/all/report.json`` of an earlier ``bench/run.py`` run
and prints, per modality: flow_am's AM success rates (flow-guided / unconstrained), its penultimate
distance to the class flow and its randomisation check at the fully randomised stage; saliency's and
flow_am's seconds per model for each domain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", required=True)
    ap.add_argument("--profile", default="default")
    a = ap.parse_args(argv)
    runs = BENCH / "_runs" / f"{a.profile}-{a.section}"
    rows = []
    for path in sorted(runs.glob("*/all/report.json")):
        report = json.loads(path.read_text())
        rows.append((path.parts[-3], report["detectors"]))
    print(f"{len(rows)} reports under {runs}")
    for domain in ("digits", "shapes", "points"):
        sub = [(mid, d) for mid, d in rows if mid.startswith(domain)]
        if not sub:
            continue
        print(f"\n{domain} ({len(sub)} models)")
        for name in ("saliency", "flow_am"):
            secs = [d[name]["seconds"] for _, d in sub if d.get(name, {}).get("status") == "ok"]
            if secs:
                print(f"  {name}: median {np.median(secs):.1f} s, p90 {np.quantile(secs, 0.9):.1f} s")
        fam = [d["flow_am"] for _, d in sub if d.get("flow_am", {}).get("status") == "ok"]
        if fam:
            m = [f["metrics"] for f in fam]
            flow = [x["am_success_rate_flow"] for x in m]
            free = [x["am_success_rate_unconstrained"] for x in m]
            print(f"  flow_am AM success (mean over models): flow-guided {np.mean(flow):.3f} "
                  f"(min {min(flow):.2f}), unconstrained {np.mean(free):.3f}")
            dist = [(x.get("penultimate_distance_flow"), x.get("penultimate_distance_unconstrained")) for x in m]
            dist = [(f, u) for f, u in dist if f is not None and u is not None]
            if dist:
                print(f"  penultimate distance to class flow, median: flow-guided {np.median([f for f, _ in dist]):.1f}"
                      f" vs unconstrained {np.median([u for _, u in dist]):.1f}")
            fid = [f["fidelity"] for f in fam if f.get("fidelity")]
            if fid:
                last = [x["fully_randomised"] for x in fid]
                print(f"  randomisation ({fid[0]['metric']}): trained {np.median([x['reference'] for x in fid]):.2f}"
                      f" → fully randomised median {np.median(last):.2f} (max {max(last):.2f}); "
                      f"passes on {sum(bool(x['passes']) for x in fid)}/{len(fid)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
