"""The training loop: forward, loss, backward, step; evaluate; checkpoint. Plain PyTorch.

    python train.py --data DIR --model convnet --epochs 30

Every setting is a field of TrainConfig; the command line is generated from it and a
checkpoint stores it, so a run can always be repeated or resumed with the same settings.

Randomness (shuffling, augmentation, dropout) is drawn from generators seeded by
(seed, epoch, step), so a run interrupted at any step and resumed gives the same weights
and the same metrics as one that never stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from classifier import distributed
from classifier.checkpoint import load_checkpoint, load_weights, model_from_checkpoint, save_checkpoint
from classifier.data import (MIXING, Augmentation, Batches, Preprocessing, augment, check_usable,
                             decode_images, decode_sizes, default_cache_dir, default_data_dir, find_dataset, mix)
from classifier.errors import ClassifierError
from classifier.models import create_model, list_models, model_arguments, model_entry
from classifier.predict import logits_for
from classifier.calibration import calibrate, neither_rule
from classifier.transfer import caches_features, cached_features, flatten_views, tail_logits
from classifier.report import build_report, require_matplotlib, write_predictions
from classifier.runtime import PRECISIONS, autocast, compile_model, grad_scaler, memory_format, resolve_precision


def option(default, help: str, **extra):
    """A TrainConfig field: its default and the --help text of its command-line flag."""
    factory = (lambda: default) if isinstance(default, (list, tuple)) else None
    kwargs = {"default_factory": factory} if factory else {"default": default}
    return field(metadata={"help": help, **extra}, **kwargs)


def model_option(fallback, help: str, **extra):
    """A TrainConfig field whose default depends on the model: None (not set) until train()
    resolves it to the model's recommended value with --pretrained, else to `fallback`."""
    return field(default=None, metadata={"help": help, "fallback": fallback, **extra})


