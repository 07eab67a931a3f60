"""classifier.studio through its real app (FastAPI's test client): every operation, and every
refusal (traversal, hostile names, oversized uploads, a second job, a deleted project, requests
from elsewhere). Training, the audit and export are the real ones, in their own processes."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from classifier.inference import Classifier
from classifier.jobs import Job
from classifier.studio import create_app, parser
from classifier.workspace import Workspace
from image_zoo import ZOO, decodes, make_zoo

HOSTILE = "<img src=x onerror=alert(1)>"
ORIGIN = "http://127.0.0.1"
TOKEN = "a-test-token"


def client_for(root: Path, sources=(), warm=False, **options) -> TestClient:
    """The studio's app over `root`, as the page talks to it (same origin)."""
    app = create_app(Workspace(root, list(sources), warm), token=TOKEN, **options)
    return TestClient(app, base_url=ORIGIN, headers={"origin": ORIGIN})


@pytest.fixture(scope="module")
def source(tiny_real, tmp_path_factory) -> Path:
    """A folder a user would import: pets/cat/ and pets/dog/ with 12 real photos each, a copy
    of one photo, the image zoo's messy files among the cats, and a photo in no class folder."""
    pets = tmp_path_factory.mktemp("import") / "pets"
    for kind in ("cat", "dog"):
        shutil.copytree(tiny_real / "train" / kind, pets / kind)
    first = sorted((pets / "cat").iterdir())[0]
    shutil.copy(first, pets / "cat" / "copy of a cat.jpg")
    shutil.copy(first, pets / "loose.jpg")
    make_zoo(pets / "cat", first)
    for kind in ("cat", "dog"):  # photos to test models on, never trained on
        shutil.copytree(tiny_real / "val" / kind, pets.parent / "test" / kind)
    return pets


def wait_for(predicate, seconds: float = 240, step: float = 0.3):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"waited {seconds} s in vain")


def no_job(http) -> bool:
    return http.get("/api/job").json() is None


# --------------------------------------------------------------------------- projects


def test_projects_are_folders_created_listed_renamed_and_deleted_on_confirmation(tmp_path):
    with client_for(tmp_path / "studio") as http:
        made = http.post("/api/projects", json={"name": HOSTILE}).json()
        assert made["name"] == HOSTILE and made["id"] == "img-src-x-onerror-alert-1"  # the folder: a slug
        folder = tmp_path / "studio" / made["id"]
        assert json.loads((folder / "project.json").read_text())["name"] == HOSTILE and (folder / "photos").is_dir()
        other = http.post("/api/projects", json={"name": "Birds / and bees"}).json()
        assert {p["id"] for p in http.get("/api/projects").json()} == {other["id"], made["id"]}
        renamed = http.patch(f"/api/projects/{made['id']}", json={"name": "Pets"}).json()
        assert renamed["name"] == "Pets" and renamed["id"] == made["id"] and folder.is_dir()
        for bad in ("", "\x00x", "a" * 200):
            refused = http.post("/api/projects", json={"name": bad})
            assert refused.status_code == 400 and "refused" in refused.json()["error"]
        asked = http.delete(f"/api/projects/{made['id']}")
        assert asked.status_code == 400 and f"?confirm={made['id']}" in asked.json()["error"] and folder.is_dir()
        assert http.delete(f"/api/projects/{made['id']}?confirm={made['id']}").json() == {"deleted": made["id"]}
        assert not folder.exists()
        for gone in (http.get(f"/api/projects/{made['id']}"), http.post(f"/api/projects/{made['id']}/classes", json={"name": "x"}),
                     http.get(f"/api/projects/{made['id']}/runs")):
            assert gone.status_code == 404 and "no project" in gone.json()["error"]
        for traversal in ("..", "../studio", "%2e%2e"):
            assert http.get(f"/api/projects/{traversal}").status_code in (400, 404)


# --------------------------------------------------------------------------- photos in


