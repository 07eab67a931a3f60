import json
import os
import signal
from pathlib import Path

import pytest
import torch

from classifier import distributed, fitting, loop, train
from classifier.augment import Augmentation
from classifier.checkpoint import load_checkpoint
from classifier.config import TrainConfig
from classifier.plan import make_plan
from classifier.data import find_dataset
from classifier.images import Preprocessing
from classifier.inference import Classifier
from classifier.loop import compute_loss, ema_update
from classifier.models import create_model
from conftest import copy_subset, make_image, train_args, train_main


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_convnet_learns_on_real_photos(small_real, tmp_path):
    assert train_main(train_args(small_real, tmp_path / "run", tmp_path / "cache", "--epochs", 12,
                                 "--lr", 0.02, "--no-augment")) == 0
    log = metrics(tmp_path / "run")
    assert len(log) == 12
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    evaluated = [m for m in log if "val_accuracy" in m]  # 12 epochs: val after every second one
    assert [m["epoch"] for m in evaluated] == [2, 4, 6, 8, 10, 12]
    assert all("val_loss" in m and "ece" in m for m in evaluated)
    assert max(m["val_accuracy"] for m in evaluated) >= 0.60  # 200 val photos: chance is 0.50 +- 0.035
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["metrics"] == max(evaluated, key=lambda m: m["val_accuracy"])


@pytest.mark.parametrize("epochs, every, evaluated", [
    (5, 0, [1, 2, 3, 4, 5]),  # short runs: every epoch
    (10, 0, list(range(1, 11))),
    (90, 0, list(range(9, 91, 9))),  # long runs: about ten times
    (25, 0, [3, 6, 9, 12, 15, 18, 21, 24, 25]),  # and always after the last epoch
    (10, 4, [4, 8, 10]),
    (3, 1, [1, 2, 3]),
])
def test_val_is_evaluated_about_ten_times_and_after_the_last_epoch(epochs, every, evaluated):
    plan = make_plan(TrainConfig(epochs=epochs, eval_every=every).resolved(), examples=64)
    assert [e for e in range(1, epochs + 1) if plan.evaluates_after(e)] == evaluated


def test_article_network_sigmoid_mlp_mse_plain_sgd_beats_chance(real_data, tmp_path):
    """The article's setup: sigmoid neurons, squared error, plain gradient descent, 1000 val photos."""
    args = ["--data", real_data, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache",
            "--model", "mlp", "--image-size", 16, "--hidden", 32, "--activation", "sigmoid",
            "--loss", "mse", "--optimizer", "sgd", "--momentum", 0, "--weight-decay", 0,
            "--no-augment", "--lr", 0.5, "--batch-size", 16, "--epochs", 10]
    assert train_main([str(a) for a in args]) == 0
    log = metrics(tmp_path / "run")
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert log[-1]["val_accuracy"] >= 0.55  # 1000 val photos: chance is 0.50 +- 0.016


def test_checkpoint_is_self_describing(tiny_real, tmp_path):
    out = tmp_path / "run"
    assert train_main(train_args(tiny_real, out, tmp_path / "cache", "--epochs", 2)) == 0
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best["classes"] == ["cat", "dog"]
    assert best["model"] == {"name": "convnet", "num_classes": 2, "channels": [8, 16], "blocks": 1,
                             "dropout": 0.2, "stem_stride": 2}
    assert best["preprocessing"]["image_size"] == 32 and best["config"]["epochs"] == best["plan"]["epochs"] == 2
    assert "training_state" not in best and {"optimizer", "scheduler"} <= set(last["training_state"])
    assert last["epoch"] == 2 and last["metrics"] == metrics(out)[-1]
    log = metrics(out)
    assert set(log[0]) >= {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                           "seconds", "images_per_second"}
    assert best["metrics"]["val_accuracy"] == max(m["val_accuracy"] for m in log)


