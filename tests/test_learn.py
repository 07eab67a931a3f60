"""The learn view's numbers are the real ones: each step's photos, outputs, error, gradients,
weight changes and counter, recomputed here from the weights before and after the step."""

import copy

import pytest
import torch
from torch import nn

from classifier.checkpoint import load_checkpoint
from classifier.errors import ClassifierError
from classifier.learn import Learner, LearnSettings
from classifier.loop import compute_loss
from classifier.pictures import weight_images
from classifier.runtime import one_thread
from classifier.train import main as train_main
from classifier.train import train

SETTINGS = {"mlp": LearnSettings(model="mlp", hidden=(12,), batch_size=8, image_size=16, epochs=2),
            "convnet": LearnSettings(model="convnet", channels=(4, 8), batch_size=8, image_size=16, lr=0.05,
                                     loss="mse", momentum=0.9, epochs=2)}


def count_updates(optimizer: torch.optim.Optimizer) -> list:
    """A list that grows by one each time the optimizer updates the weights."""
    calls = []
    optimizer.register_step_post_hook(lambda *args: calls.append(1))
    return calls


def recompute(model: nn.Module, learner: Learner, photos: torch.Tensor) -> torch.Tensor:
    """The output layer's values for the shown photos (uint8 [N, h, w, 3]), in training mode as the step ran."""
    model.train()
    return model(learner.run.preprocessing.normalize(photos.permute(0, 3, 1, 2).contiguous()))


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_each_step_shows_the_real_numbers(project, tmp_path, kind):
    learner = Learner.start(project / "photos", tmp_path / "run", SETTINGS[kind])
    updates = count_updates(learner.run.trainer.optimizer)
    train_images, train_labels = learner.run.pipeline.train_inputs
    starting_weights = next(m for m in learner.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))).weight.detach().clone()
    for number in range(1, 6):
        before = copy.deepcopy(learner.model)
        shown = learner.step()
        # the photos are training photos with their labels, and the counter counts the updates
        for photo, label in zip(shown.photos, shown.labels):
            match = (train_images == photo.permute(2, 0, 1)).flatten(1).all(1).nonzero().flatten()
            assert len(match) and label in train_labels[match].tolist()
        assert shown.iteration == len(updates) == number
        # output layer values, softmax, targets and the error: the weights before the step on these photos
        logits = recompute(before, learner, shown.photos).detach()
        torch.testing.assert_close(shown.outputs, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shown.probabilities, logits.softmax(1))
        assert shown.targets.argmax(1).tolist() == shown.labels and shown.targets.sum().item() == len(shown.labels)
        labels = torch.tensor(shown.labels)
        assert shown.error == pytest.approx(compute_loss(SETTINGS[kind].loss, logits, labels).item(), rel=1e-5)
        for loss in ("mse", "ce"):
            assert shown.errors[loss] == pytest.approx(compute_loss(loss, logits, labels).item(), rel=1e-5)
        # each layer's weight change is the weights after minus before; the gradient that of the error
        after, previous = dict(learner.model.named_parameters()), dict(before.named_parameters())
        for layer in shown.layers:
            own = [n for n in after if n.rsplit(".", 1)[0] == layer.name]
            change = torch.cat([(after[n].detach() - previous[n].detach()).flatten() for n in own])
            assert layer.change == pytest.approx(change.norm().item(), rel=1e-5, abs=1e-9)
            assert layer.size == pytest.approx(torch.cat([after[n].detach().flatten() for n in own]).norm().item(),
                                               rel=1e-5)
        first = next(m for m in learner.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        as_photo = (lambda w: w) if kind == "convnet" else (lambda w: w.reshape(-1, 3, 16, 16))
        assert torch.equal(shown.first_layer, weight_images(as_photo(first.weight.detach())))
        assert torch.equal(shown.learned, weight_images(as_photo(first.weight.detach() - starting_weights)))
    assert [layer.label for layer in shown.layers][-1] == "output layer"


def test_plain_gradient_descent_moves_each_weight_by_minus_lr_times_its_gradient(project, tmp_path):
    """Momentum 0 (the default): the change shown is exactly the learning rate times the gradient shown,
    and the gradient is autograd's of the error recomputed on the shown photos."""
    learner = Learner.start(project / "photos", tmp_path / "run", SETTINGS["mlp"])
    learner.step()
    before = copy.deepcopy(learner.model)
    shown = learner.step()
    loss = compute_loss("ce", recompute(before, learner, shown.photos), torch.tensor(shown.labels))
    loss.backward()
    for layer in shown.layers:
        gradient = torch.cat([p.grad.flatten() for n, p in before.named_parameters() if n.startswith(layer.name + ".")])
        assert layer.gradient == pytest.approx(gradient.norm().item(), rel=1e-4)
        assert layer.change == pytest.approx(0.01 * layer.gradient, rel=1e-4)


def test_a_pass_over_the_photos_ends_in_validation_as_in_a_run(project, tmp_path):
    learner = Learner.start(project / "photos", tmp_path / "run", SETTINGS["mlp"])
    steps = len(learner.batches)
    shown = [learner.step() for _ in range(steps + 1)]
    assert all(not s.validation for s in shown[:steps - 1]) and shown[steps - 1].validation["epoch"] == 1
    assert 0 <= shown[steps - 1].validation["val_accuracy"] <= 1 and shown[steps].epoch == 1
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1


def test_train_continues_exactly_as_a_normal_run(project, tmp_path):
    """Steps taken one at a time, then handed to `train.py --resume`, give the very weights of a
    run of train.py with the same settings that never stopped (on one thread, as the learner
    steps: other thread counts sum in another order, which changes the float rounding)."""
    settings = SETTINGS["convnet"]
    learner = Learner.start(project / "photos", tmp_path / "learned", settings)
    for _ in range(len(learner.batches) + 2):  # into the second pass, past a validation
        learner.step()
    with one_thread():
        assert train_main(["--resume", str(learner.hand_over())]) == 0
        train(settings.config(project / "photos", tmp_path / "normal"))
    learned, normal = (load_checkpoint(tmp_path / run / "last.pt") for run in ("learned", "normal"))
    assert learned["epoch"] == normal["epoch"] == 2
    for name, value in normal["state_dict"].items():
        torch.testing.assert_close(learned["state_dict"][name], value, rtol=0, atol=0, msg=name)


def test_too_large_a_learning_rate_diverges_and_says_so(project, tmp_path):
    learner = Learner.start(project / "photos", tmp_path / "run", LearnSettings(
        model="mlp", hidden=(12,), batch_size=8, image_size=16, lr=100.0))
    shown = [learner.step() for _ in range(20) if not learner.diverged]
    assert shown[-1].diverged.startswith("the error is no longer a number") and not shown[-1].layers
    with pytest.raises(ClassifierError, match="smaller learning rate"):
        learner.step()
    with pytest.raises(ClassifierError, match="smaller learning rate"):
        learner.hand_over()


@pytest.mark.parametrize("change, message", [
    ({"lr": 0}, "lr must be between"), ({"lr": float("nan")}, "lr must be between"),
    ({"model": "resnet18"}, "model must be one of"), ({"hidden": (0,)}, "width must be between"),
    ({"model": "convnet", "channels": ()}, "stages must be between"), ({"batch_size": 1000}, "batch_size"),
    ({"activation": "softsign"}, "activation one of")])
def test_settings_out_of_range_are_one_clear_error(change, message):
    with pytest.raises(ClassifierError, match=message):
        LearnSettings(**change).check()
