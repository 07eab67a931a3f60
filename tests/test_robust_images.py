"""Bad images never stop training, evaluation, predict or the Python API: each file decodes
correctly or gives one line naming the file and the problem, and every good image is used."""

import io
import json
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from classifier.checkpoint import save_checkpoint
from classifier.predict import main as predict_main
from classifier.train import main as train_main
from classifier.images import Preprocessing, decode_images, walk_images
from classifier.errors import ClassifierError
from classifier.models import create_model
from classifier.inference import Classifier
from conftest import copy_subset, make_image, train_args
from image_zoo import HIDDEN, ZOO, check_decoded, decodes, make_zoo, png_claiming
from other_user import run_as_nobody, shared_folder

DECODE = Preprocessing(image_size=16)


@pytest.fixture(scope="module")
def zoo(real_data, tmp_path_factory) -> dict[str, Path]:
    return make_zoo(tmp_path_factory.mktemp("zoo"), real_data / "train" / "cat" / "cat.1.jpg")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """A checkpoint of an untrained small convnet: enough for the mechanics of predict."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    save_checkpoint(path, create_model("convnet", 2, channels=[8, 16]), ["cat", "dog"],
                    Preprocessing(image_size=32).to_dict())
    return path


def assert_one_line_naming(message: str, path, fragment: str) -> None:
    assert "\n" not in message and str(path) in message and fragment in message, message


@pytest.mark.parametrize("name", [*ZOO, *HIDDEN])
def test_each_file_decodes_correctly_or_gives_one_line_naming_it(zoo, name):
    expected = {**ZOO, **HIDDEN}[name][1]
    if name == "loop":  # a folder symlink to its own parent: nothing to decode
        assert Path(zoo[name]).resolve() == Path(zoo[name]).parent.resolve()
    elif decodes(expected):
        check_decoded(DECODE.decode(zoo[name]), expected)
    else:
        with pytest.raises(ClassifierError) as error:
            DECODE.decode(zoo[name])
        assert_one_line_naming(str(error.value), zoo[name], expected)


def test_a_decompression_bomb_is_refused_without_allocating_its_memory(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(60_000, 60_000))  # 10.8 GB as RGB pixels
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(ClassifierError, match="bomb"):
        DECODE.decode(tmp_path / "bomb.png")
    assert time.perf_counter() - started < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 50_000  # KiB


def test_an_unreadable_file_as_another_user_is_skipped_and_named(real_data):
    """Permissions do not apply to root, so the decoding runs as the user nobody."""
    folder = shared_folder()
    try:
        good, secret = folder / "good.jpg", folder / "secret.jpg"
        shutil.copy(real_data / "train" / "cat" / "cat.1.jpg", good)
        shutil.copy(good, secret)
        good.chmod(0o644), secret.chmod(0o000)

        def decode_both():
            decoded = decode_images([str(good), str(secret)], [0, 1], DECODE, workers=1)
            return decoded.paths, decoded.skipped

        (paths, skipped), _ = run_as_nobody(decode_both)
        assert paths == [str(good)]
        assert len(skipped) == 1 and skipped[0][0] == str(secret)
        assert_one_line_naming(skipped[0][1], secret, "Permission denied")
    finally:
        shutil.rmtree(folder)


def test_folder_scans_pass_over_hidden_files_folders_and_loops(zoo):
    found = {Path(p).name for p in walk_images(next(iter(zoo.values())).parent)}
    assert found == set(ZOO)  # every candidate image is tried; nothing hidden, no loop twice


def test_an_opened_pil_image_that_is_broken_gives_one_line_naming_its_file(zoo):
    with Image.open(zoo["truncated.jpg"]) as lazy:  # decoding happens only when used
        with pytest.raises(ClassifierError) as error:
            DECODE.decode(lazy)
    assert_one_line_naming(str(error.value), zoo["truncated.jpg"], "truncated")


def _messy_dataset(real_data, root: Path) -> Path:
    """Real photos in train/ and val/, with the zoo in train/cat and again in val/dog."""
    copy_subset(real_data, root, {"train": 6, "val": 3})
    photo = real_data / "train" / "cat" / "cat.1.jpg"
    make_zoo(root / "train" / "cat", photo)
    make_zoo(root / "val" / "dog", photo)
    return root


def test_training_uses_every_good_image_and_lists_every_bad_one(real_data, tmp_path, capsys):
    data = _messy_dataset(real_data, tmp_path / "data")
    out = tmp_path / "run"
    assert train_main(train_args(data, out, tmp_path / "cache", "--epochs", 1)) == 0
    bad = [n for n, (_, expected) in ZOO.items() if not decodes(expected)]
    good = [n for n, (_, expected) in ZOO.items() if decodes(expected)]
    listed = (out / "skipped.txt").read_text().splitlines()
    assert len(listed) == 2 * len(bad)
    for split, name in ((s, n) for s in ("train/cat", "val/dog") for n in bad):
        assert sum(str(data / split / name) + ":" in line for line in listed) == 1, name
    printed = capsys.readouterr().out
    assert f"skipped {2 * len(bad)} unreadable image(s)" in printed
    assert f"{6 * 2 + len(good)} train, {3 * 2 + len(good)} val images" in printed  # none lost
    # the same run again reads the scan from the decode cache: same list, nothing decoded
    assert train_main(train_args(data, tmp_path / "again", tmp_path / "cache", "--epochs", 1)) == 0
    assert (tmp_path / "again" / "skipped.txt").read_text().splitlines() == listed


def test_a_class_whose_images_are_all_unreadable_stops_before_training(real_data, tmp_path, capsys):
    data = copy_subset(real_data, tmp_path / "data", {"train": 3, "val": 2}, classes=("cat",))
    make_zoo(data / "train" / "dog", real_data / "train" / "cat" / "cat.1.jpg", ["empty.jpg", "text.jpg"])
    shutil.copytree(data / "val" / "cat", data / "val" / "dog")
    assert train_main(train_args(data, tmp_path / "run", tmp_path / "cache", "--epochs", 1)) == 1
    error = capsys.readouterr().err.strip()
    assert error == (f"error: {data}: no readable training images left for class(es) dog "
                     f"after skipping 2 unreadable")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert len((tmp_path / "run" / "skipped.txt").read_text().splitlines()) == 2


def test_no_readable_validation_image_stops_before_training(tmp_path, capsys):
    for name in ("cat", "dog"):
        make_image(tmp_path / "data" / "train" / name / "a.png")
        (tmp_path / "data" / "val" / name).mkdir(parents=True)
        (tmp_path / "data" / "val" / name / "c.jpg").write_bytes(b"")
    assert train_main(train_args(tmp_path / "data", tmp_path / "run", tmp_path / "cache", "--epochs", 1)) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no readable validation images left after skipping 2" in error
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "no images found"),
    (lambda root: (root / "cat").mkdir() or (root / "dog").mkdir(), "no images found"),
    (lambda root: make_zoo(root / "cat", Path(), ["one_pixel.jpg"]) and (root / "dog").mkdir(),
     "class folder(s) dog hold no images"),
    (lambda root: make_zoo(root / "cat", Path(), ["one_pixel.jpg", "gray.jpg"]), "only one class"),
], ids=["no-images", "empty-classes", "one-empty-class", "one-class"])
def test_unusable_folders_stop_before_training_with_one_line(tmp_path, capsys, setup, message):
    (tmp_path / "data").mkdir()
    setup(tmp_path / "data")
    assert train_main(train_args(tmp_path / "data", tmp_path / "run", tmp_path / "cache")) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and str(tmp_path / "data") in error and message in error
    assert "\n" not in error and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_predict_gives_a_line_for_every_file_and_never_stops(zoo, untrained, capsys):
    folder = next(iter(zoo.values())).parent
    extra = [str(zoo[".DS_Store"]), str(zoo["._real.jpg"])]  # hidden files named explicitly
    assert predict_main([str(folder), *extra, "--checkpoint", str(untrained), "--json"]) == 1
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in results] == sorted(ZOO) + [".DS_Store", "._real.jpg"]
    for result in results:
        expected = {**ZOO, **HIDDEN}[Path(result["path"]).name][1]
        if decodes(expected):
            assert set(result["probabilities"]) == {"cat", "dog"}, result
        else:
            assert_one_line_naming(result["error"], result["path"], expected)


def test_the_python_api_answers_or_raises_one_line_for_every_file(zoo, untrained):
    model = Classifier.load(untrained)
    for name, path in zoo.items():
        expected = {**ZOO, **HIDDEN}[name][1]
        if name == "loop":
            continue  # a folder: nothing to classify (checked in test_folder_scans_...)
        if decodes(expected):
            assert sum(model.predict(path).values()) == pytest.approx(1)
        else:
            with pytest.raises(ClassifierError) as error:
                model.predict(path)
            assert_one_line_naming(str(error.value), path, expected)


# --------------------------------------------------------------------------- fuzzing


def _seeds() -> list[bytes]:
    """Small valid images in every format Pillow writes here, to mutate."""
    seeds = []
    for fmt, mode in [("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("WEBP", "RGB"), ("BMP", "RGB"),
                      ("TIFF", "CMYK"), ("PNG", "I;16"), ("ICO", "RGBA"), ("PPM", "L")]:
        buffer = io.BytesIO()
        Image.new(mode, (12, 9), 7 if mode in ("P", "L", "I;16") else (200, 10, 60, 255)[:len(mode)]) \
            .save(buffer, format=fmt)
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = _seeds()


@st.composite
def image_bytes(draw) -> bytes:
    """Random bytes, or a valid small image truncated, overwritten and spliced at random, or a
    PNG header claiming random (sometimes enormous) dimensions."""
    kind = draw(st.sampled_from(["random", "mutated", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    if kind == "header":
        side = st.integers(1, 64) if draw(st.booleans()) else st.integers(11_000, 2**31 - 1)
        return png_claiming(draw(side), draw(side))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["overwrite", "insert", "truncate"]))
        if operation == "overwrite":
            data[at:at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[max(at, 1):]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=image_bytes())
def test_fuzzed_bytes_decode_or_raise_the_projects_error(tmp_path, data):
    path = tmp_path / "fuzzed.jpg"
    path.write_bytes(data)
    try:
        tensor = DECODE.decode(path)
    except ClassifierError as error:
        assert_one_line_naming(str(error), path, "")
    else:
        assert tensor.dtype == torch.uint8 and tensor.shape == (3, 16, 16)
