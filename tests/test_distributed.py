"""torchrun with 2 CPU processes (gloo) trains like 1 process with the same global batch."""

import json
import os
import signal
import socket
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
from classifier.distributed import GlobalBatchNorm2d
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


def flags(tiny_real, out, cache, batch_size, precision="fp32"):
    """Augmentation on, batch norm (convnet), no dropout: dropout masks are drawn per rank.
    A gentle learning rate: at a high one, tiny rounding differences grow chaotically. fp32:
    bf16 rounds a half batch differently from a whole one, so only fp32 can agree to 1e-5."""
    return train_args(tiny_real, out, cache, "--epochs", EPOCHS, "--dropout", 0, "--workers", 1,
                      "--lr", 0.01, "--batch-size", batch_size, "--precision", precision)


@pytest.fixture(scope="module")
def one_process(tiny_real, tmp_path_factory):
    """The reference: one process, global batch 8."""
    out = tmp_path_factory.mktemp("one")
    assert train_main(flags(tiny_real, out, out / "cache", 8)) == 0
    return out


def assert_same_training(out: Path, reference: Path, tolerance: float = 1e-5):
    for got, want in zip(metrics(out), metrics(reference), strict=True):
        for key in COMPARED:
            assert got[key] == pytest.approx(want[key], abs=tolerance), (got["epoch"], key)
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(reference / "last.pt")
    for key, tensor in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key], tensor, atol=tolerance, rtol=100 * tolerance, msg=key)


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


# bf16: the precision `--precision auto` resolves to on a CPU with AVX512-BF16 or AMX (and on GPUs).
# The same commands run in bf16 on any CPU (emulated where not native), so both classes test it.


def test_the_readme_scale_out_command_trains_the_default_convnet_in_bf16(tiny_real, tmp_path):
    """The README's torchrun command, default model and default precision on a bf16 CPU."""
    run = torchrun("--data", tiny_real, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache",
                   "--model", "convnet", "--epochs", 1, "--image-size", 32, "--precision", "bf16")
    stdout, stderr = run.communicate(timeout=240)
    assert run.returncode == 0, stderr[-3000:]
    assert "2 processes" in stdout and load_checkpoint(tmp_path / "out" / "best.pt")["config"]["precision"] == "bf16"


@pytest.fixture(scope="module")
def two_processes_bf16(tiny_real, tmp_path_factory):
    """The bf16 reference for resuming: two processes, global batch 8, never stopped."""
    out = tmp_path_factory.mktemp("two_bf16")
    run = torchrun(*flags(tiny_real, out, out / "cache", 4, "bf16"))
    _, stderr = run.communicate(timeout=240)
    assert run.returncode == 0, stderr[-3000:]
    return out


def test_two_processes_in_bf16_train_like_one_within_bf16_tolerance(tiny_real, two_processes_bf16, tmp_path):
    """Global batch norm in bf16: the same run as one process, up to bf16 rounding (a half batch
    rounds differently from a whole one, so only loosely), over the whole run."""
    assert train_main(flags(tiny_real, tmp_path / "one", tmp_path / "cache", 8, "bf16")) == 0
    for got, want in zip(metrics(two_processes_bf16), metrics(tmp_path / "one"), strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=0.03), got["epoch"]
        assert got["val_loss"] == pytest.approx(want["val_loss"], abs=0.03), got["epoch"]


def test_resume_under_torchrun_in_bf16(tiny_real, two_processes_bf16, tmp_path):
    out = tmp_path / "two"
    run = torchrun(*flags(tiny_real, out, tmp_path / "cache", 4, "bf16"))
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and "Resume with: torchrun" in stderr
    assert len(metrics(out)) < EPOCHS
    resumed = torchrun("--resume", out / "last.pt")
    _, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, stderr[-3000:]
    assert_same_training(out, two_processes_bf16)


def _global_batch_norm_rank(rank: int, port: int, x: torch.Tensor, queue) -> None:
    """One rank of test_global_batch_norm_in_bf16: its half of the batch through GlobalBatchNorm2d."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(3, 4, 3), GlobalBatchNorm2d(4)
    half = x[rank * 4:(rank + 1) * 4]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(conv(half))
    (out.float() ** 2).sum().backward()
    tensors = (out.float().detach(), conv.weight.grad, norm.running_mean, norm.running_var)
    queue.put((rank, str(out.dtype), *(t.numpy().copy() for t in tensors)))  # numpy: no shared memory that
    # would vanish with this process
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_global_batch_norm_in_bf16_matches_batch_norm_of_the_whole_batch():
    """Two ranks' halves through GlobalBatchNorm2d under bf16 autocast = nn.BatchNorm2d on the
    whole batch in one process under bf16 autocast: outputs, input gradients (summed over the
    ranks, as DDP's averaging does per rank count) and running statistics, to bf16's precision."""
    x, port = torch.randn(8, 3, 10, 10), free_port()
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    ranks = [context.Process(target=_global_batch_norm_rank, args=(r, port, x, queue)) for r in (0, 1)]
    for process in ranks:
        process.start()
    results = sorted(queue.get(timeout=60) for _ in ranks)
    for process in ranks:
        process.join(30)
        assert process.exitcode == 0
    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(conv(x))
    (out.float() ** 2).sum().backward()
    assert out.dtype == torch.bfloat16 and all(r[1] == "torch.bfloat16" for r in results)
    results = [[torch.from_numpy(t) for t in r[2:]] for r in results]
    torch.testing.assert_close(torch.cat([r[0] for r in results]), out.float().detach(), atol=0.05, rtol=0.02)
    torch.testing.assert_close(results[0][1] + results[1][1], conv.weight.grad, atol=0.5, rtol=0.03)
    for r in results:
        torch.testing.assert_close(r[2], norm.running_mean, atol=0.01, rtol=0.02)
        torch.testing.assert_close(r[3], norm.running_var, atol=0.01, rtol=0.02)
