"""The folder audit: every finding kind on small folders built here, the page, the command line,
that no user file changes, and the paths train.py --exclude reads. Features at 160 px keep it fast."""

import ast
import hashlib
import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from classifier import cli
from classifier.audit import AuditSettings, audit, main
from classifier.checks import CHECK_OF_KIND, CHECKS, KINDS
from classifier.data import FOLDER_KINDS, excluded_paths, normalized_path
from classifier.checkpoint import save_checkpoint
from classifier.images import Preprocessing
from classifier.errors import ClassifierError
from classifier.models import create_model
from classifier.pages import STYLESHEET
from conftest import REPO, make_image

NEITHER = REPO.parent / "shared" / "data" / "neither"
FAST = ["--image-size", "160", "--device", "cpu", "--workers", "2"]
HOSTILE = '<img src=x onerror=alert(1)> & "q".jpg'


def shrink(source: Path, target: Path, scale: float = 1.0, quality: int = 90, crop: float = 0.0) -> Path:
    """A real photo at most 256 px wide (decoding stays cheap), optionally cropped and rescaled."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
    image.thumbnail((256, 256))
    w, h = image.size
    image = image.crop((round(w * crop), round(h * crop), round(w * (1 - crop)), round(h * (1 - crop))))
    image.resize((round(image.width * scale), round(image.height * scale))).save(target, "JPEG", quality=quality)
    return target


def snapshot(root: Path) -> dict:
    """Every file below root (links included) and a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def messy(real_data, tmp_path_factory) -> Path:
    """train/ and val/ of real cats and dogs (20 + 5 a class) with one problem of each kind planted."""
    root = tmp_path_factory.mktemp("messy")
    for split, first, count in (("train", 1, 20), ("val", 4001, 5)):
        for name in ("cat", "dog"):
            for n in range(first, first + count):
                shrink(real_data / split / name / f"{name}.{n}.jpg", root / split / name / f"{name}.{n}.jpg")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"this is not a JPEG")
    shutil.copy(root / "train" / "dog" / "dog.1.jpg", root / "train" / "dog" / "exact.jpg")
    shrink(root / "train" / "cat" / "cat.2.jpg", root / "val" / "cat" / "resized.jpg", scale=0.7, quality=60)
    shrink(root / "train" / "dog" / "dog.3.jpg", root / "val" / "dog" / "cropped.jpg", crop=0.04, quality=75)
    shutil.move(root / "train" / "cat" / "cat.7.jpg", root / "train" / "dog" / "cat.7.jpg")  # a cat filed as dog
    make_image(root / "train" / "dog" / "tiny.png", size=(10, 10))
    shutil.copy(NEITHER / "coffee.png", root / "train" / "cat" / "coffee.png")
    (root / "train" / "dog" / "IMG_0001.heic").write_bytes(b"\0\0\0\x18ftypheic")
    return root


@pytest.fixture(scope="module")
def audited(messy, tmp_path_factory):
    """(findings, OUT, the folder's snapshots before and after, stdout) of one audit run."""
    out, before = tmp_path_factory.mktemp("audit"), snapshot(messy)
    assert main([str(messy), "--out", str(out), *FAST]) == 0
    findings = [json.loads(line) for line in (out / "findings.jsonl").read_text().splitlines()]
    return findings, out, before, snapshot(messy)


def of_kind(findings, kind):
    return {Path(f["path"]).name: f for f in findings if f["kind"] == kind}


def test_every_finding_has_a_kind_and_an_absolute_path(audited):
    findings = audited[0]
    assert findings and all(f["kind"] and os.path.isabs(f["path"]) for f in findings)


def test_unreadable_says_why(audited):
    found = of_kind(audited[0], "unreadable")
    assert list(found) == ["broken.jpg"] and "not an image format" in found["broken.jpg"]["reason"]


