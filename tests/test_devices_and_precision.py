"""--device, --precision, --channels-last and --compile: run here on the CPU, or fail clearly."""

import json

import pytest
import torch

import classifier.runtime as runtime
from classifier.checkpoint import load_checkpoint
from classifier.train import main as train_main
from conftest import train_args


def last_metrics(out) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def plain(tiny_real, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    assert train_main(train_args(tiny_real, out, out / "cache", "--epochs", 1, "--dropout", 0)) == 0
    return out


def test_channels_last_trains_to_the_same_numbers(tiny_real, plain, tmp_path):
    out = tmp_path / "nchw"  # plain ran with the default, --channels-last
    assert train_main(train_args(tiny_real, out, plain / "cache", "--epochs", 1, "--dropout", 0,
                                 "--no-channels-last")) == 0
    for key in ("train_loss", "val_loss"):
        assert last_metrics(out)[key] == pytest.approx(last_metrics(plain)[key], abs=1e-4)
    a, b = load_checkpoint(out / "best.pt")["state_dict"], load_checkpoint(plain / "best.pt")["state_dict"]
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)


def test_bf16_autocast_trains_on_the_cpu(tiny_real, plain, tmp_path):
    out = tmp_path / "bf16"
    assert train_main(train_args(tiny_real, out, plain / "cache", "--epochs", 1, "--dropout", 0,
                                 "--precision", "bf16")) == 0
    metrics = last_metrics(out)
    assert metrics["train_loss"] == pytest.approx(last_metrics(plain)["train_loss"], abs=0.05)
    assert all(torch.isfinite(t).all() for t in load_checkpoint(out / "best.pt")["state_dict"].values())


def test_a_bf16_run_grows_its_crops_as_the_bf16_recipe_says(tiny_real, plain, tmp_path):
    """No --size-from: the bf16 recipe's 80 px start, up to --image-size over the first half, in bf16."""
    out = tmp_path / "growing"
    assert train_main(train_args(tiny_real, out, plain / "cache", "--epochs", 4, "--precision", "bf16",
                                 "--image-size", 96)) == 0
    saved = load_checkpoint(out / "last.pt")
    assert saved["config"]["size_from"] == 80 and list(saved["plan"]["sizes"]) == [80, 96, 96, 96]
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_compile_on_the_cpu_is_refused_in_one_line(tiny_real, tmp_path, capsys):
    """torch.compile trains slower on CPUs and crashes PyTorch 2.14's CPU code for some widths
    (benchmarks/precision.py): --compile there is a clear error, before any training."""
    out = tmp_path / "run"
    assert train_main(train_args(tiny_real, out, tmp_path / "cache", "--compile")) == 1
    error = capsys.readouterr().err.strip()
    assert "--compile is for CUDA GPUs" in error and "without --compile" in error and "\n" not in error
    assert not (out / "last.pt").exists()


def test_compile_on_cuda_wraps_the_model_in_torch_compile(monkeypatch):
    """Where it is allowed, compile_model hands the model itself to torch.compile (no GPU here:
    the device is only named)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(model) or "compiled")
    model = torch.nn.Linear(2, 2)
    assert runtime.compile_model(model, torch.device("cuda"), True) == "compiled" and compiled == [model]
    assert runtime.compile_model(model, torch.device("cuda"), False) is model


def test_fp16_on_the_cpu_says_to_use_bf16(tiny_real, tmp_path, capsys):
    assert train_main(train_args(tiny_real, tmp_path / "run", tmp_path / "cache", "--precision", "fp16")) == 1
    error = capsys.readouterr().err
    assert "fp16" in error and "bf16" in error and "\n" not in error.strip()


def test_fp16_gradient_scaling_only_on_cuda():
    assert not runtime.grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    if torch.cuda.is_available():
        assert runtime.grad_scaler(torch.device("cuda"), "fp16").is_enabled()


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_an_absent_accelerator_is_a_clear_error(device, tiny_real, tmp_path, capsys):
    available = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if available:
        pytest.skip(f"{device} is present here")
    assert train_main(train_args(tiny_real, tmp_path / "run", tmp_path / "cache", "--device", device)) == 1
    assert f"--device {device} asked for, but PyTorch sees no {device} device here" in capsys.readouterr().err


def test_auto_picks_the_cpu_without_accelerators():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is present")
    assert runtime.select_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                        (False, False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)  # the CPU's flags decide, even under the AVX2 emulation
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
    assert runtime.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert runtime.resolve_precision("auto", torch.device("mps")) == "fp32"


@pytest.mark.parametrize("capability", ["avx2", "AVX2", "default"])
def test_auto_precision_is_fp32_where_pytorch_is_held_to_avx2(monkeypatch, capability):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)  # how the README emulates an AVX2-only CPU
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_auto_precision_on_cuda_follows_bf16_support(monkeypatch):
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert runtime.resolve_precision("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("native, expected", [(False, "fp32"), (True, "bf16")])
def test_checkpoints_record_the_precision_auto_chose(tiny_real, plain, tmp_path, monkeypatch, native, expected):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    out = tmp_path / "auto"
    assert train_main(train_args(tiny_real, out, plain / "cache", "--epochs", 1, "--precision", "auto")) == 0
    assert load_checkpoint(out / "last.pt")["config"]["precision"] == expected
