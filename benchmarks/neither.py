"""How often the pretrained recipe answers "neither": on images of neither a cat nor a dog, and on real cats and dogs.

    python -m benchmarks.neither_set --out data/neither_extra      # once: the images (see that script)
    python -m benchmarks.neither --data ../shared/data/catsdogs --neither-set data/neither_extra

1. `python train.py --data DATA --model efficientnet_lite0 --pretrained` as a user runs it.
2. Every photo of train/, val/ and the neither set goes once through best.pt's model, as predict
   runs it (tta.model_outputs, one view): probe logits, ImageNet logits, pooled features.
3. Choosing the rule, on the tune part of the neither set and train/ only: for every rule of the
   project's form (known when a cat or dog class is among the ImageNet head's TOPS guesses, or when
   the mean similarity to the NEIGHBOURS most similar training photos reaches SIMILAR), train/'s
   photos are scored out of fold (5 folds: each against the other folds' photos) and the tune images
   against all of train/. Chosen: no training photo flagged; of those, a catch rate averaged over
   the tune part's kinds (people, photos, drawings) of at least CATCH_FLOOR; of those, the largest
   margin (how far above the rule's similarity the least similar training photo stays among those
   the ImageNet test does not keep: the room left for real cats and dogs it never saw); then the
   highest catch, the lowest similarity, the most guesses, the fewest neighbours. The project's
   constants (neither.py) are compared with the choice.
4. The rule best.pt carries (NeitherRule, as predict applies it) on val/ and the held-out part,
   which no choice saw, and on --pets (real dogs from other sources than the training photos':
   shared/data/dogbreeds); and the earlier rule (top 5, the nearest photo, 0.45) for comparison.
   Each rate comes with its 95% Wilson interval: what so few flagged photos can tell.
   A sample of the scores is checked against `Classifier.predict_paths`, the code predict runs.
5. With --scratch-epochs N, a small from-scratch convnet (`train.py --epochs N`) and its energy rule
   (the threshold just below val's lowest score) on the same images.
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.common import cpu_class, train_run, write_section
from classifier.images import decode_stream
from classifier.inference import Classifier
from classifier.neither import NeitherRule, imagenet_score, neighbour_similarity
from classifier.tta import model_outputs

RECIPE = ["--model", "efficientnet_lite0", "--pretrained"]
TOPS, NEIGHBOURS = (1, 2, 3, 5, 10), (1, 3, 5, 10)
SIMILARS = [round(0.30 + 0.01 * i, 2) for i in range(31)]
FOLDS = 5
CATCH_FLOOR = 0.97  # the tune part's mean catch a rule must keep: 2 points over the aim of 95%, for other images
NO_ANIMAL = {"cat.4338.jpg", "dog.4367.jpg"}  # val/ photos without a cat or a dog (README): neither is right
EARLIER = NeitherRule("imagenet", 0.0, 0.45, 5, 1)  # the rule before this benchmark


class Embeddings(NeitherRule):
    """A rule whose per-view "similarity" is the pooled features themselves: model_outputs then
    gives (logits, ImageNet logits, features) exactly as predict computes its inputs."""

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding.float()


def outputs(classifier: Classifier, paths: list[str], batch: int = 64) -> dict:
    """Each readable photo's probe logits, ImageNet logits and pooled features (one view, as predict)."""
    rows, pending, kept = defaultdict(list), [], []
    probe = Embeddings("imagenet", 0.0, bank=torch.empty(0))

    def flush():
        x = torch.stack(pending).to(classifier.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for name, value in zip(("logits", "imagenet", "embedding"),
                                   model_outputs(classifier.model, x, classifier.preprocessing, False,
                                                 classifier.precision, probe)):
                rows[name].append(value.float().cpu())
        pending.clear()

    for path, tensors, error in decode_stream(paths, lambda source: classifier.decode(source, False)):
        if error is None:
            pending.append(tensors[0])
            kept.append(str(path))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return {"paths": kept, **{name: torch.cat(values) for name, values in rows.items()}}


def out_of_fold_similarity(embedding: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Each training photo against the photos of the other folds (photo i is in fold i % FOLDS)."""
    fold = torch.arange(len(embedding)) % FOLDS
    similarity = torch.empty(len(embedding))
    for f in range(FOLDS):
        similarity[fold == f] = neighbour_similarity(embedding[fold == f], embedding[fold != f], neighbours)
    return similarity


def flags(rule: NeitherRule, scores: dict, similarity: torch.Tensor) -> torch.Tensor:
    return rule.is_neither(rule.known_scores(None, scores["imagenet"], similarity))


def catch_by_kind(flagged: torch.Tensor, manifest: list[dict], part: str) -> dict[str, tuple[int, int]]:
    """kind -> (flagged, images) in one part of the neither set."""
    counts = defaultdict(lambda: [0, 0])
    for row, flag in zip(manifest, flagged.tolist()):
        if row["part"] == part:
            counts[row["kind"]][0] += flag
            counts[row["kind"]][1] += 1
    return {kind: tuple(c) for kind, c in sorted(counts.items())}


def choose(train: dict, extra: dict, manifest: list[dict]) -> tuple[NeitherRule, list[str]]:
    """The rule of step 3 and the table of the best few candidates."""
    tune = torch.tensor([row["part"] == "tune" for row in manifest])
    bank, candidates = train["embedding"], []
    for neighbours in NEIGHBOURS:
        train_similarity = out_of_fold_similarity(bank, neighbours)
        tune_similarity = neighbour_similarity(extra["embedding"][tune], bank, neighbours)
        tune_scores = {"imagenet": extra["imagenet"][tune]}
        tune_rows = [row for row in manifest if row["part"] == "tune"]
        for top, similar in itertools.product(TOPS, SIMILARS):
            rule = NeitherRule("imagenet", 0.0, similar, top, neighbours)
            flagged_train = int(flags(rule, train, train_similarity).sum())
            unknown = imagenet_score(train["imagenet"], top) < 0  # training photos only the similarity keeps
            margin = float((train_similarity[unknown] - similar).min()) if unknown.any() else 1.0
            kinds = catch_by_kind(flags(rule, tune_scores, tune_similarity), tune_rows, "tune")
            mean_catch = sum(c / n for c, n in kinds.values()) / len(kinds)
            candidates.append(((flagged_train == 0, mean_catch >= CATCH_FLOOR, round(margin, 4), mean_catch, -similar,
                                top, -neighbours), rule, flagged_train, margin, mean_catch, kinds))
    candidates.sort(key=lambda c: c[0], reverse=True)
    table = [f"| top {rule.top} | {rule.neighbours} | {rule.similar:.2f} | {flagged} | {margin:+.3f} | {catch:.2%} | "
             + ", ".join(f"{k} {a}/{b}" for k, (a, b) in kinds.items()) + " |"
             for _, rule, flagged, margin, catch, kinds in candidates[:5]]
    return candidates[0][1], table


def rates(rule: NeitherRule, val: dict, extra: dict, manifest: list[dict], bank: torch.Tensor) -> dict:
    """Flagged real photos of val/ and caught images of each part and source, with `rule` against `bank`."""
    rule = NeitherRule(**{**rule.to_dict(), "bank": bank})
    val_flags = flags(rule, val, rule.similarity(val["embedding"]))
    extra_flags = flags(rule, extra, rule.similarity(extra["embedding"]))
    names = [Path(p).name for p in val["paths"]]
    real = [n for n, f in zip(names, val_flags.tolist()) if f and n not in NO_ANIMAL]
    sources = defaultdict(lambda: [0, 0])
    for row, flag in zip(manifest, extra_flags.tolist()):
        sources[row["part"], row["kind"], row["source"]][0] += flag
        sources[row["part"], row["kind"], row["source"]][1] += 1
    return {"real": real, "no_animal": [n for n, f in zip(names, val_flags.tolist()) if f and n in NO_ANIMAL],
            "val_real": len(names) - len(NO_ANIMAL), "sources": dict(sources), "flags": extra_flags}


def share(caught: int, total: int) -> str:
    return f"{caught}/{total} ({caught / total:.1%})" if total else "-"


def interval(count: int, total: int, z: float = 1.96) -> str:
    """count/total with its 95% Wilson score interval."""
    p, spread = count / total, z * z / total
    centre = (p + spread / 2) / (1 + spread)
    half = z * math.sqrt(p * (1 - p) / total + spread / (4 * total)) / (1 + spread)
    return f"{count}/{total} = {p:.2%} (95% interval {max(centre - half, 0):.2%}-{centre + half:.2%})"


def part_lines(result: dict, part: str) -> list[str]:
    """One line per kind of a part, and its sources, with the share caught."""
    lines, kinds = [], defaultdict(lambda: [0, 0])
    for (p, kind, source), (caught, total) in sorted(result["sources"].items()):
        if p == part:
            kinds[kind][0] += caught
            kinds[kind][1] += total
    for kind, (caught, total) in kinds.items():
        sources = ", ".join(f"{s} {c}/{t}" for (p, k, s), (c, t) in sorted(result["sources"].items()) if p == part and k == kind)
        lines.append(f"| {part} | {kind} | {share(caught, total)} | {sources} |")
    caught, total = (sum(v[i] for v in kinds.values()) for i in (0, 1))
    return lines + [f"| {part} | **all** | **{share(caught, total)}** | |"]


def checked_against_predict(classifier: Classifier, paths: list[str], flagged: torch.Tensor, count: int = 120) -> int:
    """How many of the first `count` photos predict_paths answers differently ("neither" or not)."""
    answers = {r["path"]: r.get("neither") for r in classifier.predict_paths(paths[:count])}
    return sum(answers[p] != f for p, f in zip(paths[:count], flagged[:count].tolist()))


def scratch_rates(data: str, epochs: int, paths: dict, tmp: Path) -> str:
    """The from-scratch convnet's energy rule on val/ and the neither set, through predict_paths."""
    run = train_run(data, tmp / "scratch", ["--epochs", str(epochs)])
    classifier = Classifier.load(tmp / "scratch" / "best.pt", device="cpu")
    answers = {name: [r.get("neither", False) for r in classifier.predict_paths(p)] for name, p in paths.items()}
    real = sum(a for a, p in zip(answers["val"], paths["val"]) if Path(p).name not in NO_ANIMAL)
    return (f"From scratch, for comparison (the bar is the pretrained recipe's): `train.py --data DATA --epochs {epochs}` "
            f"(the default convnet, {run['best']['metrics']['val_accuracy']:.1%} val, {run['wall']:.0f} s), its energy rule "
            f"(logsumexp of the logits below val's lowest): real cats and dogs of val/ flagged "
            f"{share(real, len(paths['val']) - len(NO_ANIMAL))}; neither set caught: held out "
            f"{share(sum(answers['held_out']), len(answers['held_out']))}, tune {share(sum(answers['tune']), len(answers['tune']))}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="train/ and val/ of cats and dogs (default: %(default)s)")
    parser.add_argument("--neither-set", default="data/neither_extra", help="benchmarks/neither_set.py's folder (default: %(default)s)")
    parser.add_argument("--checkpoint", default="", help="use this pretrained recipe's best.pt instead of training one")
    parser.add_argument("--pets", default="../shared/data/dogbreeds",
                        help="a folder of real cats or dogs from other sources, every image counted (default: %(default)s)")
    parser.add_argument("--scratch-epochs", type=int, default=0, help="also a from-scratch convnet of this many epochs (0: no)")
    args = parser.parse_args()
    data, folder = Path(args.data).resolve(), Path(args.neither_set)
    manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, wall = Path(args.checkpoint), None
        if not args.checkpoint:
            checkpoint, wall = Path(tmp) / "pre" / "best.pt", train_run(str(data), Path(tmp) / "pre", RECIPE)["wall"]
        classifier = Classifier.load(checkpoint, device="cpu")
        photos = {split: sorted(str(p) for p in (data / split).rglob("*") if p.is_file()) for split in ("train", "val")}
        scores = {split: outputs(classifier, paths) for split, paths in photos.items()}
        extra = outputs(classifier, [str(folder / row["path"]) for row in manifest])
        pets = outputs(classifier, sorted(str(p) for p in Path(args.pets).rglob("*") if p.is_file()))
        assert len(extra["paths"]) == len(manifest), "an image of the neither set did not decode"
        chosen, candidates = choose(scores["train"], extra, manifest)
        shipped, bank = classifier.neither, classifier.neither.bank
        now, before = (rates(rule, scores["val"], extra, manifest, bank) for rule in (shipped, EARLIER))
        pets_flagged = [Path(p).name for p, f in zip(pets["paths"], flags(shipped, pets, shipped.similarity(
            pets["embedding"])).tolist()) if f]
        mismatches = checked_against_predict(classifier, photos["val"][::8] + extra["paths"][::37], torch.cat(
            [flags(shipped, {"imagenet": s["imagenet"][idx]}, shipped.similarity(s["embedding"][idx]))
             for s, idx in ((scores["val"], slice(None, None, 8)), (extra, slice(None, None, 37)))]))
        scratch = scratch_rates(str(data), args.scratch_epochs, {"val": photos["val"], **{
            part: [str(folder / r["path"]) for r in manifest if r["part"] == part] for part in ("held_out", "tune")}},
            Path(tmp)) if args.scratch_epochs else ""
    write_section("neither", f"Neither: images of neither class, and real cats and dogs ({cpu_class()})",
                  report(shipped, chosen, candidates, now, before, wall, mismatches, scratch,
                         (Path(args.pets).name, pets_flagged, len(pets["paths"]))))


def report(shipped, chosen, candidates, now, before, wall, mismatches, scratch, pets) -> str:
    same = all(getattr(shipped, k) == getattr(chosen, k) for k in ("top", "neighbours", "similar"))
    rule = f"top {shipped.top}, {shipped.neighbours} neighbours, similarity {shipped.similar}"
    return "\n".join([
        "`train.py --data DATA --model efficientnet_lite0 --pretrained`" + (f" ({wall:.0f} s)" if wall else "")
        + f"; its best.pt's rule ({rule}) applied to every image as predict does"
        + f" (a sample of {120} photos checked against `predict_paths`: {mismatches} answered otherwise).", "",
        f"Chosen on tune + train/ (step 3): top {chosen.top}, {chosen.neighbours} neighbours, similarity "
        f"{chosen.similar} — {'the values neither.py ships' if same else 'NOT what neither.py ships'}. Best candidates:", "",
        "| ImageNet guesses | neighbours | similarity | train/ flagged (out of fold) | train/ margin "
        "(least similar kept photo minus the similarity) | tune caught (mean of kinds) | tune per kind |",
        "|---|---|---|---|---|---|---|", *candidates, "",
        f"**Real cats and dogs answered neither**, val/ (no choice saw it): {share(len(now['real']), now['val_real'])}"
        f" ({', '.join(now['real']) or 'none'}); the earlier rule {share(len(before['real']), before['val_real'])}"
        f" ({', '.join(before['real']) or 'none'}). Both also answer neither for {', '.join(now['no_animal']) or 'none'}"
        f" of val/'s photos without an animal ({', '.join(sorted(NO_ANIMAL))}): right answers, not counted.", "",
        f"With their 95% intervals, this rule: val/ {interval(len(now['real']), now['val_real'])}; real dogs of "
        f"{pets[0]}/ (other sources than the training photos) {interval(len(pets[1]), pets[2])}"
        f"{' (' + ', '.join(pets[1]) + ')' if pets[1] else ''}; both together "
        f"{interval(len(now['real']) + len(pets[1]), now['val_real'] + pets[2])}. Neither set, held out: "
        f"{interval(*(sum(v[i] for (part, *_), v in now['sources'].items() if part == 'held_out') for i in (0, 1)))}.", "",
        "**Images of neither class answered neither**, this rule:", "",
        "| part | kind | caught | per source |", "|---|---|---|---|", *part_lines(now, "held_out"), *part_lines(now, "tune"), "",
        "The earlier rule (top 5, the nearest training photo, 0.45) on the same images:", "",
        "| part | kind | caught | per source |", "|---|---|---|---|", *part_lines(before, "held_out"), *part_lines(before, "tune"),
        "", scratch,
    ])


if __name__ == "__main__":
    main()
