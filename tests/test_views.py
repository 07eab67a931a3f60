"""The Learn and Inside pages' APIs, in a minimal FastAPI app over a project folder: what they
show is what the library computes (itself checked against recomputation in test_learn.py and
test_inside.py), never a path of the server's disk, and every bad request is one clear error."""

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException

from classifier import inside_view, learn_view
from classifier.errors import ClassifierError
from classifier.inside import Inside
from classifier.learn import Learner, LearnSettings
from classifier.train import main as train_main

SETTINGS = {"model": "mlp", "hidden": [12], "batch_size": 8, "image_size": 16, "lr": 0.05, "epochs": 2}


def make_app(projects: Path, started: list) -> FastAPI:
    """The two routers in an app of their own (the studio's stands in for it until it exists)."""

    def project_folder(name: str) -> Path:
        if "/" in name or name.startswith(".") or not (projects / name).is_dir():
            raise HTTPException(404, f"no project named {name!r}")
        return projects / name

    app = FastAPI()
    app.add_exception_handler(ClassifierError, lambda request, error: JSONResponse({"error": str(error)}, 400))
    app.add_exception_handler(HTTPException, lambda request, error: JSONResponse({"error": error.detail},
                                                                                 error.status_code))
    app.mount("/static", StaticFiles(directory=Path(learn_view.__file__).with_name("static")), name="static")
    app.include_router(learn_view.router(project_folder, start_training=started.append))
    app.include_router(inside_view.router(project_folder))
    return app


@pytest.fixture
def studio(project, tmp_path):
    """A projects folder holding a copy of the test project, named "pets", and a client."""
    shutil.copytree(project, tmp_path / "projects" / "pets")
    started = []
    with TestClient(make_app(tmp_path / "projects", started)) as client:
        client.started, client.folder = started, tmp_path / "projects" / "pets"
        yield client


def no_server_paths(response, folder: Path) -> dict:
    assert str(folder.parent) not in response.text, "a path of the server's disk reached the page"
    assert response.status_code == 200, response.text
    return response.json()


def test_learn_shows_each_steps_real_numbers(studio):
    """Five steps through the API show the very numbers of a learner with the same settings
    stepped here, whose weights before and after each step are read directly."""
    overview = no_server_paths(studio.post("/projects/pets/learn/start", json=SETTINGS), studio.folder)
    assert overview["iteration"] == 0 and overview["layers"] == ["hidden layer 1", "output layer"]
    assert len(overview["first_layer"]) == 12 and overview["first_layer"][0].startswith("data:image/png;base64,")
    twin = Learner.start(studio.folder / "photos", studio.folder.parent / "twin", LearnSettings(
        **{**SETTINGS, "hidden": (12,)}))
    errors = []
    for number in range(1, 6):
        before = copy.deepcopy(twin.model)
        mine = twin.step()
        shown = no_server_paths(studio.post("/projects/pets/learn/step"), studio.folder)
        assert shown["iteration"] == number == twin.run.trainer.scheduler.last_epoch
        assert shown["error"] == pytest.approx(mine.error, rel=1e-5)
        assert shown["errors"]["mse"] == pytest.approx(mine.errors["mse"], rel=1e-5)
        for photo, outputs in zip(shown["batch"], mine.outputs):
            assert photo["outputs"] == pytest.approx(outputs.tolist(), rel=1e-5, abs=1e-6)
        assert [p["label"] for p in shown["batch"]] == [twin.run.classes[i] for i in mine.labels]
        for layer, module in zip(shown["layers"], ("body.1", "head")):
            after = torch.cat([p.detach().flatten() for p in twin.model.get_submodule(module).parameters()])
            prior = torch.cat([p.detach().flatten() for p in before.get_submodule(module).parameters()])
            assert layer["change"] == pytest.approx((after - prior).norm().item(), rel=1e-5)
        errors.append(shown["error"])
    assert len(set(errors)) == 5 and shown["first_layer"] != overview["first_layer"]


def test_train_hands_over_to_train_py(studio):
    no_server_paths(studio.post("/projects/pets/learn/start", json=SETTINGS), studio.folder)
    studio.post("/projects/pets/learn/step")
    answer = no_server_paths(studio.post("/projects/pets/learn/train"), studio.folder)
    assert re.fullmatch(r"python train\.py --resume runs/learn-[\d-]+/last\.pt", answer["command"])
    (arguments,) = studio.started
    assert arguments[0] == "--resume" and Path(arguments[1]) == studio.folder / "runs" / answer["run"] / "last.pt"
    assert train_main(arguments) == 0
    assert (studio.folder / "runs" / answer["run"] / "best.pt").is_file()
    assert studio.get("/projects/pets/learn/state").json() == {"started": False}


