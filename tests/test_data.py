import os
from pathlib import Path

import pytest
import torch
import torchvision.datasets
from PIL import Image

from classifier import downloads
from classifier.augment import Augmentation, augment, mix
from classifier.data import Batches, find_dataset
from classifier.errors import ClassifierError
from classifier.images import Preprocessing, decode_images
from conftest import make_image


def test_layout_train_val(tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            make_image(tmp_path / split / name / f"{name}.1.jpg")
    dataset = find_dataset(tmp_path)
    assert dataset.layout == "train/val"
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset.train) == len(dataset.val) == 2


def test_layout_class_folders_split_is_stratified_and_seeded(tmp_path):
    for name in ("ant", "bee", "cow"):
        for i in range(10):
            make_image(tmp_path / name / f"{i}.png")
    first, again = find_dataset(tmp_path, 0.3, seed=1), find_dataset(tmp_path, 0.3, seed=1)
    other = find_dataset(tmp_path, 0.3, seed=2)
    assert first.classes == ["ant", "bee", "cow"]
    assert [first.val.labels.count(c) for c in range(3)] == [3, 3, 3]
    assert first.val.paths == again.val.paths
    assert first.val.paths != other.val.paths
    assert not set(first.val.paths) & set(first.train.paths)


def test_layout_kaggle_flat(tmp_path):
    for i in range(5):
        make_image(tmp_path / f"cat.{i}.jpg")
        make_image(tmp_path / f"dog.{i}.jpg")
    dataset = find_dataset(tmp_path, 0.2)
    assert dataset.layout == "flat"
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset.train) == 8 and len(dataset.val) == 2
    for path, label in zip(dataset.train.paths, dataset.train.labels):
        assert Path(path).name.startswith(dataset.classes[label])


def test_hidden_files_other_extensions_and_symlink_loops_are_passed_over(tmp_path):
    for name in ("cat", "dog"):
        make_image(tmp_path / name / "a.jpg")
        make_image(tmp_path / name / "b.jpg")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\1junk")
    (tmp_path / "cat" / "notes.txt").write_text("hello")
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "loop")
    dataset = find_dataset(tmp_path, 0.5)
    everything = dataset.train.paths + dataset.val.paths
    assert sorted(Path(p).name for p in everything) == ["a.jpg", "a.jpg", "b.jpg", "b.jpg"]


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "no images found"),
    (lambda root: make_image(root / "cat" / "1.jpg") and (root / "dog").mkdir(), "hold no images"),
    (lambda root: make_image(root / "cat" / "1.jpg"), "only one class"),
])
def test_unusable_folders_stop_with_a_clear_message(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(ClassifierError, match=message):
        find_dataset(tmp_path)


def test_missing_folder_says_how_to_get_data(tmp_path):
    with pytest.raises(ClassifierError, match="classifier.data download"):
        find_dataset(tmp_path / "nowhere")


def test_decode_gives_uint8_square_rgb_and_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 30, 20))  # left half blue, right half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    tensor = Preprocessing(image_size=16, resize="squash").decode(tmp_path / "rotated.jpg")
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 16, 16)
    top, bottom = tensor[:, 2].float().mean(1), tensor[:, -3].float().mean(1)
    assert top[2] > top[0] and bottom[0] > bottom[2]  # upright: blue on top, red below


def test_center_crop_keeps_the_middle(tmp_path):
    image = Image.new("RGB", (90, 30), (0, 255, 0))
    image.paste((255, 0, 0), (30, 0, 60, 30))
    tensor = Preprocessing(image_size=10, resize="center_crop").decode(image)
    assert tensor[0].float().mean() > 200 and tensor[1].float().mean() < 50


def _folder_of(tmp_path, n=6):
    paths = [str(make_image(tmp_path / f"{i}.png", color=(i * 40, 0, 0))) for i in range(n)]
    return paths, [i % 2 for i in range(n)]


def test_cache_hit_skips_decoding(tmp_path, monkeypatch):
    paths, labels = _folder_of(tmp_path)
    preprocessing = Preprocessing(image_size=8)
    first = decode_images(paths, labels, preprocessing, tmp_path / "cache")
    monkeypatch.setattr(Preprocessing, "decode", lambda *a: pytest.fail("decoded despite the cache"))
    second = decode_images(paths, labels, preprocessing, tmp_path / "cache")
    assert torch.equal(first.images, second.images) and second.paths == paths


def test_cache_is_invalidated_by_a_changed_file_or_image_size(tmp_path):
    paths, labels = _folder_of(tmp_path)
    cache = tmp_path / "cache"
    first = decode_images(paths, labels, Preprocessing(image_size=8), cache)
    assert decode_images(paths, labels, Preprocessing(image_size=12), cache).images.shape[-1] == 12
    make_image(Path(paths[0]), color=(0, 250, 0), size=(41, 30))
    changed = decode_images(paths, labels, Preprocessing(image_size=8), cache)
    assert not torch.equal(changed.images[0], first.images[0])
    assert torch.equal(changed.images[1:], first.images[1:])
    assert len(list(cache.iterdir())) == 3


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    paths, labels = _folder_of(tmp_path, 4)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    decoded = decode_images(paths + [str(tmp_path / "broken.jpg")], labels + [0], Preprocessing(image_size=8))
    assert len(decoded) == 4 and decoded.paths == paths
    assert decoded.skipped[0][0].endswith("broken.jpg") and "cannot read image" in decoded.skipped[0][1]


