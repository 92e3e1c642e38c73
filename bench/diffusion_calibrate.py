"""Calibrate the diffusion probe's flip-rate thresholds per bundled prior on clean reference models.

    python bench/diffusion_bench.py --planted 0 --zoo-dir bench/zoo/reference --zoo clean \\
        --option min_coverage=0 --option min_confidence=0 --option fidelity_stages=0 \\
        --out bench/diffusion_reference.json
    python bench/diffusion_bench.py ... (the same) --option frame_scan=true \\
        --out bench/diffusion_reference_stop30.json
    python bench/diffusion_bench.py ... (the first command again, on today's build of the reference
        models) --out bench/diffusion_reference_stop31.json
    python bench/diffusion_calibrate.py bench/diffusion_reference.json bench/diffusion_reference_stop31.json \\
        --frame-scan-rows bench/diffusion_reference_stop30.json

The null of a candidate feature is, per clean model, the largest flip rate any class reaches with it
(a frame only where it passes the moved-inward control, a texture only where it passes the plain-noise
and the half-period-shift controls, as the detector counts them). The threshold is the largest null
over the reference models plus ``--margin``, never below ``--floor`` (the detector's uncalibrated
``min_flip``). With several rows files (runs on different builds of the reference models: a rebuilt
model of the same recipe and seed is another clean model) the null is the largest over all of them,
keyed ``id @ file``. ``--frame-scan-rows``: runs with ``--option frame_scan=true``; their frame null
gives the threshold ``frame (frame scan)`` that the detector uses with that option, and their texture
null counts with the others' (the scan does not touch the texture). A threshold above 1 means the
candidate cannot be told from what clean models of that domain do; the detector then reports it
without flagging. Written into each bundled prior's ``prior.json`` (``calibration``) and
``bench/diffusion_calibration.json``. Reference models only: the scored zoo never enters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.diffusion.generators import available_priors  # noqa: E402

BORDER_LOSS = 0.5  # the detector's default border_loss
TEXTURE_LOSS = 0.5  # and texture_loss


def null_of(row: dict) -> dict[str, float]:
    flips = row["class_flips"].values()
    frame = [c["frame"] for c in flips if c["frame_moved_inward"] <= BORDER_LOSS * c["frame"]]
    texture = [c["background_texture"] for c in flips
               if max(c.get("texture_as_noise", 0.0), c.get("texture_shifted", 0.0))
               <= TEXTURE_LOSS * c["background_texture"]]
    return {"frame": max(frame, default=0.0), "background texture": max(texture, default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rows", type=Path, nargs="+", help="diffusion_bench.py outputs on bench/zoo/reference")
    ap.add_argument("--frame-scan-rows", type=Path, nargs="*", default=[],
                    help="diffusion_bench.py outputs on bench/zoo/reference made with --option frame_scan=true")
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--floor", type=float, default=0.5)
    args = ap.parse_args()
    files = [(path, False) for path in args.rows] + [(path, True) for path in args.frame_scan_rows]
    rows = [{**r, "key": f"{r['id']} @ {path.name}" if len(files) > 1 else r["id"], "frame_scan": scan}
            for path, scan in files for r in json.loads(path.read_text())
            if r["status"] == "ok" and r["kind"] == "clean"]
    manifest = json.loads((ROOT / "bench" / "zoo" / "reference" / "manifest.json").read_text())
    shape_of = {m["id"]: tuple(m["input_shape"]) for m in manifest["members"]}
    def threshold(values: list[float]) -> float:
        return round(max(args.floor, max(values) + args.margin), 3)

    out = {"margin": args.margin, "floor": args.floor, "border_loss": BORDER_LOSS, "texture_loss": TEXTURE_LOSS,
           "priors": {}}
    for info in available_priors():
        mine = [r for r in rows if shape_of.get(r["id"]) == tuple(info.input_shape)]
        if not mine:
            continue
        nulls = {r["key"]: null_of(r) for r in mine}
        scanned = {r["key"] for r in mine if r["frame_scan"]}
        thresholds = {"frame": threshold([n["frame"] for key, n in nulls.items() if key not in scanned]),
                      "background texture": threshold([n["background texture"] for n in nulls.values()])}
        if scanned:
            thresholds["frame (frame scan)"] = threshold([nulls[key]["frame"] for key in scanned])
        out["priors"][info.name] = {"models": len(mine), "nulls": nulls, "thresholds": thresholds,
                                    "rows": [path.as_posix() for path in args.rows],
                                    "frame_scan_rows": [path.as_posix() for path in args.frame_scan_rows]}
        meta_path = info.path / "prior.json"
        meta = json.loads(meta_path.read_text())
        meta["calibration"] = {"thresholds": thresholds, "reference_models": len({r["id"] for r in mine}),
                               "reference_runs": len(mine),
                               "how": "bench/diffusion_calibrate.py: largest clean null + margin"}
        meta_path.write_text(json.dumps(meta, indent=1))
        print(info.name, len(mine), "model runs", thresholds)
    (ROOT / "bench" / "diffusion_calibration.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