@dataclass
class TrainConfig:
    # data
    data: str = option(default_data_dir(), "image folder (train/ and val/, class folders, or cat.1.jpg files)")
    val_fraction: float = option(0.2, "share of each class held out for validation when DIR has no val/")
    image_size: int = model_option(80, "images are resized to this many pixels square")
    cache_dir: str = option(default_cache_dir(), "where decoded images are cached ('' to disable)")
    workers: int = option(0, "decoding threads (0: one per CPU core)")
    # model
    model: str = option("convnet", "model name, see --list-models")
    pretrained: bool = option(False, "start from the model's pretrained weights (backbones only)")
    weights: str = option("", "backbones: load the pretrained weights from this local file (no download)")
    finetune: str = model_option("full", "backbones: what trains; probe: the output layer only, on cached "
                                 "features; last: the last --finetune-stages stages too; full: everything",
                                 choices=("probe", "last", "full"))
    finetune_stages: int = model_option(2, "backbones with --finetune last: how many final stages train")
    views: int = model_option(1, "probe/last: cached views of each training image (the image, its mirror "
                              "image, then random crops and flips), computed once")
    backbone_lr: float = model_option(1.0, "learning rate of pretrained layers, as a fraction of --lr")
    hidden: tuple = option((512, 128), "mlp: hidden layer sizes, comma-separated ('' for none)")
    activation: str = option("relu", "mlp: activation function", choices=("relu", "sigmoid", "tanh", "gelu"))
    channels: tuple = option((32, 64, 128, 256), "convnet: channels of each stage")
    blocks: int = option(1, "convnet: residual blocks per stage")
    dropout: float = option(0.2, "convnet: dropout before the output layer")
    # optimization
    loss: str = option("ce", "ce: cross-entropy; mse: squared error of softmax probabilities", choices=("ce", "mse"))
    label_smoothing: float = model_option(0.1, "ce: weight moved from the true class to all classes")
    optimizer: str = model_option("sgd", "optimizer", choices=("sgd", "adamw"))
    lr: float = model_option(0.03, "peak learning rate")
    momentum: float = option(0.9, "sgd momentum (0 for plain gradient descent)")
    nesterov: bool = option(True, "sgd: Nesterov momentum")
    weight_decay: float = model_option(8e-3, "weight decay (not applied to biases and norm layers)")
    schedule: str = option("cosine", "learning rate after warmup", choices=("cosine", "constant"))
    warmup_epochs: float = model_option(2.0, "epochs of linear learning-rate warmup")
    epochs: int = model_option(90, "passes over the training images")
    batch_size: int = model_option(64, "images per step (per process under torchrun: the global batch is N times larger)")
    augment: bool = option(True, "random resized crops and flips while training")
    min_scale: float = option(0.35, "smallest share of the image area a random crop keeps")
    mixing: str = option("none", "blend pairs of training images and their labels: mixup (whole images) or "
                         "cutmix (a pasted rectangle); not with cached features", choices=MIXING)
    ema: float = model_option(0.999, "decay of a moving average of the weights that is evaluated and saved instead of the raw weights (0: off)")
    tta: bool = model_option(True, "evaluate on each image and its mirror image, averaged")
    tta_sizes: tuple = model_option((), "with --tta, also evaluate each image decoded at these sizes "
                                    "(comma-separated; larger ones show more detail), averaged; stored in "
                                    "the checkpoint for predict --tta. Unset, a model that takes any size and "
                                    "trains on random crops gets the size at which things look as large as "
                                    "in its crops (101 for 80 px crops with --min-scale 0.35)")
    eval_every: int = option(0, "evaluate on val every N epochs and after the last (0: every epoch in runs "
                             "of up to 10 epochs, else about 10 times per run)")
    # run
    seed: int = option(0, "seed for the split, initialization, shuffling and augmentation")
    device: str = option("auto", "auto, cpu, cuda or mps", choices=("auto", "cpu", "cuda", "mps"))
    precision: str = option("auto", "fp32; bf16 autocast; fp16 autocast with gradient scaling (CUDA only); "
                            "auto: bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16 "
                            "or AMX), else fp32", choices=PRECISIONS)
    channels_last: bool = option(True, "keep images and convolution weights in NHWC order (1.3x faster training "
                                 "on this project's CPU, and on GPUs with tensor cores; same numbers)")
    compile: bool = option(False, "torch.compile the model: slow first steps, faster after (mostly on GPUs)")
    out: str = option("checkpoints", "output folder for best.pt, last.pt and metrics.jsonl")
    report: bool = option(False, "at the end, write OUT/report/report.html: curves, confusion matrix, calibration, mistakes (needs matplotlib)")
    init: str = option("", "start from this checkpoint's weights (fine-tuning; new classes get a new output layer)")
    freeze: bool = option(False, "train only the output layer (with --init or --pretrained)")
    resume: str = option("", "continue an interrupted run from its last.pt")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def resolved(self) -> "TrainConfig":
        """Fill the model-dependent settings left unset: a pretrained model's recommended recipe
        (ModelEntry.recommended; with --init, that of the checkpoint's model when it was
        pretrained), otherwise each field's fallback; test-time sizes as --help says."""
        name, pretrained = self.model, self.pretrained or bool(self.weights)
        if self.init:
            checkpoint = load_checkpoint(self.init)
            used = checkpoint.get("config", {})
            name, pretrained = checkpoint["model"]["name"], bool(used.get("pretrained") or used.get("weights"))
        recommended = model_entry(name).recommended if pretrained else {}
        unset = {f.name: recommended.get(f.name, f.metadata["fallback"]) for f in fields(self)
                 if "fallback" in f.metadata and getattr(self, f.name) is None}
        config = replace(self, model=name, **unset)
        if self.tta_sizes is None:
            config.tta_sizes = default_tta_sizes(config, recommended)
        return config


def default_tta_sizes(config: TrainConfig, recommended: dict) -> tuple:
    """Test-time sizes when --tta-sizes is not given: the recommended ones if the model trains at
    its recommended size; for a model that takes any size and trains on random crops only, the
    size at which things look as large as in the crops (see Augmentation.mean_zoom); else none."""
    if "tta_sizes" in recommended and config.image_size == recommended.get("image_size"):
        return tuple(recommended["tta_sizes"])
    crops_only = config.augment and config.finetune == "full"  # what every training step sees
    if crops_only and config.model in list_models() and not model_entry(config.model).fixed_size:
        zoomed = Augmentation(config.min_scale).source_size(config.image_size)  # (unknown models are
        return (zoomed,) if zoomed > config.image_size else ()  # reported later, naming the checkpoint)
    return ()


