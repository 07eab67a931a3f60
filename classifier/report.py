"""How training went, as one HTML page: `python -m classifier.report RUN_DIR`.

The report (RUN_DIR/report/ unless --out says otherwise) reads what training wrote (runs.py)
and holds loss and accuracy curves, the learning rate, a confusion matrix, per-class
precision / recall / F1, a reliability diagram, and galleries of the most confident mistakes
and the least confident correct answers. Each figure is a PNG next to report.html, which also
embeds them so it can travel alone; report.json has the numbers. Drawing needs matplotlib
(`pip install .[viz]`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from classifier.calibration import expected_calibration_error
from classifier.cli import run_command
from classifier.errors import ClassifierError
from classifier.images import open_image
from classifier.pages import data_uri, escape, page, table
from classifier.plots import figure, require_matplotlib, save_figure
from classifier.runs import Predictions, read_metrics, read_predictions

# Pixel sizes of the figures (width, height); a gallery is GALLERY_ROW high per row of images.
CURVES_SIZE = (1200, 360)
MATRIX_SIZE = (460, 420)
RELIABILITY_SIZE = (460, 460)
GALLERY_WIDTH, GALLERY_ROW, GALLERY_COLUMNS = 800, 230, 4
RELIABILITY_BINS = 15  # as calibration.expected_calibration_error, which train.py logs


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true class, predicted class]."""
    flat = labels * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_scores(confusion: torch.Tensor, classes: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of each class (0 where undefined)."""
    scores = {}
    for i, name in enumerate(classes):
        hits, predicted, actual = confusion[i, i].item(), confusion[:, i].sum().item(), confusion[i].sum().item()
        precision = hits / predicted if predicted else 0.0
        recall = hits / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return scores


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = RELIABILITY_BINS) -> dict:
    """The reliability diagram's data: for each non-empty bin (low, high] of the predicted
    class's probability, the mean probability, how often that class was right, and the count;
    and the expected calibration error over the same bins."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1).tolist()
    table = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            table.append({"low": low, "high": high, "count": int(inside.sum()),
                          "confidence": confidence[inside].mean().item(),
                          "accuracy": correct[inside].mean().item()})
    return {"bins": table, "ece": expected_calibration_error(probabilities, labels, bins)}


def cross_entropy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return -probabilities.gather(1, labels[:, None]).clamp_min(1e-300).log().mean().item()


def summarize(metrics: list[dict], predictions: Predictions) -> dict:
    """Every number the report shows: the best epoch's log line, and what the predictions give
    (cross-entropy and calibration before the temperature, as logged, and after it)."""
    labels = predictions.labels
    correct = predictions.predicted == labels
    confusion = confusion_matrix(labels, predictions.predicted, len(predictions.classes))
    logged = [m for m in metrics if m["epoch"] == predictions.epoch]
    return {
        "epochs": len(metrics),
        "best_epoch": predictions.epoch,
        "best_epoch_metrics": logged[-1] if logged else None,
        "images": len(predictions.labels),
        "accuracy": correct.double().mean().item(),
        "temperature": predictions.temperature,
        "cross_entropy": cross_entropy(predictions.uncalibrated, labels),
        "cross_entropy_calibrated": cross_entropy(predictions.probabilities, labels),
        "classes": predictions.classes,
        "confusion": confusion.tolist(),
        "per_class": per_class_scores(confusion, predictions.classes),
        "reliability": reliability(predictions.uncalibrated, labels),
        "reliability_calibrated": reliability(predictions.probabilities, labels),
    }


# --------------------------------------------------------------------------- the figures


def plot_curves(metrics: list[dict], best_epoch: int, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig = figure(*CURVES_SIZE)
    epochs = [m["epoch"] for m in metrics]
    panels = (("loss", "train_loss", "val_loss"), ("accuracy", "train_accuracy", "val_accuracy"),
              ("learning rate", "lr", None))
    axes = fig.subplots(1, 3)
    for ax, (title, train_key, val_key) in zip(axes, panels):
        ax.plot(epochs, [m[train_key] for m in metrics], "o-", label="train" if val_key else None)
        if val_key:  # evaluated epochs only (see --eval-every)
            evaluated = [m for m in metrics if val_key in m]
            ax.plot([m["epoch"] for m in evaluated], [m[val_key] for m in evaluated], "o-", label="val")
            ax.legend()
        ax.axvline(best_epoch, color="gray", linestyle=":", linewidth=1)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if all(m.get(key, 1) > 0 for m in metrics for key in ("train_loss", "val_loss")):
        axes[0].set(yscale="log", title="loss (log scale)")  # an early spike hides the rest otherwise
    return save_figure(fig, path)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path) -> Path:
    fig = figure(*MATRIX_SIZE)
    ax = fig.subplots()
    share = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp_min(1)
    ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="confusion matrix")
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 4 else 0, ha="right" if len(classes) > 4 else "center")
    ax.set_yticklabels(classes)
    if len(classes) <= 12:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{confusion[i, j].item()}\n{share[i, j].item():.0%}", ha="center",
                        va="center", color="white" if share[i, j] > 0.5 else "black")
    return save_figure(fig, path)


