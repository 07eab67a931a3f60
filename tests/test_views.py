"""The studio's Learn and Inside tabs' APIs, through the studio's real app: what they show is what
the library computes (itself checked against recomputation in test_learn.py and test_inside.py),
Train hands the very run over to the studio's training job, nothing shown is a path of the
server's disk, and every bad request is one clear error."""

import copy
import shutil
from pathlib import Path

import pytest
import torch

from classifier.inside import Inside
from classifier.inside_view import INSIDES
from classifier.learn import Learner, LearnSettings
from classifier.projects import Project
from test_studio import client_for, no_job, wait_for

SETTINGS = {"model": "mlp", "hidden": [12], "batch_size": 8, "image_size": 16, "lr": 0.05, "epochs": 2}
API = "/api/projects/pets"


@pytest.fixture
def studio(project, tmp_path):
    """The studio over a root holding the project "pets" (24 photos a class), and its client."""
    pets = Project.create(tmp_path / "studio", "pets")
    shutil.rmtree(pets.folder / "photos")
    shutil.copytree(project / "photos", pets.folder / "photos")
    with client_for(tmp_path / "studio") as http:
        http.folder = pets.folder
        yield http


def shown(response, folder: Path) -> dict:
    """The answer, checked for paths of the server's disk."""
    assert response.status_code == 200, response.text
    assert str(folder.parent) not in response.text, "a path of the server's disk reached the page"
    return response.json()


def test_learn_shows_each_steps_real_numbers(studio):
    """Five steps through the API show the very numbers of a learner with the same settings
    stepped here, whose weights before and after each step are read directly."""
    overview = shown(studio.post(f"{API}/learn/start", json=SETTINGS), studio.folder)
    assert overview["iteration"] == 0 and overview["layers"] == ["hidden layer 1", "output layer"]
    assert overview["run"] == "learn-1" and (studio.folder / "runs" / "learn-1").is_dir()
    assert len(overview["first_layer"]) == 12 and overview["first_layer"][0].startswith("data:image/png;base64,")
    twin = Learner.start(studio.folder / "photos", studio.folder.parent.parent / "twin", LearnSettings(
        **{**SETTINGS, "hidden": (12,)}))
    errors = []
    for number in range(1, 6):
        before = copy.deepcopy(twin.model)
        mine = twin.step()
        step = shown(studio.post(f"{API}/learn/step"), studio.folder)
        assert step["iteration"] == number == twin.run.trainer.scheduler.last_epoch
        assert step["error"] == pytest.approx(mine.error, rel=1e-5)
        assert step["errors"]["mse"] == pytest.approx(mine.errors["mse"], rel=1e-5)
        for photo, outputs in zip(step["batch"], mine.outputs):
            assert photo["outputs"] == pytest.approx(outputs.tolist(), rel=1e-5, abs=1e-6)
        assert [p["label"] for p in step["batch"]] == [twin.run.classes[i] for i in mine.labels]
        for layer, module in zip(step["layers"], ("body.1", "head")):
            after = torch.cat([p.detach().flatten() for p in twin.model.get_submodule(module).parameters()])
            prior = torch.cat([p.detach().flatten() for p in before.get_submodule(module).parameters()])
            assert layer["change"] == pytest.approx((after - prior).norm().item(), rel=1e-5)
        errors.append(step["error"])
    assert len(set(errors)) == 5 and step["first_layer"] != overview["first_layer"]