def _batch(n=8, size=16):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def test_augment_shapes_dtype_and_range():
    out = augment(_batch(), torch.Generator().manual_seed(1), Augmentation())
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_augment_cuts_crops_of_another_size_from_larger_images():
    large = _batch(size=24)
    out = augment(large, torch.Generator().manual_seed(1), Augmentation(), size=16)
    assert out.shape == (8, 3, 16, 16) and 0.0 <= out.min() and out.max() <= 1.0
    whole = augment(large, torch.Generator().manual_seed(0), Augmentation(min_scale=1.0, max_aspect=1.0, flip=False),
                    size=12)  # a whole-image "crop" is the image resized: 2x2 pixel blocks averaged
    expected = torch.nn.functional.avg_pool2d(large.float() / 255, 2)
    assert torch.allclose(whole, expected, atol=1e-4)


def test_crops_are_cut_from_photos_decoded_where_things_look_as_large_as_in_the_crops():
    assert Augmentation(min_scale=0.35).source_size(80) == 101  # 80 x E[area ** -0.5] = 80 x 1.26
    assert Augmentation(min_scale=1.0).source_size(80) == 80


def test_augment_is_deterministic_under_a_seed_and_varies_across_seeds():
    policy = Augmentation()
    a = augment(_batch(), torch.Generator().manual_seed(1), policy)
    b = augment(_batch(), torch.Generator().manual_seed(1), policy)
    c = augment(_batch(), torch.Generator().manual_seed(2), policy)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_augment_full_crop_without_flip_is_the_identity():
    images = _batch()
    out = augment(images, torch.Generator().manual_seed(0), Augmentation(min_scale=1.0, max_aspect=1.0, flip=False))
    assert torch.allclose(out, images.float() / 255, atol=1e-4)


def test_augment_flip_only_mirrors_some_images():
    images = _batch(32)
    out = augment(images, torch.Generator().manual_seed(0), Augmentation(min_scale=1.0, max_aspect=1.0))
    mirrored = [torch.allclose(o, i.float().flip(-1) / 255, atol=1e-4) for o, i in zip(out, images)]
    same = [torch.allclose(o, i.float() / 255, atol=1e-4) for o, i in zip(out, images)]
    assert all(m or s for m, s in zip(mirrored, same)) and 0 < sum(mirrored) < 32


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mix_blends_each_image_with_its_partner_and_the_labels_alike(kind):
    images, labels = _batch(6).float() / 255, torch.tensor([0, 0, 1, 1, 2, 2])
    partner, shares = images.flip(0), []
    for seed in range(8):
        mixed, targets = mix(images, labels, 3, kind, torch.Generator().manual_seed(seed))
        assert mixed.shape == images.shape and targets.shape == (6, 3)
        assert torch.equal(mixed, mix(images, labels, 3, kind, torch.Generator().manual_seed(seed))[0])
        assert torch.allclose(targets.sum(1), torch.ones(6))
        lam = targets[0, 0].item()  # image 0 (class 0) is paired with image 5 (class 2)
        assert targets[0, 2].item() == pytest.approx(1 - lam)
        if kind == "mixup":
            assert torch.allclose(mixed, lam * images + (1 - lam) * partner, atol=1e-6)
        else:  # every pixel comes from one image or the other, in the proportion of the targets
            assert ((mixed == images).all(1) | (mixed == partner).all(1)).all()
            from_partner = (mixed == partner).all(1) & (mixed != images).any(1)
            assert from_partner[0].float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
        shares.append(lam)
    assert len(set(shares)) > 2 and any(0.1 < lam < 0.9 for lam in shares)  # cutmix: whole pixels


def test_mix_none_gives_one_hot_targets_and_float_images():
    images, labels = _batch(4), torch.tensor([1, 0, 1, 0])
    mixed, targets = mix(images, labels, 2, "none", torch.Generator())
    assert torch.equal(mixed, images.float() / 255)
    assert torch.equal(targets, torch.tensor([[0.0, 1], [1, 0], [0, 1], [1, 0]]))


def test_batches_shuffle_under_a_seed_and_shard_across_ranks():
    images, labels = _batch(10), torch.arange(10)
    order = lambda seed, **kw: torch.cat([y for _, y in Batches(
        images, labels, 3, shuffle=True, generator=torch.Generator().manual_seed(seed), **kw)]).tolist()
    assert order(0) == order(0) != order(1) and sorted(order(0)) == list(range(10))
    ranks = [order(0, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and not set(ranks[0]) & set(ranks[1])
    assert len(Batches(images, labels, 3, drop_last=True)) == 3 == len(list(Batches(images, labels, 3, drop_last=True)))


def test_oxford_pets_conversion_from_a_local_copy(tmp_path):
    """The download command's conversion, on a tiny copy in torchvision's OxfordIIITPet layout."""
    base = tmp_path / "root" / "oxford-iiit-pet"
    rows = {"trainval": ["Abyssinian_1 1 1 1", "beagle_2 2 2 1", "Bengal_3 3 1 2"],
            "test": ["Abyssinian_4 1 1 1", "beagle_5 2 2 1"]}
    for split, lines in rows.items():
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            make_image(base / "images" / f"{line.split()[0]}.jpg")
    counts = downloads.oxford_pets(tmp_path / "out", tmp_path / "root", download=False)
    assert counts == {"train/cat": 2, "train/dog": 1, "val/cat": 1, "val/dog": 1}
    dataset = find_dataset(tmp_path / "out")
    assert dataset.classes == ["cat", "dog"] and len(dataset.train) == 3 and len(dataset.val) == 2
    assert (tmp_path / "out" / "train" / "dog" / "beagle_2.jpg").is_file()


def test_download_offline_is_one_line_that_does_not_suggest_downloading(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torchvision.datasets, "OxfordIIITPet", offline)
    with pytest.raises(ClassifierError) as error:
        downloads.oxford_pets(tmp_path / "out", tmp_path / "root")
    message = str(error.value)
    assert "could not download" in message and "DIR/train/<class>/" in message
    assert "classifier.data download" not in message and "\n" not in message
