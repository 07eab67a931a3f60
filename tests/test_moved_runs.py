"""A studio project copied to another folder (or machine) with a run stopped mid-way: the run
resumes there, by `train.py --resume` and by the studio's Resume, with its photos, its
exclusions and its folder where they are now; `--data` and `--out` say where when they moved apart."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from classifier import fitting
from classifier.checkpoint import load_checkpoint
from classifier.projects import Project
from classifier.runs import relocated
from classifier.studio_runs import RECIPES, train_command
from conftest import make_image, train_main
from test_robust_runs import one_line_error
from test_studio import client_for, follow_events, job_state
from test_train import _interrupt_on

EPOCHS = 4
SETTINGS = {"hidden": "16", "epochs": EPOCHS, "image_size": 16}  # the article's network at 16 px: seconds


def studio_flags(project: Project, out: Path, cache: Path) -> list[str]:
    """train.py's flags for a run of the project, exactly as the studio's Train starts it."""
    return train_command(project, out, RECIPES["mlp"], SETTINGS)[3:] + ["--cache-dir", str(cache), "--device", "cpu"]


def stopped_project(root: Path, tiny_real: Path, cache: Path, monkeypatch) -> tuple[Project, str]:
    """Project pets under root: 12 photos a class, one of them left out, and runs/run-1 stopped by
    Ctrl-C after its 2nd epoch. Returns the project and the left-out photo (CLASS/FILE)."""
    project = Project.create(root, "pets")
    for kind in ("cat", "dog"):
        shutil.copytree(tiny_real / "train" / kind, project.set_folder() / kind)
    left_out = f"cat/{sorted((project.set_folder() / 'cat').iterdir())[0].name}"
    project.set_excluded([left_out])
    folder = project.run_folder("run-1", exists=False)
    folder.mkdir(parents=True)
    with monkeypatch.context() as patch:
        _interrupt_on(patch, fitting, "validate", 2)
        assert train_main(studio_flags(project, folder, cache)) == 1
    assert load_checkpoint(folder / "last.pt")["epoch"] == 2
    return project, left_out


def epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_copied_project_resumes_with_train_py_to_the_run_never_stopped(tiny_real, tmp_path, monkeypatch, capsys):
    project, left_out = stopped_project(tmp_path / "here", tiny_real, tmp_path / "cache", monkeypatch)
    whole = tmp_path / "whole"  # the same run, never stopped nor moved
    whole.mkdir()
    assert train_main(studio_flags(project, whole, tmp_path / "cache")) == 0
    moved = shutil.copytree(project.folder, tmp_path / "there" / "pets")
    shutil.rmtree(tmp_path / "here")
    capsys.readouterr()

    assert train_main(["--resume", str(moved / "runs" / "run-1" / "last.pt")]) == 0
    printed = capsys.readouterr().out
    assert f"left out 1 photo(s) of {moved / 'photos'}" in printed  # its exclusions came along
    run = moved / "runs" / "run-1"
    assert epochs(run) == list(range(1, EPOCHS + 1)) and not (tmp_path / "here").exists()
    finished, never_stopped = load_checkpoint(run / "last.pt"), load_checkpoint(whole / "last.pt")
    assert finished["config"]["data"] == str(moved / "photos") and finished["config"]["out"] == str(run)
    for key, tensor in never_stopped["state_dict"].items():
        torch.testing.assert_close(finished["state_dict"][key], tensor, atol=1e-5, rtol=1e-4)
    predicted = [json.loads(line)["path"] for line in (run / "val_predictions.jsonl").read_text().splitlines()]
    assert predicted and all(Path(path).is_relative_to(moved / "photos") for path in predicted)


@pytest.mark.parametrize("made", ["now", "before"], ids=["relative-lists", "older-absolute-lists"])
def test_a_copied_project_resumes_from_the_studio_with_its_exclusions(tiny_real, tmp_path, monkeypatch, made):
    """"before": the run as versions that kept absolute paths left it (excluded.txt names photos by
    absolute path, last.pt has no relative_paths); it resumes all the same."""
    project, left_out = stopped_project(tmp_path / "here", tiny_real, tmp_path / "cache", monkeypatch)
    run = project.run_folder("run-1")
    if made == "before":
        (run / "excluded.txt").write_text(f"{project.set_folder() / left_out}\n")
        checkpoint = load_checkpoint(run / "last.pt")
        del checkpoint["relative_paths"]
        torch.save(checkpoint, run / "last.pt")
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    (tmp_path / "here").rename(tmp_path / "elsewhere")  # the original is no longer where the run recorded it
    before = (tmp_path / "elsewhere" / "pets" / "runs" / "run-1" / "metrics.jsonl").read_text()
    moved = tmp_path / "there" / "pets"

    with client_for(tmp_path / "there") as http:
        shown = http.get("/api/projects/pets").json()
        assert shown["excluded"] == 1
        cats = http.get("/api/projects/pets/photos", params={"class": "cat"}).json()["photos"]
        assert [p["path"] for p in cats if p["excluded"]] == [left_out]
        assert http.post("/api/projects/pets/runs/run-1/resume").json()["job"]["state"] == "running"
        events, _ = follow_events(http, "pets", "run-1")
        assert job_state(http, "pets", "run-1") == "finished", (moved / "runs" / "run-1" / "job.log").read_text()
        evaluation = http.get("/api/projects/pets/runs/run-1/evaluation").json()
    run = moved / "runs" / "run-1"
    assert epochs(run) == list(range(1, EPOCHS + 1))
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed"] and starts[1]["images"] == starts[0]["images"]
    assert f"left out 1 photo(s) of {moved / 'photos'}" in (run / "job.log").read_text()
    assert (run / "excluded.txt").read_text() == f"./{left_out}\n"
    assert all((moved / "photos" / path).is_file() for row in evaluation["cells"] for cell in row for path in cell)
    assert (tmp_path / "elsewhere" / "pets" / "runs" / "run-1" / "metrics.jsonl").read_text() == before


def test_resume_takes_data_and_out_from_the_command_line(tiny_real, tmp_path, monkeypatch, capsys):
    """The run folder alone is copied: its photos are not beside it, so resume says to pass --data;
    with --data (and --out) it goes on, leaving the same photo out, and ignores other flags."""
    project, left_out = stopped_project(tmp_path / "here", tiny_real, tmp_path / "cache", monkeypatch)
    photos = shutil.copytree(project.set_folder(), tmp_path / "photos now")
    copied = shutil.copytree(project.run_folder("run-1"), tmp_path / "copied run")
    shutil.rmtree(tmp_path / "here")
    capsys.readouterr()

    assert train_main(["--resume", str(copied / "last.pt")]) == 1
    one_line_error(capsys, copied / "last.pt", f"its photo folder {project.set_folder()} is not there",
                   "pass --data DIR")
    out = tmp_path / "out now"
    assert train_main(["--resume", str(copied / "last.pt"), "--data", str(photos), "--out", str(out),
                       "--epochs", "99"]) == 0
    printed = capsys.readouterr().out
    assert "--epochs ignored" in printed and f"left out 1 photo(s) of {photos}" in printed
    assert epochs(out) == list(range(1, EPOCHS + 1))  # the run's history came along; its own 4 epochs
    assert epochs(copied) == [1, 2]  # the copy it resumed from is left as it was
    finished = load_checkpoint(out / "last.pt")
    assert finished["epoch"] == EPOCHS and finished["config"]["data"] == str(photos)
    assert (out / "best.pt").is_file() and (out / "val_predictions.jsonl").is_file()


def test_older_checkpoints_find_their_photos_from_their_absolute_settings(tiny_real, tmp_path, monkeypatch):
    """A checkpoint without relative_paths: where its photos are is implied by its data and out."""
    project, _ = stopped_project(tmp_path / "here", tiny_real, tmp_path / "cache", monkeypatch)
    checkpoint = load_checkpoint(project.run_folder("run-1") / "last.pt")
    assert checkpoint["relative_paths"] == {"data": "../../photos", "exclude": "excluded.txt"}
    del checkpoint["relative_paths"]
    assert relocated(checkpoint, project.run_folder("run-1") / "last.pt") == checkpoint["config"]  # at home
    moved = shutil.copytree(project.folder, tmp_path / "there" / "pets")
    settings = relocated(checkpoint, moved / "runs" / "run-1" / "last.pt")
    assert (settings["data"], settings["out"], settings["exclude"]) == (
        str(moved / "photos"), str(moved / "runs" / "run-1"), str(moved / "runs" / "run-1" / "excluded.txt"))
    alone = tmp_path / "backup"  # a last.pt copied out of its folder alone still belongs to its run
    alone.mkdir()
    assert relocated(checkpoint, alone / "last.pt") == checkpoint["config"]


def test_an_absolute_exclusion_inside_the_project_is_read_as_its_photo(tmp_path):
    """project.json lists photos as CLASS/FILE; an absolute path into photos/ is read as that
    photo, and written back as CLASS/FILE with the next change."""
    project = Project.create(tmp_path, "pets")
    for name in ("cat/a.png", "cat/b.png", "dog/c.png"):
        make_image(project.set_folder() / name)
    project.update(excluded=[str(project.set_folder() / "cat" / "a.png"), "/somewhere/else/d.png"])
    assert project.excluded() == ["cat/a.png", "/somewhere/else/d.png"]
    assert [p["excluded"] for p in project.photos("cat")["photos"]] == [True, False]
    assert project.set_excluded(["cat/b.png"]) == ["/somewhere/else/d.png", "cat/a.png", "cat/b.png"]
    run = tmp_path / "run"
    run.mkdir()
    assert project.exclusion_file(run) == str(run / "excluded.txt")
    assert (run / "excluded.txt").read_text() == "./cat/a.png\n./cat/b.png\n"  # the photos still there
