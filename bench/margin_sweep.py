"""Run `max_margin` on the clean reference models and the dev split's trojaned models, per class.

    python bench/margin_sweep.py --zoo bench/zoo/reference --digits-seeds 1-8 --dev-zoo bench/zoo/dev \\
        [--dev-seeds 7100-9807] [--threads 1] --out bench/_cache/margin_sweep.json

The same populations `bench/calibrate_saliency.py` scores (the 8 clean digits SmallCNNs it trains, the
clean reference zoo, the dev split), so `bench/verdict_fusion.py` can compare ways of fusing the two
default detectors' per-class evidence without touching the benchmarked zoo. Split a long run over
processes with ``--dev-seeds`` (and ``--no-clean`` in all but one); the outputs are merged by model id.
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
from auditor.detectors.max_margin import MaxMarginDetector  # noqa: E402
from auditor.target import ModelTarget  # noqa: E402
from bench.calibrate_saliency import DIGITS_SPEC, _range, digits_model, zoo_trojaned_models  # noqa: E402
from bench.saliency_fusion import in_seed_ranges  # noqa: E402


def scan(module, spec, seed: int = 0) -> dict:
    started = time.monotonic()
    result = MaxMarginDetector().run(ModelTarget.from_module(module, spec), RunContext(seed=seed))
    if result.status != "ok":
        raise RuntimeError(f"max_margin {result.status}: {result.reason}")
    return {"seconds": round(time.monotonic() - started, 2), "model_score": result.model_score,
            "classes": [{"max_margin": c.metrics["max_margin"], "p_value": c.metrics["p_value"]}
                        for c in result.classes]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, help="clean reference zoo")
    ap.add_argument("--digits-seeds", default="", help="clean digits SmallCNNs (calibrate_saliency.py's), e.g. 1-8")
    ap.add_argument("--dev-zoo", type=Path, help="the dev split's zoo (its scored trojaned image members)")
    ap.add_argument("--dev-seeds", default=None, metavar="A-B[,C-D]", help="only dev models with these seeds")
    ap.add_argument("--no-clean", action="store_true", help="skip the clean models (a second process)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/_cache/margin_sweep.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out: dict[str, list[dict]] = {"clean": [], "dev": []}
    if a.out.exists():  # resume: models already scanned are kept
        out = json.loads(a.out.read_text())
    done = {row["id"] for part in out.values() for row in part}

    def save() -> None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))

    if not a.no_clean:
        clean = [(name, module, DIGITS_SPEC) for name, module, _ in map(digits_model, _range(a.digits_seeds))]
        if a.zoo:
            from bench.common import zoo_clean_models

            clean.extend((mid, module, spec) for mid, module, spec, _ in zoo_clean_models(a.zoo, ("image",)))
        for mid, module, spec in clean:
            if mid not in done:
                out["clean"].append({"id": mid, **scan(module, spec)})
                save()
                print(f"clean {mid}: {out['clean'][-1]['seconds']:.1f} s", flush=True)
    if a.dev_zoo:
        for mid, module, spec, targets, attack in zoo_trojaned_models(a.dev_zoo):
            if mid in done or not in_seed_ranges(mid, a.dev_seeds):
                continue
            out["dev"].append({"id": mid, "attack": attack, "targets": targets, **scan(module, spec)})
            save()
            print(f"dev {mid}: {out['dev'][-1]['seconds']:.1f} s", flush=True)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
