"""Regenerate the quickstart's pretrained model: ``python examples/train_quickstart_model.py``.

Trains ``examples/quickstart/digits_cnn.py`` on the train split of the ``digits`` dataset
(the same split compress uses) and writes ``examples/quickstart/digits_cnn.safetensors``.
About 2 minutes on 2 CPU cores; deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "quickstart"))

from digits_cnn import digits_cnn  # noqa: E402

from compress.data import build_data  # noqa: E402
from compress.finetune.finetune import finetune_  # noqa: E402
from compress.measure.evaluate import evaluate  # noqa: E402
from compress.recipe.sources import DataSpec
from compress.recipe.stages import FinetuneSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "quickstart" / "digits_cnn.safetensors")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    data = build_data(DataSpec(source="digits", batch_size=64, augment=["random_crop"],
                               crop_padding=1), seed=args.seed)
    model = digits_cnn()
    device = torch.device("cpu")
    assert data.train is not None
    finetune_(model, data.train, FinetuneSpec(epochs=args.epochs, optimizer="sgd", lr=0.05),
              device, description="train digits_cnn")
    metrics = evaluate(model, data.eval, device)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out), metadata={"eval_accuracy": f"{metrics['accuracy']:.2f}"})
    print(f"eval top-1 {metrics['accuracy']:.2f}% -> {args.out}")


if __name__ == "__main__":
    main()
