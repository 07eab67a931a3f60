"""Choose the efficientnet_lite0 recipe without looking at val/: hold out part of train/.

    python benchmarks/tune_pretrained.py --data ../shared/data/catsdogs

Runs the frozen stages once over train/ (the photo plus --views - 1 random crops and flips),
holds out --holdout of the photos (every view of them; scored on the plain photo and its
mirror image), and trains the tail for each setting in the grid: how many final stages
train (0 = linear probe), how many cached views, epochs, learning rate. Prints one line per
setting; the recipe in classifier/backbones.py is the best of these, then confirmed on val/.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from classifier.data import Augmentation, Preprocessing, decode_images, find_dataset  # noqa: E402
from classifier.models import create_model  # noqa: E402
from classifier.transfer import cached_features, tail_logits  # noqa: E402


def train_tail(model, features, labels, epochs: int, lr: float, seed: int = 0, weight_decay: float = 0.05,
               label_smoothing: float = 0.0) -> None:
    """AdamW with cosine decay on cached features [N, C, H, W] (the training loop, in brief)."""
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    steps = epochs * (len(labels) // 64)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(order) - 63, 64):
            index = order[start:start + 64]
            loss = torch.nn.functional.cross_entropy(model.tail(features[index].float()), labels[index],
                                                     label_smoothing=label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="train/ is used, val/ never (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="(default: %(default)s)")
    parser.add_argument("--views", type=int, default=3, help="cached views per photo (default: %(default)s)")
    parser.add_argument("--holdout", type=float, default=0.25, help="share of train/ held out (default: %(default)s)")
    args = parser.parse_args()
    dataset = find_dataset(args.data, args.holdout, 0)  # with train/ and val/: split train/ alone
    split = find_dataset(Path(args.data) / "train", args.holdout, 0) if dataset.layout == "train/val" else dataset
    preprocessing = Preprocessing(args.image_size, "center_crop")
    deepest = 3  # cache the input of the last `deepest` stages; shallower tails run more frozen stages
    base = create_model("efficientnet_lite0", pretrained=True, finetune="last", finetune_stages=deepest).eval()
    started = time.perf_counter()
    fit = cached_features(base, decode_images(split.train.paths, split.train.labels, preprocessing),
                          preprocessing, torch.device("cpu"), args.views, policy=Augmentation(), desc="train views")
    held = cached_features(base, decode_images(split.val.paths, split.val.labels, preprocessing),
                           preprocessing, torch.device("cpu"), flip=True, desc="held-out")
    print(f"features of {len(fit)} + {len(held)} photos in {time.perf_counter() - started:.0f} s", flush=True)
    for stages, views, epochs, lr in itertools.product((0, 1, 2, 3), (1, args.views), (5, 10), (1e-3, 3e-3)):
        model = create_model("efficientnet_lite0", pretrained=True, finetune="last" if stages else "probe",
                             finetune_stages=max(stages, 1))
        with torch.inference_mode():  # the stages between the cache and this model's tail are frozen here
            run = lambda x: torch.nn.Sequential(*base.stages[len(base.stages) - deepest:model.frozen_stages])(
                x.flatten(0, 1).float()).unflatten(0, x.shape[:2]).half()
            train_x, held_x = run(fit.images[:, :views]), run(held.images)
        started = time.perf_counter()
        train_tail(model, train_x.flatten(0, 1).clone(), fit.labels.repeat_interleave(views).clone(), epochs, lr)
        model.eval()
        with torch.inference_mode():
            accuracy = (tail_logits(model)(held_x).argmax(1) == held.labels).float().mean().item()
        print(f"stages {stages}  views {views}  epochs {epochs:2d}  lr {lr:g}  held-out accuracy "
              f"{accuracy:.2%}  ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
