"""Stand-ins for your own data and model, for the README's tour: no download, about a minute.

    python examples/make_tour_model.py [--images my-images] [--out my-resnet18.safetensors]

Writes ``my-images/{train,test}/<class>/*.jpg``, small pictures of four shapes (circle, cross,
square, triangle) in random colours, sizes and places on a noisy background, and trains a
torchvision ResNet-18 (4 classes) on them at 32x32 pixels with ImageNet normalisation, the
way ``compress init`` prepares images. The weights go to ``my-resnet18.safetensors``; then

    compress init --model torchvision:resnet18 --checkpoint my-resnet18.safetensors \\
        --data imagefolder:my-images --image-size 32 > my-recipe.yaml
    compress apply my-recipe.yaml
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torch import nn

# Sorted: the imagefolder source numbers classes in the sorted order of their folder names.
CLASSES = ("circle", "cross", "square", "triangle")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what `compress init` writes


def draw(shape: str, size: int, rng: random.Random) -> Image.Image:
    """One picture: a shape in a random colour, size and place on a noisy background."""
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 80, (size, size, 3))
    image = Image.fromarray(noise.astype(np.uint8))
    pen = ImageDraw.Draw(image)
    colour = tuple(rng.randrange(120, 256) for _ in range(3))
    r = rng.uniform(0.22, 0.4) * size
    cx, cy = (rng.uniform(r, size - r) for _ in range(2))
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, int(r / 2.5))
        pen.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        pen.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    return image


def write_images(root: Path, per_class: dict[str, int], size: int, seed: int) -> None:
    rng = random.Random(seed)
    for split, count in per_class.items():
        for shape in CLASSES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(shape, size, rng).save(folder / f"{i:04d}.jpg", quality=90)


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as normalised (N, 3, H, W) floats and labels, read back from the JPEGs."""
    xs, ys = [], []
    for label, shape in enumerate(CLASSES):
        for path in sorted((root / split / shape).glob("*.jpg")):
            xs.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255)
            ys.append(label)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.tensor(ys)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=Path("my-images"))
    parser.add_argument("--out", type=Path, default=Path("my-resnet18.safetensors"))
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    write_images(args.images, {"train": args.train_per_class, "test": args.test_per_class},
                 args.size, seed=0)
    (x, y), (x_test, y_test) = load_split(args.images, "train"), load_split(args.images, "test")
    print(f"wrote {len(y)} training and {len(y_test)} test images to {args.images}/")

    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batches = -(-len(y) // 32)
    # One cycle: a warm-up then a long decay reaches high accuracy in few epochs.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3,
                                                total_steps=args.epochs * batches)
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: test top-1 {accuracy(model, x_test, y_test):.1f}%")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
