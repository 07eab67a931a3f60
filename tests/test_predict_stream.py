"""predict over big folders: --output FILE.jsonl that a rerun resumes, a progress bar, workers."""

import json
import shutil

import pytest

from classifier.predict import main as predict_main
from classifier.errors import ClassifierError
from classifier.inference import Classifier
from classifier.predict import completed_paths


@pytest.fixture
def photos(tiny_real, tmp_path):
    shutil.copytree(tiny_real / "val", tmp_path / "photos")
    (tmp_path / "photos" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return tmp_path / "photos"


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_output_file_is_resumed_by_a_rerun(trained, photos, tmp_path, capsys):
    output = tmp_path / "results.jsonl"
    everything = ["--checkpoint", str(trained), "--output", str(output), "--batch-size", "4"]
    assert predict_main([str(photos / "cat"), *everything]) == 1  # broken.jpg
    first = read(output)
    assert len(first) == 7 and sum("error" in r for r in first) == 1
    assert capsys.readouterr().out == ""  # results go to the file, not to stdout
    with open(output, "a") as file:
        file.write('{"path": "cut short by a kill')  # an interrupted write
    assert predict_main([str(photos), *everything, "--workers", "2"]) == 0  # only the dogs are new
    assert "6 classified, 0 unreadable, 7 already in" in capsys.readouterr().err
    results = read(output)
    assert results[:7] == first and len(results) == 13
    assert sorted(r["path"] for r in results) == sorted({r["path"] for r in results})  # none twice
    model = Classifier.load(trained, "cpu")
    for result in results[7:]:
        assert result["probabilities"] == pytest.approx(model.predict(result["path"]), abs=1e-5)


def test_rerun_with_everything_done_classifies_nothing(trained, photos, tmp_path, capsys):
    output = tmp_path / "results.jsonl"
    args = [str(photos / "dog"), "--checkpoint", str(trained), "--output", str(output)]
    assert predict_main(args) == 0
    before = output.read_text()
    assert predict_main(args) == 0
    assert output.read_text() == before
    assert "0 classified, 0 unreadable, 6 already in" in capsys.readouterr().err


def test_an_output_file_of_something_else_is_refused(tmp_path):
    (tmp_path / "notes.jsonl").write_text("shopping list\n")
    with pytest.raises(ClassifierError, match="line 1: not a result written by predict"):
        completed_paths(tmp_path / "notes.jsonl")


def test_progress_bar_on_a_terminal(trained, photos, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert predict_main([str(photos / "dog"), "--checkpoint", str(trained), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 6
    assert "predict" in captured.err and "6/6" in captured.err
