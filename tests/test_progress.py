"""Nothing silent for minutes: with stderr going to a log (not a terminal), every long phase
prints progress lines; in a terminal, tqdm bars."""

import os
import subprocess
import sys

from classifier.progress import LogProgress, progress
from conftest import REPO, train_args


def test_a_run_logged_to_a_file_prints_progress_lines_for_every_phase(tiny_real, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as stderr:  # a file, as with nohup or CI
        subprocess.run([sys.executable, "train.py", *map(str, train_args(tiny_real, tmp_path / "run", tmp_path / "cache",
                                                                          "--epochs", 2, "--batch-size", 4))],
                       cwd=REPO, stderr=stderr, stdout=subprocess.DEVNULL, check=True,
                       env={**os.environ, "CLASSIFIER_PROGRESS_SECONDS": "0"})
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text()  # no bar redrawn in place
    for phase in ("decoding train: ", "decoding val at 32 px: ", "epoch 1/2: ", "epoch 2/2: "):
        assert any(line.startswith(phase) for line in lines), phase
    assert any(line.startswith("epoch 2/2: 6/6 (100%) batch") for line in lines)


def test_lines_come_at_most_every_interval_and_once_at_the_end(capsys):
    assert list(LogProgress(range(5), "work", None, "item", interval=3600)) == list(range(5))
    assert capsys.readouterr().err == ""  # a phase shorter than the interval says nothing
    bar = LogProgress(range(3), "work", None, "item", interval=0)
    bar.set_postfix(loss="0.5")
    list(bar)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in err] == ["work: 1/3 (33%) item", "work: 2/3 (67%) item", "work: 3/3 (100%) item"]
    assert err[-1].endswith("loss 0.5")


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert type(progress(range(3), "work")).__name__ == "tqdm"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress(range(3), "work"), LogProgress)
