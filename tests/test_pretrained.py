"""Pretrained backbones: weight loading, the three training modes, recommended defaults,
calibration and the "neither" answer. Small images and a dozen photos keep it fast."""

import json
from pathlib import Path
import urllib.error

import pytest
import torch
import torchvision

from classifier import loop, recipes
from classifier.calibration import calibrate, expected_calibration_error, fit_temperature
from classifier.checkpoint import load_checkpoint
from classifier.predict import main as predict_main
from classifier.train import main as train_main
from classifier.images import Preprocessing
from classifier.errors import ClassifierError
from classifier.models import create_model
from classifier.inference import Classifier
from classifier.config import TrainConfig
from classifier.loop import make_optimizer
from classifier.neither import IMAGENET_SIMILAR, IMAGENET_THRESHOLD, NeitherRule, energy_score
from conftest import REPO, copy_subset, make_image
from test_train import _interrupt_on

NEITHER = REPO.parent / "shared" / "data" / "neither"


def lite0(**kwargs):
    return create_model("efficientnet_lite0", pretrained=True, **kwargs).eval()


def pretrained_args(data, out, cache, *extra) -> list[str]:
    return [str(a) for a in ("--data", data, "--out", out, "--cache-dir", cache, "--model", "efficientnet_lite0",
                             "--pretrained", "--image-size", 32, "--batch-size", 8, "--epochs", 1,
                             "--views", 2, "--tta-sizes", 40, "--device", "cpu", "--folds", 0, *extra)]


def test_lite0_ships_imagenet_weights_that_see_cats_and_dogs(real_data):
    photos = [real_data / "val" / "cat" / "cat.4001.jpg", real_data / "val" / "dog" / "dog.4001.jpg"]
    preprocessing = Preprocessing(224, "center_crop")
    x = preprocessing.normalize(torch.stack([preprocessing.decode(p) for p in photos]))
    with torch.inference_mode():
        _, imagenet, embedding = lite0(finetune="probe").forward_all(x)
    assert embedding.shape == (2, 1280)
    cat, dog = imagenet.argmax(1).tolist()
    assert 281 <= cat <= 293 and 151 <= dog <= 268  # ImageNet's cats and dog breeds


def test_broken_or_wrong_weights_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ClassifierError, match="not a readable weights file"):
        lite0(weights=str(garbage))
    with pytest.raises(ClassifierError, match="no such weights file"):
        lite0(weights=str(tmp_path / "missing.pth"))
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(ClassifierError, match="wrong weights file"):
        lite0(weights=str(other))
    state = create_model("efficientnet_lite0").state_dict()
    ordered = {k: v for k, v in state.items() if not k.startswith(("head.", "imagenet_stages."))}
    ordered["stages.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(ordered, tmp_path / "bent.pth")
    with pytest.raises(ClassifierError, match="has shape"):
        lite0(weights=str(tmp_path / "bent.pth"))


@pytest.mark.parametrize("name, build", [("resnet18", torchvision.models.resnet18),
                                         ("mobilenet_v3_large", torchvision.models.mobilenet_v3_large)])
def test_torchvision_backbones_load_a_local_weights_file(tmp_path, name, build):
    torch.manual_seed(0)
    reference = build()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    model = create_model(name, num_classes=3, weights=str(tmp_path / "w.pth"), finetune="probe").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        _, imagenet, _ = model.forward_all(x)
        torch.testing.assert_close(imagenet, reference.eval()(x), atol=1e-4, rtol=1e-4)
    assert model(x).shape == (2, 3) and "weights" not in model.model_config
    bad = {k: v for k, v in reference.state_dict().items() if "fc" not in k and "classifier" not in k}
    torch.save(bad, tmp_path / "partial.pth")
    with pytest.raises(ClassifierError, match="weights do not fit"):
        create_model(name, weights=str(tmp_path / "partial.pth"))


def test_offline_torchvision_download_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ClassifierError, match="could not download .* pass --weights FILE"):
        create_model("resnet18", pretrained=True)


