"""Checkpoints and runs: atomic saves survive kill -9, Ctrl-C and SIGTERM save and resume,
loading never runs code, bad or mismatched checkpoints and unwritable or full output folders
give one line naming the file, and a diverging run never overwrites a good checkpoint."""

import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier.checkpoint import load_checkpoint, save_checkpoint
from classifier.predict import main as predict_main
from classifier.train import main as train_main
from classifier.images import Preprocessing
from classifier.errors import ClassifierError
from classifier.models import create_model
from classifier.inference import Classifier
from conftest import REPO, copy_subset, make_image, train_args
from other_user import run_as_nobody, shared_folder

CLASSES = ["cat", "dog"]
PREPROCESSING = Preprocessing(image_size=32).to_dict()


def small_model(**arguments):
    torch.manual_seed(0)
    return create_model("convnet", 2, **{"channels": [8, 16], **arguments})


def one_line_error(capsys, *fragments) -> str:
    """The single stderr line of a failed command, checked to hold every fragment."""
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and all(str(f) in error for f in fragments), error
    return error


@pytest.fixture(scope="module")
def trained(tiny_real, tmp_path_factory) -> Path:
    """A run folder with best.pt and last.pt from one epoch on its own copy of the data."""
    root = tmp_path_factory.mktemp("trained")
    data = copy_subset(tiny_real, root / "data", {"train": 6, "val": 3})
    assert train_main(train_args(data, root / "run", root / "cache", "--epochs", 1, "--batch-size", 4)) == 0
    return root / "run"


# --------------------------------------------------------------------------- loading never runs code