def test_same_seed_same_metrics(tiny_real, tmp_path):
    for run in ("a", "b"):
        assert train_main(train_args(tiny_real, tmp_path / run, tmp_path / "cache", "--epochs", 2)) == 0
    strip = lambda log: [{k: v for k, v in m.items() if k not in ("seconds", "images_per_second", "elapsed")} for m in log]
    assert strip(metrics(tmp_path / "a")) == strip(metrics(tmp_path / "b"))


def _interrupt_on(monkeypatch, module, name: str, call_number: int):
    """Send this process SIGINT (Ctrl-C) during the n-th call of module.<name>, a function
    that module defines (so its own calls go through the patch)."""
    original, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call_number:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("module, where, call, ema", [(fitting, "validate", 1, 0), (loop, "compute_loss", 5, 0),
                                                     (loop, "compute_loss", 5, 0.9)],
                         ids=["between-epochs", "mid-epoch", "mid-epoch-ema"])
def test_interrupted_run_resumes_to_the_same_result(tiny_real, tmp_path, monkeypatch, capsys, module, where, call,
                                                     ema):
    args = lambda out: train_args(tiny_real, out, tmp_path / "cache", "--epochs", 2, "--dropout", 0.3,
                                  "--batch-size", 4, "--ema", ema)
    assert train_main(args(tmp_path / "whole")) == 0
    with monkeypatch.context() as patch:
        _interrupt_on(patch, module, where, call)
        assert train_main(args(tmp_path / "split")) == 1
    assert "Resume with: python train.py --resume" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path / "split" / "last.pt")]) == 0
    whole, split = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    for key in ("val_loss", "val_accuracy"):
        assert split["metrics"][key] == pytest.approx(whole["metrics"][key], abs=1e-6)
    for key, tensor in whole["state_dict"].items():
        torch.testing.assert_close(split["state_dict"][key], tensor, atol=1e-5, rtol=1e-4)


def test_fine_tune_on_three_classes(tiny_real, tmp_path, capsys):
    base = tmp_path / "base"
    assert train_main(train_args(tiny_real, base, tmp_path / "cache", "--epochs", 1)) == 0
    three = copy_subset(tiny_real, tmp_path / "three", {"train": 6, "val": 3})
    for i in range(9):
        make_image(three / ("train" if i < 6 else "val") / "fox" / f"fox.{i}.png", color=(230, 120, 20 + i))
    out = tmp_path / "fine"
    assert train_main(train_args(three, out, tmp_path / "cache", "--epochs", 2,
                                 "--init", base / "best.pt", "--freeze")) == 0
    assert "new output layer for 3 classes" in capsys.readouterr().out
    before, after = load_checkpoint(base / "best.pt"), load_checkpoint(out / "best.pt")
    assert after["classes"] == ["cat", "dog", "fox"] and after["model"]["num_classes"] == 3
    assert after["state_dict"]["head.weight"].shape == (3, 16)
    for key, tensor in before["state_dict"].items():  # --freeze: everything but the head untouched
        if not key.startswith("head."):
            assert torch.equal(after["state_dict"][key], tensor), key
    probabilities = Classifier.load(out / "best.pt").predict(three / "val" / "fox" / "fox.6.png")
    assert set(probabilities) == {"cat", "dog", "fox"} and sum(probabilities.values()) == pytest.approx(1)


def test_fine_tune_keeps_the_output_layer_when_classes_match(tiny_real, tmp_path, capsys):
    base = tmp_path / "base"
    assert train_main(train_args(tiny_real, base, tmp_path / "cache", "--epochs", 1)) == 0
    assert train_main(train_args(tiny_real, tmp_path / "again", tmp_path / "cache", "--epochs", 1,
                                 "--init", base / "best.pt", "--lr", 0)) == 0
    assert "new output layer" not in capsys.readouterr().out
    a, b = load_checkpoint(base / "best.pt"), load_checkpoint(tmp_path / "again" / "best.pt")
    assert torch.equal(a["state_dict"]["head.weight"], b["state_dict"]["head.weight"])


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    assert train_main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no data folder") and "\n" not in error


