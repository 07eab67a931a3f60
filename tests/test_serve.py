"""classifier.serve: the HTTP API through FastAPI's test client and through a real server
process on a free localhost port, and the batcher on its own."""

import asyncio
import base64
import datetime
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from classifier.checkpoint import load_checkpoint
from classifier.export import export
from classifier.inference import Classifier
from classifier.serve import Batcher, Service, create_app, parser
from conftest import REPO
from image_zoo import png_claiming

HOSTILE = "<img src=x onerror=alert(1)>.jpg"


@pytest.fixture(scope="module")
def checkpoint(trained):
    return trained


@pytest.fixture(scope="module")
def classifier(checkpoint):
    return Classifier.load(checkpoint, "cpu", "fp32")


@pytest.fixture(scope="module")
def client(classifier, checkpoint):
    with TestClient(create_app(Service(classifier, checkpoint), max_upload_mb=1)) as client:
        yield client


@pytest.fixture(scope="module")
def photos(tiny_real) -> list[Path]:
    return sorted((tiny_real / "val" / "cat").iterdir())[:2] + sorted((tiny_real / "val" / "dog").iterdir())[:2]


def as_files(*named: tuple[str, bytes]) -> list:
    return [("file", (name, data, "application/octet-stream")) for name, data in named]


def expected(classifier, paths) -> list[dict]:
    """What predict.py --json says about the same files, `path` renamed `filename`."""
    return [{"filename": Path(r.pop("path")).name, **r} for r in classifier.predict_paths(map(str, paths))]


def assert_same_results(answered, wanted):
    assert len(answered) == len(wanted)
    for got, want in zip(answered, wanted):
        assert got.keys() == want.keys()
        assert got["filename"] == want["filename"] and got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert got["known_score"] == pytest.approx(want["known_score"], abs=1e-4)


# --------------------------------------------------------------------------- the app, in process


def test_health_and_model_card(client, checkpoint, tiny_real):
    assert client.get("/health").json() == {"status": "ok"}
    card, saved = client.get("/info").json(), load_checkpoint(checkpoint)
    assert card["classes"] == ["cat", "dog"] and card["model"] == "convnet" and card["image_size"] == 32
    assert card["val_accuracy"] == saved["metrics"]["val_accuracy"]
    assert card["temperature"] == pytest.approx(saved["temperature"]) and card["neither"] == saved["neither"]
    assert card["trained_on"] == tiny_real.name and str(tiny_real) not in json.dumps(card) and card["checkpoint"] == "best.pt" and card["explainable"]
    trained = datetime.datetime.fromisoformat(card["trained_at"])  # saved_at, else the file's time
    assert abs(trained.timestamp() - time.time()) < 3600 and trained.tzinfo is not None
    assert card["tta"] and card["tta_sizes"] == list(saved["preprocessing"]["tta_sizes"])


def test_one_and_several_photos_answer_as_predict_does(client, classifier, photos):
    one = client.post("/predict", files=as_files((photos[0].name, photos[0].read_bytes())))
    assert one.status_code == 200
    assert_same_results(one.json(), expected(classifier, photos[:1]))
    several = client.post("/predict", files=as_files(*((p.name, p.read_bytes()) for p in photos)))
    assert_same_results(several.json(), expected(classifier, photos))


def test_an_upload_decodes_exactly_as_the_same_file_on_disk(classifier, photos):
    """Each test-time size from its own draft-mode decoding, as predict.py reads a path."""
    for tta in (True, False):
        uploaded = classifier.decode(photos[0].read_bytes(), tta, photos[0].name)
        on_disk = classifier.decode(photos[0], tta)
        assert len(uploaded) == len(on_disk) == (2 if tta else 1)
        assert all(torch.equal(a, b) for a, b in zip(uploaded, on_disk))


