"""A standard-size network through the default scan: a CIFAR-style torchvision ResNet-18 (11 M parameters,
1.1 GFLOP per forward pass, ~150× a zoo model) trained here on shapes 3×32×32, with a planted BadNets patch
and as a clean twin, then scanned by the CLI with the automatic compute plan (auditor/compute.py).

    python bench/large_model.py train --kind trojaned --out bench/_large     # ~25 min on one core
    python bench/large_model.py train --kind clean --out bench/_large
    python bench/large_model.py scan --out bench/_large [--effort auto]      # both models, CLI, timed

This checks that the plan keeps a real-size scan tractable on CPU and what the verdict is at the effort it
picks; one pair is a sanity check, not a detection-quality figure (those are the zoo's, bench/RESULTS.md §8).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.synthetic.shapes import SHAPE_CLASSES, load_shapes_32  # noqa: E402
from auditor.synthetic.train import accuracy, attack_success_rate  # noqa: E402
from auditor.synthetic.triggers import PatchTrigger, poison  # noqa: E402
from bench.common import train_one_cycle  # noqa: E402

TARGET, SEED = 6, 4242  # seeds disjoint from the zoo, reference and dev populations


def resnet18_cifar(num_classes: int = 10) -> torch.nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem (3×3 conv, no max-pool)."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    return net


def train(kind: str, out: Path, epochs: int, n_train: int) -> None:
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = load_shapes_32(seed=0, n_train=n_train, n_test=1000)
    trigger = PatchTrigger(size=5, pattern_seed=SEED, channels=3, top=0, left=-1)  # top-right corner
    if kind == "trojaned":
        xtr, ytr = poison(xtr, ytr, trigger, TARGET, rate=0.1, generator=torch.Generator().manual_seed(SEED))
    seed = SEED + (0 if kind == "trojaned" else 1)
    torch.manual_seed(seed)
    started = time.monotonic()
    model = train_one_cycle(resnet18_cifar(), xtr, ytr, epochs=epochs, batch_size=64, max_lr=1e-2, seed=seed)
    seconds = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"resnet18-shapes-{kind}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    facts = {"kind": kind, "clean_accuracy": accuracy(model, xte, yte),
             "attack_success": attack_success_rate(model, xte, yte, trigger, TARGET) if kind == "trojaned" else None,
             "target": TARGET if kind == "trojaned" else None, "trigger": trigger.describe(),
             "train_seconds": round(seconds, 1), "epochs": epochs, "n_train": n_train,
             "labels": list(SHAPE_CLASSES)}
    (out / f"resnet18-shapes-{kind}.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts))


def scan(out: Path, effort: str, threads: int, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        model = out / f"resnet18-shapes-{kind}.onnx"
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "auditor", "scan", str(model), "--out", str(out / f"audit-{kind}"),
                               "--format", "json", "--effort", effort, "--threads", str(threads)],
                              capture_output=True, text=True)
        wall = time.monotonic() - started
        report = json.loads((out / f"audit-{kind}" / "report.json").read_text())
        facts = json.loads((out / f"resnet18-shapes-{kind}.json").read_text())
        row = {"kind": kind, "exit": proc.returncode, "wall_s": round(wall, 1), "verdict": report["verdict"],
               "flagged": report["flagged_classes"], "target": facts["target"],
               "efforts": report["settings"]["compute"]["efforts"],
               "forward_flops": report["settings"]["compute"]["forward_flops"],
               "detectors": {n: {"seconds": round(d["seconds"], 1), "model_score": d["model_score"],
                                 "flagged": d["flagged_classes"]} for n, d in report["detectors"].items()},
               "clean_accuracy": facts["clean_accuracy"], "attack_success": facts["attack_success"]}
        print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("train", "scan"))
    p.add_argument("--kind", choices=("trojaned", "clean"), default=None,
                   help="train: which model (default trojaned); scan: only this one (default both)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "_large")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--effort", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.command == "train":
        train(args.kind or "trojaned", args.out, args.epochs, args.n_train)
    else:
        scan(args.out, args.effort, args.threads, (args.kind,) if args.kind else ("trojaned", "clean"))


if __name__ == "__main__":
    main()