def test_ema_warms_up_then_averages_slowly():
    from torch.optim.swa_utils import AveragedModel

    model = create_model("convnet", channels=(4,))
    ema = AveragedModel(model, multi_avg_fn=ema_update(0.99), use_buffers=True)
    ema.update_parameters(model)  # the first update copies
    weight = lambda m: m.get_classifier().weight.detach().clone()
    start = weight(model)
    for n in range(1, 1500):
        with torch.no_grad():
            model.get_classifier().weight.fill_(float(n))
        ema.update_parameters(model)
        if n == 1:  # decay (1 + 1) / (10 + 1): mostly the new weights already
            torch.testing.assert_close(weight(ema.module), start * 2 / 11 + 9 / 11)
    # from update 890 on the decay is the full 0.99: the average lags about 0.99 / (1 - 0.99) = 99 updates
    assert 1390 < weight(ema.module).mean().item() < 1410
    assert ema.module.features[0][1].num_batches_tracked.dtype == torch.long


@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_loss_of_one_hot_probability_targets_equals_that_of_class_indices(kind):

    logits, labels = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    soft = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(compute_loss(kind, logits, soft, 0.1 if kind == "ce" else 0.0),
                               compute_loss(kind, logits, labels, 0.1 if kind == "ce" else 0.0))


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_training_with_mixed_images(tiny_real, tmp_path, mixing):
    out = tmp_path / mixing
    assert train_main(train_args(tiny_real, out, tmp_path / "cache", "--epochs", 2, "--mixing", mixing)) == 0
    for row in metrics(out):
        assert 0 <= row["train_accuracy"] <= 1 and row["train_loss"] > 0 and row["val_loss"] < 5
    assert load_checkpoint(out / "best.pt")["config"]["mixing"] == mixing


def test_the_from_scratch_recipe_follows_the_precision_the_run_computes_in():
    """bf16 computed natively affords 3-4x the compute in the same minutes (recipes.SCRATCH_BF16)."""
    fp32, bf16 = TrainConfig(precision="fp32").resolved(), TrainConfig(precision="bf16").resolved()
    assert (fp32.image_size, fp32.channels, fp32.size_from) == (80, (24, 48, 96, 192), 56)
    assert (bf16.image_size, bf16.channels, bf16.size_from) == (112, (32, 64, 128, 256), 80)
    assert fp32.time_budget == bf16.time_budget == 14 and bf16.epochs > fp32.epochs
    assert TrainConfig(precision="bf16", image_size=64).resolved().channels == (32, 64, 128, 256)  # a flag wins alone


def test_test_time_size_matches_how_large_things_look_in_the_training_crops():
    """Random crops keep min_scale..1 of the area, so things look ~1.26x larger in training
    than in a whole 80 px image: the from-scratch recipe also evaluates at 101 px."""
    assert TrainConfig(precision="fp32").resolved().tta_sizes == (101,)
    assert TrainConfig(precision="bf16").resolved().tta_sizes == (141,)  # 112 px crops
    assert TrainConfig(image_size=64).resolved().tta_sizes == (80,)
    assert TrainConfig(min_scale=1.0).resolved().tta_sizes == ()
    assert TrainConfig(augment=False).resolved().tta_sizes == ()
    assert TrainConfig(model="mlp").resolved().tta_sizes == ()  # takes its image size only
    assert TrainConfig(tta_sizes=(96, 112)).resolved().tta_sizes == (96, 112)
    lite0 = dict(model="efficientnet_lite0", pretrained=True)
    assert TrainConfig(**lite0).resolved().tta_sizes == ()  # a probe sees no crops
    assert TrainConfig(**lite0, image_size=224).resolved().tta_sizes == ()
    assert TrainConfig(**lite0, image_size=128, finetune="full").resolved().tta_sizes == (161,)


