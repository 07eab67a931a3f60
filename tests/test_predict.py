import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from classifier import tta
from classifier.images import Preprocessing
from classifier.inference import Classifier
from classifier.models import create_model
from classifier.predict import main as predict_main
from conftest import REPO


def test_python_api_paths_and_pil_images(trained, tiny_real):
    model = Classifier.load(trained)
    photo = next((tiny_real / "val" / "cat").iterdir())
    from_path, from_image = model.predict(photo), model.predict(Image.open(photo))
    assert set(from_path) == {"cat", "dog"} and sum(from_path.values()) == pytest.approx(1)
    assert from_image == pytest.approx(from_path, abs=2e-3)  # a path decodes JPEG in draft mode
    assert model.tta  # training evaluated with TTA, so predict uses it unless told otherwise
    assert model.predict(photo, tta=True) == from_path
    assert model.predict(photo, tta=False) != pytest.approx(from_path, abs=1e-9)


def test_tta_averages_the_mirror_image_and_every_test_time_size(tiny_real):
    """tta: logits of the photo and its mirror image, decoded at the image size and at each
    tta size, averaged; without tta only the image size is decoded and run."""
    torch.manual_seed(0)
    model = create_model("convnet", channels=(8, 16)).eval()
    preprocessing = Preprocessing(32, tta_sizes=(48,))
    classifier = Classifier(model, ["cat", "dog"], preprocessing, temperature=1.5)
    photos = sorted((tiny_real / "val" / "dog").iterdir())[:3]
    with torch.no_grad():
        views = [p.normalize(p.decode(photos[0])[None]) for p in (Preprocessing(32), Preprocessing(48))]
        logits = [model(x) for v in views for x in (v, v.flip(-1))]
    expected = (sum(logits) / 4 / 1.5).softmax(1)[0].tolist()
    assert list(classifier.predict(photos[0], tta=True).values()) == pytest.approx(expected, abs=1e-5)
    alone = (logits[0] / 1.5).softmax(1)[0].tolist()
    assert list(classifier.predict(photos[0]).values()) == pytest.approx(alone, abs=1e-5)
    streamed = list(classifier.predict_paths(map(str, photos), batch_size=2, tta=True))
    for photo, result in zip(photos, streamed):
        assert result["probabilities"] == pytest.approx(classifier.predict(photo, tta=True), abs=1e-5)
    with pytest.raises(Exception, match="positive"):
        Preprocessing(32, tta_sizes=(0,))


def test_adaptive_tta_gives_the_other_views_only_to_photos_the_first_leaves_unsure():
    first = torch.tensor([[4.0, 0.0], [0.2, 0.0], [0.0, 5.0]])  # sure, unsure, sure
    mirror = torch.tensor([[0.0, 4.0], [0.0, 0.6], [5.0, 0.0]])
    seen = []

    def forward(view):
        seen.append(len(view))
        return (first if view.sum() == 0 else mirror[view[:, 0, 0, 0].long()], None)

    views = [torch.zeros(3, 1, 1, 1), torch.arange(3.0).view(3, 1, 1, 1) + 0.5]  # the mirror view knows its rows
    views[1] = views[1].floor()
    logits, imagenet = tta.average(forward, views, below=0.9)
    assert seen == [3, 1] and imagenet is None  # the second view ran on the one unsure photo
    assert torch.equal(logits[[0, 2]], first[[0, 2]])
    assert torch.allclose(logits[1], (first[1] + mirror[1]) / 2)
    full, _ = tta.average(forward, views)  # below 1: every photo gets every view
    assert torch.allclose(full, (first + mirror) / 2)


def test_predict_json_for_folders_recursively_with_a_broken_file(trained, tiny_real, tmp_path, capsys):
    shutil.copytree(tiny_real / "val", tmp_path / "photos")
    (tmp_path / "photos" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    status = predict_main([str(tmp_path / "photos"), "--checkpoint", str(trained), "--json", "--batch-size", "5"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1  # one image could not be classified
    assert len(lines) == 13
    errors = [r for r in lines if "error" in r]
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.jpg") and "broken.jpg" in errors[0]["error"]
    model = Classifier.load(trained)
    for result in lines:
        if "error" not in result:
            assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
            assert result["probabilities"] == pytest.approx(model.predict(result["path"]), abs=1e-5)


def test_predict_readable_lines_and_exit_status(trained, tiny_real, capsys):
    photos = sorted((tiny_real / "val" / "dog").iterdir())[:2]
    assert predict_main([str(p) for p in photos] + ["--checkpoint", str(trained)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, photo in zip(lines, photos):
        label, cat_word, cat_p, dog_word, dog_p, path = line.split()
        assert label in ("cat", "dog") and (cat_word, dog_word) == ("cat", "dog")
        assert float(cat_p) + float(dog_p) == pytest.approx(1, abs=2e-3) and path == str(photo)


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert predict_main(["x.jpg", "--checkpoint", str(tmp_path / "nope.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "nope.pt: no such checkpoint" in err and "\n" not in err


def test_a_reader_that_leaves_early_stops_predict_quietly(trained, tiny_real):
    """`predict.py photos/ | head -1`: once the pipe's reader is gone, no traceback."""
    read_end, write_end = os.pipe()
    run = subprocess.Popen([sys.executable, "predict.py", str(tiny_real / "val"), "--checkpoint", str(trained)],
                           cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    os.close(read_end)  # the reader is gone before the first line is written
    _, err = run.communicate(timeout=120)
    assert run.returncode == 141 and "Traceback" not in err and "Error" not in err


@pytest.mark.parametrize("entry", [["predict.py"], ["-m", "classifier.predict"], ["-m", "classifier.train"]])
def test_entry_points_run(entry):
    result = subprocess.run([sys.executable, *entry, "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "--" in result.stdout and "usage:" in result.stdout


def test_console_scripts_are_installed():
    bin_dir = REPO / ".venv" / "bin"
    scripts = [shutil.which(name, path=str(bin_dir)) or shutil.which(name) for name in ("classifier-train", "classifier-predict")]
    assert all(scripts), "pip install -e . should install classifier-train and classifier-predict"
    assert "--checkpoint" in subprocess.run([scripts[1], "--help"], capture_output=True, text=True).stdout
