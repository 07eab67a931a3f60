"""Every recipe in one place, as plain data (like airbench's `hyp`).

A training setting left unset on the command line (None in TrainConfig) is filled once, at the
start of a run, from `recipe(model, pretrained)`: the from-scratch recipe, or, with --pretrained,
the backbone's own recipe on top of it. A flag the user gives always wins; the checkpoint stores
the settings actually used, so --resume and --init repeat them.
Why each value: README ("From scratch: the default recipe", "Pretrained backbones") and the
benchmarks that chose them (benchmarks/RESULTS.md).
"""

from __future__ import annotations

# `python train.py --data DIR`: a small ResNet-style convnet from random weights.
SCRATCH = {
    "image_size": 80,  # crops of this size; evaluated also at the test-time size (config.py)
    "size_from": 0,  # no progressive resizing
    "size_ramp": 0.5,
    "channels": (32, 64, 128, 256),
    "stem_stride": 1,
    "epochs": 90,
    "time_budget": 0,  # minutes; 0: exactly `epochs`
    "min_steps": 0,
    "batch_size": 64,
    "optimizer": "sgd",  # with Nesterov momentum 0.9 (TrainConfig.momentum, .nesterov)
    "lr": 0.03,
    "warmup_epochs": 2.0,
    "weight_decay": 8e-3,  # not on biases and norm layers
    "label_smoothing": 0.1,
    "ema": 0.999,  # the moving average of the weights is what is evaluated and saved
    "tta": True,  # the photo and its mirror image, averaged
    "tta_below": 1.0,  # every photo gets every view
    "finetune": "full",
    "finetune_stages": 2,
    "views": 1,
    "backbone_lr": 1.0,
}

# What a pretrained network does not need of the from-scratch recipe.
PRETRAINED = {**SCRATCH, "label_smoothing": 0.0, "ema": 0.0, "warmup_epochs": 1.0, "tta": False}

# A linear probe on cached features of the frozen network: nearly all the time goes into one
# pass of the frozen network over the photos; the probe's epochs then take about a second each.
PROBE = {**PRETRAINED, "finetune": "probe", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05,
         "batch_size": 64, "min_steps": 300}  # a folder of a dozen photos a class still gets 300 steps

BACKBONES = {  # `--model NAME --pretrained`
    # 272 px center crops, one view of each photo (the mirror image added nothing that more epochs did
    # not), no test-time views: benchmarks/RESULTS.md, "Pretrained probe" and "Pretrained recipe".
    "efficientnet_lite0": {**PROBE, "image_size": 272, "views": 1, "epochs": 30},
    "resnet18": {**PROBE, "image_size": 224, "views": 1, "epochs": 30},
    "mobilenet_v3_large": {**PROBE, "image_size": 224, "views": 1, "epochs": 30},
}


def recipe(model: str, pretrained: bool) -> dict:
    """The settings a run of `model` starts from."""
    return BACKBONES.get(model, PRETRAINED) if pretrained else SCRATCH
