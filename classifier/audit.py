"""Audit a folder of labelled photos before training: what would mislead a model or flatter its val score.

    python -m classifier.audit DIR --out OUT [--checkpoint CK]

DIR is any layout train.py reads (data.find_dataset). Nothing in it is moved, renamed, changed or
deleted. Each photo is read once (scan.py), then every check of checks.CHECKS works on what that
pass learned: unreadable files, exact and near duplicates, photos that look like another class or
like none, tiny photos, imbalanced or too small classes, files train.py passes over. Writes
OUT/findings.jsonl (one JSON object per finding, each with "kind" and "path": what
`train.py --exclude` reads), OUT/index.html (one offline page: thumbnails per kind) and a summary
on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from classifier.checks import CHECKS, CheckSettings, card_text, run_checks
from classifier.cli import run_command
from classifier.data import FOLDER_KINDS, normalized_path
from classifier.errors import ClassifierError
from classifier.images import open_image
from classifier.pages import data_uri, escape, page
from classifier.runtime import resolve_precision, select_device
from classifier.scan import FEATURE_SIZE, Scan, checkpoint_network, list_photos, pretrained_network, scan_photos

THUMBNAIL = 128  # pixels; static/pages.css sizes the cards for it
CARDS_PER_KIND = 300


@dataclass
class AuditSettings(CheckSettings):
    """The checks' thresholds, and how the photos are found and scanned."""

    image_size: int = FEATURE_SIZE
    val_fraction: float = 0.2
    checkpoint: str = ""
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    workers: int = 0


def audit(root: str | Path, settings: AuditSettings = AuditSettings()) -> tuple[Scan, list[dict]]:
    """Scan every photo under root once, then run each check: (the scan, all findings)."""
    photos, classes, given_split = list_photos(root, settings.val_fraction, settings.seed)
    device = select_device(settings.device)
    networks = [pretrained_network(settings.image_size)]
    if settings.checkpoint:
        networks.append(checkpoint_network(settings.checkpoint))
    scan = scan_photos(Scan(photos, classes, given_split), networks, device,
                       resolve_precision(settings.precision, device), settings.batch_size, settings.workers or None)
    return scan, run_checks(scan, settings)


def write_findings(findings: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(f) + "\n" for f in findings))


def by_kind(findings: list[dict], kind: str) -> list[dict]:
    """The findings of one kind, the surest first."""
    return sorted((f for f in findings if f["kind"] == kind), key=lambda f: -f.get("confidence", 1.0))


def shown_path(path: str, root: str) -> str:
    """A path as the page and the summary show it: relative to the audited folder when inside it."""
    return os.path.relpath(path, root) if path.startswith(root) else path


# --------------------------------------------------------------------------- the page


def thumbnail(path: str) -> str:
    """A small JPEG of the photo as a data: URI (the page works offline), or "" if it does not decode."""
    try:
        image = open_image(path, size_hint=THUMBNAIL)
    except ClassifierError:
        return ""
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    return data_uri(buffer.getvalue(), "image/jpeg")


def picture(path: str) -> str:
    uri = thumbnail(path) if os.path.isfile(path) else ""
    return f'<img src="{uri}" alt="">' if uri else '<div class="bad">(no image)</div>'


def card(finding: dict, root: str) -> str:
    """One finding: its photo (or the pair), its path, and what was found."""
    pictures = ""
    if finding["kind"] not in FOLDER_KINDS:
        pictures = picture(finding["path"]) if "of" not in finding else \
            f'<div class="pair">{picture(finding["path"])}{picture(finding["of"])}</div>'
    text = card_text({k: escape(v) if isinstance(v, str) else v for k, v in finding.items()})
    other = f'<div class="path">of {escape(shown_path(finding["of"], root))}</div>' if "of" in finding else ""
    return (f'<div class="card{" wide" if "of" in finding else ""}">{pictures}'
            f'<div class="path">{escape(shown_path(finding["path"], root))}</div>{other}<div>{text}</div></div>')


def write_page(findings: list[dict], scan: Scan, root: str, path: Path) -> None:
    """OUT/index.html: per check, a grid of cards sorted by confidence, thumbnails inline."""
    root = normalized_path(root)
    counts = ", ".join(f'<a href="#{c.kind}">{c.kind} {sum(f["kind"] == c.kind for f in findings)}</a>'
                       for c in CHECKS)
    sections = [f"<p>{len(scan.photos)} photos, classes {escape(', '.join(scan.classes))}. {counts}</p>"]
    for check in CHECKS:
        found = by_kind(findings, check.kind)
        cards = "".join(card(f, root) for f in found[:CARDS_PER_KIND])
        hidden = len(found) - CARDS_PER_KIND
        more = f'<p class="note">and {hidden} more in findings.jsonl</p>' if hidden > 0 else ""
        sections.append(f'<h2 id="{check.kind}">{check.kind} ({len(found)})</h2><p class="note">{escape(check.help)}</p>'
                        f'<div class="grid">{cards}</div>{more}')
    path.write_text(page(f"Audit of {root}", "".join(sections)))


