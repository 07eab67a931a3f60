"""The neither rule as one object: its tests, what the checkpoint and an export keep of it, old
checkpoints, and the builder of the neither set (benchmarks/neither_set.py) on files made here."""

import io
import json
import zipfile

import pytest
import torch
from PIL import Image

from benchmarks.neither_set import Source, members, names_a_cat_or_dog, selected, split_parts
from classifier.checkpoint import load_checkpoint
from classifier.export import main as export_main
from classifier.inference import Classifier
from classifier.neither import IMAGENET_SIMILAR, IMAGENET_TOP, NEIGHBOURS, NeitherRule, neighbour_similarity
from classifier.predict import main as predict_main
from classifier.train import main as train_main
from conftest import copy_subset
from test_pretrained import NEITHER, pretrained_args

CAT = 281  # ImageNet's tabby


def imagenet_logits(best: int) -> torch.Tensor:
    """One photo's ImageNet logits whose likeliest guess is `best`, then classes 0-9."""
    logits = torch.zeros(1, 1000)
    logits[0, best], logits[0, :10] = 9.0, torch.arange(8.0, -2.0, -1.0)
    return logits


def test_a_photo_is_neither_only_when_imagenet_and_the_training_photos_both_say_so():
    bank = torch.eye(4, 8)
    rule = NeitherRule("imagenet", 0.0, 0.5, top=5, neighbours=2, bank=bank)
    close, far = torch.tensor([[1.0, 1.0, 0, 0, 0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1.0]])
    assert rule.similarity(close).item() == pytest.approx(2 ** -0.5)  # the mean of its 2 most similar
    assert rule.similarity(far).item() == pytest.approx(0.0)
    cases = {(CAT, "far"): False, (500, "close"): False, (500, "far"): True}
    for (best, where), neither in cases.items():
        score = rule.known_scores(None, imagenet_logits(best), rule.similarity(close if where == "close" else far))
        assert rule.is_neither(score).item() == neither, (best, where)
    ranked_sixth = imagenet_logits(500)
    ranked_sixth[0, CAT] = 4.5  # sixth: below the top 5 (9, 8, 7, 6, 5), above the rest
    assert rule.is_neither(rule.known_scores(None, ranked_sixth, rule.similarity(far))).item()
    wider = NeitherRule("imagenet", 0.0, 0.5, top=6, neighbours=2, bank=bank)
    assert not wider.is_neither(wider.known_scores(None, ranked_sixth, wider.similarity(far))).item()


def test_the_rule_round_trips_and_old_checkpoints_read_as_they_were_meant():
    bank = torch.randn(6, 16)
    rule = NeitherRule.for_cats_and_dogs(bank)
    saved = rule.to_checkpoint()
    assert saved["neither"] == {"method": "imagenet", "threshold": 0.0, "top": IMAGENET_TOP,
                                "similar": IMAGENET_SIMILAR, "neighbours": NEIGHBOURS}
    assert json.loads(json.dumps(saved["neither"])) == saved["neither"]  # plain data for the ONNX metadata
    again = NeitherRule.from_checkpoint(saved)
    assert again.to_dict() == rule.to_dict() and again.bank is bank
    old = NeitherRule.from_checkpoint({"neither": {"method": "imagenet", "threshold": 0.0, "similar": 0.45},
                                       "neither_bank": bank})
    assert (old.top, old.neighbours, old.similar) == (5, 1, 0.45)
    query = torch.randn(3, 16)
    nearest = (torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T).amax(1)
    torch.testing.assert_close(old.similarity(query), nearest)
    assert NeitherRule.from_dict({"method": "imagenet", "threshold": 0.0}).bank is None  # --finetune full
    assert NeitherRule.from_checkpoint({}) is None
    energy = NeitherRule("energy", 1.5)
    assert NeitherRule.from_dict(energy.to_dict()).to_dict() == energy.to_dict() == energy.to_checkpoint()["neither"]
    assert neighbour_similarity(query, bank[:2], neighbours=5).shape == (3,)  # fewer photos than neighbours


@pytest.fixture(scope="module")
def pretrained_run(real_data, tmp_path_factory):
    """A pretrained probe at 32 px on 12 + 6 photos a class, and a folder of photos to answer:
    val/ cats and dogs and ../shared/data/neither's other things."""
    tmp = tmp_path_factory.mktemp("neither_run")
    data = copy_subset(real_data, tmp / "data", {"train": 12, "val": 6})
    assert train_main(pretrained_args(data, tmp / "run", tmp / "cache")) == 0
    photos = tmp / "photos"
    photos.mkdir()
    for path in [*sorted((data / "val").rglob("*.jpg")), *sorted(NEITHER.iterdir())[:8]]:
        (photos / path.name).symlink_to(path)
    return tmp / "run" / "best.pt", photos