class RunsACommand:
    """Pickles to a call of os.system: what a malicious checkpoint holds."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_a_checkpoint_that_would_run_a_command_is_refused_and_the_command_never_runs(
        tmp_path, capsys, container):
    marker = tmp_path / "the-command-ran"
    payload = {"format": "catsdogs-classifier/1", "state_dict": {}, "x": RunsACommand(f"touch {marker}")}
    evil = tmp_path / "evil.pt"
    if container == "torch-zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(ClassifierError, match="contains code or objects other than tensors"):
        load_checkpoint(evil)
    with pytest.raises(ClassifierError, match="refused"):
        Classifier.load(evil)
    assert predict_main(["x.jpg", "--checkpoint", str(evil)]) == 1
    one_line_error(capsys, evil, "refused")
    for flag in ("--init", "--resume"):
        assert train_main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), flag, str(evil)]) == 1
        one_line_error(capsys, evil, "refused")
    assert not marker.exists()
    # the file is really dangerous: an unsafe load runs the command
    if container == "torch-zip":
        torch.load(evil, weights_only=False)
    else:
        pickle.loads(evil.read_bytes())
    assert marker.exists()


# --------------------------------------------------------------------------- bad checkpoints


def _corrupt(path: Path, good: Path, case: str) -> None:
    data, checkpoint = good.read_bytes(), load_checkpoint(good)
    if case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "bytes-flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])
    elif case == "text":
        path.write_text("this is not a checkpoint\n")
    elif case == "a-bare-state-dict":
        torch.save(small_model().state_dict(), path)
    elif case == "another-architecture":
        torch.save({**checkpoint, "model": {**checkpoint["model"], "channels": [8, 32]}}, path)
    elif case == "unknown-model":
        torch.save({**checkpoint, "model": {**checkpoint["model"], "name": "vgg1000"}}, path)
    elif case == "three-class-names-two-outputs":
        torch.save({**checkpoint, "classes": ["cat", "dog", "fox"]}, path)
    elif case == "no-weights":
        torch.save({k: v for k, v in checkpoint.items() if k != "state_dict"}, path)


BAD_CHECKPOINTS = {
    "truncated": "not a readable checkpoint",
    "empty": "not a readable checkpoint",
    "bytes-flipped": "corrupted checkpoint",
    "text": "not a readable checkpoint",
    "a-bare-state-dict": "not a checkpoint of this project",
    "another-architecture": "weights do not fit this model (16 tensor(s) of another shape",
    "unknown-model": "unknown model 'vgg1000'",
    "three-class-names-two-outputs": "names 3 classes ['cat', 'dog', 'fox'] but its model has 2 outputs",
    "no-weights": "incomplete checkpoint ('state_dict' missing",
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_one_line_naming_the_file_and_the_mismatch(tiny_real, tmp_path, capsys, case):
    good = tmp_path / "good.pt"
    save_checkpoint(good, small_model(), CLASSES, PREPROCESSING)
    bad = tmp_path / f"{case}.pt"
    _corrupt(bad, good, case)
    with pytest.raises(ClassifierError) as error:
        Classifier.load(bad)
    assert str(bad) in str(error.value) and BAD_CHECKPOINTS[case] in str(error.value)
    make_image(tmp_path / "photo.png")
    assert predict_main([str(tmp_path / "photo.png"), "--checkpoint", str(bad)]) == 1
    one_line_error(capsys, bad, BAD_CHECKPOINTS[case])
    assert train_main(train_args(tiny_real, tmp_path / "run", tmp_path / "cache", "--init", bad)) == 1
    one_line_error(capsys, bad, BAD_CHECKPOINTS[case])


def test_resume_when_the_data_has_other_classes_names_both(trained, capsys):
    data = Path(load_checkpoint(trained / "last.pt")["config"]["data"])
    for split in ("train", "val"):
        make_image(data / split / "fox" / "fox.1.png", color=(230, 120, 20))
    try:
        assert train_main(["--resume", str(trained / "last.pt")]) == 1
    finally:
        shutil.rmtree(data / "train" / "fox"), shutil.rmtree(data / "val" / "fox")
    one_line_error(capsys, trained / "last.pt", "trained on classes ['cat', 'dog']",
                   "now has ['cat', 'dog', 'fox']", "--init")


def test_resume_from_a_best_pt_says_to_use_last_pt(trained, capsys):
    assert train_main(["--resume", str(trained / "best.pt")]) == 1
    one_line_error(capsys, trained / "best.pt", "resume from a last.pt")


# --------------------------------------------------------------------------- atomic saves


def _save_forever(path: Path, model, start: int) -> None:
    """Save checkpoints numbered start, start + 1, ... until killed; each holds 16 MB. (A
    forked child: numpy fills the padding, since torch's thread pool may not survive a fork.)"""
    for number in range(start, sys.maxsize):
        save_checkpoint(path, model, CLASSES, PREPROCESSING, epoch=number,
                        padding=torch.from_numpy(np.full(4_000_000, number, np.float32)))


def test_kill_9_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path):
    path, rng, killed_mid_save, model = tmp_path / "best.pt", random.Random(0), 0, small_model()
    save_checkpoint(path, model, CLASSES, PREPROCESSING, epoch=0,
                    padding=torch.full((4_000_000,), 0.0))
    for _ in range(8):
        start = load_checkpoint(path)["epoch"] + 1
        pid = os.fork()
        if pid == 0:
            try:
                _save_forever(path, model, start)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.2, 0.6))
        killed_mid_save += any(tmp_path.glob(".best.pt.*.tmp"))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        checkpoint = load_checkpoint(path)  # checksums verified: a whole file, old or new
        assert checkpoint["epoch"] >= start - 1
        assert torch.equal(checkpoint["padding"], torch.full((4_000_000,), float(checkpoint["epoch"])))
        Classifier.load(path)
    assert killed_mid_save >= 1  # some kills really landed while a save was being written
    assert load_checkpoint(path)["epoch"] > 8  # and the saves did make progress


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_last_pt_and_resume_finishes_the_run(tiny_real, tmp_path, signum):
    out, epochs = tmp_path / "run", 8
    data = copy_subset(tiny_real, tmp_path / "data", {"train": 6, "val": 3})
    command = [sys.executable, "train.py", *train_args(data, out, tmp_path / "cache", "--epochs", epochs,
                                                      "--batch-size", 4)]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    last_line = stderr.strip().splitlines()[-1]
    assert run.returncode == 1, stderr
    assert last_line.startswith(f"error: stopped by {signal.Signals(signum).name} at epoch ")
    assert last_line.endswith(f"progress saved. Resume with: python train.py --resume {out / 'last.pt'}")
    stopped = load_checkpoint(out / "last.pt")["training_state"]
    assert stopped["epoch"] < epochs

    assert train_main(["--resume", str(out / "last.pt")]) == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in log] == list(range(1, epochs + 1))
    assert load_checkpoint(out / "last.pt")["epoch"] == epochs