def test_import_copies_class_folders_and_lists_every_skipped_file_with_its_reason(tmp_path, source):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, source.parent / "link-out")
    with client_for(tmp_path / "studio", [source.parent]) as http:
        project = http.post("/api/projects", json={"name": "pets"}).json()["id"]
        assert http.get("/api/sources").json() == [{"id": 0, "name": source.parent.name}]
        assert "pets" in http.get("/api/sources/0").json()["folders"]
        result = http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "pets"}).json()
        skipped = {Path(s["name"]).name: s["reason"] for s in result["skipped"]}
        unreadable = {name: expected for name, (_, expected) in ZOO.items() if not decodes(expected)}
        assert set(skipped) == set(unreadable) | {"loose.jpg"}
        for name, expected in unreadable.items():
            assert expected.lower() in skipped[name].lower(), (name, skipped[name])
        assert "not in a class folder" in skipped["loose.jpg"]
        readable = [name for name, (_, expected) in ZOO.items() if decodes(expected)]
        assert result["added"] == 12 + 1 + len(readable) + 12
        photos = tmp_path / "studio" / project / "photos"
        assert sorted(p.name for p in (photos / "dog").iterdir()) == sorted(p.name for p in (source / "dog").iterdir())
        assert (photos / "cat" / "gray16.png").is_file() and not (photos / "cat" / ".DS_Store").exists()
        again = http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "pets/dog"})
        assert again.json()["added"] == 0  # dog/ holds photos, no class folders: each file is "not in a class folder"
        twice = http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "pets"}).json()
        assert twice["added"] == 0 and any("already in the project" in s["reason"] for s in twice["skipped"])
        for path, words in (("..", "is a path"), ("pets/../..", "is a path"), ("link-out", "leads outside"),
                            ("nowhere", "no such folder")):
            refused = http.post(f"/api/projects/{project}/import", json={"source": 0, "path": path})
            assert refused.status_code == 400 and words in refused.json()["error"], path
        assert "no import folder 3" in http.post(f"/api/projects/{project}/import", json={"source": 3}).json()["error"]
        assert str(source.parent) not in json.dumps(http.get("/api/sources").json())  # names, never server paths


def upload(http, project, name, files, photo_set="photos"):
    return http.post(f"/api/projects/{project}/photos", params={"class": name, "set": photo_set},
                     files=[("file", (file_name, data, "application/octet-stream")) for file_name, data in files])


def test_uploads_keep_names_as_text_inside_the_class_and_refuse_what_is_not_a_photo(tmp_path, tiny_real):
    photo = sorted((tiny_real / "train" / "cat").iterdir())[0].read_bytes()
    with client_for(tmp_path / "studio", max_upload_mb=1) as http:
        project = http.post("/api/projects", json={"name": "p"}).json()["id"]
        answer = upload(http, project, HOSTILE, [(HOSTILE + ".jpg", photo), ("../../evil.jpg", photo),
                                                 ("notes.txt", b"a shopping list"), ("photo.jfif", photo)]).json()
        assert answer["added"] == [f"{HOSTILE}/{HOSTILE}.jpg", f"{HOSTILE}/evil.jpg", f"{HOSTILE}/photo.jpg"]
        assert answer["skipped"] == [{"name": "notes.txt", "reason": "cannot read image (not an image format Pillow knows)"}]
        photos = tmp_path / "studio" / project / "photos"
        assert sorted(p.name for p in (photos / HOSTILE).iterdir()) == sorted(["evil.jpg", f"{HOSTILE}.jpg", "photo.jpg"])
        assert not (tmp_path / "studio" / "evil.jpg").exists() and not (tmp_path / "evil.jpg").exists()
        for name, words in (("../up", "is a path"), ("train", "split"), (".hidden", "starts with a dot"), ("", "is empty")):
            refused = upload(http, project, name, [("a.jpg", photo)])
            assert refused.status_code == 400 and words in refused.json()["error"], name
        too_big = upload(http, project, "cat", [("big.jpg", photo + b"\0" * (1 << 20))])
        assert too_big.status_code == 413 and "1 MB limit" in too_big.json()["error"]
        assert upload(http, project, "cat", [("a.jpg", photo)], "elsewhere").status_code == 400


