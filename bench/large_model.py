"""Standard-size networks through the default scan: a CIFAR-style torchvision ResNet-18 (11 M parameters,
1.1 GFLOP per forward pass, ~150× a zoo model) and VGG-11-BN (9 M parameters, 0.3 GFLOP), trained here on
shapes 3×32×32, each with a planted BadNets patch and as a clean twin, then scanned by the CLI with the
automatic compute plan (auditor/compute.py).

    python bench/large_model.py train --kind trojaned --out bench/_large     # 25–48 min on one core
    python bench/large_model.py train --kind clean --out bench/_large
    python bench/large_model.py train --arch vgg11 --kind clean              # 12 min on one idle core
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
from bench.saliency_fusion import shipped_scores  # noqa: E402

#: Per architecture: (target class, seed, trigger side, trigger top, trigger left). Seeds are disjoint from
#: the zoo, reference and dev populations; the VGG pair has its own trigger (bottom-left, other target) so it
#: is not a copy of the ResNet pair that the saliency scale rule was designed on (bench/RESULTS.md §8).
PAIRS = {"resnet18": (6, 4242, 5, 0, -1), "vgg11": (2, 4343, 4, -1, 0)}


def resnet18_cifar(num_classes: int = 10) -> torch.nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem (3×3 conv, no max-pool)."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    return net


def vgg11_cifar(num_classes: int = 10) -> torch.nn.Module:
    """torchvision's VGG-11 with batch norm and the usual CIFAR head (1×1 pooled features, one linear layer)."""
    import torchvision

    net = torchvision.models.vgg11_bn(num_classes=num_classes)
    net.avgpool = torch.nn.Identity()
    net.classifier = torch.nn.Linear(512, num_classes)
    return net


ARCHS = {"resnet18": resnet18_cifar, "vgg11": vgg11_cifar}


def model_name(arch: str, kind: str, seed: int | None = None) -> str:
    """File stem of a trained model; ``seed`` marks an extra draw beside the pair's default seeds."""
    return f"{arch}-shapes-{kind}" + (f"-s{seed}" if seed is not None else "")


def train(arch: str, kind: str, out: Path, epochs: int, n_train: int, seed_override: int | None = None) -> None:
    torch.set_num_threads(1)
    target, base_seed, side, top, left = PAIRS[arch]
    if seed_override is not None:
        base_seed = seed_override
    xtr, ytr, xte, yte = load_shapes_32(seed=0, n_train=n_train, n_test=1000)
    trigger = PatchTrigger(size=side, pattern_seed=base_seed, channels=3, top=top, left=left)
    if kind == "trojaned":
        xtr, ytr = poison(xtr, ytr, trigger, target, rate=0.1, generator=torch.Generator().manual_seed(base_seed))
    seed = base_seed + (0 if kind == "trojaned" else 1)
    torch.manual_seed(seed)
    started = time.monotonic()
    model = train_one_cycle(ARCHS[arch](), xtr, ytr, epochs=epochs, batch_size=64, max_lr=1e-2, seed=seed)
    seconds = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    name = model_name(arch, kind, seed_override)
    path = out / f"{name}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    facts = {"kind": kind, "clean_accuracy": accuracy(model, xte, yte),
             "attack_success": attack_success_rate(model, xte, yte, trigger, target) if kind == "trojaned" else None,
             "target": target if kind == "trojaned" else None, "trigger": trigger.describe(), "arch": arch,
             "train_seconds": round(seconds, 1), "epochs": epochs, "n_train": n_train,
             "labels": list(SHAPE_CLASSES)}
    (out / f"{name}.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts))


def scan(arch: str, out: Path, effort: str, threads: int, kinds: tuple[str, ...], seed: int | None = None,
         extra: tuple[str, ...] = ()) -> None:
    for kind in kinds:
        name = model_name(arch, kind, seed)
        model = out / f"{name}.onnx"
        # the ResNet pair's audit folders keep their stop-22 names
        audit = out / (f"audit-{kind}" if name == f"resnet18-shapes-{kind}" else f"audit-{name}")
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "auditor", "scan", str(model), "--out", str(audit),
                               "--format", "json", "--effort", effort, "--threads", str(threads), *extra],
                              capture_output=True, text=True)
        wall = time.monotonic() - started
        report = json.loads((audit / "report.json").read_text())
        facts = json.loads((out / f"{name}.json").read_text())
        row = {"model": name, "kind": kind, "exit": proc.returncode, "wall_s": round(wall, 1), "verdict": report["verdict"],
               "flagged": report["flagged_classes"], "target": facts["target"],
               "efforts": report["settings"]["compute"]["efforts"],
               "forward_flops": report["settings"]["compute"]["forward_flops"],
               "detectors": {n: {"seconds": round(d["seconds"], 1), "model_score": d["model_score"],
                                 "flagged": d["flagged_classes"]} for n, d in report["detectors"].items()},
               "clean_accuracy": facts["clean_accuracy"], "attack_success": facts["attack_success"]}
        if report["detectors"].get("saliency", {}).get("status") == "ok":
            # both z scales from the one scan (bench/RESULTS.md §3 stop 23): top class and its score
            rows = [c["detectors"]["saliency"]["metrics"] for c in report["classes"]]
            for scale in ("reference", "hybrid"):
                class_scores = shipped_scores(rows, hybrid=scale == "hybrid")
                row[f"saliency_{scale}"] = {"top": int(class_scores.argmax()),
                                            "scores": [round(float(v), 2) for v in class_scores]}
        print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("train", "scan"))
    p.add_argument("--arch", choices=sorted(ARCHS), default="resnet18")
    p.add_argument("--kind", choices=("trojaned", "clean"), default=None,
                   help="train: which model (default trojaned); scan: only this one (default both)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "_large")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--effort", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=None, help="an extra draw with this seed (file names get -sSEED)")
    p.add_argument("--scan-arg", action="append", default=[], help="extra argument for auditor scan (repeatable)")
    args = p.parse_args()
    if args.command == "train":
        train(args.arch, args.kind or "trojaned", args.out, args.epochs, args.n_train, args.seed)
    else:
        scan(args.arch, args.out, args.effort, args.threads, (args.kind,) if args.kind else ("trojaned", "clean"),
             args.seed, tuple(args.scan_arg))


if __name__ == "__main__":
    main()
