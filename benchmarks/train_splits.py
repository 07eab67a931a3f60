"""Seeded splits of train/ alone, for choosing settings without looking at val/ or held_out.py's split.

    python -m benchmarks.train_splits --data ../shared/data/catsdogs --out data/splits

For each seed, OUT/sel-SEED/{train,val}/CLASS/ holds symlinks: each class's photos of train/ shuffled
by random.Random(f"{seed}:{class}"), the first --held-back of them in val/, the rest in train/.
RESULTS.md's "a resolution schedule at equal time" ran `train.py --data OUT/sel-SEED` on seeds 11,
22 and 33 (there named sel-a, sel-b and sel-c).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def build(data: Path, out: Path, seed: int, held_back: int) -> Path:
    split = out / f"sel-{seed}"
    for class_dir in sorted(p for p in (data / "train").iterdir() if p.is_dir()):
        photos = sorted(class_dir.iterdir())
        random.Random(f"{seed}:{class_dir.name}").shuffle(photos)
        for side, chunk in (("val", photos[:held_back]), ("train", photos[held_back:])):
            (split / side / class_dir.name).mkdir(parents=True, exist_ok=True)
            for photo in chunk:
                (split / side / class_dir.name / photo.name).symlink_to(photo.resolve())
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="dataset with train/ class folders (default: %(default)s)")
    parser.add_argument("--out", default="data/splits", help="where the splits are made (default: %(default)s)")
    parser.add_argument("--seeds", default="11,22,33", help="one split per seed (default: %(default)s)")
    parser.add_argument("--held-back", type=int, default=250, help="photos of each class held back (default: %(default)s)")
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        print(build(Path(args.data), Path(args.out), seed, args.held_back))


if __name__ == "__main__":
    main()
