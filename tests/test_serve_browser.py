"""The page in a real headless Chromium (Debian's `chromium`, installed here if missing; never
skipped), driven by Playwright with the system browser: nothing is downloaded.

    SERVE_CHECKPOINT=checkpoints/best.pt SERVE_SCREENSHOT=docs/serve.png pytest tests/test_serve_browser.py

serves another checkpoint and keeps the screenshot (that is how docs/serve.png was made)."""

import os
import shutil
import subprocess
from pathlib import Path

import httpx2
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from test_serve import HOSTILE, as_files, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # Playwright adds --headless and a fresh profile


def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (as .ci/run does)."""
    if not CHROMIUM.exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    assert CHROMIUM.exists(), "apt-get install chromium did not provide /usr/bin/chromium"
    return CHROMIUM


@pytest.fixture(scope="module")
def server(trained):
    checkpoint = os.environ.get("SERVE_CHECKPOINT") or trained
    process, url = start_server(checkpoint, "--no-access-log")
    yield url
    assert stop_server(process)[0] == 0


@pytest.fixture
def page(server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium()), args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        problems = []
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        page.goto(server)
        yield page
        assert problems == []  # no script error, no blocked resource, no alert() from a file name
        browser.close()


def save_screenshot(page, path: Path) -> None:
    """The whole page as a PNG; with SERVE_SCREENSHOT also a 256-colour copy there, small
    enough to keep in the repository."""
    page.screenshot(path=str(path), full_page=True)
    assert Image.open(path).size[0] == 1100
    if os.environ.get("SERVE_SCREENSHOT"):
        Image.open(path).convert("RGB").quantize(256).save(os.environ["SERVE_SCREENSHOT"], optimize=True)


def shown(card) -> dict:
    """What a card shows: label, neither badge, and each class's bar (probability and text)."""
    bars = card.locator(".bars li")
    return {"filename": card.locator(".filename").text_content(),
            "label": card.locator(".label").text_content(),
            "neither": card.locator(".badge").is_visible(),
            "bars": {bars.nth(i).get_attribute("data-class"): (float(bars.nth(i).get_attribute("data-probability")),
                                                              bars.nth(i).locator(".value").text_content())
                     for i in range(bars.count())}}


def test_upload_two_photos_see_answers_and_where_it_looked(page, server, tiny_real, tmp_path):
    photos = [sorted((tiny_real / "val" / kind).iterdir())[0] for kind in ("cat", "dog")]
    expect(page.locator("#model-card dl")).to_contain_text("val accuracy")
    page.set_input_files("#files", [str(p) for p in photos])
    cards = page.locator(".card")
    expect(cards).to_have_count(2)
    for i in range(2):
        expect(cards.nth(i)).to_have_attribute("data-state", "done")
    with httpx2.Client(base_url=server, timeout=30) as http:
        answers = http.post("/predict", files=as_files(*((p.name, p.read_bytes()) for p in photos))).json()
    for i, answer in enumerate(answers):
        card = shown(cards.nth(i))
        assert card["filename"] == answer["filename"] and card["label"] == answer["label"]
        assert card["neither"] == answer.get("neither", False)
        assert card["bars"] == {name: (p, f"{100 * p:.1f}%") for name, p in answer["probabilities"].items()}

    first = cards.nth(0)
    first.locator(".toggle").click()
    expect(first.locator(".heatmap")).to_be_visible()
    expect(first.locator(".thumb")).to_be_hidden()
    assert first.locator(".heatmap").evaluate("img => img.complete && img.naturalWidth") == 256
    assert first.locator(".heatmap").get_attribute("src").startswith("data:image/png;base64,")
    expect(first.locator(".toggle")).to_have_attribute("aria-pressed", "true")
    save_screenshot(page, tmp_path / "serve.png")
    first.locator(".toggle").click()
    expect(first.locator(".thumb")).to_be_visible()
    expect(first.locator(".heatmap")).to_be_hidden()


def test_a_hostile_file_name_shows_as_text(page, tiny_real, tmp_path):
    hostile = tmp_path / HOSTILE
    shutil.copy(sorted((tiny_real / "val" / "dog").iterdir())[0], hostile)
    (tmp_path / "notes.jpg").write_text("not a photo")
    page.set_input_files("#files", [str(hostile), str(tmp_path / "notes.jpg")])
    cards = page.locator(".card")
    expect(cards.nth(0)).to_have_attribute("data-state", "done")
    expect(cards.nth(1)).to_have_attribute("data-state", "error")
    assert cards.nth(0).locator(".filename").text_content() == HOSTILE
    assert page.locator("img[src='x']").count() == 0  # the name was never parsed as HTML
    assert "notes.jpg: cannot read image" in cards.nth(1).locator(".error").text_content()