@pytest.mark.parametrize("request_, status, message", [
    (("post", "/projects/pets/learn/step", None), 400, "no network is learning in this project yet"),
    (("post", "/projects/pets/learn/start", {"lr": -1}), 400, "lr must be between"),
    (("post", "/projects/pets/learn/start", {"hidden": "12"}), 400, "hidden must be a list of whole numbers"),
    (("post", "/projects/pets/learn/start", {"speed": 3}), 400, "unknown setting(s) speed"),
    (("post", "/projects/nope/learn/start", {}), 404, "no project named 'nope'"),
    (("post", "/projects/pets/inside/look", {"run": "../pets", "photo": "cat/x.jpg"}), 400, "not a run"),
    (("post", "/projects/pets/inside/look", {"run": "none", "photo": "cat/x.jpg"}), 400, "no run named 'none'"),
    (("get", "/projects/pets/inside/looks/0123/layers/0", None), 400, "no longer kept"),
])
def test_bad_requests_are_one_clear_error(studio, request_, status, message):
    method, url, body = request_
    if method == "post" and "/inside/" in url:
        response = studio.post(url, data=body)
    else:
        response = getattr(studio, method)(url, **({"json": body} if body is not None else {}))
    assert response.status_code == status and message in response.json()["error"]


@pytest.fixture
def trained_project(studio):
    """The studio with a run of the project: an MLP that made one pass over its photos."""
    studio.post("/projects/pets/learn/start", json={**SETTINGS, "hidden": [12, 6]})
    steps = studio.get("/projects/pets/learn/state").json()["steps_per_pass"]
    for _ in range(steps):
        studio.post("/projects/pets/learn/step")
    return studio, studio.get("/projects/pets/learn/state").json()["run"]


def test_inside_shows_what_the_library_computes(trained_project):
    studio, run = trained_project
    listed = no_server_paths(studio.get("/projects/pets/inside/runs"), studio.folder)
    assert listed["runs"][0] == {"run": run, "checkpoints": ["best.pt", "last.pt"]}
    photo = "dog/" + listed["photos"]["dog"][0]
    look = no_server_paths(studio.post("/projects/pets/inside/look", data={"run": run, "photo": photo}), studio.folder)
    inside = Inside.open(studio.folder / "runs" / run / "best.pt", studio.folder / "photos")
    mine = inside.look(studio.folder / "photos" / photo)
    assert [layer["kind"] for layer in look["layers"]] == [layer.kind for layer in mine.layers]
    assert look["calibrated"] == pytest.approx(mine.calibrated.tolist(), rel=1e-5)
    assert look["temperature"] == pytest.approx(mine.temperature, rel=1e-5) and look["answer"] == mine.answer
    assert [n["weighted_sums"] for n in look["neurons"]] == [pytest.approx(n.weighted_sums.tolist(), rel=1e-4, abs=1e-6)
                                                              for n in inside.neurons(mine)]
    assert look["gradcam"].startswith("data:image/png;base64,") and look["photo"].startswith("data:image/png")
    values = no_server_paths(studio.get(f"/projects/pets/inside/looks/{look['look']}/layers/1"), studio.folder)
    assert values["values"] == pytest.approx(mine.layers[1].output.tolist(), rel=1e-4, abs=1e-6)
    first_page = no_server_paths(studio.get(f"/projects/pets/inside/looks/{look['look']}/layers/0"), studio.folder)
    assert (first_page["pages"], len(first_page["values"])) == (3 * 16 * 16 // 256, 256)
    channel = no_server_paths(studio.get(f"/projects/pets/inside/channel?run={run}&layer=2&channel=3"), studio.folder)
    expected = inside.top_patches(2, 3)
    assert [p["value"] for p in channel["patches"]] == pytest.approx([p.value for p in expected], rel=1e-5)
    assert [p["photo"] for p in channel["patches"]] == [Path(p.path).relative_to(studio.folder / "photos").as_posix()
                                                          for p in expected]
    template = no_server_paths(studio.get(f"/projects/pets/inside/channel?run={run}&layer=1&channel=0"), studio.folder)
    assert template["kernel"]["kind"] == "template"


def test_inside_takes_a_dropped_photo_and_refuses_paths(trained_project):
    studio, run = trained_project
    photo = sorted((studio.folder / "photos" / "cat").iterdir())[0]
    look = studio.post("/projects/pets/inside/look", data={"run": run},
                       files={"file": ("<b>my cat</b>.jpg", photo.read_bytes(), "image/jpeg")})
    assert no_server_paths(look, studio.folder)["answer"] in ("cat", "dog", "neither")
    broken = studio.post("/projects/pets/inside/look", data={"run": run},
                         files={"file": ("notes.jpg", b"not an image", "image/jpeg")})
    assert broken.status_code == 400 and "notes.jpg: cannot read image" in broken.json()["error"]
    for photo in ("../photos/cat/x.jpg", "cat/../../../etc/passwd", "cat/.hidden"):
        response = studio.post("/projects/pets/inside/look", data={"run": run, "photo": photo})
        assert response.status_code == 400 and str(studio.folder) not in response.text
    looked = json.loads(look.text)
    assert studio.get(f"/projects/pets/inside/looks/{looked['look']}/layers/99").status_code == 400
