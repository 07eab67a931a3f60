"""The studio's Learn and Inside tabs in a real headless Chromium (Debian's, installed if missing;
never skipped), driven by Playwright with the system browser, against `python -m classifier.studio`.

    LEARN_PHOTOS=../shared/data/catsdogs/train LEARN_SCREENSHOTS=docs pytest tests/test_learn_browser.py

runs them on a project of those photos (copied) and keeps the screenshots (that is how
docs/learn.png and docs/inside.png were made)."""

import os
import shutil
from pathlib import Path

import httpx2
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from classifier.projects import Project
from test_serve import stop_server
from test_studio_browser import WIDTH, open_browser, start_studio


@pytest.fixture(scope="module")
def studio(project, tmp_path_factory):
    """The studio on a free port over a root holding the project "pets"."""
    root = tmp_path_factory.mktemp("studio")
    pets = Project.create(root, "pets")
    shutil.rmtree(pets.folder / "photos")
    shutil.copytree(os.environ.get("LEARN_PHOTOS") or project / "photos", pets.folder / "photos")
    process, url = start_studio(root)
    yield url
    assert stop_server(process)[0] == 0


@pytest.fixture
def page(studio):
    with sync_playwright() as playwright:
        problems = []
        browser, page = open_browser(playwright, problems)
        yield page
        assert problems == []  # no script error, no blocked resource, no refused request, no dialog
        browser.close()


def keep_screenshot(page, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    assert Image.open(tmp_path / name).size[0] == WIDTH
    if os.environ.get("LEARN_SCREENSHOTS"):
        Image.open(tmp_path / name).convert("RGB").quantize(256).save(Path(os.environ["LEARN_SCREENSHOTS"]) / name,
                                                                      optimize=True)


def test_step_five_times_and_watch_the_numbers_and_weights_change(page, studio, tmp_path):
    page.goto(studio + "#/p/pets/learn")
    page.wait_for_selector("#learn[data-ready]")
    page.click("#learn-start")
    expect(page.locator("#learn-controls")).to_be_visible(timeout=120_000)
    expect(page.locator("#learn-iteration")).to_have_text("0")
    weights = [page.locator("#learn-first img").first.get_attribute("src")]
    errors = []
    for number in range(1, 6):
        page.click("#learn-step")
        expect(page.locator("#learn-iteration")).to_have_text(str(number), timeout=30_000)
        errors.append(page.locator("#learn-error").text_content())
        weights.append(page.locator("#learn-first img").first.get_attribute("src"))
        expect(page.locator("#learn-batch .photo")).to_have_count(16)
        expect(page.locator("#learn-layers tbody tr")).to_have_count(2)
    assert len(set(errors)) == 5 and all(float(e) > 0 for e in errors)  # a new batch, a new error, each step
    assert all(a != b for a, b in zip(weights, weights[1:]))  # the weights' picture changes with every update
    assert page.locator("#learn-learned img").count() == 32
    assert "mean squared error" in page.locator("#learn-errors").text_content()
    keep_screenshot(page, "learn.png", tmp_path)


def look_inside_a_new_run(page, studio: str, settings: dict, passes: int) -> str:
    """A run the Learn tab's API trains `passes` passes over the photos; Inside opened on it, a photo looked at."""
    with httpx2.Client(timeout=120, headers={"origin": studio.rstrip("/")}) as http:
        run = http.post(f"{studio}api/projects/pets/learn/start", json=settings).json()
        for _ in range(passes * run["steps_per_pass"]):
            http.post(f"{studio}api/projects/pets/learn/step")
    page.goto(studio + "#/p/pets/inside")
    page.wait_for_selector("#inside[data-ready]")
    page.select_option("#run-select", run["run"])
    page.wait_for_selector(f'#inside[data-ready="{run["run"]}"]')
    page.click("#inside-look")
    return run["run"]


def test_inside_a_trained_run_for_a_photo_and_a_channels_top_patches(page, studio, tmp_path):
    run = look_inside_a_new_run(page, studio, {"model": "convnet", "lr": 0.05, "epochs": 3}, 3)
    expect(page.locator("#inside-maps button").first).to_be_visible(timeout=60_000)
    assert page.locator("#inside-layers li").count() == 14
    assert page.locator("#inside-answer").text_content().startswith("The answer:")
    assert "calibrated" in page.locator("#inside-outputs").text_content()
    page.locator("#inside-layers button").nth(1).click()  # the first convolution after batch norm and ReLU
    expect(page.locator("#inside-maps button")).to_have_count(8)
    page.locator("#inside-maps button").nth(2).click()
    expect(page.locator("#inside-patches .patch")).to_have_count(9, timeout=60_000)
    with httpx2.Client(timeout=120) as http:
        expected = http.get(f"{studio}api/projects/pets/inside/channel?run={run}&layer=1&channel=2").json()
    responses = [text.split("response ")[1] for text in page.locator("#inside-patches .patch").all_text_contents()]
    assert [float(value) for value in responses] == pytest.approx([p["value"] for p in expected["patches"]], rel=1e-2)
    expect(page.locator("#inside-kernel img")).to_have_count(1)  # a 3 x 3 filter over the photo's colours
    keep_screenshot(page, "inside.png", tmp_path)


def test_inside_an_mlp_each_hidden_neuron_on_its_activation_curve(page, studio):
    look_inside_a_new_run(page, studio, {"model": "mlp", "hidden": [12], "activation": "sigmoid"}, 1)
    expect(page.locator("#inside-plots circle")).to_have_count(12, timeout=60_000)
    assert "sigmoid" in page.locator("#inside-plots").text_content()
    page.locator("#inside-plots circle").nth(4).click()
    expect(page.locator("#inside-neuron")).to_contain_text("Neuron 5 of hidden layer 1: weighted sum")
    expect(page.locator("#inside-kernel img")).to_have_count(1)  # its weights on the pixels, as an image
    expect(page.locator("#inside-patches .patch")).to_have_count(9, timeout=60_000)  # the photos exciting it most