def test_training_crops_are_cut_from_photos_decoded_at_the_test_time_size(tiny_real, tmp_path):
    config = TrainConfig.from_dict({**vars(train.parse_args(train_args(tiny_real, tmp_path, tmp_path / "cache"))),
                                    "epochs": 1}).resolved()
    assert config.tta_sizes == (40,)  # 32 px crops look as large as a 40 px photo
    session, dataset = distributed.start("cpu"), find_dataset(tiny_real)
    preprocessing, crops = Preprocessing(32, tta_sizes=(40,)), Augmentation(config.min_scale)
    train_set, val_sets = fitting.load_splits(config, dataset, preprocessing, crops, session)
    assert train_set.images.shape[-1] == 40  # train/ is decoded at that size ...
    assert [v.images.shape[-1] for v in val_sets] == [32, 40]  # ... val at both
    pipeline = fitting.image_pipeline(config, torch.nn.Identity(), preprocessing, crops, train_set, val_sets, session)
    x, labels = pipeline.prepare(train_set.images[:4], train_set.targets[:4], torch.Generator().manual_seed(0), 32)
    assert x.shape == (4, 3, 32, 32)  # ... and every training batch is cut down to 32 px crops


def test_exclude_leaves_the_named_photos_out_and_the_checkpoint_records_it(tiny_real, tmp_path, capsys):
    data = copy_subset(tiny_real, tmp_path / "data", {"train": 6, "val": 3})
    bad = [data / "train" / "cat" / "cat.1.jpg", data / "val" / "dog" / "dog.4001.jpg"]
    findings = tmp_path / "findings.jsonl"
    findings.write_text("".join(json.dumps({"kind": "label", "path": str(p)}) + "\n" for p in bad)
                        + json.dumps({"kind": "imbalance", "path": str(data / "train" / "dog")}) + "\n")
    out = tmp_path / "run"
    assert train_main(train_args(data, out, tmp_path / "cache", "--epochs", 1, "--exclude", findings)) == 0
    assert f"--exclude {findings}: left out 2 photo(s)" in capsys.readouterr().out
    assert load_checkpoint(out / "best.pt")["config"]["exclude"] == str(findings)
    predicted = [json.loads(line)["path"] for line in (out / "val_predictions.jsonl").read_text().splitlines()]
    assert len(predicted) == 5 and str(bad[1]) not in predicted


def test_progressive_resizing_grows_the_crops_over_the_first_part_of_the_run():
    plan = make_plan(TrainConfig(epochs=10, image_size=80, size_from=56, size_ramp=0.5).resolved(), examples=64)
    assert [plan.train_size(e) for e in range(10)] == [56, 56, 64, 72, 80, 80, 80, 80, 80, 80]
    assert set(make_plan(TrainConfig(epochs=10, size_from=0, precision="fp32").resolved(), 64).sizes) == {80}
    assert make_plan(TrainConfig(epochs=10, precision="fp32").resolved(), 64).train_size(0) == 56  # the recipe's
    bf16 = make_plan(TrainConfig(epochs=10, precision="bf16").resolved(), 64)  # the bf16 recipe: 80 -> 112 px
    assert [bf16.train_size(e) for e in range(10)] == [80, 88, 96, 104, 112, 112, 112, 112, 112, 112]


def test_a_stride_2_stem_does_no_work_at_full_resolution():
    model = create_model("convnet", channels=(24, 48), stem_stride=2)
    assert model(torch.zeros(1, 3, 80, 80)).shape == (1, 2)
    first = model.features[1]  # the first stage: its residual block only (no pooling, same width)
    assert [type(m).__name__ for m in first] == ["ResidualBlock"]
    assert model.features[0][0].stride == (2, 2)


@pytest.mark.parametrize("minutes, planned", [(10, 40), (0.001, 1)])
def test_a_time_budget_plans_as_many_epochs_as_fit(tiny_real, tmp_path, capsys, minutes, planned):
    out = tmp_path / "run"
    assert train_main(train_args(tiny_real, out, tmp_path / "cache", "--epochs", 40, "--time-budget", minutes,
                                 "--eval-every", 40)) == 0
    assert f"time budget {minutes:g} min: " in capsys.readouterr().out
    last = load_checkpoint(out / "last.pt")
    assert last["plan"]["epochs"] == planned == last["epoch"]  # the checkpoint keeps the plan
    assert last["config"]["epochs"] == 40  # and the settings as given
    assert TrainConfig(epochs=5).resolved().time_budget == 0  # --epochs alone: exactly that many