def test_ctrl_c_before_training_is_one_line_not_a_traceback(tiny_real, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Preprocessing, "decode", interrupted)  # while decoding the photos
    assert train_main(train_args(tiny_real, tmp_path / "run", tmp_path / "cache")) == 130
    one_line_error(capsys, "interrupted (Ctrl-C)")


# --------------------------------------------------------------------------- diverging runs


def test_a_nan_loss_stops_with_advice_and_keeps_the_good_checkpoints(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt")}
    data = load_checkpoint(out / "last.pt")["config"]["data"]
    assert train_main(train_args(data, out, tmp_path / "cache", "--epochs", 2, "--batch-size", 4,
                                 "--lr", "1e30")) == 1
    one_line_error(capsys, "the loss became nan", "try a lower --lr (now 1e+30)")
    assert {name: (out / name).read_bytes() for name in before} == before


def test_weights_holding_nan_are_never_saved_over_a_good_file(tmp_path):
    path = tmp_path / "best.pt"
    model = small_model()
    save_checkpoint(path, model, CLASSES, PREPROCESSING)
    good = path.read_bytes()
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    with pytest.raises(ClassifierError, match=r"best.pt: not saved, the weights hold NaN or infinite "
                                              r"values \(e.g. head.weight\).*try a lower --lr"):
        save_checkpoint(path, model, CLASSES, PREPROCESSING)
    assert path.read_bytes() == good


# --------------------------------------------------------------------------- unwritable or full output


def test_an_output_path_that_is_a_file_fails_before_training(tiny_real, tmp_path, capsys):
    (tmp_path / "run").write_text("a file, not a folder")
    assert train_main(train_args(tiny_real, tmp_path / "run", tmp_path / "cache")) == 1
    one_line_error(capsys, tmp_path / "run", "cannot write checkpoints there")


def test_an_output_folder_the_user_may_not_write_fails_before_training(tiny_real, capsys):
    """As the user nobody, since root may write anywhere."""
    locked = shared_folder()
    try:
        status, stderr = run_as_nobody(train_main, train_args(tiny_real, locked / "run", locked / "cache"))
    finally:
        shutil.rmtree(locked)
    assert status == 1
    assert stderr.strip() == f"error: {locked / 'run'}: cannot write checkpoints there (Permission denied)"


def test_a_disk_too_full_for_the_checkpoints_fails_before_training(tiny_real, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 5000, 5000))
    assert train_main(train_args(tiny_real, tmp_path / "run", tmp_path / "cache")) == 1
    one_line_error(capsys, tmp_path / "run", "only 0.0 MB free, checkpoints need about")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _limit_file_size(size: int):
    """For a child process: files may hold only `size` bytes; writing more fails (EFBIG)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def test_a_write_failing_at_the_save_is_one_line_and_keeps_the_previous_file(trained, tmp_path):
    """train.py runs with files limited to 20 kB (RLIMIT_FSIZE): saving best.pt fails at the
    write, as on a full disk, after the upfront checks passed."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = (out / "best.pt").read_bytes()
    data = load_checkpoint(out / "last.pt")["config"]["data"]
    run = subprocess.run([sys.executable, "train.py", *train_args(data, out, "", "--epochs", 1, "--batch-size", 4)],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         preexec_fn=_limit_file_size(20_000))
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {out / 'best.pt'}: could not save (File too large); the previous best.pt, if any, "
        f"is unchanged")
    assert (out / "best.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))
