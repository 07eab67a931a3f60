"""The Learn and Inside pages in a real headless Chromium (Debian's, installed if missing; never
skipped), driven by Playwright with the system browser.

    LEARN_PROJECTS=/path/to/projects LEARN_SCREENSHOTS=docs pytest tests/test_learn_browser.py

runs them on another projects folder (its project "pets") and keeps the screenshots (that is how
docs/learn.png and docs/inside.png were made)."""

import os
import shutil
import threading
import time
from pathlib import Path

import httpx2
import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from test_serve_browser import FLAGS, chromium
from test_views import make_app


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """The pages over a projects folder holding "pets", on a free local port."""
    projects = Path(os.environ.get("LEARN_PROJECTS") or tmp_path_factory.mktemp("projects"))
    if not os.environ.get("LEARN_PROJECTS"):
        shutil.copytree(project, projects / "pets")
    server = uvicorn.Server(uvicorn.Config(make_app(projects, []), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/projects/pets"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page(server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium()), args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        problems = []
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        yield page
        assert problems == []  # no script error, no blocked resource
        browser.close()


def keep_screenshot(page, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    assert Image.open(tmp_path / name).size[0] == 1100
    if os.environ.get("LEARN_SCREENSHOTS"):
        Image.open(tmp_path / name).convert("RGB").quantize(256).save(Path(os.environ["LEARN_SCREENSHOTS"]) / name,
                                                                      optimize=True)


def test_step_five_times_and_watch_the_numbers_and_weights_change(page, server, tmp_path):
    page.goto(server + "/learn")
    page.wait_for_selector("#learn[data-ready]")
    if not page.locator("#settings").is_visible():
        page.click("#again")
    page.click("#start")
    expect(page.locator("#controls")).to_be_visible(timeout=120_000)
    expect(page.locator("#iteration")).to_have_text("0")
    weights = [page.locator("#first img").first.get_attribute("src")]
    errors = []
    for number in range(1, 6):
        page.click("#step")
        expect(page.locator("#iteration")).to_have_text(str(number), timeout=30_000)
        errors.append(page.locator("#error").text_content())
        weights.append(page.locator("#first img").first.get_attribute("src"))
        expect(page.locator("#batch .photo")).to_have_count(16)
        expect(page.locator("#layers tbody tr")).to_have_count(2)
    assert len(set(errors)) == 5 and all(float(e) > 0 for e in errors)  # a new batch, a new error, each step
    assert all(a != b for a, b in zip(weights, weights[1:]))  # the weights' picture changes with every update
    assert page.locator("#learned img").count() == 32 and "mean squared error" in page.locator("#errors").text_content()
    keep_screenshot(page, "learn.png", tmp_path)


def test_inside_a_trained_run_for_a_photo_and_a_channels_top_patches(page, server, tmp_path):
    with httpx2.Client(base_url=server, timeout=120) as api:  # a run: a small convnet, one pass over the photos
        run = api.post("/learn/start", json={"model": "convnet", "lr": 0.05, "epochs": 3}).json()
        for _ in range(3 * run["steps_per_pass"]):
            api.post("/learn/step")
    page.goto(server + "/inside")
    page.wait_for_selector("#inside[data-ready]")
    page.select_option("#run", run["run"])
    page.click("#look")
    expect(page.locator("#maps button").first).to_be_visible(timeout=60_000)
    assert page.locator("#layers li").count() == 14 and page.locator("#answer").text_content().startswith("The answer:")
    assert "calibrated" in page.locator("#outputs").text_content()
    page.locator("#layers button").nth(1).click()  # the first convolution after batch norm and ReLU
    expect(page.locator("#maps button")).to_have_count(8)
    page.locator("#maps button").nth(2).click()
    expect(page.locator("#patches .patch")).to_have_count(9, timeout=60_000)
    with httpx2.Client(base_url=server, timeout=120) as api:
        expected = api.get(f"/inside/channel?run={run['run']}&layer=1&channel=2").json()
    shown = [text.split("response ")[1] for text in page.locator("#patches .patch").all_text_contents()]
    assert [float(value) for value in shown] == pytest.approx([p["value"] for p in expected["patches"]], rel=1e-2)
    expect(page.locator("#kernel img")).to_have_count(1)  # a 3 x 3 filter over the photo's colours
    keep_screenshot(page, "inside.png", tmp_path)
