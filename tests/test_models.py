import pytest
import torch

from classifier.errors import ClassifierError
from classifier.models import create_model, list_models, model_arguments


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