def test_train_hands_the_run_to_the_studios_training_job(studio):
    shown(studio.post(f"{API}/learn/start", json=SETTINGS), studio.folder)
    studio.post(f"{API}/learn/step")
    answer = shown(studio.post(f"{API}/learn/train"), studio.folder)
    assert answer == {"run": "learn-1", "command": "python train.py --resume runs/learn-1/last.pt"}
    wait_for(lambda: no_job(studio))
    run = next(r for r in studio.get(f"{API}/runs").json() if r["name"] == "learn-1")
    assert run["trained"] and (studio.folder / "runs" / "learn-1" / "best.pt").is_file()
    epochs = [line for line in (studio.folder / "runs" / "learn-1" / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2  # the settings' two passes, the first of them begun on the Learn tab
    assert studio.get(f"{API}/learn").json() == {"started": False}
    # the finished job's top patches were prepared in the background: on disk before any look or click
    INSIDES.background.submit(lambda: None).result(timeout=120)
    inside = Inside.open(studio.folder / "runs" / "learn-1" / "best.pt", studio.folder / "photos")
    cached = inside.maxima_file(inside.training_photos())
    assert cached.is_file() and inside.find_maxima().values[0].shape[0] == len(inside.training_photos())


def test_left_out_photos_are_left_out_as_in_training(studio):
    left_out = sorted(p.name for p in (studio.folder / "photos" / "cat").iterdir())[:5]
    assert studio.post(f"{API}/exclude", json={"paths": [f"cat/{name}" for name in left_out]}).status_code == 200
    overview = shown(studio.post(f"{API}/learn/start", json=SETTINGS), studio.folder)
    assert overview["photos"] == 15 + 19  # 80% of each class trains: 19 of the 24 dogs, 15 of the 19 cats left
    assert (studio.folder / "runs" / "learn-1" / "excluded.txt").read_text().count("\n") == 5


@pytest.mark.parametrize("request_, status, message", [
    (("post", "/learn/step", None), 400, "no network is learning in this project yet"),
    (("post", "/learn/start", {"lr": -1}), 400, "lr must be between"),
    (("post", "/learn/start", {"hidden": "12"}), 400, "hidden must be a list of whole numbers"),
    (("post", "/learn/start", {"speed": 3}), 400, "unknown setting(s) speed"),
    (("post", "/inside/look", {"run": "../pets", "photo": "cat/x.jpg"}), 400, "refused"),
    (("post", "/inside/look", {"run": "none", "photo": "cat/x.jpg"}), 404, "no run 'none'"),
    (("get", "/inside/looks/0123/layers/0", None), 400, "no longer kept"),
])
def test_bad_requests_are_one_clear_error(studio, request_, status, message):
    method, url, body = request_
    if method == "post" and "/inside/" in url:
        response = studio.post(API + url, data=body)
    else:
        response = getattr(studio, method)(API + url, **({"json": body} if body is not None else {}))
    assert response.status_code == status and message in response.json()["error"]


def test_learning_needs_the_studios_own_page_or_its_token(studio):
    refused = studio.post(f"{API}/learn/start", json=SETTINGS, headers={"origin": "http://elsewhere.example"})
    assert refused.status_code == 403 and not (studio.folder / "runs").exists()


@pytest.fixture
def trained_project(studio):
    """The studio with a run of the project: an MLP that made one pass over its photos."""
    studio.post(f"{API}/learn/start", json={**SETTINGS, "hidden": [12, 6]})
    for _ in range(studio.get(f"{API}/learn").json()["steps_per_pass"]):
        studio.post(f"{API}/learn/step")
    return studio, studio.get(f"{API}/learn").json()["run"]


def test_inside_shows_what_the_library_computes(trained_project):
    studio, run = trained_project
    photos = shown(studio.get(f"{API}/inside/photos"), studio.folder)
    photo = photos["dog"][0]
    look = shown(studio.post(f"{API}/inside/look", data={"run": run, "photo": photo}), studio.folder)
    inside = Inside.open(studio.folder / "runs" / run / "best.pt", studio.folder / "photos")
    mine = inside.look(studio.folder / "photos" / photo)
    assert [layer["kind"] for layer in look["layers"]] == [layer.kind for layer in mine.layers]
    assert look["calibrated"] == pytest.approx(mine.calibrated.tolist(), rel=1e-5)
    assert look["temperature"] == pytest.approx(mine.temperature, rel=1e-5) and look["answer"] == mine.answer
    assert [n["weighted_sums"] for n in look["neurons"]] == [pytest.approx(n.weighted_sums.tolist(), rel=1e-4, abs=1e-6)
                                                              for n in inside.neurons(mine)]
    assert look["gradcam"].startswith("data:image/png;base64,") and look["photo"].startswith("data:image/png")
    values = shown(studio.get(f"{API}/inside/looks/{look['look']}/layers/1"), studio.folder)
    assert values["values"] == pytest.approx(mine.layers[1].output.tolist(), rel=1e-4, abs=1e-6)
    first_page = shown(studio.get(f"{API}/inside/looks/{look['look']}/layers/0"), studio.folder)
    assert (first_page["pages"], len(first_page["values"])) == (3 * 16 * 16 // 256, 256)
    channel = shown(studio.get(f"{API}/inside/channel?run={run}&layer=2&channel=3"), studio.folder)
    expected = inside.top_patches(2, 3)
    assert [p["value"] for p in channel["patches"]] == pytest.approx([p.value for p in expected], rel=1e-5)
    assert [p["photo"] for p in channel["patches"]] == [Path(p.path).relative_to(studio.folder / "photos").as_posix()
                                                          for p in expected]
    template = shown(studio.get(f"{API}/inside/channel?run={run}&layer=1&channel=0"), studio.folder)
    assert template["kernel"]["kind"] == "template"


def test_inside_takes_a_dropped_photo_and_refuses_paths(trained_project):
    studio, run = trained_project
    photo = sorted((studio.folder / "photos" / "cat").iterdir())[0]
    look = studio.post(f"{API}/inside/look", data={"run": run},
                       files={"file": ("<b>my cat</b>.jpg", photo.read_bytes(), "image/jpeg")})
    assert shown(look, studio.folder)["answer"] in ("cat", "dog", "neither")
    broken = studio.post(f"{API}/inside/look", data={"run": run},
                         files={"file": ("notes.jpg", b"not an image", "image/jpeg")})
    assert broken.status_code == 400 and "notes.jpg: cannot read image" in broken.json()["error"]
    for photo in ("../photos/cat/x.jpg", "cat/../../../etc/passwd", "cat/.hidden", "/etc/passwd"):
        response = studio.post(f"{API}/inside/look", data={"run": run, "photo": photo})
        assert response.status_code in (400, 404) and str(studio.folder) not in response.text
    assert studio.get(f"{API}/inside/looks/{look.json()['look']}/layers/99").status_code == 400