def answers(checkpoint, photos, capsys) -> list[dict]:
    capsys.readouterr()
    assert predict_main([str(photos), "--checkpoint", str(checkpoint), "--json", "--no-tta", "--precision", "fp32"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_the_exported_onnx_model_answers_neither_as_predict_does(pretrained_run, tmp_path, capsys):
    checkpoint, photos = pretrained_run
    assert NeitherRule.from_checkpoint(load_checkpoint(checkpoint)).bank.shape == (24, 1280)
    assert export_main([str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "model.onnx")]) == 0
    ours, theirs = answers(checkpoint, photos, capsys), answers(tmp_path / "model.onnx", photos, capsys)
    assert len(ours) == len(theirs) == 20
    assert sum(a["neither"] for a in ours) >= 4  # the rule does flag some of the other things here
    for a, b in zip(ours, theirs):
        assert (a["path"], a["label"], a["neither"]) == (b["path"], b["label"], b["neither"])
        assert a["known_score"] == pytest.approx(b["known_score"], abs=1e-3)


def test_a_checkpoint_with_the_old_rule_predicts_with_it(pretrained_run, tmp_path, capsys):
    checkpoint, photos = pretrained_run
    old = load_checkpoint(checkpoint)
    old["neither"] = {"method": "imagenet", "threshold": 0.0, "similar": 0.45}  # as saved before NeitherRule
    torch.save(old, tmp_path / "old.pt")
    classifier = Classifier.load(tmp_path / "old.pt", device="cpu", precision="fp32")
    assert (classifier.neither.top, classifier.neither.neighbours, classifier.neither.similar) == (5, 1, 0.45)
    results = answers(tmp_path / "old.pt", photos, capsys)
    images = torch.stack([classifier.preprocessing.decode(photos / r["path"].split("/")[-1]) for r in results])
    logits, imagenet, embedding = classifier.model.forward_all(classifier.preprocessing.normalize(images))
    nearest = (torch.nn.functional.normalize(embedding, dim=1)
               @ torch.nn.functional.normalize(old["neither_bank"].float(), dim=1).T).amax(1)
    expected = torch.maximum(imagenet[:, 151:294].amax(1) - imagenet.topk(5, 1).values[:, -1], 10 * (nearest - 0.45))
    assert [r["known_score"] for r in results] == pytest.approx(expected.tolist(), abs=1e-3)


def test_the_neither_set_leaves_out_cats_and_dogs_and_splits_by_source(tmp_path):
    assert names_a_cat_or_dog("stamps/animals/mammals/cats/tiger.png") and names_a_cat_or_dog("smiley_cat")
    assert names_a_cat_or_dog("hotdog") is False and names_a_cat_or_dog("cathedral.png") is False
    wheel = tmp_path / "sample-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, size in (("data/horse.png", 40), ("data/dog.png", 40), ("data/tiny.png", 8), ("data/x.txt", 0)):
            buffer = io.BytesIO()
            if size:
                Image.new("RGB", (size, size), "red").save(buffer, "PNG")
            z.writestr(name, buffer.getvalue() or b"text")
    source = Source("sample", "pypi", "sample", "MIT", "photos", r"data/[^/]+$")
    kept = [path for path, *_ in selected(source, members(wheel))]
    assert kept == ["data/horse.png", "data/tiny.png"]  # the dog is out; tiny images are dropped when stored
    sources = [Source(n, "pypi", n, "", k, "") for n, k in
               (("scikit-image", "photos"), ("a", "photos"), ("b", "photos"), ("c", "photos"), ("d", "people"))]
    parts = split_parts(sources, {"scikit-image": 20, "a": 30, "b": 15, "c": 10, "d": 5})
    assert parts == {"scikit-image": "tune", "a": "held_out", "b": "tune", "c": "held_out", "d": "held_out"}


def test_training_says_when_labels_look_noisy(real_data, tmp_path, capsys):
    """The audit's label check after a pretrained probe's training: a folder with a quarter of
    each class in the other's folder is called noisy, the untouched one is not."""
    clean = copy_subset(real_data, tmp_path / "clean", {"train": 24, "val": 6})
    noisy = copy_subset(real_data, tmp_path / "noisy", {"train": 24, "val": 6})
    for name, other in (("cat", "dog"), ("dog", "cat")):
        for photo in sorted((clean / "train" / name).iterdir())[:6]:
            (noisy / "train" / name / photo.name).rename(noisy / "train" / other / photo.name)
    checks = {}
    for name, folder in (("clean", clean), ("noisy", noisy)):
        capsys.readouterr()
        assert train_main(pretrained_args(folder, tmp_path / name, tmp_path / "cache", "--image-size", 128, "--views", 1)) == 0
        checks[name] = json.loads((tmp_path / name / "label_check.json").read_text())
        assert load_checkpoint(tmp_path / name / "best.pt")["label_check"] == checks[name]
        assert f"{checks[name]['flagged']} of 48 training photos" in capsys.readouterr().out
    assert checks["noisy"]["noisy"] and not checks["clean"]["noisy"]
    assert checks["noisy"]["flagged"] >= 6 > checks["clean"]["flagged"]
