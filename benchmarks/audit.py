"""Measure `python -m classifier.audit` on folders with planted problems, and on the untouched data.

    python -m benchmarks.audit --data ../shared/data/catsdogs --neither ../shared/data/neither \
        --breeds ../shared/data/dogbreeds

1. catsdogs with planted problems, built in a temporary folder (symbolic links to the photos,
   never a change to them): 20 train and 10 val photos filed under the other class; 20 train
   photos copied into val resized (50-80%) and re-encoded (JPEG quality 50-85); 10 train photos
   copied into val slightly cropped (3-8% off each side) and re-encoded; 6 exact copies from train
   into val and 4 within a train class; 5 broken files; 3 tiny photos; 5 neither photos filed as
   cat or dog; 2 HEIC files. Per kind: recall and false positives (findings about anything not
   planted), and how many of those the untouched folder also gets (problems already there).
2. The untouched catsdogs (train + val): what the audit finds, and whether it finds the three
   problems found by hand (cat.4085 is a dog, dog.4334 a cat, cat.4338 shows no animal).
3. dogbreeds (10 breeds, ~15 photos each) with the 19 neither photos and 10 swapped labels planted.
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchmarks.common import write_section
from classifier.audit import main as audit_main
from classifier.checks import KINDS
from classifier.images import walk_images

BY_HAND = {"cat.4085.jpg": "label", "dog.4334.jpg": "label", "cat.4338.jpg": "neither"}
NOTES = """How to read the tables: "other findings" are findings of the kind about anything not planted;
"on the untouched folder too" are those the audit also makes on the untouched photos (problems
already in the data, or the same false alarms), "planted for another kind" are findings about a
planted photo of another kind (a neither photo filed as cat is also a label finding, a tiny photo
resized from a train photo is also its copy), and "false positives" are the rest.