def evaluates_after(epoch: int, config: TrainConfig) -> bool:
    """Whether val is evaluated (and best.pt possibly saved) after this 1-based epoch."""
    every = config.eval_every or math.ceil(config.epochs / 10)
    return epoch % every == 0 or epoch == config.epochs


def compute_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0):
    """ce: cross-entropy; mse: the article's error, mean squared difference between the
    softmax probabilities and the one-hot target. targets: class indices [N], or class
    probabilities [N, classes] (mixed images)."""
    if kind == "ce":
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if targets.ndim == 1:
        targets = F.one_hot(targets, logits.shape[1]).float()
    return F.mse_loss(logits.softmax(dim=1), targets)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weights, not on biases and norm layers; the output layer at --lr, the
    other (pretrained) layers at --lr times --backbone-lr."""
    head = {id(p) for p in model.get_classifier().parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if (p.ndim > 1) == decay and (id(p) in head) == in_head],
               "weight_decay": config.weight_decay if decay else 0.0,
               "lr": config.lr * (1.0 if in_head else config.backbone_lr)}
              for in_head in (True, False) for decay in (True, False)]
    groups = [group for group in groups if group["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_schedule(config: TrainConfig, optimizer, steps_per_epoch: int):
    """Linear warmup, then cosine decay to zero (or constant), updated every step."""
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    total = max(config.epochs * steps_per_epoch, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.inference_mode()
def evaluate(model, batches: list[Batches], preprocessing, device, config: TrainConfig, logits_fn=None) -> dict:
    """Loss and accuracy on images the model does not train on, and the logits and labels.
    `batches`: the same images at each test-time size (one Batches each, in step).
    `logits_fn` replaces logits_for when the batches hold cached features."""
    model.eval()
    total_loss, correct, seen, outputs = 0.0, 0, 0, ([], [])
    for sizes in zip(*batches):
        images, labels = [x.to(device) for x, _ in sizes], sizes[0][1].to(device)
        logits = logits_fn(images) if logits_fn else logits_for(model, images, preprocessing, config.tta,
                                                                  config.precision)
        total_loss += compute_loss(config.loss, logits, labels).item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        outputs[0].append(logits.cpu())
        outputs[1].append(labels.cpu())
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "logits": torch.cat(outputs[0]), "labels": torch.cat(outputs[1])}


def build_model(config: TrainConfig, classes: list[str]):
    """The model and its preprocessing: new, pretrained, or from --init's checkpoint."""
    if not config.init:
        entry = model_entry(config.model)
        preprocessing = Preprocessing(**{"image_size": config.image_size, "tta_sizes": config.tta_sizes,
                                         **entry.preprocessing})
        model = create_model(config.model, len(classes), pretrained=config.pretrained, weights=config.weights,
                             **model_arguments(config.model, asdict(config)))
        return model, preprocessing
    checkpoint = load_checkpoint(config.init)
    model = model_from_checkpoint(checkpoint, config.init)
    if checkpoint["classes"] != classes:
        model.reset_classifier(len(classes))
        print(f"{config.init} was trained on {checkpoint['classes']}; this data has {classes}: "
              f"new output layer for {len(classes)} classes, all other weights kept")
    return model, Preprocessing(**checkpoint["preprocessing"])


