"""GPU smoke test: ResNet-56 fine-tuning throughput on CUDA (fp32 vs bf16/fp16 autocast), then a
whole prune + fine-tune + export + measure run on the GPU.

    python benchmarks/gpu_smoke.py [--steps 100] [--batch 128] [--compile] [--json FILE]

1. Throughput: the project's own fine-tuning loop (``compress.finetune.finetune.finetune_``) on
   synthetic 3x32x32 batches from pinned host memory, after an untimed warm-up per precision;
   images/s and the speedup of each autocast precision over fp32.
2. ``recipes/resnet56-cifar10.yaml`` with ``device: cuda`` and latency timed on the GPU
   (``report.device: cuda``: onnxruntime's CUDA provider), on a subset of the shared CIFAR-10
   JPEGs and with a few hundred fine-tuning steps; prints the report's headline numbers and the
   providers onnxruntime really used. Without the shared folder (``--shared``,
   ``$COMPRESS_SHARED``, default ``../shared``) it runs on random images and random weights:
   the accuracy is then meaningless, the rest is still checked.

Without a CUDA GPU (as torch sees it: onnxruntime's provider list names CUDA even where there is
none) it says so and exits 0, so CI, which has no GPU, can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]


def throughput(args: argparse.Namespace, checkpoint: Path | None) -> dict[str, Any]:
    from compress.finetune.finetune import finetune_
    from compress.models import build_model
    from compress.recipe.sources import ModelSpec
    from compress.recipe.stages import FinetuneSpec

    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    n = args.batch * 16
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g),
                         torch.randint(0, 10, (n,), generator=g))
    loader = DataLoader(data, batch_size=args.batch, shuffle=False, pin_memory=True,
                        drop_last=True)
    model_spec = ModelSpec(source="cifar_resnet", name="resnet56", num_classes=10,
                           checkpoint=str(checkpoint) if checkpoint else None)
    variants = [("fp32", {"amp": "off"}), ("bf16", {"amp": "bf16"}), ("fp16", {"amp": "fp16"})]
    if args.compile:
        variants.append(("bf16+compile", {"amp": "bf16", "compile": True}))
    rows: dict[str, Any] = {}
    for name, extra in variants:
        model = build_model(model_spec).to(device)
        base = dict(epochs=10**6, lr=0.01, lr_schedule="constant", **extra)
        finetune_(model, loader, FinetuneSpec(max_steps=10, **base), device)  # warm-up, cuDNN
        torch.cuda.synchronize()
        stats = finetune_(model, loader, FinetuneSpec(max_steps=args.steps, **base), device)
        rows[name] = {"images_per_s": stats.samples / stats.seconds, "steps": stats.steps,
                      "seconds": stats.seconds, "final_loss": stats.final_loss}
    fp32 = rows["fp32"]["images_per_s"]
    print(f"\nResNet-56 fine-tuning on {torch.cuda.get_device_name()} (batch {args.batch}, "
          f"{args.steps} steps, synthetic data, channels_last)")
    for name, row in rows.items():
        row["speedup_vs_fp32"] = row["images_per_s"] / fp32
        print(f"  {name:<13} {row['images_per_s']:>9.0f} images/s  "
              f"{row['speedup_vs_fp32']:.2f}x vs fp32  (last loss {row['final_loss']:.3f})")
    return rows


def _random_imagefolder(root: Path, per_class: int = 8) -> Path:
    """train/ and test/ of random 32x32 PNGs, 10 classes: only to exercise the pipeline."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def pipeline(args: argparse.Namespace, checkpoint: Path | None, archive: Path | None,
             work: Path) -> dict[str, Any]:
    from compress.recipe.load import load_recipe
    from compress.run.pipeline import run_recipe

    overrides = ["device=cuda", "report.device=cuda", "report.batch_sizes=[1, 256]",
                 f"finetune.max_steps={args.pipeline_steps}", "finetune.epochs=1",
                 f"model.checkpoint={checkpoint if checkpoint else 'null'}"]
    if archive is not None:
        overrides += [f"data.path={archive}", "data.train_subset=10000",
                      "data.eval_subset=2000"]
    else:
        overrides += [f"data.path={_random_imagefolder(work / 'images')}"]
    recipe = load_recipe(ROOT / "recipes" / "resnet56-cifar10.yaml", overrides)
    recipe.name = "gpu-smoke"
    result = run_recipe(recipe, work / "run", overwrite=True)
    r = result.report
    env = (r.get("latency") or {}).get("environment") or {}
    kept = "" if args.out else " (a temporary folder, removed at the end; keep it with --out)"
    print(f"\nprune + fine-tune + export on CUDA: {result.out_dir}{kept}")
    print(f"  top-1 {r['baseline']['accuracy']:.2f}% -> {r['compressed']['accuracy']:.2f}%"
          f"{'' if archive else ' (random data: meaningless)'}")
    print(f"  MACs -{r['macs_reduction']:.1%}, params -{r['params_reduction']:.1%}, "
          f"parity {r['parity']}")
    print(f"  latency on {env.get('device')} ({env.get('gpu')}), onnxruntime providers "
          f"{env.get('providers')}")
    for engine, per_batch in (r.get("speedup") or {}).items():
        if engine != "headline" and per_batch:
            print(f"  {engine}: " + ", ".join(f"b{b} {s:.2f}x" for b, s in per_batch.items()))
    print(f"  timing {json.dumps({k: round(v, 1) for k, v in r['timing'].items()})}")
    return {"out_dir": str(result.out_dir), "gates_ok": result.ok,
            "macs_reduction": r["macs_reduction"], "accuracy": r["compressed"]["accuracy"],
            "parity": r["parity"], "providers": env.get("providers"), "speedup": r["speedup"],
            "timing": r["timing"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="Timed steps per precision.")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pipeline-steps", type=int, default=300,
                        help="Fine-tuning steps of the prune + export run.")
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile.")
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared")))
    parser.add_argument("--out", type=Path, help="Work folder (default: a temporary one).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_smoke: skipped: no CUDA GPU (torch.cuda.is_available() is False); run it "
              "on a machine with one")
        return 0
    checkpoint = args.shared / "models/resnet-cifar10/resnet56-4bfd9763.th"
    archive = args.shared / "data/cifar10-jpg/cifar10-jpg.tar.gz"
    checkpoint = checkpoint if checkpoint.is_file() else None
    archive = archive if archive.is_file() else None
    if checkpoint is None or archive is None:
        print(f"gpu_smoke: {args.shared} lacks the ResNet-56 checkpoint or CIFAR-10; using "
              f"random weights and data")
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["throughput"] = throughput(args, checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        results["pipeline"] = pipeline(args, checkpoint, archive, work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