def test_recommended_recipe_applies_only_to_unset_fields_of_pretrained_models():
    recipe = TrainConfig(model="efficientnet_lite0", pretrained=True).resolved()
    assert (recipe.finetune, recipe.image_size, recipe.tta, recipe.views, recipe.epochs) == ("probe", 272, False, 1, 30)
    assert recipe.tta_sizes == () and TrainConfig(model="efficientnet_lite0", pretrained=True, tta=True,
                                                  tta_sizes=(320,)).resolved().tta_sizes == (320,)
    assert TrainConfig(model="efficientnet_lite0", pretrained=True, epochs=3).resolved().epochs == 3
    scratch = TrainConfig(model="efficientnet_lite0", precision="fp32").resolved()
    assert (scratch.finetune, scratch.image_size, scratch.lr) == ("full", 80, recipes.SCRATCH["lr"])
    assert TrainConfig().resolved().optimizer == "sgd"
    assert (recipe.size_from, recipe.time_budget) == (0, 0)  # not the from-scratch recipe's


def test_full_fine_tuning_gives_pretrained_layers_a_lower_learning_rate():
    config = TrainConfig(model="efficientnet_lite0", pretrained=True, finetune="full", lr=0.01,
                         backbone_lr=0.1).resolved()
    model = create_model("efficientnet_lite0", finetune="full")
    optimizer = make_optimizer(config, model)
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        expected = 0.01 if id(group["params"][0]) in head else 0.001
        assert group["lr"] == pytest.approx(expected)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == \
        sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("mode, changed", [("probe", ["head"]), ("last", ["head", "stages.8"]),
                                           ("full", ["head"] + [f"stages.{i}" for i in range(9)])])
def test_three_training_modes(tiny_real, tmp_path, mode, changed):
    out = tmp_path / "run"
    assert train_main(pretrained_args(tiny_real, out, tmp_path / "cache", "--finetune", mode,
                                      "--finetune-stages", 1, "--lr", 0.01)) == 0
    before, after = lite0(finetune=mode, finetune_stages=1).state_dict(), load_checkpoint(out / "best.pt")
    moved = {k.split(".")[0] if k.startswith("head") else ".".join(k.split(".")[:2])
             for k, v in after["state_dict"].items()
             if not k.startswith("head") and not torch.equal(v, before[k])} | {"head"}
    assert moved == set(changed)  # and the ImageNet branch never changes
    assert after["model"]["finetune"] == mode and after["temperature"] > 0
    assert after["preprocessing"]["tta_sizes"] == (40,)  # predict --tta evaluates as training did
    assert after["neither"]["method"] == "imagenet"
    if mode != "full":  # a model that caches features keeps them of every training photo, for the rule
        assert after["neither"]["similar"] == IMAGENET_SIMILAR and after["neither_bank"].shape == (24, 1280)


