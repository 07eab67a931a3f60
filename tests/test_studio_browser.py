"""The studio in a real headless Chromium (Debian's, as tests/test_serve_browser.py drives it; its
fake camera stands in for a webcam): the whole path a new user takes, from two folders of photos
to a trained, checked, exported model, then a restart of the server.

    STUDIO_SCREENSHOTS=docs pytest tests/test_studio_browser.py

keeps a small PNG of each screen in docs/ (that is how docs/studio-*.png were made)."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import onnxruntime
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from conftest import REPO
from test_serve import HOSTILE, stop_server
from test_serve_browser import FLAGS, chromium

CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
PHOTOS_A_CLASS = 20
WIDTH = 1240


def start_studio(root: Path) -> tuple[subprocess.Popen, str]:
    """python -m classifier.studio on a free port; the process and its address."""
    process = subprocess.Popen([sys.executable, "-m", "classifier.studio", "--root", str(root), "--port", "0"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise AssertionError(f"the studio did not start: {line}{process.stdout.read()}")
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, re.search(r"http://\S+/", line).group()


@pytest.fixture
def pets(real_data, tmp_path) -> Path:
    """The user's folder: pets/cat/ and pets/dog/, 20 real photos each, as such folders are: among
    the cats, a photo of a dog and a second copy of one cat."""
    for kind in ("cat", "dog"):
        (tmp_path / "pets" / kind).mkdir(parents=True)
        for photo in sorted((real_data / "train" / kind).iterdir(), key=lambda p: int(p.name.split(".")[1]))[:PHOTOS_A_CLASS]:
            shutil.copy(photo, tmp_path / "pets" / kind / photo.name)
    cats = tmp_path / "pets" / "cat"
    (cats / "cat.19.jpg").unlink()
    (cats / "cat.20.jpg").rename(cats / "cat.1 (copy).jpg")
    shutil.copy(cats / "cat.1.jpg", cats / "cat.1 (copy).jpg")
    shutil.copy(real_data / "train" / "dog" / "dog.21.jpg", cats / "dog.21.jpg")
    (cats / "cat.18.jpg").rename(cats / HOSTILE)  # a file name that is also HTML
    return tmp_path / "pets"


def screenshot(page, name: str, folder: Path) -> None:
    """The screen as a PNG in folder; with STUDIO_SCREENSHOTS also a 128-colour copy there, small
    enough for the repository."""
    path = folder / f"studio-{name}.png"
    page.screenshot(path=str(path))
    assert Image.open(path).size[0] == WIDTH
    if os.environ.get("STUDIO_SCREENSHOTS"):
        Image.open(path).convert("RGB").quantize(128).save(Path(os.environ["STUDIO_SCREENSHOTS"]) / path.name, optimize=True)


def open_browser(playwright, problems: list):
    browser = playwright.chromium.launch(executable_path=str(chromium()), args=FLAGS + CAMERA)
    context = browser.new_context(viewport={"width": WIDTH, "height": 820}, accept_downloads=True)
    page = context.new_page()
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    return browser, page


def points(page) -> int:
    return int(page.get_attribute("#chart-loss", "data-points") or 0)


def wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"waited {seconds} s for {what}")


def photos_in_and_checked(page, pets: Path, shots: Path) -> None:
    page.set_input_files("#new-folder-input", str(pets))  # the folder chooser: a folder of class folders
    for kind in ("cat", "dog"):
        expect(page.locator(f".class[data-class={kind}] .tile")).to_have_count(PHOTOS_A_CLASS, timeout=60_000)
    expect(page.locator("#photos-status")).to_have_text(f"added {2 * PHOTOS_A_CLASS} photo(s)")
    expect(page.locator("#project-title")).to_have_text("pets")
    expect(page.locator(f".tile[data-path='cat/{HOSTILE}'] figcaption")).to_have_text(HOSTILE)
    assert page.locator("img[src='x']").count() == 0  # the name was shown as text, never parsed as HTML
    screenshot(page, "photos", shots)
    page.click("#tabs a[data-tab=audit]")
    page.click("#audit-run")
    expect(page.locator("#audit-status")).to_have_attribute("data-state", "finished", timeout=120_000)
    dog = page.locator(".finding[data-kind=label][data-path='cat/dog.21.jpg']")
    expect(dog).to_contain_text("filed as cat, looks like dog")
    copy = page.locator(".finding[data-kind=duplicate]")
    expect(copy).to_contain_text("the same file as")
    copy.locator("button[data-action=exclude]").click()
    expect(page.locator(".finding.excluded[data-kind=duplicate]")).to_be_visible()
    screenshot(page, "check", shots)
    dog.locator("button[data-action=move]").click()  # one click: into the class it looks like
    expect(page.locator("#moves li").first).to_contain_text("cat/dog.21.jpg → dog/dog.21.jpg")
    page.locator("#moves li").first.locator("button").click()  # undo
    expect(page.locator("#moves li").first).to_contain_text("undone")
    dog.locator("button[data-action=move]").click()
    expect(page.locator("#moves li").first.locator("button")).to_have_text("Undo")


def trained_live_across_a_reload(page, shots: Path) -> None:
    """The pretrained recipe, small: the curve moves, a reload mid-training finds it going on."""
    page.click("#tabs a[data-tab=runs]")
    expect(page.locator("input[name=recipe][value=pretrained]")).to_be_checked()
    page.fill("#setting-epochs", "120")
    page.fill("#setting-image_size", "64")
    page.click("#train-button")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "running", timeout=30_000)
    wait_until(lambda: points(page) >= 3, 120, "the curve's first points")
    before = points(page)
    wait_until(lambda: points(page) > before, 60, "the curve to move")
    screenshot(page, "train", shots)
    page.reload()
    expect(page.locator("#live-title")).to_have_text("run-1")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "running")
    wait_until(lambda: points(page) > before, 30, "the curve again after the reload")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "finished", timeout=180_000)
    assert points(page) >= 120 + 1  # every epoch's training loss, and the evaluations


def evaluated_tried_exported(page, url: str, photo: Path, shots: Path, tmp_path: Path) -> None:
    page.click("#tabs a[data-tab=evaluate]")
    expect(page.locator("#evaluation")).to_be_visible(timeout=60_000)
    cell = page.locator("#confusion td[data-true=dog][data-said=dog] button")
    count = int(cell.text_content())
    cell.click()
    expect(page.locator("#cell-photos .tile")).to_have_count(count)
    screenshot(page, "evaluate", shots)
    page.click("#tabs a[data-tab=try]")
    expect(page.locator("section[data-tab=try]")).to_be_visible()
    page.set_input_files("#try-files", str(photo))
    card = page.locator("#try-cards .card")
    expect(card).to_have_attribute("data-state", "done", timeout=60_000)
    with httpx2.Client(base_url=url, timeout=60, headers={"origin": url.rstrip("/")}) as http:
        answer = http.post("api/projects/pets/runs/run-1/predict", files=[("file", (photo.name, photo.read_bytes()))]).json()[0]
    assert card.get_attribute("data-label") == answer["label"]
    card.locator(".toggle").click()
    expect(card.locator(".heatmap")).to_be_visible(timeout=30_000)
    screenshot(page, "try", shots)
    page.click("#tabs a[data-tab=export]")
    page.click("#export-onnx")
    link = page.locator("#downloads li[data-file='model.onnx'] a")
    expect(link).to_be_visible(timeout=120_000)
    with page.expect_download() as download:
        link.click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name == "pets-run-1-model.onnx"
    assert onnxruntime.InferenceSession(str(path)).get_outputs()[0].name == "probabilities"
    expect(page.locator("#model-card-text")).to_contain_text("classes: cat, dog")
    screenshot(page, "export", shots)


def webcam_photos(page, count: int = 3) -> None:
    page.click("#tabs a[data-tab=photos]")
    page.select_option("#class-select", "cat")
    page.click("#webcam-open")
    expect(page.locator("#webcam-shoot")).to_be_enabled(timeout=20_000)  # the camera gives pictures
    for taken in range(1, count + 1):
        page.click("#webcam-shoot")
        expect(page.locator("#webcam-count")).to_have_text(f"{taken} photo(s) taken", timeout=20_000)
    expect(page.locator(".class[data-class=cat] h3")).to_contain_text(f"{PHOTOS_A_CLASS - 1 + count} photo(s)")
    page.click("#webcam-close")


def test_a_new_user_goes_from_two_folders_to_an_exported_model_and_finds_it_after_a_restart(pets, tmp_path):
    shots, root = tmp_path / "screens", tmp_path / "studio"
    shots.mkdir()
    process, url = start_studio(root)
    problems = []
    try:
        with sync_playwright() as playwright:
            browser, page = open_browser(playwright, problems)
            page.goto(url)
            expect(page.locator("#no-projects")).to_be_visible()
            photos_in_and_checked(page, pets, shots)
            trained_live_across_a_reload(page, shots)
            evaluated_tried_exported(page, url, sorted((pets.parent / "pets" / "dog").iterdir())[0], shots, tmp_path)
            webcam_photos(page)
            browser.close()
        assert stop_server(process, timeout=30)[0] == 0
        process, url = start_studio(root)  # the same folder, a new server
        with sync_playwright() as playwright:
            browser, page = open_browser(playwright, problems)
            page.goto(url)
            expect(page.locator(".project-card[data-project=pets]")).to_contain_text("cat (22), dog (21)")
            screenshot(page, "projects", shots)
            page.click(".project-card[data-project=pets] a")
            expect(page.locator(".class[data-class=cat] .tile")).to_have_count(PHOTOS_A_CLASS - 1 + 3)
            expect(page.locator(".class[data-class=cat] .tile.excluded")).to_have_count(1)  # the copy, still left out
            page.click("#tabs a[data-tab=runs]")
            expect(page.locator("#run-list li[data-run=run-1]")).to_have_attribute("data-state", "finished")
            page.click("#tabs a[data-tab=export]")
            expect(page.locator("#downloads li[data-file='model.onnx'] a")).to_be_visible()
            browser.close()
    finally:
        if process.poll() is None:
            stop_server(process, timeout=30)
    assert problems == []  # no script error, no blocked resource, no alert()