def plot_reliability(summary: dict, path: Path) -> Path:
    """Observed accuracy against predicted probability, as trained and after the temperature."""
    fig = figure(*RELIABILITY_SIZE)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    series = [("as trained", summary["reliability"])]
    if summary["temperature"] != 1.0:
        series.append((f"temperature {summary['temperature']:.2f}", summary["reliability_calibrated"]))
    for label, data in series:
        top.plot([b["confidence"] for b in data["bins"]], [b["accuracy"] for b in data["bins"]], "o-",
                 label=f"{label} (ECE {data['ece']:.3f})")
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="observed accuracy", title="reliability")
    top.legend(loc="upper left", fontsize="small")
    bins = series[-1][1]["bins"]
    bottom.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins],
               width=1 / RELIABILITY_BINS * 0.9, color="gray")
    bottom.set(xlabel="predicted probability of the predicted class", ylabel="images")
    return save_figure(fig, path)


def plot_gallery(predictions: Predictions, indices: list[int], title: str, path: Path) -> Path:
    """Thumbnails of the given validation images, each with its true and predicted class."""
    rows = -(-len(indices) // GALLERY_COLUMNS)
    fig = figure(GALLERY_WIDTH, GALLERY_ROW * rows + 40)
    fig.suptitle(title)
    axes = list(fig.subplots(rows, GALLERY_COLUMNS, squeeze=False).flat)
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, indices):
        try:
            image = open_image(predictions.paths[i], size_hint=256)
            image.thumbnail((256, 256))
            ax.imshow(image)
        except ClassifierError:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center")
        true, guess = predictions.classes[predictions.labels[i]], predictions.classes[predictions.predicted[i]]
        ax.set_title(f"true {true}, said {guess} {predictions.confidence[i].item():.1%}\n"
                     f"{Path(predictions.paths[i]).name}", fontsize="small",
                     color="black" if true == guess else "firebrick")
    return save_figure(fig, path)


def gallery_indices(predictions: Predictions, count: int) -> tuple[list[int], list[int]]:
    """(most confident mistakes, least confident correct answers), count of each at most."""
    correct = predictions.predicted == predictions.labels
    order = predictions.confidence.argsort(descending=True, stable=True).tolist()
    mistakes = [i for i in order if not correct[i]][:count]
    unsure = [i for i in reversed(order) if correct[i]][:count]
    return mistakes, unsure


# --------------------------------------------------------------------------- the page