# --------------------------------------------------------------------------- the command


def summary(findings: list[dict], scan: Scan, root: str, out: Path, seconds: float, examples: int = 2) -> str:
    """What the audit found, on one screen: counts per kind and the most confident examples."""
    root = normalized_path(root)
    lines = [f"audited {len(scan.photos):,} photos in {root} (classes {', '.join(scan.classes)}) in {seconds:.0f} s"]
    for check in CHECKS:
        found = by_kind(findings, check.kind)
        lines.append(f"  {check.kind:<12} {len(found):>5}")
        for finding in found[:examples]:
            text = card_text(finding).replace("<b>", "").replace("</b>", "")
            other = f" = {shown_path(finding['of'], root)}" if "of" in finding else ""
            lines.append(f"      {shown_path(finding['path'], root)}{other}: {text}")
    lines += [f"wrote {out / 'findings.jsonl'} ({len(findings)} findings) and {out / 'index.html'}",
              f"look at {out / 'index.html'}, delete the lines of findings.jsonl you disagree with, then leave the",
              f"rest out of training: python train.py --data {root} --exclude {out / 'findings.jsonl'}"]
    return "\n".join(lines)


def audit_folder(root: str, out: Path, settings: AuditSettings) -> None:
    """The command: audit root, write OUT/findings.jsonl and OUT/index.html, print the summary."""
    started = time.perf_counter()
    scan, findings = audit(root, settings)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_findings(findings, out / "findings.jsonl")
        write_page(findings, scan, root, out / "index.html")
    except OSError as error:
        raise ClassifierError(f"{out}: cannot write the audit ({error.strerror or error})") from None
    print(summary(findings, scan, root, out, time.perf_counter() - started))


def build_parser() -> argparse.ArgumentParser:
    defaults = AuditSettings()
    parser = argparse.ArgumentParser(
        prog="python -m classifier.audit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Audit a folder of labelled photos before training: unreadable files, duplicates "
                    "(also across train/val), photos that look like another class or like none, tiny "
                    "images, class imbalance. Never changes a file in DIR.",
        epilog="Finding kinds:\n" + "\n".join(f"  {c.kind:<12} {c.help}" for c in CHECKS))
    parser.add_argument("data", metavar="DIR", help="photos in any layout train.py reads")
    parser.add_argument("--out", default="audit",
                        help="folder for findings.jsonl and index.html (default: %(default)s)")
    parser.add_argument("--checkpoint", default="", metavar="CK",
                        help="score labels with this trained model's penultimate features (still out of fold) "
                             "instead of the pretrained network's (default: the pretrained EfficientNet-Lite0)")
    options = [
        ("--image-size", "image_size", int, "size of the center crops the pretrained network sees"),
        ("--folds", "folds", int, "cross-validation folds of the label probe"),
        ("--min-side", "min_side", int, "photos with a shorter side below this many pixels are tiny"),
        ("--near-similarity", "near_similarity", float,
         "cosine similarity of pretrained features from which two photos are near copies"),
        ("--near-hash-bits", "near_hash_bits", int,
         "perceptual hashes at most this many bits apart (of 64) are near copies"),
        ("--val-fraction", "val_fraction", float,
         "without train/ and val/ folders: the share train.py holds out for val"),
        ("--seed", "seed", int, "the seed of that split and of the probe's folds, as train.py's --seed"),
        ("--device", "device", str, "auto, cpu, cuda or mps"),
        ("--precision", "precision", str, "auto (bf16 where the device computes it natively), fp32, bf16 or fp16"),
        ("--batch-size", "batch_size", int, "photos per forward pass"),
        ("--workers", "workers", int, "decoding threads, 0 for one per core"),
    ]
    for flag, name, kind, text in options:
        parser.add_argument(flag, dest=name, type=kind, default=getattr(defaults, name),
                            help=text + " (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when the audit ran (findings are not errors), 1 with one line on a bad input."""
    args = vars(build_parser().parse_args(argv))
    root, out = args.pop("data"), Path(args.pop("out"))
    return run_command(audit_folder, root, out, AuditSettings(**args))


if __name__ == "__main__":
    sys.exit(main())
