"""The settings of a training run, as one frozen dataclass that round-trips through the command
line and the checkpoint. Fields left None (and --precision auto) are filled once, by `resolved()`,
at the start of a run; after that nothing changes them. What a run derives from its settings and
its data (epochs planned, batch size, crop size per epoch) is plan.py's Plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from classifier import recipes
from classifier.augment import MIXING, Augmentation
from classifier.checkpoint import load_checkpoint
from classifier.data import default_data_dir
from classifier.images import default_cache_dir
from classifier.models import list_models, model_entry
from classifier.runtime import DEVICES, PRECISIONS, resolve_precision, select_device


def option(default, help: str, **extra):
    """A TrainConfig field: its default and the --help text of its command-line flag."""
    factory = (lambda: default) if isinstance(default, (list, tuple)) else None
    kwargs = {"default_factory": factory} if factory else {"default": default}
    return field(metadata={"help": help, **extra}, **kwargs)


def recipe_option(help: str, **extra):
    """A TrainConfig field left None (not set) until resolved() takes it from the recipe."""
    return field(default=None, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run: the command line is generated from these fields (cli.py)
    and a checkpoint stores them, so a run can always be repeated or resumed."""

    # data
    data: str = option(default_data_dir(), "image folder (train/ and val/, class folders, or cat.1.jpg files)")
    val_fraction: float = option(0.2, "share of each class held out for validation when DIR has no val/")
    exclude: str = option("", "leave these photos out: an audit's findings.jsonl, a text file of paths, or "
                          "comma-separated paths ('' for none); a relative path names the photo in --data when "
                          "it is there, else in the working folder")
    image_size: int = recipe_option("images are resized to this many pixels square")
    size_from: int = recipe_option("progressive resizing: the training crops start at this size and grow to "
                                   "--image-size over the first --size-ramp of the epochs (0: off)")
    size_ramp: float = recipe_option("progressive resizing: the share of the epochs over which crops grow")
    cache_dir: str = option(default_cache_dir(), "where decoded images are cached ('' to disable)")
    workers: int = option(0, "decoding threads (0: one per CPU core)")
    # model
    model: str = option("convnet", "model name, see --list-models")
    pretrained: bool = option(False, "start from the model's pretrained weights (backbones only)")
    weights: str = option("", "backbones: load the pretrained weights from this local file (no download)")
    finetune: str = recipe_option("backbones: what trains; probe: the output layer only, on cached "
                                 "features; last: the last --finetune-stages stages too; full: everything",
                                 choices=("probe", "last", "full"))
    finetune_stages: int = recipe_option("backbones with --finetune last: how many final stages train")
    views: int = recipe_option("probe/last: cached views of each training image (the image, its mirror "
                              "image, then random crops and flips), computed once")
    backbone_lr: float = recipe_option("learning rate of pretrained layers, as a fraction of --lr")
    hidden: tuple = option((512, 128), "mlp: hidden layer sizes, comma-separated ('' for none)")
    activation: str = option("relu", "mlp: activation function", choices=("relu", "sigmoid", "tanh", "gelu"))
    channels: tuple = recipe_option("convnet: channels of each stage")
    stem_stride: int = recipe_option("convnet: 2 for a stem that halves the resolution (no work at full size)")
    blocks: int = option(1, "convnet: residual blocks per stage")
    dropout: float = option(0.2, "convnet: dropout before the output layer")
    # optimization
    loss: str = option("ce", "ce: cross-entropy; mse: squared error of softmax probabilities", choices=("ce", "mse"))
    label_smoothing: float = recipe_option("ce: weight moved from the true class to all classes")
    optimizer: str = recipe_option("optimizer; lbfgs (a linear probe only): solve it exactly in one epoch, its L2 "
                                   "strength chosen by cross-validation on the training photos (then --lr, "
                                   "--weight-decay, --batch-size, --epochs do not apply)",
                                   choices=("sgd", "adamw", "lbfgs"))
    lr: float = recipe_option("peak learning rate")
    momentum: float = option(0.9, "sgd momentum (0 for plain gradient descent)")
    nesterov: bool = option(True, "sgd: Nesterov momentum")
    weight_decay: float = recipe_option("weight decay (not applied to biases and norm layers)")
    schedule: str = option("cosine", "learning rate after warmup", choices=("cosine", "constant"))
    warmup_epochs: float = recipe_option("epochs of linear learning-rate warmup")
    epochs: int = recipe_option("passes over the training images")
    time_budget: float = recipe_option("minutes the whole run may take from process start: the first steps are "
                                       "timed and as many epochs as fit are trained, at most --epochs (0: no "
                                       "budget; 0 when --epochs is given: exactly that many epochs)")
    min_steps: int = recipe_option("at least this many optimizer steps: a small folder's epochs pass over its "
                                   "photos several times "
                                   "(0 when --epochs is given: exactly that many epochs)")
    batch_size: int = recipe_option("images per step (per process under torchrun: the global batch is N times larger)")
    augment: bool = option(True, "random resized crops and flips while training")
    min_scale: float = option(0.35, "smallest share of the image area a random crop keeps")
    mixing: str = option("none", "blend pairs of training images and their labels: mixup (whole images) or "
                         "cutmix (a pasted rectangle); not with cached features", choices=MIXING)
    ema: float = recipe_option("decay of a moving average of the weights that is evaluated and saved instead of the raw weights (0: off)")
    tta: bool = recipe_option("evaluate on each image and its mirror image, averaged")
    tta_sizes: tuple = recipe_option("with --tta, also evaluate each image decoded at these sizes "
                                    "(comma-separated; larger ones show more detail), averaged; stored in "
                                    "the checkpoint for predict --tta. Unset, a model that takes any size and "
                                    "trains on random crops gets the size at which things look as large as "
                                    "in its crops (101 for 80 px crops with --min-scale 0.35)")
    tta_below: float = recipe_option("with --tta, the other views only for photos whose first view's probability "
                                     "is below this (1: every photo gets every view)")
    eval_every: int = option(0, "evaluate on val every N epochs and after the last (0: every epoch in runs "
                             "of up to 10 epochs, else about 10 times per run)")
    folds: int = option(-1, "also estimate accuracy by K-fold cross-validation over train and val photos, "
                        "reported overall and per class (0: never; -1: 5 folds when a class has fewer than "
                        "10 val photos and the model trains on cached features)")
    balance: bool = option(True, "when classes differ in size (largest over 1.5x the smallest), weight the "
                           "loss so that every class counts alike")
    # run
    seed: int = option(0, "seed for the split, initialization, shuffling and augmentation")
    device: str = option("auto", "auto, cpu, cuda or mps", choices=DEVICES)
    precision: str = option("auto", "fp32; bf16 autocast; fp16 autocast with gradient scaling (CUDA only); "
                            "auto: bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16 "
                            "or AMX), else fp32", choices=PRECISIONS)
    channels_last: bool = option(True, "keep images and convolution weights in NHWC order (1.3x faster training "
                                 "on this project's CPU, and on GPUs with tensor cores; same numbers)")
    compile: bool = option(False, "torch.compile the model, on CUDA GPUs only: slow first steps, faster after (on a CPU it "
                           "trains slower: refused)")
    out: str = option("checkpoints", "output folder for best.pt, last.pt and metrics.jsonl")
    report: bool = option(False, "at the end, write OUT/report/report.html: curves, confusion matrix, calibration, mistakes (needs matplotlib)")
    init: str = option("", "start from this checkpoint's weights (fine-tuning; new classes get a new output layer)")
    freeze: bool = option(False, "train only the output layer (with --init or --pretrained)")
    resume: str = option("", "continue an interrupted run from its last.pt, with the run's own settings; a run "
                         "folder moved with its photos finds them; --data and --out, when given, say where its "
                         "photos and its folder are now")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def resolved(self) -> "TrainConfig":
        """The settings a run uses, resolved once: the precision for the device; unset settings
        from the recipe (with --init, that of the checkpoint's model, pretrained if it was, and
        the checkpoint's image sizes; from scratch, the larger recipe where the run computes in
        bf16 natively; with --epochs, --time-budget or more than the probe to train, a recipe's
        solver becomes epochs of gradient descent); the test-time sizes as --help says. Resolving
        twice changes nothing."""
        name, pretrained, kept = self.model, self.pretrained or bool(self.weights), {}
        if self.init:
            checkpoint = load_checkpoint(self.init)
            used = checkpoint.get("config", {})
            name, pretrained = checkpoint["model"]["name"], bool(used.get("pretrained") or used.get("weights"))
            kept = {"image_size": checkpoint["preprocessing"]["image_size"],  # --init keeps its model's sizes
                    "tta_sizes": tuple(checkpoint["preprocessing"].get("tta_sizes", ()))}
        precision = resolve_precision(self.precision, select_device(self.device))
        recipe = recipes.recipe(name, pretrained, precision == "bf16")
        if self.epochs is not None:  # --epochs N: exactly N epochs
            recipe = {**recipe, "min_steps": 0, "time_budget": 0}
        if recipe["optimizer"] == "lbfgs" and (self.epochs is not None or self.time_budget
                                               or (self.finetune or recipe["finetune"]) != "probe"):
            recipe = {**recipe, "optimizer": recipes.EPOCHS_OPTIMIZER}  # epochs, a budget, or more than the probe
        unset = {f.name: recipe[f.name] for f in fields(self)
                 if getattr(self, f.name) is None and f.name in recipe and f.name != "tta_sizes"}
        config = replace(self, model=name, precision=precision, **{**unset, **kept})
        if config.tta_sizes is None:
            config = replace(config, tta_sizes=default_tta_sizes(config, recipe))
        return config


def default_tta_sizes(config: TrainConfig, recipe: dict) -> tuple:
    """Test-time sizes when --tta-sizes is not given: the recipe's if the model trains at the
    recipe's size; for a model that takes any size and trains on random crops only, the size
    at which things look as large as in the crops (see Augmentation.mean_zoom); else none."""
    if "tta_sizes" in recipe and config.image_size == recipe.get("image_size"):
        return tuple(recipe["tta_sizes"])
    crops_only = config.augment and config.finetune == "full"  # what every training step sees
    if crops_only and config.model in list_models() and not model_entry(config.model).fixed_size:
        zoomed = Augmentation(config.min_scale).source_size(config.image_size)  # (unknown models are
        return (zoomed,) if zoomed > config.image_size else ()  # reported later, naming the checkpoint)
    return ()
