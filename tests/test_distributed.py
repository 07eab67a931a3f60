"""torchrun with 2 CPU processes (gloo) trains like 1 process with the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from classifier.checkpoint import load_checkpoint
from classifier.train import main as train_main
from classifier.augment import Augmentation, augment
from classifier.data import Batches
from conftest import REPO, train_args

EPOCHS = 8
COMPARED = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def torchrun(*args) -> subprocess.Popen:
    """train.py under `torchrun --standalone --nproc-per-node=2`, output captured."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "train.py", *map(str, args)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def flags(tiny_real, out, cache, batch_size):
    """Augmentation on, batch norm (convnet), no dropout: dropout masks are drawn per rank.
    A gentle learning rate: at a high one, tiny rounding differences grow chaotically. fp32:
    bf16 rounds a half batch differently from a whole one, so only fp32 can agree to 1e-5."""
    return train_args(tiny_real, out, cache, "--epochs", EPOCHS, "--dropout", 0, "--workers", 1,
                      "--lr", 0.01, "--batch-size", batch_size, "--precision", "fp32")


@pytest.fixture(scope="module")
def one_process(tiny_real, tmp_path_factory):
    """The reference: one process, global batch 8."""
    out = tmp_path_factory.mktemp("one")
    assert train_main(flags(tiny_real, out, out / "cache", 8)) == 0
    return out


def assert_same_training(out: Path, reference: Path):
    for got, want in zip(metrics(out), metrics(reference), strict=True):
        for key in COMPARED:
            assert got[key] == pytest.approx(want[key], abs=1e-5), (got["epoch"], key)
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(reference / "last.pt")
    for key, tensor in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key], tensor, atol=1e-5, rtol=1e-4, msg=key)


def test_two_gloo_processes_train_like_one_with_the_same_global_batch(tiny_real, one_process, tmp_path):
    run = torchrun(*flags(tiny_real, tmp_path / "two", tmp_path / "cache", 4))
    stdout, stderr = run.communicate(timeout=240)
    assert run.returncode == 0, stderr[-3000:]
    assert "2 processes" in stdout
    assert stdout.count(f"epoch 1/{EPOCHS} ") == 1  # only rank 0 prints
    assert_same_training(tmp_path / "two", one_process)


def test_resume_under_torchrun_after_sigterm(tiny_real, one_process, tmp_path):
    out = tmp_path / "two"
    run = torchrun(*flags(tiny_real, out, tmp_path / "cache", 4))
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and "Resume with: torchrun" in stderr
    assert len(metrics(out)) < EPOCHS
    resumed = torchrun("--resume", out / "last.pt")
    _, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, stderr[-3000:]
    assert_same_training(out, one_process)


def test_resume_with_another_number_of_processes_is_refused(one_process, tmp_path, capsys):
    checkpoint = load_checkpoint(one_process / "last.pt")
    assert checkpoint["training_state"]["world_size"] == 1
    checkpoint["training_state"]["world_size"] = 2
    checkpoint["config"]["out"] = str(tmp_path)
    torch.save(checkpoint, tmp_path / "last.pt")
    assert train_main(["--resume", str(tmp_path / "last.pt")]) == 1
    assert "was trained by 2 process(es); resume it with as many (now 1)" in capsys.readouterr().err


def test_ranks_split_each_global_batch_and_its_augmentation():
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    batches = lambda rank, world, size: list(Batches(
        images, torch.arange(12), size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3),
        rank=rank, world_size=world))
    whole, parts = batches(0, 1, 6), [batches(r, 2, 3) for r in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 2
    policy = Augmentation()
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)
        augmented = augment(x, torch.Generator().manual_seed(step), policy)
        sliced = [augment(parts[r][step][0], torch.Generator().manual_seed(step), policy, r, 2)
                  for r in (0, 1)]
        torch.testing.assert_close(torch.cat(sliced), augmented)