def test_photos_come_a_page_at_a_time_with_thumbnails_made_on_the_server(tmp_path, source):
    with client_for(tmp_path / "studio", [source.parent]) as http:
        project = http.post("/api/projects", json={"name": "p"}).json()["id"]
        http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "pets"})
        first = http.get(f"/api/projects/{project}/photos", params={"class": "dog", "limit": 5}).json()
        rest = http.get(f"/api/projects/{project}/photos", params={"class": "dog", "offset": 5, "limit": 100}).json()
        assert first["total"] == rest["total"] == 12 and len(first["photos"]) == 5 and len(rest["photos"]) == 7
        names = [p["name"] for p in first["photos"] + rest["photos"]]
        assert names == sorted(names) and len(set(names)) == 12
        response = http.get(f"/api/projects/{project}/thumbnail", params={"path": first["photos"][0]["path"]})
        image = Image.open(__import__("io").BytesIO(response.content))
        assert response.headers["content-type"] == "image/jpeg" and max(image.size) == 160
        assert list((tmp_path / "studio" / project / ".thumbnails").rglob("*.jpg"))  # cached on disk
        os.symlink("/etc/hostname", tmp_path / "studio" / project / "photos" / "dog" / "zz.jpg")
        for path, status, words in (("../../project.json", 400, "is a path"), ("/etc/passwd", 400, "absolute path"),
                                    ("dog/zz.jpg", 400, "leads outside"), ("dog/none.jpg", 404, "no photo"),
                                    ("dog", 400, "CLASS/FILE")):
            refused = http.get(f"/api/projects/{project}/thumbnail", params={"path": path})
            assert refused.status_code == status and words in refused.json()["error"], path
        assert http.get(f"/api/projects/{project}/photos", params={"class": "bird"}).status_code == 404


def test_leave_out_move_and_undo_change_no_photo_and_delete_asks(tmp_path, source):
    with client_for(tmp_path / "studio", [source.parent]) as http:
        project = http.post("/api/projects", json={"name": "p"}).json()["id"]
        http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "pets"})
        photos = tmp_path / "studio" / project / "photos"
        cat = "cat/" + sorted(p.name for p in (source / "cat").iterdir() if p.name.startswith("cat."))[0]
        assert http.post(f"/api/projects/{project}/exclude", json={"paths": [cat]}).json() == {"excluded": [cat]}
        moved = http.post(f"/api/projects/{project}/move", json={"path": cat, "to": "dog", "reason": "test"}).json()
        assert moved["to"] == "dog/" + cat.split("/")[1] and (photos / moved["to"]).is_file() and not (photos / cat).exists()
        assert http.get(f"/api/projects/{project}").json()["excluded"] == 1  # the exclusion moved with the photo
        assert http.get(f"/api/projects/{project}/moves").json()[0]["undone"] is False
        back = http.post(f"/api/projects/{project}/moves/{moved['id']}/undo").json()
        assert back["back_to"] == cat and (photos / cat).is_file()
        assert http.post(f"/api/projects/{project}/moves/{moved['id']}/undo").status_code == 400  # once
        assert http.post(f"/api/projects/{project}/exclude", json={"paths": [cat], "excluded": False}).json() == {"excluded": []}
        assert http.post(f"/api/projects/{project}/move", json={"path": cat, "to": "../x"}).status_code == 400
        assert http.delete(f"/api/projects/{project}/photos", params={"path": cat}).json() == {"deleted": cat}
        assert not (photos / cat).exists()


# --------------------------------------------------------------------------- who may ask


def test_changes_need_the_page_s_origin_or_the_token_and_the_host_must_be_this_server(tmp_path):
    with client_for(tmp_path / "studio") as http:
        assert http.get("/api/projects").status_code == 200
        for headers in ({"origin": "http://evil.example"}, {"origin": "null"}, {"origin": ""}):
            refused = http.post("/api/projects", json={"name": "x"}, headers=headers)
            assert refused.status_code == 403 and "token" in refused.json()["error"]
        assert http.post("/api/projects", json={"name": "x"}, headers={"origin": "", "x-token": TOKEN}).status_code == 200
        assert http.post("/api/projects", json={"name": "x"}, headers={"origin": "", "x-token": "wrong"}).status_code == 403
    app = create_app(Workspace(tmp_path / "studio"), token=TOKEN)
    with TestClient(app, base_url="http://rebound.example:8000") as elsewhere:  # DNS rebinding
        refused = elsewhere.get("/api/projects")
        assert refused.status_code == 403 and "127.0.0.1" in refused.json()["error"]