def freeze_all_but_classifier(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.requires_grad = False
    for parameter in model.get_classifier().parameters():
        parameter.requires_grad = True


def set_train_mode(model: nn.Module, frozen: bool) -> None:
    """Training mode; a frozen body stays in eval mode so its batch-norm statistics stay put."""
    model.train(not frozen)
    model.get_classifier().train()


def check_writable(folder: Path) -> None:
    """Fail before training, not after an hour, if checkpoints cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        raise ClassifierError(f"{folder}: cannot write checkpoints there ({error.strerror or error})") from None


def check_free_space(folder: Path, model: nn.Module) -> None:
    """Fail before training if the disk cannot hold best.pt, last.pt (weights plus optimizer
    state) and the temporary copy written while saving: about four times the weights."""
    need = 4 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ClassifierError(f"{folder}: only {free / 1e6:.1f} MB free, checkpoints need about "
                              f"{need / 1e6:.1f} MB; free some space or choose another --out")


def ema_update(decay: float):
    """An AveragedModel update: exponential moving average whose decay grows to `decay` as
    (1 + n) / (10 + n) over the first updates, so early averages are not dominated by the
    random initialization."""

    def update(averaged: list, current: list, updates) -> None:
        n = float(updates)
        if averaged[0].is_floating_point():  # called once per dtype; counters are copied as they are
            torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
        else:
            torch._foreach_copy_(averaged, current)

    return update


def step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch) * 100_003 + step


class StopSignal:
    """While active, Ctrl-C (SIGINT) and SIGTERM ask the loop to stop after the current step,
    so the state it saves is consistent; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = ""

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def train(config: TrainConfig) -> dict:
    """Run a whole training; returns the final epoch's metrics."""
    started_run = time.perf_counter()
    resume_state = None
    if config.resume:
        resumed = load_checkpoint(config.resume)
        if "training_state" not in resumed:
            raise ClassifierError(f"{config.resume}: holds no training state; resume from a last.pt")
        config = TrainConfig.from_dict({**resumed["config"], "resume": config.resume})
        resume_state = resumed["training_state"]
    config = config.resolved()  # a copy: the batch size may be lowered below; leave the caller's alone

    torch.manual_seed(config.seed)
    session = distributed.start(config.device)
    device = session.device
    config.precision = resolve_precision(config.precision, device)  # what checkpoints record
    out = Path(config.out)
    if session.is_main:
        check_writable(out)
    if config.report:
        require_matplotlib()  # fail before training, not after it

    dataset = find_dataset(config.data, config.val_fraction, config.seed)
    if resume_state is not None and resumed["classes"] != dataset.classes:
        raise ClassifierError(
            f"{config.resume}: trained on classes {resumed['classes']}, but {config.data} now has "
            f"{dataset.classes}; resume needs the same classes (use --init to fine-tune on new ones)")
    model, preprocessing = build_model(config, dataset.classes)
    config.image_size, config.tta_sizes = preprocessing.image_size, preprocessing.tta_sizes  # --init keeps its own
    if session.is_main:
        check_free_space(out, model)
    if resume_state is not None:
        load_weights(model, resume_state.get("model", resumed["state_dict"]), config.resume)
    if config.freeze:
        freeze_all_but_classifier(model)
    layout = memory_format(config.channels_last)
    model.to(device, memory_format=layout)
    # With --ema, evaluation and checkpoints use the averaged weights; training updates `model`.
    ema = AveragedModel(model, multi_avg_fn=ema_update(config.ema), use_buffers=True) if config.ema else None
    inference_model = ema.module if ema else model
    if ema and resume_state is not None:
        load_weights(ema.module, resumed["state_dict"], config.resume)
        ema.n_averaged.fill_(resume_state["ema_updates"])
    trainee = compile_model(session.wrap(model), device, config.compile)  # what the steps call

    crops = Augmentation(min_scale=config.min_scale) if config.augment else None
    # Crops drawn at every step (not cached) are cut from photos decoded larger (Augmentation.source_size).
    policy = None if caches_features(model) else crops
    train_decoding = replace(preprocessing, image_size=policy.source_size(config.image_size)) if policy \
        else preprocessing
    cache = config.cache_dir or None
    workers = config.workers or None
    with session.main_first():  # in a distributed run, rank 0 fills the cache for the others
        train_images = decode_images(dataset.train.paths, dataset.train.labels, train_decoding, cache,
                                     workers, desc="decoding train")
        val_sizes = decode_sizes(dataset.val.paths, dataset.val.labels, preprocessing, config.tta, cache,
                                 workers, desc="decoding val")
    val_images = val_sizes[0]
    skipped = train_images.skipped + val_images.skipped
    if session.is_main:
        (out / "skipped.txt").unlink(missing_ok=True)  # never leave the list of an earlier run
        if skipped:
            (out / "skipped.txt").write_text("".join(f"{reason}\n" for _, reason in skipped))
            print(f"skipped {len(skipped)} unreadable image(s), listed in {out / 'skipped.txt'}")
    check_usable(train_images, val_images, dataset.classes, config.data)
    print(f"{config.data} ({dataset.layout}): {len(train_images)} train, {len(val_images)} val "
          f"images, classes {dataset.classes}; model {config.model} on {device}"
          + (f", {session.world_size} processes" if session.world_size > 1 else ""))
    if len(train_images) < config.batch_size * session.world_size:
        config.batch_size = max(1, len(train_images) // session.world_size)
    logits_fn, val_inputs = None, val_sizes  # evaluation's inputs and how it gets logits from them
    if caches_features(model):  # frozen leading stages: run them once, then train only the tail
        if session.world_size > 1:
            raise ClassifierError("--finetune probe and last train on cached features in one process; "
                                  "under torchrun use --finetune full")
        views = config.views if crops else 1  # the image, its mirror image, then random crops and flips
        train_images = flatten_views(cached_features(
            model, train_images, preprocessing, device, views, flip=views > 1, policy=crops,
            seed=config.seed, precision=config.precision, desc="features of train views"))
        val_inputs = [cached_features(model, images, preprocessing, device, flip=config.tta,
                                      precision=config.precision, desc="features of val")
                      for images in val_sizes]
        logits_fn = tail_logits(inference_model)

    optimizer = make_optimizer(config, model)
    scaler = grad_scaler(device, config.precision)
    shard = {"rank": session.rank, "world_size": session.world_size}
    train_batches = Batches(train_images, config.batch_size, shuffle=True, drop_last=True, **shard)
    val_batches = [Batches(inputs, 256) for inputs in val_inputs]  # every rank evaluates all of val
    scheduler = make_schedule(config, optimizer, len(train_batches))
    calibrated = {}  # temperature, calibration and neither rule fitted on the latest validation
    best_probabilities = None  # best.pt's calibrated val probabilities, for val_predictions.jsonl

    start_epoch, start_step, best_accuracy, running = 0, 0, -1.0, [0.0, 0, 0]
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if resume_state.get("world_size", 1) != session.world_size:
            raise ClassifierError(
                f"{config.resume} was trained by {resume_state.get('world_size', 1)} process(es); resume it "
                f"with as many (now {session.world_size}), so the global batch stays the same")
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        start_epoch, start_step = resume_state["epoch"], resume_state["step"]
        best_accuracy, running = resume_state["best_accuracy"], list(resume_state["running"])
        print(f"resuming {config.resume} at epoch {start_epoch + 1}, step {start_step}")

    def save(name: str, epoch: int, step: int, metrics: dict, with_state: bool):
        if not session.is_main:
            return
        extra = {"epoch": epoch, "metrics": metrics, "config": asdict(config), **calibrated}
        if with_state:
            extra["training_state"] = {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "step": step, "best_accuracy": best_accuracy, "running": running,
                "world_size": session.world_size, "scaler": scaler.state_dict()}
            if ema:
                extra["training_state"].update(model=model.state_dict(), ema_updates=int(ema.n_averaged))
        save_checkpoint(out / name, inference_model, dataset.classes, preprocessing.to_dict(), **extra)

    def stop_here(epoch: int, step: int, metrics: dict, reason: str):
        save("last.pt", epoch, step, metrics, with_state=True)
        launcher = "python" if session.world_size == 1 else "torchrun <the same options>"
        raise ClassifierError(
            f"stopped by {reason or 'a signal to another process'} at epoch {epoch + 1}, step {step}; "
            f"progress saved. Resume with: {launcher} train.py --resume {out / 'last.pt'}")

    metrics = {}
    with StopSignal() as stop:
        for epoch in range(start_epoch, config.epochs):
            set_train_mode(model, config.freeze)
            train_batches.generator = torch.Generator().manual_seed(step_seed(config.seed, epoch, -1))
            started = time.perf_counter()
            progress = tqdm(train_batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                            disable=None if session.is_main else True)
            for step, (images, labels) in enumerate(progress):
                if step < start_step:
                    continue  # resuming mid-epoch: these batches were already trained on
                generator = torch.Generator().manual_seed(step_seed(config.seed, epoch, step))
                torch.manual_seed(step_seed(config.seed, epoch, step))  # dropout
                images, labels = images.to(device), labels.to(device)
                x = augment(images, generator, policy, **shard, size=config.image_size) if policy else images
                x = x.contiguous(memory_format=layout) if x.ndim == 4 else x
                targets = labels
                if config.mixing != "none" and not logits_fn:
                    x, targets = mix(x, labels, len(dataset.classes), config.mixing, generator)
                with autocast(device, config.precision):
                    logits = (model.tail(x.float()) if logits_fn else trainee(preprocessing.normalize(x))).float()
                loss = compute_loss(config.loss, logits, targets, config.label_smoothing)
                majority = targets.argmax(1) if targets.ndim == 2 else targets  # mixed: the larger share
                loss_sum, correct, seen = distributed.all_sum(
                    [loss.item() * len(labels), (logits.argmax(1) == majority).sum().item(), len(labels)])
                if not math.isfinite(loss_sum):
                    raise ClassifierError(
                        f"the loss became {loss_sum / seen} at epoch {epoch + 1}, step {step}: training "
                        f"diverged; try a lower --lr (now {config.lr}); saved checkpoints were kept")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema:
                    ema.update_parameters(model)
                running[0] += loss_sum
                running[1] += correct
                running[2] += seen
                progress.set_postfix(loss=f"{running[0] / running[2]:.4f}",
                                     acc=f"{running[1] / running[2]:.3f}")
                if distributed.any_rank(stop.requested) and step + 1 < len(train_batches):
                    stop_here(epoch, step + 1, metrics, stop.requested)
            seconds = time.perf_counter() - started
            metrics = {
                "epoch": epoch + 1, "train_loss": running[0] / max(running[2], 1),
                "train_accuracy": running[1] / max(running[2], 1), "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 3), "images_per_second": round(running[2] / seconds, 1),
            }
            line = (f"epoch {epoch + 1}/{config.epochs}  train loss {metrics['train_loss']:.4f} "
                    f"acc {metrics['train_accuracy']:.2%}")
            if evaluates_after(epoch + 1, config):
                val = evaluate(inference_model, val_batches, preprocessing, device, config, logits_fn)
                if not math.isfinite(val["loss"]):
                    raise ClassifierError(
                        f"the validation loss became {val['loss']} at epoch {epoch + 1}: training "
                        f"diverged; try a lower --lr (now {config.lr}); saved checkpoints were kept")
                fit = calibrate(val["logits"], val["labels"])
                calibrated = {"temperature": fit["temperature"], "calibration": fit,
                              "neither": neither_rule(inference_model, dataset.classes, val["logits"])}
                metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"], temperature=fit["temperature"],
                               ece=fit["ece_before"], ece_calibrated=fit["ece_after"])
                line += f"  val loss {val['loss']:.4f} acc {val['accuracy']:.2%}"
            metrics["elapsed"] = round(time.perf_counter() - started_run, 3)
            print(f"{line}  lr {metrics['lr']:.4g}  {seconds:.1f}s  {metrics['images_per_second']:.0f} img/s")
            if session.is_main:
                with open(out / "metrics.jsonl", "a") as log:
                    log.write(json.dumps(metrics) + "\n")
            start_step, running = 0, [0.0, 0, 0]
            if metrics.get("val_accuracy", -1.0) > best_accuracy:
                best_accuracy = val["accuracy"]
                best_probabilities = (val["logits"] / fit["temperature"]).softmax(1)
                save("best.pt", epoch + 1, 0, metrics, with_state=False)
            save("last.pt", epoch + 1, 0, metrics, with_state=True)
            if distributed.any_rank(stop.requested) and epoch + 1 < config.epochs:
                stop_here(epoch + 1, 0, metrics, stop.requested)
    with session.main_first():  # the other ranks wait: none leaves the process group while rank 0 works
        if session.is_main:  # what the report reads: best.pt's predictions on the val images
            write_predictions(out, val_sizes, config.tta, config.device, probabilities=best_probabilities)
            if config.report:
                print(f"report: {build_report(out)}")
    return metrics


if __name__ == "__main__":
    from classifier.cli import train_main

    sys.exit(train_main())
