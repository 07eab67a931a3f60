"""A studio project: one folder on disk, which the command line reads and writes too.

    ROOT/ID/
      project.json     {"format", "name" (as shown; rename changes it), "created", "excluded": [CLASS/FILE]}
      photos/CLASS/    the photos, a folder a class:  train.py --data ROOT/ID/photos
      test/CLASS/      photos to evaluate trained models on, never trained on (optional)
      runs/RUN/        train.py --out ROOT/ID/runs/RUN, as it leaves it, and job.json (studio's)
      audit/           python -m classifier.audit ROOT/ID/photos --out ROOT/ID/audit
      exports/RUN/     model.onnx, model.ts, MODEL_CARD.md
      moves.jsonl      every photo moved to another class, so that each move can be undone
      .thumbnails/     small JPEGs the pages show (thumbnails.py; made again when deleted)

A project is its folder: a server restart, the command line and a copy of the folder on another
machine all see the same photos, runs and findings (paths inside are kept relative to it), and a
run stopped there resumes there (train.py --resume finds its photos and exclusions beside it).

Every name a client sends is checked: a class, run or file name is one path component
(`safe_name`: no separator, no "..", no leading dot, no control character) and a photo is
CLASS/FILE inside photos/ whose real file (links followed) stays inside it (`photo_path`);
anything else is refused with a ClassifierError that says why. Uploaded file names are cleaned
instead (`clean_file_name`). Nothing is deleted from disk but by `delete_photo` and `delete`.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import shutil
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from classifier import thumbnails
from classifier.errors import ClassifierError
from classifier.images import IMAGE_EXTENSIONS, decode_stream, open_image, walk_images

PROJECT_FILE = "project.json"
PROJECT_FORMAT = "catsdogs-studio-project/1"
SETS = ("photos", "test")  # the training photos, and photos kept apart to test a model
RESERVED = {"train", "val", "runs", "audit", "exports", "test", "photos"}  # folder names with a meaning
MAX_NAME_BYTES = 180
EXTENSION_OF = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp",
                "PPM": ".ppm"}
_lock = threading.Lock()  # project.json and moves.jsonl: one writer at a time


class Missing(ClassifierError):
    """A project, class, photo or run that is not there (answered 404)."""

    status = 404


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def safe_name(text: str, what: str = "name") -> str:
    """`text` if it can name a folder or file of a project (one path component); else a
    ClassifierError naming what is wrong with it."""
    name = unicodedata.normalize("NFC", str(text)).strip()
    problem = ("is empty" if not name else
               "is a path, not a name" if any(c in name for c in "/\\") or name in (".", "..") else
               "starts with a dot (hidden files are passed over)" if name.startswith(".") else
               "holds a control character" if any(unicodedata.category(c) == "Cc" for c in name) else
               f"is longer than {MAX_NAME_BYTES} bytes" if len(name.encode()) > MAX_NAME_BYTES else "")
    if problem:
        raise ClassifierError(f"{what} {text!r} refused: it {problem}")
    return name


def display_name(text: str) -> str:
    """A project's name as shown (any text of one line; the folder's name is its slug)."""
    name = " ".join(str(text).split())
    if not name or len(name) > 120 or any(unicodedata.category(c) == "Cc" for c in name):
        raise ClassifierError(f"project name {text!r} refused: one line of 1 to 120 characters")
    return name


def class_name(text: str) -> str:
    name = safe_name(text, "class name")
    if name.lower() in RESERVED:
        raise ClassifierError(f"class name {name!r} refused: train.py reads a folder of that name as a split "
                              f"or a project part, not a class; choose another")
    return name


def clean_file_name(text: str, fallback: str = "photo") -> str:
    """An uploaded file's name made safe: its last path component, control characters and
    leading dots dropped, shortened to MAX_NAME_BYTES (the extension kept)."""
    name = re.split(r"[/\\]", unicodedata.normalize("NFC", text or ""))[-1]
    name = "".join(c for c in name if unicodedata.category(c) != "Cc").strip().lstrip(".")
    stem, extension = os.path.splitext(name)
    while len((stem + extension).encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return (stem or fallback) + extension[:16]


def slug(name: str) -> str:
    """A folder name for a project called `name`: letters, digits, - and _ only."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower()[:40] or "project"


def unique_path(folder: Path, name: str) -> Path:
    """folder/name, or folder/stem-2.ext, -3 ... if taken."""
    stem, extension = os.path.splitext(name)
    path, number = folder / name, 1
    while path.exists() or path.is_symlink():
        number += 1
        path = folder / f"{stem}-{number}{extension}"
    return path


def write_json(path: Path, value) -> None:
    """Atomically: a crash leaves the old file or the new one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def inside(path: Path, folder: Path) -> bool:
    """Whether path's real location (every link followed) is folder or below it."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