def test_unreadable_files_get_an_error_in_their_place(client, classifier, photos):
    good = photos[0].read_bytes()
    sent = [("a.jpg", good), ("garbage.jpg", b"not a photo at all"), ("half.jpg", good[: len(good) // 2]),
            ("bomb.png", png_claiming(100_000, 100_000)), ("empty.jpg", b""), ("b.jpg", photos[2].read_bytes())]
    response = client.post("/predict", files=as_files(*sent))
    assert response.status_code == 200
    results = response.json()
    assert [r["filename"] for r in results] == [name for name, _ in sent]
    errors = {r["filename"]: r["error"] for r in results if "error" in r}
    assert set(errors) == {"garbage.jpg", "half.jpg", "bomb.png", "empty.jpg"}
    assert "garbage.jpg: cannot read image (not an image format" in errors["garbage.jpg"]
    assert errors["half.jpg"].startswith("half.jpg: cannot read image") and "truncated" in errors["half.jpg"]
    assert errors["bomb.png"].startswith("bomb.png: ") and "decompression bomb" in errors["bomb.png"]
    assert errors["empty.jpg"] == "empty.jpg: cannot read image (empty file)"
    assert all("\n" not in message for message in errors.values())
    assert_same_results([results[0], results[5]], [{**r, "filename": n} for r, n in
                                                   zip(expected(classifier, [photos[0], photos[2]]), ("a.jpg", "b.jpg"))])


def test_no_file_is_a_400_with_a_json_error(client):
    for response in (client.post("/predict"), client.post("/predict", data={"photo": "x"}),
                     client.post("/predict", files=[("photo", ("a.jpg", b"x"))]),
                     client.post("/predict", json={"file": "cat.jpg"})):
        assert response.status_code == 400
        assert "named 'file'" in response.json()["error"]


def test_bodies_over_the_limit_are_refused_with_413(client, photos):
    too_big = as_files(("big.jpg", photos[0].read_bytes() + b"\0" * (1 << 20)))  # limit: 1 MB here
    response = client.post("/predict", files=too_big)
    assert response.status_code == 413 and "1 MB limit" in response.json()["error"]
    request = httpx2.Request("POST", "http://x", files=too_big)
    body, content_type = request.read(), request.headers["content-type"]

    def chunks():  # no Content-Length: the limit is enforced by counting as the body arrives
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    streamed = client.post("/predict", content=chunks(), headers={"content-type": content_type})
    assert streamed.status_code == 413 and "1 MB limit" in streamed.json()["error"]
    assert client.post("/predict", files=as_files(("ok.jpg", photos[0].read_bytes()))).status_code == 200


def test_file_names_are_data_never_paths(client, classifier, photos, tmp_path):
    """The name a client sends is echoed, never opened: a name pointing at a real photo with
    garbage inside is garbage, and a real photo named like a script tag is still a photo."""
    answers = client.post("/predict", files=as_files((str(photos[0].resolve()), b"garbage"),
                                                     (HOSTILE, photos[1].read_bytes()),
                                                     ("../../etc/passwd", photos[1].read_bytes()))).json()
    assert "error" in answers[0] and answers[0]["filename"] == str(photos[0].resolve())
    assert answers[1]["filename"] == HOSTILE and answers[2]["filename"] == "../../etc/passwd"
    want = expected(classifier, photos[1:2])[0]
    for answer in answers[1:]:
        assert answer["label"] == want["label"]
        assert answer["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)


def test_explain_adds_a_heatmap_png(client, photos):
    answer = client.post("/predict?explain=1", files=as_files((photos[2].name, photos[2].read_bytes()))).json()[0]
    prefix = "data:image/png;base64,"
    assert answer["heatmap"].startswith(prefix)
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["heatmap"][len(prefix):])))
    assert overlay.format == "PNG" and overlay.size == (256, 256) and overlay.mode == "RGB"
    plain = client.post("/predict", files=as_files((photos[2].name, photos[2].read_bytes()))).json()[0]
    assert "heatmap" not in plain and plain["probabilities"] == answer["probabilities"]
    assert client.post("/predict?explain=maybe", files=as_files(("a.jpg", b"x"))).status_code == 422


def test_page_and_assets_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers it
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = client.get("/static/app.js").text
    assert "innerHTML" not in script and "textContent" in script
    assert client.get("/static/%2e%2e/serve.py").status_code == 404
    for text in (page.text, script, client.get("/static/style.css").text):  # nothing from a CDN
        assert not re.search(r"(https?:)?//[a-z]", text.replace("http://127.0.0.1", ""))


def test_an_onnx_export_is_served_too(checkpoint, photos, tmp_path):
    onnx = Classifier.load(export(checkpoint, tmp_path / "model.onnx"))
    with TestClient(create_app(Service(onnx, tmp_path / "model.onnx"))) as client:
        card = client.get("/info").json()
        assert card["model"] == "exported ONNX model" and not card["explainable"] and card["classes"] == ["cat", "dog"]
        answers = client.post("/predict", files=as_files(*((p.name, p.read_bytes()) for p in photos))).json()
        assert_same_results(answers, expected(onnx, photos))
        refused = client.post("/predict?explain=1", files=as_files((photos[0].name, photos[0].read_bytes())))
        assert refused.status_code == 400 and "PyTorch checkpoint" in refused.json()["error"]


