"""Every recipe in one place, as plain data (like airbench's `hyp`).

A training setting left unset on the command line (None in TrainConfig) is filled once, at the
start of a run, from `recipe(model, pretrained, bf16)`: the from-scratch recipe for the class of
the machine (bf16 computed natively or not), or, with --pretrained, the backbone's own recipe. A
flag the user gives always wins; the checkpoint stores the settings actually used, so --resume and
--init repeat them.
Why each value: README ("Train from scratch", "Pretrained backbones", "Results") and the
benchmarks that chose them (benchmarks/RESULTS.md).
"""

from __future__ import annotations

# `python train.py --data DIR` on a CPU without native bf16 (AVX2 only, most laptops and desktops):
# a small ResNet-style convnet from random weights, sized to reach 90% in 15 minutes there.
SCRATCH = {
    "image_size": 80,  # crops of this size; evaluated also at the test-time size (config.py)
    "size_from": 56,  # progressive resizing: crops grow from 56 px to 80 px ...
    "size_ramp": 0.5,  # ... over the first half of the epochs
    "channels": (24, 48, 96, 192),
    "stem_stride": 2,  # the stem halves the resolution: no convolution at full size
    "epochs": 100,  # at most: a 2-core Zen 3 fits about 74 in its 14 minutes, a faster CPU up to 100, +1.9 points
    # over 72 where they fit (benchmarks/RESULTS.md, "more epochs where the budget has room")
    "time_budget": 14,  # minutes from start to end; a slower CPU trains fewer of the epochs
    "min_steps": 0,
    "batch_size": 64,
    "optimizer": "sgd",  # with Nesterov momentum 0.9 (TrainConfig.momentum, .nesterov)
    "lr": 0.03,
    "warmup_epochs": 2.0,
    "weight_decay": 8e-3,  # not on biases and norm layers
    "label_smoothing": 0.1,
    "ema": 0.999,  # the moving average of the weights is what is evaluated and saved
    "tta": True,  # the photo and its mirror image, averaged
    "tta_below": 0.95,  # the other views only for photos the first leaves below 95% sure: a third of
    # them, the same val accuracy as every view for all (benchmarks/RESULTS.md, "Adaptive test-time views")
    "finetune": "full",
    "finetune_stages": 2,
    "views": 1,
    "backbone_lr": 1.0,
}

# The same where the run computes in bf16 natively (CPUs with AVX512-BF16 or AMX, GPUs): 3-4x the
# compute fits in the same 15 minutes, spent on wider stages, larger crops and more epochs. Crops grow
# from 80 px: the epochs the smaller early crops save pay for 18 more (benchmarks/RESULTS.md, "a
# resolution schedule at equal time": +1.1 points over 8 pairs of runs on splits of train/ alone).
SCRATCH_BF16 = {**SCRATCH, "image_size": 112, "size_from": 80, "channels": (32, 64, 128, 256), "epochs": 138}

# What a pretrained network does not need of the from-scratch recipe.
PRETRAINED = {**SCRATCH, "label_smoothing": 0.0, "ema": 0.0, "warmup_epochs": 1.0, "tta": False, "tta_below": 1.0,
              "size_from": 0, "time_budget": 0}  # a few epochs at the size the network was trained at

# A linear probe on cached features of the frozen network: nearly all the time goes into one
# pass of the frozen network over the photos. "lbfgs" solves the probe in one epoch, its L2
# strength chosen by cross-validation on the training photos (SOLVER, probe.py); the other
# optimization settings are those of --optimizer adamw, which trains the probe by epochs of
# gradient descent (as --epochs N does: EPOCHS_OPTIMIZER).
PROBE = {**PRETRAINED, "finetune": "probe", "optimizer": "lbfgs", "lr": 1e-3, "weight_decay": 0.05,
         "batch_size": 64, "min_steps": 300}  # a folder of a dozen photos a class still gets 300 steps
EPOCHS_OPTIMIZER = "adamw"  # --epochs N asks for epochs: a recipe that solves the probe trains it with this

# --optimizer lbfgs (probe.py): scikit-learn LogisticRegressionCV's ten strengths C from strong to weak
# (C: the summed loss plus |W|^2 / 2C), its 5 stratified folds, dealt 3 times (fewer chance ties
# between strengths than one deal); L-BFGS iterations per fit at most.
SOLVER = {"strengths": tuple(10 ** (-4 + 8 * i / 9) for i in range(10)), "folds": 5, "deals": 3, "iterations": 200}

BACKBONES = {  # `--model NAME --pretrained`
    # 272 px center crops, one view of each photo (the mirror image added nothing that more epochs did
    # not), no test-time views: benchmarks/RESULTS.md, "Pretrained probe" and "Pretrained recipe".
    "efficientnet_lite0": {**PROBE, "image_size": 272, "views": 1, "epochs": 30},
    "resnet18": {**PROBE, "image_size": 224, "views": 1, "epochs": 30},
    "mobilenet_v3_large": {**PROBE, "image_size": 224, "views": 1, "epochs": 30},
}


def recipe(model: str, pretrained: bool, bf16: bool = False) -> dict:
    """The settings a run of `model` starts from; `bf16`: the run computes in bf16 natively."""
    if pretrained:
        return BACKBONES.get(model, PRETRAINED)
    return SCRATCH_BF16 if bf16 else SCRATCH
