"""Prune your own nn.Module with your own DataLoaders and metric, through the Python API.

    python examples/prune_your_own_model.py [--epochs 1] [--out runs/own-model]

No recipe: ``compress.prune`` takes the model, an example input, a training loader and an
evaluation function, prunes in place (every step proven exact), fine-tunes, and returns the
per-step rows. The rest (saving, ONNX) is yours; here it is done with plain torch/safetensors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compress


class MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def loaders() -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:1400], order[1400:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True,
                       generator=g),
            DataLoader(TensorDataset(x[test], y[test]), batch_size=256))


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/own-model"))
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = loaders()
    model = MyNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(args.epochs):  # your own training, before compression
        model.train()
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    before = accuracy(model, test)
    result = compress.prune(model, torch.zeros(1, 1, 8, 8), target_macs=0.5,
                            train_loader=train, eval_fn=lambda m: accuracy(m, test),
                            finetune={"epochs": args.epochs, "lr": 0.01},
                            probe=next(iter(test))[0][:8])
    after = result.steps[-1]["accuracy"]
    print(f"accuracy {before:.2f}% -> {after:.2f}%, MACs {result.macs_before:,} -> "
          f"{result.macs_after:,}")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(args.out / "model.safetensors"))
    print(f"saved {args.out / 'model.safetensors'}")


if __name__ == "__main__":
    main()
