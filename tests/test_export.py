"""Export to ONNX and TorchScript: same probabilities as PyTorch; predict runs the ONNX file."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import onnx
import onnxruntime
import pytest
import torch

from classifier.errors import ClassifierError
from classifier.export import export, main as export_main
from classifier.inference import Classifier
from classifier.predict import expand_paths, main as predict_main
from conftest import REPO

@pytest.fixture(scope="module")
def onnx_file(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export_main([str(trained), "--format", "onnx", "--out", str(path)]) == 0
    return path


def val_images(tiny_real, model: Classifier) -> torch.Tensor:
    return torch.stack([model.preprocessing.decode(p) for p in expand_paths([str(tiny_real / "val")])])


def test_onnx_gives_the_same_probabilities_as_pytorch(trained, onnx_file, tiny_real):
    model = Classifier.load(trained, "cpu", precision="fp32")  # the exported model computes in fp32
    images = val_images(tiny_real, model)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["cat", "dog"]
    assert json.loads(meta["preprocessing"]) == json.loads(json.dumps(model.preprocessing.to_dict()))
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_inputs()[0].type == "tensor(uint8)"
    for batch in (images[:1], images[:5], images):  # any batch size
        probabilities, logits = session.run(["probabilities", "logits"], {"images": batch.numpy()})
        torch.testing.assert_close(torch.from_numpy(probabilities), model.probabilities(batch, tta=False),
                                   atol=1e-4, rtol=0)  # the graph is one view


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated upstream, still supported
def test_torchscript_gives_the_same_probabilities_as_pytorch(trained, tiny_real, tmp_path):
    path = export(trained, tmp_path / "model.ts", "torchscript")
    model = Classifier.load(trained, "cpu", precision="fp32")  # the exported model computes in fp32
    images = val_images(tiny_real, model)
    extra = {"classifier.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(json.loads(extra["classifier.json"])["classes"]) == ["cat", "dog"]
    with torch.no_grad():
        torch.testing.assert_close(scripted(images)[0], model.probabilities(images, tta=False), atol=1e-4, rtol=0)


def test_predict_with_an_onnx_file_prints_what_the_checkpoint_prints(trained, onnx_file, tiny_real, capsys):
    outputs = []
    for checkpoint in (trained, onnx_file):  # one pass per photo: the export has no test-time sizes
        assert predict_main([str(tiny_real / "val"), "--checkpoint", str(checkpoint), "--json", "--no-tta",
                             "--precision", "fp32"]) == 0  # the ONNX file computes in fp32 (ignores the flag)
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert len(outputs[0]) == len(outputs[1]) == 12
    for ours, theirs in zip(*outputs):
        assert ours["path"] == theirs["path"] and ours["label"] == theirs["label"]
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-4)
        assert ours.get("neither") == theirs.get("neither")


def test_an_onnx_model_averages_the_mirror_image_as_the_checkpoint_does(trained, onnx_file, tiny_real):
    model = Classifier.load(trained, "cpu", precision="fp32")
    model.preprocessing = replace(model.preprocessing, tta_sizes=())  # the export takes its image size only
    images = val_images(tiny_real, model)
    exported = Classifier.load(onnx_file)
    assert exported.tta and exported.preprocessing.tta_sizes == ()
    with_mirror = exported.probabilities(images, tta=True)
    torch.testing.assert_close(with_mirror, model.probabilities(images, tta=True), atol=1e-4, rtol=0)
    assert not torch.allclose(with_mirror, exported.probabilities(images, tta=False), atol=1e-6)


def test_onnx_without_onnxruntime_says_how_to_install(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ClassifierError, match=r"pip install 'catsdogs-classifier\[onnx\]'"):
        export(trained, tmp_path / "model.onnx", "onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_a_foreign_onnx_file_is_refused(onnx_file, tmp_path):
    proto = onnx.load(str(onnx_file))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ClassifierError, match="not exported by"):
        Classifier.load(tmp_path / "foreign.onnx")


@pytest.mark.parametrize("command", [[sys.executable, "-m", "classifier.export"], ["classifier-export"]])
def test_export_command_line_documents_every_flag(command):
    if command[0] == "classifier-export":
        command[0] = shutil.which("classifier-export", path=str(REPO / ".venv" / "bin")) or shutil.which("classifier-export")
        assert command[0], "pip install -e . should install classifier-export"
    result = subprocess.run([*command, "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    assert all(flag in result.stdout for flag in ("--format", "--out", "checkpoint"))