def test_a_server_on_another_address_wants_its_token_on_every_request(tmp_path):
    app = create_app(Workspace(tmp_path / "studio"), token=TOKEN, require_token=True)
    with TestClient(app, base_url="http://192.168.1.5:8000") as http:
        for response in (http.get("/"), http.get("/api/projects"), http.get("/static/common.js"), http.get("/?token=wrong")):
            assert response.status_code == 401 and "token" in response.json()["error"]
        opened = http.get(f"/?token={TOKEN}&x=1", follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/?x=1"
        assert "httponly" in opened.headers["set-cookie"].lower() and "samesite=strict" in opened.headers["set-cookie"].lower()
        assert http.get("/api/projects").status_code == 200  # the cookie
    with TestClient(app, base_url="http://192.168.1.5:8000", headers={"x-token": TOKEN}) as program:
        assert program.post("/api/projects", json={"name": "x"}).status_code == 200


def test_the_page_runs_only_its_own_scripts_and_loads_nothing_from_outside(tmp_path):
    with client_for(tmp_path / "studio") as http:
        page = http.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        scripts = [line.split('"')[1] for line in page.text.splitlines() if "<script src=" in line]
        assert {"/static/common.js", "/static/studio.js", "/static/train.js", "/static/try.js"} <= set(scripts)
        for url in scripts + ["/static/style.css"]:
            text = http.get(url).text
            assert "innerHTML" not in text and "eval(" not in text and "//cdn" not in text
            assert not __import__("re").search(r"(https?:)?//[a-z]", text.replace("http://127.0.0.1", ""))
        for tab in ("Photos", "Check", "Train", "Evaluate", "Try it", "Export"):
            assert f">{tab}</a>" in page.text


def test_every_flag_is_documented_with_its_default():
    text = parser().format_help()
    for flag in ("--root", "--host", "--port", "--import-from", "--max-upload-mb", "--warm", "--access-log"):
        assert flag in text
    defaults = parser().parse_args([])
    assert (defaults.root, defaults.host, defaults.port, defaults.import_from) == ("studio", "127.0.0.1", 8000, [])


# --------------------------------------------------------------------------- the jobs and what they make


def job_state(http, project, run=None) -> str | None:
    if run is None:
        job = http.get(f"/api/projects/{project}/audit").json()["job"]
    else:
        job = next(r for r in http.get(f"/api/projects/{project}/runs").json() if r["name"] == run)["job"]
    return job and job["state"]


def follow_events(http, project, run) -> tuple[list[dict], list[dict]]:
    """The run's server-sent events until the stream ends: (events, status events)."""
    events, statuses = [], []
    with http.stream("GET", f"/api/projects/{project}/runs/{run}/events") as stream:
        kind = "message"
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                (statuses if kind == "status" else events).append(json.loads(line[5:]))
                kind = "message"
    return events, statuses


def check_the_audit(http, project, root):
    """The audit is the server's one job: a second is refused; its findings name photos in the project."""
    started = http.post(f"/api/projects/{project}/audit")
    assert started.status_code == 200 and started.json()["state"] == "running"
    second = http.post(f"/api/projects/{project}/runs", json={"recipe": "mlp"})
    assert second.status_code == 409 and "already running" in second.json()["error"]
    wait_for(lambda: job_state(http, project) not in ("running", None))
    assert job_state(http, project) == "finished"
    findings = http.get(f"/api/projects/{project}/audit").json()["findings"]
    copies = [f for f in findings if f["kind"] == "duplicate"]
    assert copies and all(f["exists"] and (root / project / "photos" / f["path"]).is_file() for f in copies)
    assert {copies[0]["path"], copies[0]["of"]} >= {"cat/copy of a cat.jpg"} or "cat/copy of a cat.jpg" in \
        {copies[0]["path"], copies[0]["of"]}
    left_out = copies[0]["path"]
    http.post(f"/api/projects/{project}/exclude", json={"paths": [left_out]})
    return left_out


def check_stop_and_resume(http, project, run, folder):
    """Stop saves last.pt; resume continues; the stream replays the run from its start."""
    wait_for(lambda: (folder / "events.jsonl").is_file() and '"epoch"' in (folder / "events.jsonl").read_text())
    assert http.delete(f"/api/projects/{project}?confirm={project}").status_code == 409
    stopped = http.post(f"/api/projects/{project}/runs/{run}/stop")
    assert stopped.status_code == 200
    wait_for(lambda: no_job(http))
    assert job_state(http, project, run) == "stopped" and (folder / "last.pt").is_file()
    assert http.post(f"/api/projects/{project}/runs/{run}/stop").status_code == 409
    assert http.post(f"/api/projects/{project}/runs/{run}/resume").json()["job"]["state"] == "running"
    events, statuses = follow_events(http, project, run)
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 2 and "stopped" in kinds and kinds[-1] == "end" and "step" in kinds
    epochs = [e["epoch"] for e in events if e["event"] == "epoch"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 150  # every epoch once, across the stop
    assert statuses[-1]["job"]["state"] == "finished" and len(statuses) >= 3
    gaps = np.diff([s["time"] for s in statuses])
    assert np.median(gaps) < 0.8 and gaps.max() < 2.5  # the page hears at least about once a second


def check_evaluation(http, project, run, root):
    evaluation = http.get(f"/api/projects/{project}/runs/{run}/evaluation").json()
    confusion = np.array(evaluation["confusion"])
    assert confusion.sum() == evaluation["images"] == len(
        (root / project / "runs" / run / "val_predictions.jsonl").read_text().splitlines())
    for i, row in enumerate(evaluation["cells"]):
        for j, paths in enumerate(row):
            assert len(paths) == confusion[i, j]
            assert all((root / project / "photos" / path).is_file() and path.startswith(f"{evaluation['classes'][i]}/")
                       for path in paths)
    assert set(evaluation["per_class"]) == {"cat", "dog"} and "ece" in evaluation["reliability"]
    assert len(evaluation["metrics"]) == 150 and evaluation["cross_validation"] is None
    tested = http.post(f"/api/projects/{project}/runs/{run}/test").json()
    assert tested["images"] == 12 and np.array(tested["confusion"]).sum() == 12
    assert all((root / project / "test" / p).is_file() for row in tested["cells"] for cell in row for p in cell)
    evaluation = http.get(f"/api/projects/{project}/runs/{run}/evaluation").json()
    assert evaluation["test_evaluation"] == tested  # kept in the run's folder
    return evaluation


def check_exports_answer_as_the_page(http, project, run, root, photos):
    """The page's answers (Try it) and the exported ONNX and TorchScript files': same label,
    probabilities within 1e-4."""
    info = http.get(f"/api/projects/{project}/runs/{run}/info").json()
    assert info["classes"] == ["cat", "dog"] and info["explainable"] and not info["tta"]
    page = http.post(f"/api/projects/{project}/runs/{run}/predict",
                     files=[("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]).json()
    heat = http.post(f"/api/projects/{project}/runs/{run}/predict?explain=1",
                     files=[("file", (photos[0].name, photos[0].read_bytes(), "image/jpeg"))]).json()[0]
    assert heat["heatmap"].startswith("data:image/png;base64,")
    for format, file in (("onnx", "model.onnx"), ("torchscript", "model.ts")):
        made = http.post(f"/api/projects/{project}/runs/{run}/export", json={"format": format})
        assert made.status_code == 200 and file in made.json()["exports"]
    folder = root / project / "exports" / run
    exported = Classifier.load(folder / "model.onnx")
    images = torch.stack([exported.preprocessing.decode(p) for p in photos])  # as the file's metadata says
    onnx = onnxruntime.InferenceSession(str(folder / "model.onnx")).run(["probabilities"], {"images": images.numpy()})[0]
    script = torch.jit.load(str(folder / "model.ts"))(images)[0].detach().numpy()
    wanted = np.array([[answer["probabilities"][c] for c in info["classes"]] for answer in page])
    assert np.abs(onnx - wanted).max() < 1e-4 and np.abs(script - wanted).max() < 1e-4
    assert [a["label"] for a in exported.results([[image] for image in images], tta=False)] == [a["label"] for a in page]
    card = http.get(f"/api/projects/{project}/runs/{run}/download/MODEL_CARD.md").text
    assert "classes: cat, dog" in card and "model.onnx" in card and str(root) not in card
    for file in ("best.pt", "model.onnx", "model.ts"):
        download = http.get(f"/api/projects/{project}/runs/{run}/download/{file}")
        assert download.status_code == 200 and f"{project}-{run}-{file}" in download.headers["content-disposition"]
    for file in ("last.pt", "..%2Fproject.json", "job.json"):
        assert http.get(f"/api/projects/{project}/runs/{run}/download/{file}").status_code == 404


def test_the_whole_path_audit_train_stop_resume_evaluate_try_export_then_a_restart(tmp_path, source):
    root = tmp_path / "studio"
    with client_for(root, [source.parent], warm=True) as http:  # training starts in the waiting process
        project = http.post("/api/projects", json={"name": "pets"}).json()["id"]
        http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "pets"})
        assert http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "test", "set": "test"}).json()["added"] == 12
        left_out = check_the_audit(http, project, root)
        for settings, words in (({"epochs": "lots"}, "not a number"), ({"activation": "relu6"}, "choose one of"),
                                ({"hidden": "16,-1"}, "whole numbers"), ({"depth": 3}, "unknown setting")):
            refused = http.post(f"/api/projects/{project}/runs", json={"recipe": "mlp", "settings": settings})
            assert refused.status_code == 400 and words in refused.json()["error"]
        assert not (root / project / "runs").exists() or not list((root / project / "runs").iterdir())
        settings = {"hidden": "16", "epochs": 150, "image_size": 16, "lr": 0.05}
        run = http.post(f"/api/projects/{project}/runs", json={"recipe": "mlp", "settings": settings}).json()["name"]
        folder = root / project / "runs" / run
        check_stop_and_resume(http, project, run, folder)
        assert (folder / "excluded.txt").read_text().strip().endswith(left_out)
        assert {"best.pt", "last.pt", "metrics.jsonl", "events.jsonl", "val_predictions.jsonl"} <= {p.name for p in folder.iterdir()}
        evaluation = check_evaluation(http, project, run, root)
        check_exports_answer_as_the_page(http, project, run, root, sorted((source.parent / "test" / "dog").iterdir())[:4])
        before = (http.get(f"/api/projects/{project}").json(), http.get(f"/api/projects/{project}/runs").json())
    with client_for(root, [source.parent]) as restarted:  # a new server over the same folder
        assert (restarted.get(f"/api/projects/{project}").json(), restarted.get(f"/api/projects/{project}/runs").json()) == before
        assert restarted.get(f"/api/projects/{project}/runs/{run}/evaluation").json() == evaluation
        assert restarted.get("/api/job").json() is None


def test_a_job_left_running_by_a_killed_server_is_followed_by_the_next_one(tmp_path):
    """job.json says running: the next server follows that process if it still runs (and can
    stop it), and records a job whose process has gone as over (resumable when last.pt exists)."""
    root = tmp_path / "studio"
    with client_for(root) as http:
        project = http.post("/api/projects", json={"name": "p"}).json()["id"]
    runs = root / project / "runs"
    alive_folder, gone_folder = runs / "run-1", runs / "run-2"
    alive_folder.mkdir(parents=True), gone_folder.mkdir()
    (gone_folder / "last.pt").write_bytes(b"saved")
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(alive_folder)],
                              start_new_session=True)
    try:
        Job("train", project, "run-1", str(alive_folder), ["python"], pid=orphan.pid).save()
        Job("train", project, "run-2", str(gone_folder), ["python"], pid=2**22 + 7).save()
        with client_for(root) as http:
            assert http.get("/api/job").json() == {"kind": "train", "project": project, "name": "run-1"}
            states = {r["name"]: r["job"]["state"] for r in http.get(f"/api/projects/{project}/runs").json()}
            assert states == {"run-1": "running", "run-2": "stopped"}
            assert http.post(f"/api/projects/{project}/runs", json={"recipe": "mlp"}).status_code == 409
            assert http.post(f"/api/projects/{project}/runs/run-1/stop").status_code == 200
            wait_for(lambda: no_job(http), 10)
            assert orphan.wait(5) == -15  # SIGTERM
    finally:
        orphan.kill()


def test_a_run_that_fails_says_why_in_one_line_without_the_server_s_paths(tmp_path, tiny_real):
    photo = sorted((tiny_real / "train" / "cat").iterdir())[0].read_bytes()
    root = tmp_path / "studio"
    with client_for(root) as http:
        project = http.post("/api/projects", json={"name": "one class"}).json()["id"]
        upload(http, project, "cat", [(f"{i}.jpg", photo) for i in range(3)])
        run = http.post(f"/api/projects/{project}/runs", json={"recipe": "mlp", "settings": {"epochs": 1}}).json()["name"]
        wait_for(lambda: job_state(http, project, run) != "running", 120)
        job = http.get(f"/api/projects/{project}/runs").json()[0]["job"]
        assert job["state"] == "failed" and "found only one class (cat)" in job["message"]
        assert str(root) not in job["message"] and "\n" not in job["message"]
        assert http.post(f"/api/projects/{project}/runs/{run}/resume").status_code == 400  # nothing to resume
