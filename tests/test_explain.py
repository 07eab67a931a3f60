import json
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from classifier import explain, gradcam, pictures
from classifier.errors import ClassifierError
from classifier.explain import main as explain_main
from classifier.export import export
from classifier.images import Preprocessing
from classifier.inference import Classifier
from classifier.models import create_model, list_models
from classifier.predict import main as predict_main
from conftest import train_args, train_main

RAW = Preprocessing(image_size=32, mean=(0, 0, 0), std=(1, 1, 1))  # the model sees pixels in [0, 1]
QUADRANTS = {"top-left": (slice(0, 16), slice(0, 16)), "top-right": (slice(0, 16), slice(16, 32)),
             "bottom-left": (slice(16, 32), slice(0, 16)), "bottom-right": (slice(16, 32), slice(16, 32))}


class Mask(nn.Module):
    """Keeps one quadrant of a feature map and zeroes the rest."""

    def __init__(self, quadrant: str):
        super().__init__()
        self.register_buffer("mask", torch.zeros(1, 1, 32, 32))
        self.mask[(..., *QUADRANTS[quadrant])] = 1

    def forward(self, x):
        return x * self.mask


def quadrant_model(quadrant: str) -> nn.Module:
    """The dog score is the summed positive evidence of 4 random filters, in one quadrant only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Mask(quadrant),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[-1].weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
        model[-1].bias.zero_()
    return model.eval()


@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_grad_cam_peaks_in_the_one_region_the_decision_depends_on(quadrant):
    image = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    result = gradcam.explain_tensor(quadrant_model(quadrant), RAW, image)
    assert result.target == 1 and result.method == "Grad-CAM on 2"  # the mask: last map before pooling
    peak = divmod(int(result.heatmap.argmax()), 32)
    rows, columns = QUADRANTS[quadrant]
    assert rows.start <= peak[0] < rows.stop and columns.start <= peak[1] < columns.stop
    outside = result.heatmap.clone()
    outside[rows, columns] = 0
    assert outside.max() == 0 and result.heatmap.max() == 1


def colour_model() -> nn.Module:
    """Channel 0 finds red, channel 1 blue (1x1 convolutions); the dog score is the mean red,
    the cat score the mean blue."""
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1, -1], [-1, -1, 1]])[:, :, None, None])
        model[0].bias.zero_()
        model[-1].weight.copy_(torch.tensor([[0.0, 1], [1, 0]]))  # classes: cat, dog
        model[-1].bias.zero_()
    return model.eval()


def test_grad_cam_shows_the_evidence_for_the_class_asked_about():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[0, 2:10, 20:30] = 255  # a red patch at the top right: dog evidence
    image[2, 22:30, 2:8] = 255  # a smaller blue patch at the bottom left: cat evidence
    model = colour_model()
    dog = gradcam.explain_tensor(model, RAW, image)
    cat = gradcam.explain_tensor(model, RAW, image, target=0)
    assert dog.target == 1 and dog.probabilities[1] > 0.5
    assert divmod(int(dog.heatmap.argmax()), 32) in {(r, c) for r in range(2, 10) for c in range(20, 30)}
    assert divmod(int(cat.heatmap.argmax()), 32) in {(r, c) for r in range(22, 30) for c in range(2, 8)}
    assert dog.heatmap[22:30, 2:8].max() == 0 and cat.heatmap[2:10, 20:30].max() == 0


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_gets_a_heatmap_and_layers(name):
    """The layer choice is generic: the MLP, the convnet and the pretrained backbones."""
    size = 32 if name in ("mlp", "convnet") else 64
    model = create_model(name, 2, **({"image_size": size} if name == "mlp" else {})).eval()
    image = torch.randint(0, 256, (3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    result = gradcam.explain_tensor(model, Preprocessing(image_size=size), image)
    assert torch.isfinite(result.heatmap).all() and 0 <= result.heatmap.min() and result.heatmap.max() <= 1
    if name == "mlp":
        assert result.method == "gradient saliency" and result.heatmap.shape == (size, size)
        assert not result.feature_maps
        return
    layer = result.method.removeprefix("Grad-CAM on ")
    assert result.feature_maps[-1][0] == layer and min(result.heatmap.shape) > 1
    assert layer == {"convnet": "features"}.get(name, layer)
    positions = [p for p, _, _ in explain.pick_layers(result.feature_maps)]
    assert positions == ["early", "middle", "late"]


def test_pick_layers_for_the_convnet():
    model = create_model("convnet", 2, channels=(8, 16, 32)).eval()
    result = gradcam.explain_tensor(model, Preprocessing(image_size=32), torch.zeros(3, 32, 32, dtype=torch.uint8))
    picked = [(p, name, tuple(m.shape)) for p, name, m in explain.pick_layers(result.feature_maps)]
    assert picked == [("early", "features.0", (8, 32, 32)), ("middle", "features.2", (16, 8, 8)),
                      ("late", "features", (32, 4, 4))]


def test_weight_images_keep_zero_at_gray():
    weights = torch.tensor([[[[2.0, -2.0], [0.0, 1.0]]] * 3])  # one RGB 2x2 filter
    images = pictures.weight_images(weights)
    assert images.shape == (1, 2, 2, 3)
    assert images[0, :, :, 0].tolist() == [[1.0, 0.0], [0.5, 0.75]]


@pytest.fixture(scope="module")
def checkpoints(trained, tiny_real, tmp_path_factory):
    """The suite's convnet, and an MLP (which has no feature maps) trained here."""
    out = tmp_path_factory.mktemp("explain")
    assert train_main(train_args(tiny_real, out, out / "cache", "--epochs", 1, "--model", "mlp", "--hidden", 16)) == 0
    return {"convnet": trained, "mlp": out / "best.pt"}


