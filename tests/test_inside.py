"""The inside view's numbers are the real ones: each layer's output, the output layer's values,
softmax, temperature and calibrated probabilities, an MLP's neurons, a channel's kernel, and the
top patches (recomputed here independently from every training photo)."""

import shutil

import pytest
import torch
from torch import nn

from classifier.data import find_dataset
from classifier.errors import ClassifierError
from classifier.images import Preprocessing
from classifier.inference import Classifier
from classifier.inside import Inside
from classifier.layers import trace_layers
from classifier.learn import Learner, LearnSettings
from classifier.models import create_model


@pytest.fixture(scope="module")
def mlp_run(project, tmp_path_factory):
    """best.pt of an MLP trained one pass over the project (with a temperature and a neither rule)."""
    out = tmp_path_factory.mktemp("inside-mlp")
    learner = Learner.start(project / "photos", out, LearnSettings(hidden=(12, 6), batch_size=8, image_size=16))
    for _ in range(len(learner.batches)):
        learner.step()
    return out / "best.pt"


def photo_of(project, name="cat"):
    return sorted((project / "photos" / name).iterdir())[0]


def training_photos(inside: Inside) -> list[str]:
    """The photos the run trained on, found here from the folder and the run's settings."""
    config = inside.config
    return find_dataset(inside.photos, config["val_fraction"], config["seed"]).train.paths


