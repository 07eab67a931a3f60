"""A run's events (fitting.Run.emit): what a page or a program follows while training goes on."""

import json
import os
import signal
import subprocess
import sys
import time

from classifier.config import TrainConfig
from classifier.runs import read_events
from classifier.train import main as train_main, parse_args, train
from conftest import REPO, train_args


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_tells_start_steps_epochs_and_end_as_events(tiny_real, tmp_path):
    out, seen = tmp_path / "run", []
    config = TrainConfig.from_dict(vars(parse_args(train_args(tiny_real, out, tmp_path / "cache", "--epochs", 3))))
    train(config, on_event=seen.append)
    assert read_events(out) == seen  # the file holds what the listener got, in order
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 3
    start = seen[0]
    assert start["epochs"] == 3 and start["steps_per_epoch"] == 1 and start["images"] == 24 and not start["resumed"]
    assert [e for e in seen if e["event"] == "epoch"] == [{"event": "epoch", "time": e["time"], **m}
                                                         for e, m in zip([e for e in seen if e["event"] == "epoch"],
                                                                         metrics(out))]
    steps = [e for e in seen if e["event"] == "step"]
    assert [(s["epoch"], s["step"]) for s in steps if s["step"] == s["steps"]] == [(1, 1), (2, 1), (3, 1)]
    assert steps[-1]["eta"] == 0 and all(s["epochs"] == 3 and s["loss"] > 0 for s in steps)
    assert seen[-1]["best_epoch"] in (1, 2, 3) and seen[-1]["best_accuracy"] == max(m["val_accuracy"] for m in metrics(out))
    assert [e["time"] for e in seen] == sorted(e["time"] for e in seen)


def test_a_stopped_run_says_how_to_resume_and_the_resumed_one_appends(tiny_real, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "train.py", *train_args(tiny_real, out, tmp_path / "cache", "--epochs", 40)]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not any(e["event"] == "epoch" for e in read_events(out)):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-2000:]
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) == 1
    stopped = read_events(out)[-1]
    assert stopped["event"] == "stopped" and stopped["reason"] == "SIGTERM"
    assert stopped["resume"].endswith(f"train.py --resume {out / 'last.pt'}")
    before = len(read_events(out))
    assert train_main(["--resume", str(out / "last.pt")]) == 0
    events = read_events(out)
    resumed = [e for e in events[before:] if e["event"] == "start"]
    assert resumed and resumed[0]["resumed"] and events[-1]["event"] == "end"
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == list(range(1, 41))


def test_an_error_that_ends_a_run_is_its_last_event(tmp_path):
    out = tmp_path / "run"
    assert train_main(["--data", str(tmp_path / "no such folder"), "--out", str(out), "--epochs", "1"]) == 1
    last = read_events(out)[-1]
    assert last["event"] == "error" and "no such folder" in last["message"]