def test_exact_resized_and_cropped_copies_each_once_with_scope(audited):
    pairs = {(Path(f["path"]).name, Path(f["of"]).name): f for f in audited[0] if f["kind"] == "duplicate"}
    assert pairs[("exact.jpg", "dog.1.jpg")]["match"] == "exact"
    assert pairs[("exact.jpg", "dog.1.jpg")]["scope"] == "within class"
    assert pairs[("resized.jpg", "cat.2.jpg")]["scope"] == "across train/val"  # the val copy is the one to drop
    assert pairs[("cropped.jpg", "dog.3.jpg")]["match"] == "near"
    assert len(pairs) == 3  # no other pair among the 50 distinct photos, and each pair once


def test_a_cat_filed_as_dog_is_caught_out_of_fold(audited):
    found = of_kind(audited[0], "label")
    assert found["cat.7.jpg"]["given"] == "dog" and found["cat.7.jpg"]["suggested"] == "cat"
    assert found["cat.7.jpg"]["confidence"] > 0.5
    assert len(found) <= 4  # a hard photo or two, the planted ones, not a flood


def test_neither_tiny_and_ignored(audited):
    findings = audited[0]
    neither = of_kind(findings, "neither")
    assert "coffee.png" in neither and neither["coffee.png"]["imagenet"]
    assert len(neither) <= 6
    assert of_kind(findings, "tiny")["tiny.png"]["width"] == 10 and len(of_kind(findings, "tiny")) == 1
    assert list(of_kind(findings, "ignored")) == ["IMG_0001.heic"]
    assert not of_kind(findings, "imbalance")  # 20 and 20 photos a class


def test_the_page_and_the_summary(audited, capsys):
    findings, out, _, _ = audited
    page = (out / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= len(findings) - 2  # thumbnails inline, offline
    assert "http://" not in page and "https://" not in page
    assert STYLESHEET.read_text() in page  # the offline pages' one stylesheet, inlined
    for kind in ("unreadable", "duplicate", "label", "neither", "tiny"):
        assert f'id="{kind}"' in page


def test_no_user_file_changes(audited):
    _, _, before, after = audited
    assert before == after


def test_imbalance_small_classes_and_a_hostile_name(tmp_path, capsys):
    root = tmp_path / "colours"
    for n in range(12):
        make_image(root / "red" / f"r{n}.png", color=(200, 20 * n, 30), size=(40, 40))
    for n in range(3):
        make_image(root / "blue" / f"b{n}.png", color=(20, 30, 60 * n + 50), size=(40, 40))
    (root / "blue" / HOSTILE).write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), *FAST]) == 0
    findings = [json.loads(line) for line in (out / "findings.jsonl").read_text().splitlines()]
    imbalance = of_kind(findings, "imbalance")["blue"]
    assert (imbalance["count"], imbalance["largest"], imbalance["split"]) == (3, 12, "all")
    assert set(of_kind(findings, "small_class")) == {"red", "blue"}  # 2 and 1 val photos (20%)
    page = (out / "index.html").read_text()
    assert "onerror=alert" in page and "<img src=x" not in page  # the name is shown, escaped
    assert HOSTILE in capsys.readouterr().out


@pytest.fixture(scope="module")
def with_checkpoint(messy, tmp_path_factory):
    """(scan, findings) of audit() on the messy folder, the label probe reading a checkpoint's features."""
    folder = tmp_path_factory.mktemp("checkpoint")
    model = create_model("convnet", num_classes=2, channels=(8, 16))
    save_checkpoint(folder / "ck.pt", model, ["cat", "dog"], Preprocessing(32).to_dict())
    return audit(messy, AuditSettings(image_size=96, checkpoint=str(folder / "ck.pt"), device="cpu"))


def test_checkpoint_features_feed_the_probe(with_checkpoint):
    scan, findings = with_checkpoint
    assert scan.probe_features.shape[1] == 16 and scan.features.shape[1] == 1280
    assert {f["kind"] for f in findings} >= {"unreadable", "duplicate"}


