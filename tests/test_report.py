import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from classifier import report, runs
from classifier.errors import ClassifierError
from classifier.pages import STYLESHEET, escape
from classifier.report import main as report_main
from conftest import REPO, train_args, train_main


@pytest.fixture
def run(trained_run):
    """The suite's trained run, with the report train.py --report built; it was evaluated with TTA
    at a second size too, so rebuilding the predictions checks that path end to end."""
    return trained_run


def logged(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_report_writes_every_figure_at_its_size(run):
    folder = run / "report"
    expected = {"curves.png": report.CURVES_SIZE, "confusion.png": report.MATRIX_SIZE,
                "reliability.png": report.RELIABILITY_SIZE}
    mistakes, unsure = report.gallery_indices(runs.read_predictions(run), 8)
    for name, shown in (("mistakes.png", mistakes), ("unsure.png", unsure)):
        if shown:
            rows = -(-len(shown) // report.GALLERY_COLUMNS)
            expected[name] = (report.GALLERY_WIDTH, report.GALLERY_ROW * rows + 40)
    assert mistakes or unsure
    for name, size in expected.items():
        assert Image.open(folder / name).size == size, name
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(expected)  # self-contained
    assert all(title in page for title in ("Training curves", "Confusion matrix", "Per-class scores",
                                           "Reliability", "Most confident mistakes"))
    assert STYLESHEET.read_text() in page and "http://" not in page and "https://" not in page


def test_a_hostile_run_name_is_shown_as_text(run, tmp_path):
    hostile = tmp_path / '<img src=x onerror=alert(1)> & "q"'
    summary = json.loads((run / "report" / "report.json").read_text())
    figures = {name: run / "report" / f"{name}.png" for name in ("curves", "confusion", "reliability")}
    page = report.render_html(hostile, summary, figures)
    assert escape(hostile.name) in page and "<img src=x" not in page


def test_report_numbers_match_the_metrics_log(run):
    summary = json.loads((run / "report" / "report.json").read_text())
    log = logged(run)
    best = max(log, key=lambda m: m["val_accuracy"])  # best.pt is the first epoch with the best accuracy
    assert summary["best_epoch"] == best["epoch"] == torch.load(run / "best.pt")["epoch"]
    assert summary["best_epoch_metrics"] == best
    assert summary["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-12)
    assert summary["cross_entropy"] == pytest.approx(best["val_loss"], abs=1e-5)
    assert summary["temperature"] == pytest.approx(best.get("temperature", 1.0))
    if "ece" in best:  # logged when training fits a calibration temperature
        assert summary["reliability"]["ece"] == pytest.approx(best["ece"], abs=1e-5)
        assert summary["reliability_calibrated"]["ece"] == pytest.approx(best["ece_calibrated"], abs=1e-5)
    confusion = torch.tensor(summary["confusion"])
    assert confusion.sum() == summary["images"] == 12
    assert confusion.diag().sum() / confusion.sum() == pytest.approx(summary["accuracy"])
    assert [s["support"] for s in summary["per_class"].values()] == [6, 6]
    page = (run / "report" / "report.html").read_text()
    assert f"{best['val_accuracy']:.2%}" in page and f"{best['val_loss']:.4f}" in page


@pytest.mark.parametrize("damage", ["missing", "older than best.pt"])
def test_predictions_rebuilt_from_best_pt(run, tmp_path, damage):
    """Runs from before val_predictions.jsonl existed, or stopped after a newer best.pt, still
    get a report of best.pt, with the same numbers."""
    before = json.loads((run / "report" / "report.json").read_text())
    predictions = run / runs.PREDICTIONS_FILE
    original = predictions.read_text()
    if damage == "missing":
        predictions.unlink()
    else:
        predictions.write_text(original.replace('"epoch": ', '"epoch": 99'))  # not best.pt's
        os.utime(predictions, ns=(0, 0))
    try:
        assert report_main([str(run), "--out", str(tmp_path / "again")]) == 0
        after = json.loads((tmp_path / "again" / "report.json").read_text())
    finally:
        predictions.write_text(original)
    assert after["confusion"] == before["confusion"] and after["best_epoch"] == before["best_epoch"]
    assert after["cross_entropy"] == pytest.approx(before["cross_entropy"], abs=1e-9)


def test_scores_on_known_predictions():
    # 6 images, classes a and b: true a a a b b b; predicted a a b b b a
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.45, 0.55], [0.95, 0.05]],
                                 dtype=torch.float64)
    predictions = runs.Predictions(["a", "b"], [f"{i}.jpg" for i in range(6)],
                                     torch.tensor([0, 0, 0, 1, 1, 1]), probabilities, epoch=2)
    summary = report.summarize([{"epoch": 1}, {"epoch": 2, "val_accuracy": 4 / 6}], predictions)
    assert summary["confusion"] == [[2, 1], [1, 2]]
    assert summary["accuracy"] == pytest.approx(4 / 6)
    assert summary["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    true_p = torch.tensor([0.9, 0.6, 0.3, 0.8, 0.55, 0.05], dtype=torch.float64)
    assert summary["cross_entropy"] == pytest.approx(-true_p.log().mean().item())
    bins = summary["reliability"]["bins"]  # one image in each of 6 of the 15 bins
    assert [b["count"] for b in bins] == [1, 1, 1, 1, 1, 1]
    assert [b["accuracy"] for b in bins] == [1, 1, 0, 1, 1, 0]
    gaps = [1 - 0.55, 1 - 0.6, 0.7, 1 - 0.8, 1 - 0.9, 0.95]
    assert summary["reliability"]["ece"] == pytest.approx(sum(gaps) / 6)
    mistakes, unsure = report.gallery_indices(predictions, 8)
    assert mistakes == [5, 2] and unsure == [4, 1, 3, 0]


def test_temperature_is_undone_for_the_logged_numbers():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-3.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    calibrated = (logits / 2.5).softmax(dim=1)
    predictions = runs.Predictions(["a", "b"], ["x"] * 3, labels, calibrated, epoch=1, temperature=2.5)
    assert predictions.uncalibrated == pytest.approx(logits.softmax(dim=1))
    summary = report.summarize([{"epoch": 1}], predictions)
    assert summary["cross_entropy"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert summary["cross_entropy_calibrated"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits / 2.5, labels).item())


def test_metrics_of_the_latest_run_only(tmp_path):
    lines = [{"epoch": e, "val_accuracy": a} for e, a in ((1, 0.1), (2, 0.2), (1, 0.5), (2, 0.6), (3, 0.7))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert [m["val_accuracy"] for m in runs.read_metrics(tmp_path)] == [0.5, 0.6, 0.7]


def test_not_a_run_folder_is_a_one_line_error(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "metrics.jsonl" in err and "--out" in err and "\n" not in err


def test_without_matplotlib_the_commands_say_what_to_install(run, tiny_real, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ClassifierError, match=r"pip install \.\[viz\]"):
        report.build_report(run, tmp_path / "r")
    # train.py --report refuses before training, not after it
    assert train_main(train_args(tiny_real, tmp_path / "t", tmp_path / "cache", "--epochs", 1, "--report")) == 1
    assert "pip install .[viz]" in capsys.readouterr().err
    assert not (tmp_path / "t" / "metrics.jsonl").exists()


@pytest.mark.parametrize("module", ["classifier.report", "classifier.explain", "classifier.serve", "classifier.audit",
                                    "classifier.studio"])
def test_entry_points_and_console_scripts(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout and "(default:" in result.stdout
    script = REPO / ".venv" / "bin" / module.replace(".", "-")
    assert script.exists(), "pip install -e . should install " + script.name
    assert subprocess.run([script, "--help"], capture_output=True, text=True).stdout == result.stdout