def test_predict_resume_and_init_work_for_backbones(tiny_real, tmp_path, monkeypatch, capsys):
    args = lambda out, *extra: pretrained_args(tiny_real, out, tmp_path / "cache", "--epochs", 2,
                                               "--batch-size", 4, *extra)
    assert train_main(args(tmp_path / "whole")) == 0
    with monkeypatch.context() as patch:
        _interrupt_on(patch, loop, "compute_loss", 5)
        assert train_main(args(tmp_path / "split")) == 1
    assert train_main(["--resume", str(tmp_path / "split" / "last.pt")]) == 0
    whole, split = (load_checkpoint(tmp_path / r / "last.pt") for r in ("whole", "split"))
    assert split["metrics"]["val_accuracy"] == whole["metrics"]["val_accuracy"]
    for key, tensor in whole["state_dict"].items():
        torch.testing.assert_close(split["state_dict"][key], tensor, atol=1e-5, rtol=1e-4)

    three = copy_subset(tiny_real, tmp_path / "three", {"train": 4, "val": 2})
    for i in range(6):
        make_image(three / ("train" if i < 4 else "val") / "fox" / f"fox.{i}.png", color=(230, 120, 20 + i))
    assert train_main(pretrained_args(three, tmp_path / "fine", tmp_path / "cache",
                                      "--init", tmp_path / "whole" / "best.pt", "--freeze")) == 0
    fine = load_checkpoint(tmp_path / "fine" / "best.pt")
    assert fine["classes"] == ["cat", "dog", "fox"] and fine["neither"]["method"] == "energy"
    capsys.readouterr()
    assert predict_main([str(three / "val"), "--checkpoint", str(tmp_path / "fine" / "best.pt"), "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(results) == 6 and all(not r["neither"] for r in results)  # val scores sit above the threshold


def test_temperature_lowers_the_ece_of_an_overconfident_model():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (2000,), generator=generator)
    right = torch.rand(2000, generator=generator) < 0.8  # 80% accurate ...
    predicted = torch.where(right, labels, 1 - labels)
    logits = torch.nn.functional.one_hot(predicted, 2).float() * 8  # ... but ~100% sure
    fitted = calibrate(logits, labels)
    assert fitted["temperature"] > 2
    assert fitted["ece_before"] > 0.15 and fitted["ece_after"] < 0.02
    assert expected_calibration_error(torch.tensor([[0.8, 0.2]] * 10), torch.tensor([0] * 8 + [1] * 2)) \
        == pytest.approx(0.0, abs=1e-6)
    assert fit_temperature(logits / 1e3, labels) < 1  # underconfident: sharpened


def test_energy_rule_flags_inputs_less_familiar_than_any_validation_photo():
    val_logits = torch.tensor([[4.0, -4.0], [-3.0, 3.5], [5.0, -5.0]])
    rule = NeitherRule.fit(torch.nn.Linear(2, 2), ["apple", "pear"], val_logits)
    assert rule.method == "energy" and rule.to_dict() == {"method": "energy", "threshold": rule.threshold}
    assert (energy_score(val_logits) >= rule.threshold).all()
    assert rule.is_neither(rule.known_scores(torch.tensor([[0.1, 0.0]]), None)).item()


def test_neither_answer_for_photos_of_other_things(real_data, capsys, tmp_path):
    model = lite0(finetune="probe")
    model.model_config["finetune"] = "probe"
    classifier = Classifier(model, ["cat", "dog"], Preprocessing(224, "center_crop"),
                            neither=NeitherRule("imagenet", IMAGENET_THRESHOLD))
    photos = [NEITHER / "camera.png", NEITHER / "rocket.jpg", real_data / "val" / "dog" / "dog.4001.jpg",
              real_data / "val" / "cat" / "cat.4001.jpg"]
    results = list(classifier.predict_paths([str(p) for p in photos]))
    assert [r["neither"] for r in results] == [True, True, False, False]
    assert [r["label"] for r in results[:2]] == ["neither", "neither"]
    assert results[0]["known_score"] < IMAGENET_THRESHOLD < results[2]["known_score"]


def test_a_photo_like_a_training_photo_is_never_neither(real_data):
    """The top-5 test alone flags cats and dogs ImageNet describes badly; a photo close to a
    training photo (cosine similarity of pooled features >= "similar") is known whatever ImageNet says."""
    model = lite0(finetune="probe")
    preprocessing = Preprocessing(224, "center_crop")
    camera, rocket = NEITHER / "camera.png", NEITHER / "rocket.jpg"
    with torch.inference_mode():
        bank = model.forward_all(preprocessing.normalize(preprocessing.decode(camera)[None]))[2]  # "trained on" it
    classifier = Classifier(model, ["cat", "dog"], preprocessing, neither=NeitherRule.for_cats_and_dogs(bank))
    results = {Path(r["path"]).name: r for r in classifier.predict_paths([str(camera), str(rocket)])}
    assert not results["camera.png"]["neither"] and results["camera.png"]["known_score"] > 0
    assert results["rocket.jpg"]["neither"]