def test_each_check_finds_its_own_kind_and_the_audit_is_all_checks(with_checkpoint):
    scan, findings = with_checkpoint
    settings = AuditSettings(image_size=96, device="cpu")
    found = {check.kind: check.run(scan, settings) for check in CHECKS}
    assert all(f["kind"] == kind for kind, kind_findings in found.items() for f in kind_findings)
    where = lambda f: (f["kind"], f["path"], f.get("of"))  # the label probe's numbers may differ in the last digit
    assert [where(f) for kind_findings in found.values() for f in kind_findings] == list(map(where, findings))
    assert {"unreadable", "duplicate", "tiny", "ignored"} <= {kind for kind, fs in found.items() if fs}


def test_the_check_list_is_the_one_source_of_kinds_help_and_cards(audited, capsys):
    assert KINDS == tuple(check.kind for check in CHECKS) and len(set(KINDS)) == len(KINDS) == 8
    assert set(FOLDER_KINDS) <= set(KINDS) and all(check.help for check in CHECKS)
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    page = (audited[1] / "index.html").read_text()
    for check in CHECKS:
        assert check.help in help_text and html.escape(check.help) in page and f'id="{check.kind}"' in page
    for finding in audited[0]:  # each card's text comes from its check
        escaped = {k: html.escape(v) if isinstance(v, str) else v for k, v in finding.items()}
        assert CHECK_OF_KIND[finding["kind"]].card(escaped) in page
    # the command and the page name no kind themselves: no parallel dict or if-chain of kinds
    source = ast.parse((REPO / "classifier" / "audit.py").read_text())
    named = {node.value for node in ast.walk(source) if isinstance(node, ast.Constant) and node.value in KINDS}
    assert not named, f"audit.py names kinds itself: {named}"


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    for name in ("a", "b"):
        make_image(tmp_path / "data" / name / "1.png")
        make_image(tmp_path / "data" / name / "2.png", color=(10, 10, 10))
    assert main([str(tmp_path / "data"), "--checkpoint", str(tmp_path / "no.pt"), *FAST]) == 1
    assert "no.pt: no such checkpoint" in capsys.readouterr().err


def test_main_runs_through_run_command_with_the_allocator_setting(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert calls == [True] and error.count("\n") == 1 and "missing" in error and "Traceback" not in error


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--out", "--checkpoint", "--image-size", "--folds", "--min-side", "--near-similarity",
                 "--near-hash-bits", "--val-fraction", "--seed", "--device", "--precision", "--batch-size", "--workers"):
        assert flag in text
    assert text.count("(default:") >= 13


def test_runs_as_a_module_and_declares_its_console_script():
    result = subprocess.run([sys.executable, "-m", "classifier.audit", "--help"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m classifier.audit")
    assert 'classifier-audit = "classifier.audit:main"' in (REPO / "pyproject.toml").read_text()


def test_excluded_paths_from_findings_lists_and_commas(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    findings = tmp_path / "findings.jsonl"
    findings.write_text(json.dumps({"kind": "label", "path": "/data/train/dog/cat.7.jpg"}) + "\n\n"
                        + json.dumps({"kind": "imbalance", "path": "/data/train/blue"}) + "\n"
                        + json.dumps({"kind": "duplicate", "path": "/data/val/x/../cat/copy.jpg", "of": "/a"}) + "\n")
    assert excluded_paths(str(findings)) == {"/data/train/dog/cat.7.jpg", "/data/val/cat/copy.jpg"}
    listing = tmp_path / "drop.txt"
    listing.write_text("# photos to leave out\ntrain/a.jpg\n\n  /abs/b.jpg  \n")
    assert excluded_paths(str(listing)) == {str(tmp_path / "train" / "a.jpg"), "/abs/b.jpg"}
    assert excluded_paths("a.jpg, /x/b.jpg") == {normalized_path("a.jpg"), "/x/b.jpg"}
    with pytest.raises(ClassifierError, match="no such file"):
        excluded_paths("missing.jsonl")
    findings.write_text('{"kind": "label"}\n')
    with pytest.raises(ClassifierError, match="line 1"):
        excluded_paths(str(findings))