def test_concurrent_submissions_share_batches():
    """20 photos submitted at once run as a few batches of at most max_batch, each answer to
    its own request; a failing batch fails its requests and the next batch still runs."""
    sizes = []

    def run_batch(items):
        sizes.append(len(items))
        if "fail" in items:
            raise RuntimeError("model broke")
        return [item * 10 for item in items]

    async def scenario():
        batcher = Batcher(run_batch, ThreadPoolExecutor(1), max_batch=8, wait_ms=20)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        failed = await asyncio.gather(batcher.submit("fail"), return_exceptions=True)
        after = await batcher.submit(7)
        await batcher.stop()
        return answers, failed, after

    answers, failed, after = asyncio.run(scenario())
    assert answers == [i * 10 for i in range(20)]
    assert sizes[:3] == [8, 8, 4]  # queued together, run together
    assert isinstance(failed[0], RuntimeError) and after == 70


def test_every_flag_is_documented_with_its_default():
    help_text = parser().format_help()
    for flag in ("--checkpoint", "--host", "--port", "--max-upload-mb", "--batch-size", "--batch-wait-ms",
                 "--tta", "--device", "--precision", "--threads", "--access-log"):
        assert flag in help_text
    assert help_text.count("(default:") >= 11
    defaults = parser().parse_args([])
    assert (defaults.host, defaults.port, defaults.max_upload_mb) == ("127.0.0.1", 8000, 20)


# --------------------------------------------------------------------------- a real server process


def start_server(checkpoint, *flags, cwd=None, env=None) -> tuple[subprocess.Popen, str]:
    """python -m classifier.serve on a free port (--port 0); returns the process and its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "classifier.serve", "--checkpoint", str(checkpoint), "--port", "0", *flags],
        cwd=cwd or REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # printed once the model is loaded and the port is open
    if "http://" not in line:
        process.kill()
        raise AssertionError(f"server did not start: {line}{process.stderr.read()}")
    threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe drained
    threading.Thread(target=process.stderr.read, daemon=True).start()
    return process, re.search(r"http://\S+", line).group().rstrip("/")


def stop_server(process: subprocess.Popen, timeout: float = 10) -> tuple[int, float]:
    """SIGTERM; the exit status and how long it took to exit."""
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout), time.monotonic() - start
    finally:
        if process.poll() is None:
            process.kill()


def test_real_server_answers_then_stops_cleanly_on_sigterm(checkpoint, classifier, photos, tmp_path):
    """Over real HTTP: every endpoint, 8 clients at once, the limits; no upload left on disk
    (its temporary folder and working folder stay empty); SIGTERM: exit 0 within seconds."""
    (tmp_path / "tmp").mkdir(), (tmp_path / "cwd").mkdir()
    process, url = start_server(checkpoint, "--max-upload-mb", "1.5", "--precision", "fp32", "--device", "cpu",
                                cwd=tmp_path / "cwd", env={"TMPDIR": str(tmp_path / "tmp")})
    assert url.startswith("http://127.0.0.1:")
    with httpx2.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").json() == {"status": "ok"}
        started = time.perf_counter()
        for _ in range(20):
            assert http.get("/info").json()["classes"] == ["cat", "dog"]
        assert time.perf_counter() - started < 0.5  # no response waits 40 ms for a delayed ACK (TCP_NODELAY)
        padded = photos[3].read_bytes() + b"\0" * (1 << 20)  # over 1 MB: spooled to an unnamed file
        sent = [(p.name, p.read_bytes()) for p in photos] + [("x.txt", b"hello"), (HOSTILE, padded)]
        answers = http.post("/predict", files=as_files(*sent)).json()
        assert_same_results(answers[:4], expected(classifier, photos))
        assert answers[4]["filename"] == "x.txt" and "x.txt: cannot read image" in answers[4]["error"]
        assert answers[5]["filename"] == HOSTILE and answers[5]["probabilities"] == answers[3]["probabilities"]
        assert http.post("/predict").status_code == 400
        too_big = http.post("/predict", files=as_files(("big.jpg", b"\0" * (2 << 20))))
        assert too_big.status_code == 413 and "limit" in too_big.json()["error"]

        def ask(index):
            photo = photos[index % len(photos)]
            return http.post("/predict", files=as_files((photo.name, photo.read_bytes()))).json()[0]

        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(ask, range(16)))
        assert_same_results(concurrent, [expected(classifier, photos)[i % 4] for i in range(16)])
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "cwd").iterdir()) == []
    status, seconds = stop_server(process)
    assert status == 0 and seconds < 5


def test_a_missing_checkpoint_is_one_line_and_status_1(tmp_path):
    run = subprocess.run([sys.executable, "-m", "classifier.serve", "--checkpoint", str(tmp_path / "none.pt")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().count("\n") == 0 and "none.pt" in run.stderr and run.stderr.startswith("error: ")