def sizes(folder):
    return {p.name: Image.open(p).size for p in sorted(folder.glob("*.png"))}


def test_explain_command_for_the_convnet(checkpoints, tiny_real, tmp_path, capsys):
    photo = tiny_real / "val" / "dog" / "dog.4001.jpg"
    assert explain_main([str(photo), "--checkpoint", str(checkpoints["convnet"]), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "dog.4001.jpg" in printed and printed.count("wrote ") == 3
    rows = 2  # 32 px through a stride-2 stem and convnet 8,16: 16 and 8 pixels (an early and a late layer)
    assert sizes(tmp_path) == {
        "heatmap.png": gradcam.HEATMAP_SIZE,
        "feature_maps.png": (explain.FEATURE_WIDTH, explain.FEATURE_ROW * rows + explain.TITLE_HEIGHT),
        "filters.png": (explain.FILTER_WIDTH, explain.FILTER_ROW * 1 + explain.TITLE_HEIGHT),  # 8 filters
    }


def test_explain_command_for_the_mlp_shows_its_templates(checkpoints, tiny_real, tmp_path):
    photo = tiny_real / "val" / "cat" / "cat.4001.jpg"
    assert explain_main([str(photo), "--checkpoint", str(checkpoints["mlp"]), "--out", str(tmp_path),
                         "--target", "dog"]) == 0
    assert sizes(tmp_path) == {  # 16 hidden neurons: 2 rows of 8 templates
        "heatmap.png": gradcam.HEATMAP_SIZE,
        "templates.png": (explain.TEMPLATE_WIDTH, explain.TEMPLATE_ROW * 2 + explain.TITLE_HEIGHT)}


def test_explain_unknown_class_is_a_one_line_error(checkpoints, tiny_real, tmp_path, capsys):
    photo = tiny_real / "val" / "cat" / "cat.4001.jpg"
    assert explain_main([str(photo), "--checkpoint", str(checkpoints["mlp"]), "--out", str(tmp_path),
                         "--target", "horse"]) == 1
    assert "no class 'horse'" in capsys.readouterr().err


def test_predict_explain_writes_a_heatmap_per_image(checkpoints, tiny_real, tmp_path, capsys):
    photos = [tiny_real / "val" / "cat" / "cat.4001.jpg", tiny_real / "val" / "dog" / "dog.4001.jpg"]
    twin = tmp_path / "other" / "cat.4001.jpg"  # the same name in another folder
    twin.parent.mkdir()
    twin.write_bytes(photos[0].read_bytes())
    args = [*map(str, photos + [twin]), "--checkpoint", str(checkpoints["convnet"]), "--json",
            "--explain", str(tmp_path / "heat")]
    assert predict_main(args) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["heatmap"] for r in results] == [str(tmp_path / "heat" / n) for n in
                                               ("cat.4001.png", "dog.4001.png", "cat.4001-2.png")]
    assert sizes(tmp_path / "heat") == dict.fromkeys(("cat.4001-2.png", "cat.4001.png", "dog.4001.png"),
                                                     gradcam.HEATMAP_SIZE)


def test_without_matplotlib_explain_says_what_to_install(checkpoints, tiny_real, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    photo = str(tiny_real / "val" / "cat" / "cat.4001.jpg")
    assert predict_main([photo, "--checkpoint", str(checkpoints["convnet"]), "--explain", str(tmp_path)]) == 1
    assert "pip install .[viz]" in capsys.readouterr().err
    with pytest.raises(ClassifierError, match=r"pip install \.\[viz\]"):
        explain.explain(Classifier.load(checkpoints["convnet"]), photo, tmp_path)


def test_an_exported_model_cannot_be_explained(checkpoints, tiny_real, tmp_path, capsys):
    model = export(checkpoints["convnet"], tmp_path / "model.onnx")
    photo = str(tiny_real / "val" / "cat" / "cat.4001.jpg")
    assert predict_main([photo, "--checkpoint", str(model), "--explain", str(tmp_path / "heat")]) == 1
    assert "needs the PyTorch checkpoint (.pt)" in capsys.readouterr().err
