"""The pretrained probe solved by L-BFGS (classifier/probe.py, --optimizer lbfgs, the recipe's):
its strength is the one cross-validation scores best, the refit is fit_probe's solution, the saved
model predicts as the solver does, and a stopped solve resumes to the same model."""

import json

import pytest
import torch

from classifier import distributed, probe
from classifier.checkpoint import load_checkpoint, model_from_checkpoint
from classifier.config import TrainConfig
from classifier.data import find_photos, stratified_folds
from classifier.errors import ClassifierError
from classifier.fitting import build_model, feature_pipeline, load_splits
from classifier.inference import Classifier
from classifier.plan import make_plan
from classifier.runtime import resolve_precision
from classifier.recipes import SOLVER
from conftest import train_args, train_main
from test_pretrained import pretrained_args
from test_train import _interrupt_on


def blobs(per_class: int = 30, classes: int = 3, dims: int = 12, seed: int = 0):
    """Overlapping Gaussian classes with a few wrong labels: strengths score differently."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    centers = torch.randn(classes, dims, generator=generator)
    features = centers[labels] + 1.5 * torch.randn(len(labels), dims, generator=generator) + 5
    flipped = torch.randperm(len(labels), generator=generator)[:len(labels) // 10]
    labels[flipped] = (labels[flipped] + 1) % classes
    return features * torch.linspace(0.1, 10, dims), labels  # features of very different scales


def test_the_chosen_strength_scores_best_in_cross_validation_recomputed_independently():
    features, labels = blobs()
    scores = probe.cross_validate(features, labels, 3, seed=4)
    # recomputed: every fold of every deal fitted from zero (no warm start), standardized on its own photos
    recomputed = []
    for strength in SOLVER["strengths"]:
        loss, right, seen = 0.0, 0, 0
        for deal in range(SOLVER["deals"]):
            fold_of = stratified_folds(labels, SOLVER["folds"], 4 * SOLVER["deals"] + deal)
            for fold in range(SOLVER["folds"]):
                held = fold_of == fold
                fitted = probe.fit_probe(features[~held], labels[~held], 3, 1 / (strength * int((~held).sum())))
                logits = fitted.logits(features[held])
                loss -= logits.log_softmax(1).gather(1, labels[held, None]).sum().item()
                right += int((logits.argmax(1) == labels[held]).sum())
                seen += int(held.sum())
        recomputed.append((strength, right / seen, loss / seen))
    assert [s["accuracy"] for s in scores] == pytest.approx([r[1] for r in recomputed], abs=1.5 / seen)
    assert [s["loss"] for s in scores] == pytest.approx([r[2] for r in recomputed], rel=2e-3, abs=1e-3)
    accuracies = {round(r[1], 6) for r in recomputed}
    assert len(accuracies) > 2  # the strengths really differ here
    best = max(recomputed, key=lambda r: (r[1], -r[2]))
    assert probe.best_strength(scores)["strength"] == best[0]


def test_the_refit_is_fit_probes_solution_at_the_chosen_strength():
    features, labels = blobs(seed=1)
    fitted, chosen = probe.cross_validated_probe(features, labels, 3)
    alone = probe.fit_probe(features, labels, 3, 1 / (chosen["strength"] * len(labels)))
    for a, b in ((fitted.weight, alone.weight), (fitted.bias, alone.bias), (fitted.mean, alone.mean)):
        assert torch.equal(a, b)
    weight, bias = fitted.folded()  # the standardization folded into the layer: the same logits
    torch.testing.assert_close(features @ weight.T + bias, fitted.logits(features).float(), atol=1e-4, rtol=1e-4)


def test_a_stop_is_asked_for_between_fits():
    features, labels = blobs(seed=2)
    calls = []
    assert probe.cross_validated_probe(features, labels, 3, on_fit=lambda *fit: calls.append(fit) or len(calls) < 7) is None
    first_fold = probe.folds_of(labels, 1, 0, SOLVER["deals"])[0]
    # 7 fits: the 10 strengths of the first fold were still going, each on the photos of the other folds
    assert len(calls) == 7 and all(seen == int((~first_fold).sum()) for _, _, seen in calls)


def test_a_photo_a_class_still_gets_a_probe():
    """No fold leaves every class to fit on: scikit-learn's default strength, C = 1."""
    features, labels = torch.randn(2, 5), torch.tensor([0, 1])
    fitted, chosen = probe.cross_validated_probe(features, labels, 2)
    assert (chosen["strength"], chosen["scored"]) == (1.0, 0) and (fitted(features).argmax(1) == labels).all()


def test_the_recipe_solves_and_epochs_ask_for_gradient_descent():
    recipe = TrainConfig(model="efficientnet_lite0", pretrained=True).resolved()
    assert recipe.optimizer == "lbfgs"
    assert TrainConfig(model="efficientnet_lite0", pretrained=True, epochs=3).resolved().optimizer == "adamw"
    for more in ({"finetune": "last"}, {"finetune": "full"}, {"time_budget": 1.0}):
        assert TrainConfig(model="efficientnet_lite0", pretrained=True, **more).resolved().optimizer == "adamw"
    assert TrainConfig(model="efficientnet_lite0", pretrained=True, optimizer="adamw").resolved().epochs == 30
    plan = make_plan(recipe, 100)
    assert (plan.epochs, plan.batch_size, plan.evaluated) == (1, 100, (1,))
    assert plan.steps_per_epoch == len(SOLVER["strengths"]) * SOLVER["folds"] * SOLVER["deals"] + 1