Looked at by eye (2026-12-02) on the page of the untouched run: of its 4 label findings, cat.4085
and dog.4334 are the known mislabelled photos, cat.724 shows a dog and a kitten (both classes) and
dog.584 is a dog (a false alarm). Of its 4 neither findings, cat.4338 (the shelter lobby) and
dog.4367.jpg (a 195x33 px "Yahoo! Mail" logo, not found by hand before) show no animal; dog.4306
(a dog behind the bars of a cage) and dog.4218 (a dog behind a wire fence, inside a star drawn over
a white page) are dogs hard to see. The project's neither rule (ImageNet's top 5 holds no cat or dog
AND the photo is unlike every other photo of the folder) flags 2 of 2,998 real photos; with the
top 5 alone, as on 2026-12-02 08:15, it flagged 22.
The near copy dog.74 / dog.180 is the same photo saved twice in the original data set. The label
photos the planted run missed (cat.337, cat.453, cat.486, filed as dog) are pale fluffy cats the
probe is unsure about or takes for dogs; the missed near copy is cropped.1 (a crop of dog.94).
"""


class Planter:
    """Builds a planted folder and remembers what it planted, per kind (paths, or pairs of paths)."""

    def __init__(self, root: Path, out: Path, seed: int = 0):
        self.root, self.out, self.random = root, out, random.Random(seed)
        self.truth = {kind: set() for kind in KINDS}

    def link(self, source: Path, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(source), target)
        return target

    def save(self, image: Image.Image, target: Path, quality: int) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        image.convert("RGB").save(target, "JPEG", quality=quality)
        return target

    def mirror(self, root: Path, swapped: set[Path]) -> None:
        """Link every photo of root into out, in the other class's folder if it is in `swapped`."""
        for source in map(Path, walk_images(root)):
            relative = source.relative_to(root)
            if source in swapped:
                others = sorted(p.name for p in source.parent.parent.iterdir() if p.is_dir() and p != source.parent)
                relative = relative.parent.parent / self.random.choice(others) / relative.name
                self.truth["label"].add(str(self.out / relative))
            self.link(source, self.out / relative)

    def near_copy(self, source: Path, target: Path, crop: bool) -> None:
        with Image.open(source) as image:
            image = image.convert("RGB")
        if crop:
            w, h = image.size
            box = [self.random.uniform(0.03, 0.08) for _ in range(4)]
            image = image.crop((round(w * box[0]), round(h * box[1]), round(w * (1 - box[2])), round(h * (1 - box[3]))))
        scale = self.random.uniform(0.85, 1.0) if crop else self.random.uniform(0.5, 0.8)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        self.save(image, target, self.random.randint(50, 85))
        self.truth["duplicate"].add(frozenset((str(target), str(self.out / source.relative_to(self.root)))))

    def exact_copy(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        self.truth["duplicate"].add(frozenset((str(target), str(self.out / source.relative_to(self.root)))))

    def broken(self, folder: Path, sample: Path) -> None:
        """Five unreadable files of the kinds real folders hold."""
        folder.mkdir(parents=True, exist_ok=True)
        data = sample.read_bytes()
        files = {"empty.jpg": b"", "truncated.jpg": data[: len(data) // 2], "notes.jpg": b"shopping list\n",
                 "noise.png": bytes(self.random.randrange(256) for _ in range(5000)),
                 "header.jpg": b"\0" * 64 + data[64:]}
        for name, content in files.items():
            (folder / name).write_bytes(content)
            self.truth["unreadable"].add(str(folder / name))


def plant_catsdogs(data: Path, neither: Path, out: Path, seed: int = 0) -> dict:
    planter = Planter(data, out, seed)
    pick = planter.random.sample
    train = {c: sorted((data / "train" / c).iterdir()) for c in ("cat", "dog")}
    val = {c: sorted(p for p in (data / "val" / c).iterdir() if p.name not in BY_HAND) for c in ("cat", "dog")}
    chosen = {c: pick(train[c], 33) for c in train}  # disjoint: 10 swapped, 10 resized, 5 cropped, 5 exact, 3 tiny
    swapped = {p for c in train for p in chosen[c][:10]} | {p for c in val for p in pick(val[c], 5)}
    planter.mirror(data, swapped)
    for c in train:
        for n, source in enumerate(chosen[c][10:20]):
            planter.near_copy(source, out / "val" / c / f"resized.{n}.jpg", crop=False)
        for n, source in enumerate(chosen[c][20:25]):
            planter.near_copy(source, out / "val" / c / f"cropped.{n}.jpg", crop=True)
        for n, source in enumerate(chosen[c][25:28]):
            planter.exact_copy(source, out / "val" / c / f"exact.{n}.jpg")
        for n, source in enumerate(chosen[c][28:30]):
            planter.exact_copy(source, out / "train" / c / f"exact.{n}.jpg")
    planter.broken(out / "train" / "cat", train["cat"][0])
    for n, source in enumerate(chosen["dog"][30:33]):  # resized copies too, hence duplicates as well
        with Image.open(source) as image:
            tiny = planter.save(image.resize((24, 18)), out / "train" / "dog" / f"tiny.{n}.jpg", 90)
        planter.truth["tiny"].add(str(tiny))
        planter.truth["duplicate"].add(frozenset((str(tiny), str(out / source.relative_to(data)))))
    for n, source in enumerate(sorted(neither.iterdir())[:5]):
        planter.truth["neither"].add(str(planter.link(source, out / "train" / ("cat", "dog")[n % 2] / source.name)))
    for n in range(2):
        (out / "train" / "cat" / f"IMG_000{n}.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(100))
        planter.truth["ignored"].add(str(out / "train" / "cat" / f"IMG_000{n}.heic"))
    return planter.truth


def plant_breeds(data: Path, neither: Path, out: Path, seed: int = 0) -> dict:
    """dogbreeds in its own layout (a folder per class) with neither photos and swapped labels."""
    planter = Planter(data, out / "breeds", seed)
    breeds = sorted(p for p in data.iterdir() if p.is_dir())
    swapped = {planter.random.choice(sorted(b.iterdir())) for b in breeds}
    planter.mirror(data, swapped)
    for n, source in enumerate(sorted(neither.iterdir())):
        target = planter.out / breeds[n % len(breeds)].name / source.name
        planter.truth["neither"].add(str(planter.link(source, target)))
    return planter.truth


def run_audit(folder: Path, out: Path, extra: list[str]) -> tuple[list[dict], float]:
    started = time.perf_counter()
    status = audit_main([str(folder), "--out", str(out), *extra])
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"audit of {folder} failed")
    return [json.loads(line) for line in (out / "findings.jsonl").read_text().splitlines()], seconds


def found_items(findings: list[dict], kind: str) -> set:
    """What the findings of a kind point at: paths, or pairs of paths for duplicates."""
    if kind == "duplicate":
        return {frozenset((f["path"], f["of"])) for f in findings if f["kind"] == kind}
    return {f["path"] for f in findings if f["kind"] == kind}


def original(item) -> frozenset | str:
    """The untouched photo(s) a planted folder's path(s) link to."""
    if isinstance(item, frozenset):
        return frozenset(os.path.realpath(p) for p in item)
    return os.path.realpath(item)


def score_table(findings: list[dict], truth: dict, untouched: list[dict] | None, root: Path) -> list[str]:
    """Recall per kind, and the other findings of the kind split by where they come from: problems
    the untouched folder has too, photos planted for another kind, and the rest (false positives).
    Call it while the planted folder exists: its links lead back to the untouched photos."""
    rows = ["| kind | planted | found | recall | other findings | on the untouched folder too "
            "| planted for another kind | false positives | missed |", "|---|---|---|---|---|---|---|---|---|"]
    made = {p for pair in truth["duplicate"] for p in pair if not os.path.islink(p)}  # copies, not their originals
    planted_files = made | {p for kind, items in truth.items() if kind != "duplicate" for p in items}
    for kind in ("unreadable", "duplicate", "label", "neither", "tiny", "ignored"):
        if not truth[kind] and kind not in ("label", "neither"):
            continue
        found, planted = found_items(findings, kind), truth[kind]
        extra = found - planted
        before = {original(y) for y in found_items(untouched or [], kind)}
        already = {x for x in extra if original(x) in before}
        other_kind = {x for x in extra - already if planted_files & ({x} if isinstance(x, str) else x)}
        missed = ", ".join(sorted(short(x, root) for x in planted - found)) or "-"
        recall = f"{len(found & planted) / len(planted):.0%}" if planted else "-"
        rows.append(f"| {kind} | {len(planted)} | {len(found & planted)} | {recall} | {len(extra)} | "
                    f"{len(already) if untouched else '-'} | {len(other_kind)} | "
                    f"{len(extra) - len(already) - len(other_kind)} | {missed} |")
    return rows


def short(item, root: Path) -> str:
    paths = [item] if isinstance(item, str) else sorted(item)
    return " = ".join(os.path.relpath(p, root) for p in paths)


def describe_untouched(findings: list[dict], root: Path) -> list[str]:
    lines = ["| kind | findings | examples |", "|---|---|---|"]
    for kind in KINDS:
        found = [f for f in findings if f["kind"] == kind]
        shown = "; ".join(describe(f, root) for f in found[:6]) + (" ..." if len(found) > 6 else "")
        lines.append(f"| {kind} | {len(found)} | {shown} |")
    flagged = {(Path(f["path"]).name, f["kind"]) for f in findings}
    lines += ["", "Found by hand before: " + ", ".join(
        f"{name} ({kind}): {'found' if (name, kind) in flagged else 'NOT found'}" for name, kind in BY_HAND.items())]
    return lines


def describe(finding: dict, root: Path) -> str:
    path = os.path.relpath(finding["path"], root)
    if finding["kind"] == "label":
        return f"{path} {finding['given']}->{finding['suggested']} {finding['confidence']:.2f}"
    if finding["kind"] == "duplicate":
        return f"{path} = {os.path.relpath(finding['of'], root)} ({finding['match']}, {finding['scope']})"
    if finding["kind"] == "neither":
        return f"{path} ({finding['imagenet'][0]})"
    return path


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs",
                        help="train/ and val/ of cat and dog (default: %(default)s)")
    parser.add_argument("--neither", default="../shared/data/neither", help="photos of neither (default: %(default)s)")
    parser.add_argument("--breeds", default="../shared/data/dogbreeds",
                        help="a folder per breed (default: %(default)s)")
    parser.add_argument("--keep", default="",
                        help="copy each audit's findings.jsonl and index.html here (default: no)")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    data, neither, breeds = (Path(p).resolve() for p in (args.data, args.neither, args.breeds))
    load = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        untouched, untouched_seconds = run_audit(data, work / "untouched-audit", [])
        load.append(os.getloadavg()[0])
        truth = plant_catsdogs(data, neither, work / "planted")
        planted, planted_seconds = run_audit(work / "planted", work / "planted-audit", [])
        load.append(os.getloadavg()[0])
        breeds_truth = plant_breeds(breeds, neither, work)
        breeds_findings, breeds_seconds = run_audit(work / "breeds", work / "breeds-audit", [])
        load.append(os.getloadavg()[0])
        counts = len(walk_images(work / "planted")), len(walk_images(work / "breeds"))
        planted_table = score_table(planted, truth, untouched, work / "planted")
        breeds_table = score_table(breeds_findings, breeds_truth, None, work / "breeds")
        for name in ("untouched", "planted", "breeds") if args.keep else ():
            shutil.copytree(work / f"{name}-audit", Path(args.keep) / name, dirs_exist_ok=True)
    sections = [
        f"Load average (1 min) after each run {', '.join(f'{x:.1f}' for x in load)}. Default settings (224 px center "
        f"crops, 5 folds); wall time of `classifier.audit.main` in this process (imports excluded), page included.",
        "", f"### catsdogs with planted problems ({counts[0]:,} files, {planted_seconds:.0f} s)", "",
        *planted_table, "",
        f"### Untouched catsdogs ({len(walk_images(data)):,} photos, {untouched_seconds:.0f} s)", "",
        *describe_untouched(untouched, data), "",
        f"### dogbreeds with 19 neither photos and 10 swapped labels ({counts[1]} files, {breeds_seconds:.0f} s)",
        "", *breeds_table, "", NOTES]
    write_section("audit", "Folder audit: planted problems and the untouched data (benchmarks/audit.py)",
                  "\n".join(sections))


if __name__ == "__main__":
    main()