def responses(model: nn.Module, module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The output of one module of the model for a normalized photo, read by a hook of our own."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        model(pixels)
    handle.remove()
    return seen[-1][0]


def test_a_look_follows_the_photo_through_every_layer(trained, tiny_real):
    inside = Inside.open(trained)
    source = sorted((tiny_real / "val" / "dog").iterdir())[0]
    look = inside.look(source)
    model, classifier = inside.model, Classifier.load(trained, fuse=False, precision="fp32")
    pixels = classifier.preprocessing.normalize(classifier.preprocessing.decode(source)[None])
    by_name = {layer.name: layer.output for layer in look.layers}
    with torch.no_grad():
        torch.testing.assert_close(by_name["features.0.0"], model.features[0][0](pixels)[0])
        torch.testing.assert_close(by_name["features.0"], model.features[0](pixels)[0])
        torch.testing.assert_close(by_name["features"], model.features(pixels)[0])
        torch.testing.assert_close(by_name["head"], model(pixels)[0])
    kinds = [layer.kind for layer in look.layers]
    assert kinds[:2] == ["convolution", "batch norm + ReLU"] and "max pooling" in kinds and "residual block" in kinds
    assert kinds[-3:] == ["average of each channel", "in a row", "weighted sums"]
    assert torch.equal(look.photo, classifier.preprocessing.decode(source).permute(1, 2, 0))
    torch.testing.assert_close(look.outputs, classifier.logits(classifier.decode(source, tta=False)[0][None],
                                                               tta=False)[0][0])
    torch.testing.assert_close(look.probabilities, look.outputs.softmax(0))
    assert look.temperature == classifier.temperature != 1.0
    torch.testing.assert_close(look.calibrated, (look.outputs / look.temperature).softmax(0))
    answer = classifier.results([classifier.decode(source, tta=False)], tta=False)[0]
    assert look.answer == answer["label"] and look.neither == answer["neither"]


def test_an_mlps_neurons_are_weighted_sums_then_the_activation(mlp_run, project):
    inside = Inside.open(mlp_run)
    source = photo_of(project)
    look = inside.look(source)
    first, second = inside.neurons(look)
    assert (first.function, len(first.weighted_sums), len(second.weighted_sums)) == ("ReLU", 12, 6)
    pixels = inside.classifier.preprocessing.normalize(inside.classifier.preprocessing.decode(source)[None]).flatten()
    linear = inside.model.body[1]
    by_hand = torch.stack([(w * pixels).sum() + b for w, b in zip(linear.weight.detach(), linear.bias.detach())])
    torch.testing.assert_close(first.weighted_sums, by_hand, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.activations, by_hand.clamp_min(0), rtol=1e-4, atol=1e-5)
    for neurons in (first, second):
        xs, ys = neurons.curve
        torch.testing.assert_close(ys, xs.clamp_min(0))
        assert xs[0] < neurons.weighted_sums.min() and neurons.weighted_sums.max() < xs[-1]  # every point on the plot
    torch.testing.assert_close(inside.kernel(1, 3), linear.weight[3].detach().reshape(3, 16, 16))


@pytest.mark.parametrize("run, layer_name", [("convnet", "features.0"), ("convnet", "features.1"),
                                              ("convnet", "features"), ("mlp", "body")])
def test_top_patches_are_the_strongest_responses_of_the_training_photos(trained, mlp_run, run, layer_name):
    inside = Inside.open({"convnet": trained, "mlp": mlp_run}[run])
    layer = next(i for i, lay in enumerate(inside.layers) if lay.name == layer_name)
    module = inside.model.get_submodule(layer_name)
    preprocessing = inside.classifier.preprocessing
    channel = inside.layers[layer].channels - 1
    strongest = {}  # every training photo's largest response in the channel, computed here
    for path in training_photos(inside):
        pixels = preprocessing.normalize(preprocessing.decode(path)[None])
        output = responses(inside.model, module, pixels)[channel]
        strongest[path] = (output.max().item(), output.argmax().item())
    patches = inside.top_patches(layer, channel)
    expected = sorted((value for value, _ in strongest.values()), reverse=True)[:9]
    assert [p.value for p in patches] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    size = preprocessing.image_size
    for patch in patches:
        value, position = strongest[patch.path]
        assert patch.value == pytest.approx(value, rel=1e-4, abs=1e-5)
        top, left, bottom, right = patch.box
        photo = preprocessing.decode(patch.path)
        assert torch.equal(patch.image, photo[:, top:bottom + 1, left:right + 1].permute(1, 2, 0))
        if inside.layers[layer].field is None:
            assert patch.box == (0, 0, size - 1, size - 1)
        else:
            width = inside.layers[layer].output.shape[-1]
            assert patch.box == inside.layers[layer].field.box(*divmod(position, width), size)


def test_receptive_fields_hold_every_pixel_a_position_depends_on():
    """The gradient of one position's channels with respect to the photo is zero outside its box,
    and (for the first convolution, where nothing is cut off by a ReLU) fills it."""
    model = create_model("convnet", 2, channels=(4, 8), blocks=1).eval()
    pixels = torch.randn(1, 3, 32, 32, requires_grad=True)
    _, layers = trace_layers(model, lambda: model(pixels))
    checked = 0
    for index, layer in enumerate(layers):
        if layer.field is None:
            continue
        h, w = layer.output.shape[-2:]
        for y, x in [(0, 0), (h // 2, w // 2), (h - 1, w - 1)]:
            gradient, = torch.autograd.grad(layer.output[0, :, y, x].sum(), pixels, retain_graph=True)
            rows, columns = gradient[0].abs().sum(0).nonzero(as_tuple=True)
            if not len(rows):
                continue  # every channel there is cut off by a ReLU: it depends on nothing
            top, left, bottom, right = layer.field.box(y, x, 32)
            assert top <= rows.min() and rows.max() <= bottom and left <= columns.min() and columns.max() <= right
            if index == 0:
                assert (rows.min(), columns.min(), rows.max(), columns.max()) == (top, left, bottom, right)
            checked += 1
    assert checked >= 15


def test_the_responses_are_cached_per_checkpoint_and_photos(mlp_run, project, tmp_path, monkeypatch):
    photos = shutil.copytree(project / "photos", tmp_path / "photos")
    first = Inside.open(mlp_run, photos, cache_dir=str(tmp_path / "cache"))
    shown = [(p.path, p.value) for p in first.top_patches(2, 0)]

    def computed_again(self, decoded):
        raise AssertionError("computed again")

    monkeypatch.setattr(Inside, "strongest_responses", computed_again)
    again = Inside.open(mlp_run, photos, cache_dir=str(tmp_path / "cache")).top_patches(2, 0)
    assert [(p.path, p.value) for p in again] == shown
    shutil.copy(photo_of(project, "dog"), photos / "dog" / "another.jpg")
    with pytest.raises(AssertionError, match="computed again"):
        Inside.open(mlp_run, photos, cache_dir=str(tmp_path / "cache")).top_patches(2, 0)


def test_kernels_gradcam_and_clear_errors(trained, tiny_real):
    inside = Inside.open(trained)
    conv = inside.model.features[0][0]
    torch.testing.assert_close(inside.kernel(1, 2), conv.weight[2].detach())
    explanation, png = inside.gradcam(sorted((tiny_real / "val" / "cat").iterdir())[0])
    assert explanation.method.startswith("Grad-CAM on") and png.startswith(b"\x89PNG")
    with pytest.raises(ClassifierError, match="no layer 99"):
        inside.top_patches(99, 0)
    with pytest.raises(ClassifierError, match="no channel 5000 in layer 1"):
        inside.kernel(1, 5000)
    with pytest.raises(ClassifierError, match="does not say which photos it was trained on"):
        Inside(inside.classifier, inside.path, None, {}).top_patches(1, 0)


def test_a_layer_without_weights_of_its_own_has_no_kernel(mlp_run):
    with pytest.raises(ClassifierError, match="layer 0 \\(in a row\\) has no weights of its own"):
        Inside.open(mlp_run).kernel(0, 0)
