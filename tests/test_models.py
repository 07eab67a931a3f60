import math

import pytest
import torch

from classifier.errors import ClassifierError
from classifier.backbones import SameConv2d
from classifier.models import create_model, list_models, model_arguments
from classifier.runtime import fuse_batch_norms


@pytest.mark.parametrize("hidden", [(), (32,), (64, 16, 8)])
def test_mlp_any_number_of_hidden_layers(hidden):
    model = create_model("mlp", num_classes=3, image_size=8, hidden=hidden, activation="sigmoid")
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == len(hidden) + 1
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in model.modules()) == len(hidden)


def test_mlp_refuses_images_of_another_size():
    model = create_model("mlp", image_size=8)
    with pytest.raises(ClassifierError, match="8x8"):
        model(torch.zeros(1, 3, 16, 16))


def test_convnet_stages_and_any_input_size():
    model = create_model("convnet", num_classes=2, channels=(8, 16, 32), blocks=2, dropout=0.1)
    for size in (32, 48):
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 2)
    assert model.get_classifier().in_features == 32


def test_model_config_rebuilds_the_same_model():
    model = create_model("convnet", num_classes=4, channels=(8, 16))
    again = create_model(**model.model_config)
    again.load_state_dict(model.state_dict())
    assert again.model_config == model.model_config == {"name": "convnet", "num_classes": 4,
                                                        "channels": [8, 16]}


def test_reset_classifier_changes_only_the_output_layer():
    model = create_model("convnet", num_classes=2, channels=(8, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(5)
    after = model.state_dict()
    assert model.model_config["num_classes"] == 5 and after["head.weight"].shape == (5, 16)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head."))


def test_model_arguments_picks_what_each_model_takes():
    settings = {"image_size": 32, "hidden": (8,), "activation": "tanh", "channels": (4,), "lr": 0.1}
    assert model_arguments("mlp", settings) == {"image_size": 32, "hidden": (8,), "activation": "tanh"}
    assert model_arguments("convnet", settings) == {"channels": (4,)}


def test_errors_for_unknown_models_and_bad_arguments():
    assert {"mlp", "convnet"} <= set(list_models())
    with pytest.raises(ClassifierError, match="unknown model"):
        create_model("resnet9000")
    with pytest.raises(ClassifierError, match="unknown activation"):
        create_model("mlp", activation="softsign")
    with pytest.raises(ClassifierError, match="no pretrained weights"):
        create_model("mlp", pretrained=True)


@pytest.mark.parametrize("name, options", [("convnet", {"channels": (8, 16), "blocks": 2}),
                                           ("efficientnet_lite0", {"finetune": "last", "finetune_stages": 2})])
def test_fused_batch_norms_give_the_same_outputs(name, options):
    model = create_model(name, **options)
    for m in model.modules():  # batch norms with statistics of their own, so folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5), torch.nn.init.uniform_(m.running_var, 0.5, 2.0)
            torch.nn.init.normal_(m.running_mean), torch.nn.init.normal_(m.bias)
    model.eval()
    fused = fuse_batch_norms(model)
    norms = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert norms(fused) == 0 < norms(model)  # every one folded (the model itself keeps its own)
    x = torch.randn(2, 3, 36, 36)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [17, 18])
@pytest.mark.parametrize("kernel, stride", [(3, 1), (5, 1), (3, 2), (5, 2)])
def test_same_padding_matches_tensorflow(size, kernel, stride):
    conv = SameConv2d(2, 3, kernel, stride)
    x = torch.randn(1, 2, size, size)
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)  # TF: the extra pixel at the end
    padded = torch.nn.functional.pad(x, [total // 2, total - total // 2] * 2)
    expected = torch.nn.functional.conv2d(padded, conv.weight, conv.bias, stride)
    assert conv(x).shape[-1] == math.ceil(size / stride)
    torch.testing.assert_close(conv(x), expected)