@pytest.mark.parametrize("flags, message", [(["--model", "convnet"], "solves a linear probe"),
                                            (["--pretrained", "--loss", "mse"], "minimizes the cross-entropy"),
                                            (["--pretrained", "--time-budget", "1"], "leave out --time-budget"),
                                            (["--pretrained", "--finetune", "last"], "solves a linear probe")])
def test_the_solver_refuses_what_it_cannot_do(tiny_real, tmp_path, capsys, flags, message):
    args = ["--data", tiny_real, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "--image-size", 32,
            "--device", "cpu", "--folds", 0, "--optimizer", "lbfgs", "--channels", "8,16"]
    if "--model" not in flags:
        flags = ["--model", "efficientnet_lite0", *flags]
    assert train_main([str(a) for a in args + flags]) == 1
    assert message in capsys.readouterr().err


def solver_args(data, out, cache, precision: str = "fp32") -> list[str]:
    return [str(a) for a in ("--data", data, "--out", out, "--cache-dir", cache, "--model", "efficientnet_lite0",
                             "--pretrained", "--image-size", 32, "--precision", precision, "--device", "cpu",
                             "--folds", 0)]


def test_the_saved_model_predicts_as_the_solver(tiny_real, tmp_path):
    out = tmp_path / "run"
    assert train_main(solver_args(tiny_real, out, tmp_path / "cache")) == 0
    best = load_checkpoint(out / "best.pt")
    config = TrainConfig.from_dict(best["config"])
    assert (config.optimizer, best["plan"]["epochs"]) == ("lbfgs", 1)
    # the solver again, on the features the run computed, as the run computes them
    model, preprocessing = build_model(config, best["classes"])
    dataset = find_photos(config.data, config.val_fraction, config.seed, config.exclude)[0]
    train, val = load_splits(config, dataset, preprocessing, None, distributed.start("cpu"))
    pipeline = feature_pipeline(config, model, preprocessing, None, train, val, torch.device("cpu"))
    features, labels = pipeline.train_inputs[0].float().flatten(1), pipeline.train_inputs[1]
    fitted, chosen = probe.cross_validated_probe(features, labels, 2, seed=config.seed)
    assert best["metrics"]["l2_c"] == chosen["strength"] and best["metrics"]["cv_accuracy"] == chosen["accuracy"]
    val_features = pipeline.val_inputs[0][0].float()  # [N, views, C, 1, 1]
    saved = model_from_checkpoint(best, out / "best.pt").eval()
    with torch.inference_mode():
        torch.testing.assert_close(saved.tail(val_features[:, 0]), fitted.logits(val_features[:, 0].flatten(1)).float(),
                                   atol=1e-4, rtol=1e-4)
    answers = list(Classifier.load(out / "best.pt", device="cpu", precision="fp32").predict_paths(val[0].paths))
    solver = (fitted.logits(val_features[:, 0].flatten(1)) / best["temperature"]).softmax(1)
    for answer, expected in zip(answers, solver):
        assert [answer["probabilities"][c] for c in best["classes"]] == pytest.approx(expected.tolist(), abs=2e-3)


@pytest.mark.parametrize("precision", ["fp32", "auto"])  # auto: bf16 features where the CPU has native bf16
def test_a_stopped_solve_resumes_to_the_same_model(tiny_real, tmp_path, monkeypatch, precision):
    args = lambda out: solver_args(tiny_real, out, tmp_path / "cache", precision)
    assert train_main(args(tmp_path / "whole")) == 0
    with monkeypatch.context() as patch:
        _interrupt_on(patch, probe, "solve", 20)
        assert train_main(args(tmp_path / "split")) == 1
    stopped = load_checkpoint(tmp_path / "split" / "last.pt")
    # stopped inside the solve (the label check's fits come first, so fewer than 20 of its fits were done)
    steps = stopped["plan"]["steps_per_epoch"]
    assert stopped["training_state"]["epoch"] == 0 and 0 < stopped["training_state"]["step"] < min(20, steps)
    assert train_main(["--resume", str(tmp_path / "split" / "last.pt")]) == 0
    whole, split = (load_checkpoint(tmp_path / r / "best.pt") for r in ("whole", "split"))
    assert whole["config"]["precision"] == resolve_precision(precision, torch.device("cpu"))
    for key, tensor in whole["state_dict"].items():
        assert torch.equal(split["state_dict"][key], tensor), key
    events = [json.loads(line) for line in (tmp_path / "split" / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "stopped" in kinds and kinds[-1] == "end" and kinds.count("epoch") == 1
    steps = [e for e in events if e["event"] == "step"]
    assert steps[-1]["step"] == steps[-1]["steps"] == events[0]["steps_per_epoch"]
    epoch = next(e for e in events if e["event"] == "epoch")
    assert epoch["train_loss"] == steps[-1]["loss"] and set(epoch) >= {"l2_c", "cv_loss", "cv_accuracy", "val_accuracy"}