@dataclass
class Skipped:
    name: str
    reason: str


class Project:
    """One project folder; see the module's docstring for what it holds."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.id = self.folder.name

    # ----------------------------------------------------------------- the project itself

    @classmethod
    def create(cls, root: Path, name: str) -> "Project":
        name = display_name(name)
        root.mkdir(parents=True, exist_ok=True)
        with _lock:
            folder = unique_path(root, slug(name))
            folder.mkdir()
            (folder / "photos").mkdir()
            write_json(folder / PROJECT_FILE, {"format": PROJECT_FORMAT, "name": name, "created": now(), "excluded": []})
        return cls(folder)

    @classmethod
    def open(cls, root: Path, project_id: str) -> "Project":
        folder = root / safe_name(project_id, "project")
        if not (folder / PROJECT_FILE).is_file() or not inside(folder, root):
            raise Missing(f"no project {project_id!r} (deleted, or never made)")
        return cls(folder)

    @classmethod
    def all(cls, root: Path) -> list["Project"]:
        if not root.is_dir():
            return []
        found = [cls(entry) for entry in sorted(root.iterdir()) if (entry / PROJECT_FILE).is_file()]
        return sorted(found, key=lambda project: project.settings.get("created", ""), reverse=True)

    @property
    def settings(self) -> dict:
        try:
            return json.loads((self.folder / PROJECT_FILE).read_text())
        except (OSError, ValueError) as error:
            raise ClassifierError(f"project {self.id}: {PROJECT_FILE} unreadable ({error})") from None

    def update(self, **values) -> dict:
        with _lock:
            settings = {**self.settings, **values}
            write_json(self.folder / PROJECT_FILE, settings)
        return settings

    def rename(self, name: str) -> None:
        self.update(name=display_name(name))

    def delete(self) -> None:
        """The whole folder: photos, runs, exports. The page asks first."""
        shutil.rmtree(self.folder)

    def summary(self) -> dict:
        settings = self.settings
        return {"id": self.id, "name": settings.get("name", self.id), "created": settings.get("created"),
                "classes": self.classes(), "test_classes": self.classes("test"),
                "excluded": len(self.excluded()), "runs": self.run_names()}

    # ----------------------------------------------------------------- classes and photos

    def set_folder(self, photo_set: str = "photos") -> Path:
        if photo_set not in SETS:
            raise ClassifierError(f"unknown photo set {photo_set!r}: use one of {', '.join(SETS)}")
        return self.folder / photo_set

    def classes(self, photo_set: str = "photos") -> list[dict]:
        """[{"name", "photos"}] of each class folder, sorted as train.py sorts them."""
        folder = self.set_folder(photo_set)
        if not folder.is_dir():
            return []
        return [{"name": entry.name, "photos": len(walk_images(entry))} for entry in sorted(folder.iterdir(), key=lambda e: e.name)
                if entry.is_dir() and not entry.name.startswith(".")]

    def add_class(self, name: str, photo_set: str = "photos") -> str:
        name = class_name(name)
        (self.set_folder(photo_set) / name).mkdir(parents=True, exist_ok=True)
        return name

    def photo_path(self, relative: str, photo_set: str = "photos") -> Path:
        """The file of photo CLASS/FILE (checked as the module's docstring says)."""
        parts = str(relative).split("/")
        if str(relative).startswith(("/", "\\")) or re.match(r"[A-Za-z]:", str(relative)):
            raise ClassifierError(f"photo {relative!r} refused: an absolute path; name it CLASS/FILE")
        if len(parts) < 2:
            raise ClassifierError(f"photo {relative!r} refused: name it CLASS/FILE")
        folder = self.set_folder(photo_set)
        path = folder.joinpath(*(safe_name(part, "photo path part") for part in parts))
        if not inside(path, folder):
            raise ClassifierError(f"photo {relative!r} refused: it leads outside the project's photos")
        if not path.is_file():
            raise Missing(f"no photo {relative!r} in this project (moved or deleted?)")
        return path

    def relative(self, path: str | Path, photo_set: str = "photos") -> str:
        return Path(path).relative_to(self.set_folder(photo_set)).as_posix()

    def photos(self, name: str, offset: int = 0, limit: int = 100, photo_set: str = "photos") -> dict:
        """One page of a class's photos, in name order: {"total", "photos": [{"path", "name", "excluded"}]}."""
        folder = self.set_folder(photo_set) / class_name(name)
        if not folder.is_dir() or not inside(folder, self.set_folder(photo_set)):
            raise Missing(f"no class {name!r} in this project")
        paths = walk_images(folder)
        excluded = set(self.excluded()) if photo_set == "photos" else set()
        page = [self.relative(p, photo_set) for p in paths[max(offset, 0):max(offset, 0) + max(min(limit, 500), 1)]]
        return {"total": len(paths), "offset": offset,
                "photos": [{"path": p, "name": p.split("/")[-1], "excluded": p in excluded} for p in page]}

    def thumbnail(self, relative: str, photo_set: str = "photos") -> Path:
        return thumbnails.cached(self.folder / thumbnails.FOLDER, self.photo_path(relative, photo_set), relative)

    def add_photo(self, name: str, file_name: str, data: bytes, photo_set: str = "photos") -> str | Skipped:
        """An uploaded photo into class `name`: CLASS/FILE, or why it was skipped (nothing written)."""
        shown = clean_file_name(file_name)
        try:
            image = open_image(data, size_hint=thumbnails.DECODE_SIZE, name=shown)
            with Image.open(io.BytesIO(data)) as header:
                image_format = header.format
        except ClassifierError as error:
            return Skipped(file_name, str(error).removeprefix(f"{shown}: "))
        folder = self.set_folder(photo_set) / self.add_class(name, photo_set)
        with _lock:
            path = unique_path(folder, trainable_name(shown, image_format))
            path.write_bytes(data if trainable(shown, image_format) else png_bytes(image))
        relative = self.relative(path, photo_set)
        thumbnails.store(self.folder / thumbnails.FOLDER, path, relative, image)
        return relative

    def import_folder(self, source: Path, photo_set: str = "photos", workers: int | None = None) -> dict:
        """Copy SOURCE/CLASS/... (or SOURCE/train|val|test/CLASS/...) into the project: each file
        is decoded once, to check it and to make its thumbnail. {"added", "skipped": [...]}."""
        planned, skipped = import_plan(source)
        added = 0

        def copy(item):
            file, name = item
            return self.add_file(file, name, photo_set)

        for (file, _), result, error in decode_stream(planned, copy, workers):
            if isinstance(result, Skipped) or error:
                skipped.append(result if isinstance(result, Skipped) else Skipped(str(file), error))
            else:
                added += 1
        return {"added": added, "skipped": [{"name": os.path.relpath(s.name, source) if os.path.isabs(s.name) else s.name,
                                              "reason": s.reason} for s in skipped]}

    def add_file(self, file: Path, name: str, photo_set: str = "photos") -> str | Skipped:
        """A photo file on the server's disk into class `name` (copied; never moved)."""
        try:
            image = open_image(file, size_hint=thumbnails.DECODE_SIZE)
            with Image.open(file) as header:
                image_format = header.format
            folder = self.set_folder(photo_set) / name
            folder.mkdir(parents=True, exist_ok=True)
            wanted = trainable_name(clean_file_name(file.name), image_format)
            if same_file(folder / wanted, file):
                return Skipped(str(file), "already in the project (a file of the same name and bytes)")
            with _lock:
                path = unique_path(folder, wanted)
                path.write_bytes(file.read_bytes() if trainable(file.name, image_format) else png_bytes(image))
        except (ClassifierError, OSError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            return Skipped(str(file), reason.removeprefix(f"{file}: "))
        relative = self.relative(path, photo_set)
        thumbnails.store(self.folder / thumbnails.FOLDER, path, relative, image)
        return relative

    def delete_photo(self, relative: str, photo_set: str = "photos") -> None:
        self.photo_path(relative, photo_set).unlink()
        if photo_set == "photos":
            self.set_excluded([relative], False)

    # ----------------------------------------------------------------- leaving out and moving

    def set_excluded(self, relatives: list[str], excluded: bool = True) -> list[str]:
        """Leave photos out of training (or take them back): recorded in project.json, files untouched."""
        if excluded:
            for relative in relatives:
                self.photo_path(relative)
        with _lock:
            settings = self.settings
            now_excluded = set(self.excluded())
            now_excluded = now_excluded | set(relatives) if excluded else now_excluded - set(relatives)
            settings["excluded"] = sorted(now_excluded)
            write_json(self.folder / PROJECT_FILE, settings)
        return settings["excluded"]

    def excluded(self) -> list[str]:
        """The photos left out of training, as CLASS/FILE (an absolute path into photos/, as an older
        project.json may hold, is read as that photo)."""
        return [relative_photo(entry, self.set_folder()) for entry in self.settings.get("excluded", [])]

    def exclusion_file(self, run: Path) -> str:
        """The excluded photos that still exist, written to RUN/excluded.txt as ./CLASS/FILE (no line
        a # comment): what train.py --exclude takes in --data, wherever the project is
        (data.excluded_paths). Its path, or "" when no photo is left out."""
        names = [name for name in self.excluded() if (self.set_folder() / name).is_file()]
        if not names:
            return ""
        (run / "excluded.txt").write_text("".join(f"./{name}\n" for name in names))
        return str(run / "excluded.txt")

    def move(self, relative: str, to_class: str, reason: str = "") -> dict:
        """Move a photo to another class's folder; logged in moves.jsonl so that it can be undone."""
        source, name = self.photo_path(relative), class_name(to_class)
        folder = self.set_folder() / name
        folder.mkdir(exist_ok=True)
        with _lock:
            target = unique_path(folder, source.name)
            os.rename(source, target)
            move = {"id": len(self.moves()) + 1, "from": relative, "to": self.relative(target), "time": now(),
                    "reason": reason}
            with open(self.folder / "moves.jsonl", "a") as log:
                log.write(json.dumps(move) + "\n")
        self.rename_excluded(relative, move["to"])
        return move

    def moves(self) -> list[dict]:
        """Every move, oldest first, each with "undone" (moved back since)."""
        path = self.folder / "moves.jsonl"
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        undone = {entry["undo"] for entry in entries if "undo" in entry}
        return [{**entry, "undone": entry["id"] in undone} for entry in entries if "undo" not in entry]

    def undo_move(self, move_id: int) -> dict:
        """Put a moved photo back where it was (under a new name if that one was taken since)."""
        move = next((m for m in self.moves() if m["id"] == move_id), None)
        if move is None or move["undone"]:
            raise ClassifierError(f"no move {move_id} to undo" + (" (already undone)" if move else ""))
        source = self.photo_path(move["to"])
        with _lock:
            target = unique_path(source.parent.parent / move["from"].split("/")[0], Path(move["from"]).name)
            target.parent.mkdir(exist_ok=True)
            os.rename(source, target)
            with open(self.folder / "moves.jsonl", "a") as log:
                log.write(json.dumps({"undo": move_id, "time": now()}) + "\n")
        self.rename_excluded(move["to"], self.relative(target))
        return {**move, "undone": True, "back_to": self.relative(target)}

    def rename_excluded(self, old: str, new: str) -> None:
        if old in self.excluded():
            self.set_excluded([old], False)
            self.set_excluded([new], True)

    # ----------------------------------------------------------------- runs

    def run_names(self) -> list[str]:
        runs = self.folder / "runs"
        return sorted((e.name for e in runs.iterdir() if e.is_dir() and not e.name.startswith(".")),
                      key=lambda n: (runs / n).stat().st_mtime) if runs.is_dir() else []

    def run_folder(self, name: str, exists: bool = True) -> Path:
        folder = self.folder / "runs" / safe_name(name, "run name")
        if exists and not folder.is_dir():
            raise Missing(f"no run {name!r} in this project")
        return folder

    def new_run_name(self) -> str:
        taken, number = set(self.run_names()), 1
        while f"run-{number}" in taken:
            number += 1
        return f"run-{number}"


def relative_photo(path: str, folder: Path) -> str:
    """An absolute path inside folder as a photo of it, CLASS/FILE; anything else as it is."""
    normal = Path(os.path.normpath(path))
    return normal.relative_to(folder).as_posix() if normal.is_absolute() and normal.is_relative_to(folder) else path


def trainable(name: str, image_format: str | None) -> bool:
    """Whether train.py reads the file as it is: an extension it knows, for a format it can decode."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and image_format is not None


def trainable_name(name: str, image_format: str | None) -> str:
    """The name a photo is saved under: as given when train.py reads it, else with the extension
    of its format (a .jfif JPEG becomes .jpg), or as a PNG (HEIC, AVIF, ICO ... are converted)."""
    if trainable(name, image_format):
        return name
    return os.path.splitext(name)[0] + EXTENSION_OF.get(image_format, ".png")


def same_file(path: Path, other: Path) -> bool:
    return path.is_file() and path.stat().st_size == other.stat().st_size and path.read_bytes() == other.read_bytes()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def import_plan(source: Path) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """(file, class) of every file below SOURCE/CLASS/ (or SOURCE/train|val|test/CLASS/), and the
    files that cannot be anyone's photo (not in a class folder, or a class name refused)."""
    if not source.is_dir():
        raise ClassifierError(f"{source.name}: not a folder")
    splits = [source / s for s in ("train", "val", "test") if (source / s).is_dir()]
    planned, skipped = [], []
    for top in splits or [source]:
        for entry in sorted(top.iterdir(), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                skipped.append(Skipped(str(entry), "not in a class folder (put photos in one folder per class)"))
                continue
            try:
                name = class_name(entry.name)
            except ClassifierError as error:
                skipped += [Skipped(str(entry), str(error))]
                continue
            planned += [(Path(file), name) for file in walk_images(entry, keep=lambda n: not n.startswith("."))]
    return planned, skipped