def build_report(run_dir: str | Path, out: str | Path | None = None, gallery: int = 8) -> Path:
    """Write report.html, its PNGs and report.json for a training run; returns the HTML path."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report"
    metrics, predictions = read_metrics(run_dir), read_predictions(run_dir)
    summary = summarize(metrics, predictions)
    require_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    mistakes, unsure = gallery_indices(predictions, gallery)
    figures = {
        "curves": plot_curves(metrics, predictions.epoch, out / "curves.png"),
        "confusion": plot_confusion(torch.tensor(summary["confusion"]), predictions.classes,
                                    out / "confusion.png"),
        "reliability": plot_reliability(summary, out / "reliability.png"),
    }
    if mistakes:
        figures["mistakes"] = plot_gallery(predictions, mistakes, "most confident mistakes",
                                           out / "mistakes.png")
    if unsure:
        figures["unsure"] = plot_gallery(predictions, unsure, "least confident correct answers",
                                         out / "unsure.png")
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    report_file = out / "report.html"
    report_file.write_text(render_html(run_dir, summary, figures))
    return report_file


def embedded(path: Path | None, alt: str) -> str:
    """A figure inside the page (a data: URI), so report.html travels alone."""
    if path is None:
        return "<p>none</p>"
    return f'<img src="{data_uri(path.read_bytes(), "image/png")}" alt="{escape(alt)}">'


def render_html(run_dir: Path, summary: dict, figures: dict[str, Path]) -> str:
    logged = summary["best_epoch_metrics"] or {}
    facts = [
        ("run", str(run_dir.resolve())),
        ("epochs trained", summary["epochs"]),
        ("best epoch (best.pt, predictions below)", summary["best_epoch"]),
        ("validation images", summary["images"]),
        ("val accuracy", f"{summary['accuracy']:.2%}"),
        ("val cross-entropy", f"{summary['cross_entropy']:.4f}"),
        ("val loss in metrics.jsonl", f"{logged['val_loss']:.4f}" if logged else "not logged"),
        ("expected calibration error", f"{summary['reliability']['ece']:.4f}"),
        ("calibration temperature (predict divides logits by it)", f"{summary['temperature']:.3f}"),
        ("after it: cross-entropy, ECE", f"{summary['cross_entropy_calibrated']:.4f}, "
                                         f"{summary['reliability_calibrated']['ece']:.4f}"),
    ]
    per_class = [(name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", s["support"])
                 for name, s in summary["per_class"].items()]
    confusion = [(name, *row) for name, row in zip(summary["classes"], summary["confusion"])]
    sections = [
        ("Summary", table(("", ""), facts)),
        ("Training curves", "<p>Loss and accuracy on the training images (with augmentation) and "
         "the validation images, and the learning rate, after each epoch; the dotted line marks "
         "the best epoch.</p>" + embedded(figures["curves"], "training curves")),
        ("Confusion matrix", "<p>Rows: the true class; columns: the class predicted.</p>"
         + embedded(figures["confusion"], "confusion matrix")
         + table(("true \\ predicted", *summary["classes"]), confusion)),
        ("Per-class scores", table(("class", "precision", "recall", "F1", "images"), per_class)),
        ("Reliability", "<p>When the network says it is 90% sure, is it right 90% of the time? "
         "Points on the diagonal mean yes; below it, over-confident. predict divides the logits "
         "by the temperature fitted on the validation photos, which changes no answer.</p>"
         + embedded(figures["reliability"], "reliability diagram")),
        ("Most confident mistakes", embedded(figures.get("mistakes"), "most confident mistakes")),
        ("Least confident correct answers", embedded(figures.get("unsure"), "least confident correct answers")),
    ]
    body = "".join(f"<h2>{escape(title)}</h2>{content}" for title, content in sections)
    return page(f"Training report: {run_dir.name}", body)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m classifier.report",
        description="Write an HTML report of a training run: loss, accuracy and learning-rate "
                    "curves, confusion matrix, per-class precision / recall / F1, reliability "
                    "diagram, and galleries of confident mistakes and unsure correct answers.")
    parser.add_argument("run_dir", help="a training output folder (train.py --out): metrics.jsonl, "
                                        "val_predictions.jsonl or best.pt")
    parser.add_argument("--out", default="", help="folder for report.html, its PNGs and report.json (default: RUN_DIR/report)")
    parser.add_argument("--gallery", type=int, default=8, help="images in each gallery (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: print(f"wrote {build_report(args.run_dir, args.out or None, args.gallery)}"))


if __name__ == "__main__":
    sys.exit(main())
