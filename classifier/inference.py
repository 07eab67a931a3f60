"""Inference: a trained model and photos in, class probabilities out. The one place where
inference preprocessing lives.

    from classifier import Classifier
    model = Classifier.load("checkpoints/best.pt")      # or an exported model.onnx
    model.predict("cat.jpg")                            # {"cat": 0.97, "dog": 0.03}

A Classifier decodes each photo as the checkpoint says (images.Preprocessing), averages the
test-time views training evaluated it with (tta.py), divides the logits by the calibration
temperature, and applies the checkpoint's "neither" rule (neither.py). Results are the dicts
predict.py prints with --json and serve.py returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from classifier.checkpoint import load_checkpoint, model_from_checkpoint
from classifier.errors import ClassifierError
from classifier.images import Preprocessing, Source, decode_stream
from classifier.neither import NeitherRule
from classifier.runtime import fuse_batch_norms, resolve_precision, select_device
from classifier.tta import Batches, as_list, average, decodings, model_outputs, views

EXPORT_FORMAT = "catsdogs-classifier-export/1"  # the metadata tag of models export.py writes
ONNX_HELP = "pip install 'catsdogs-classifier[onnx]' (onnx, onnxscript and onnxruntime)"


@dataclass
class Classifier:
    """A trained model ready to use: weights, class names, preprocessing and temperature."""

    model: nn.Module
    classes: list[str]
    preprocessing: Preprocessing
    temperature: float = 1.0
    device: torch.device = torch.device("cpu")
    neither: NeitherRule | None = None  # how a photo of none of the classes is found (neither.py)
    precision: str = "fp32"  # of the forward pass: fp32, bf16 or fp16 (see runtime.autocast)
    tta: bool = False  # the default of every method's `tta`: how training evaluated the model, which
    #                    is what its accuracy, temperature and neither threshold were measured on

    @classmethod
    def load(cls, path: str | Path = "checkpoints/best.pt", device: str = "auto",
             precision: str = "auto", fuse: bool = True) -> "Classifier":
        """A checkpoint (.pt), or an exported ONNX model (.onnx, run by onnxruntime on the CPU).
        precision auto: bf16 where the device computes it natively, as training does.
        fuse: fold batch norms into convolutions (runtime.fuse_batch_norms): faster, same
        outputs; off to see the layers as trained (explain)."""
        if Path(path).suffix.lower() == ".onnx":
            return OnnxClassifier.load(path)
        device = select_device(device)
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, path).eval()
        model = (fuse_batch_norms(model) if fuse else model).to(device, memory_format=torch.channels_last)
        return cls(model, checkpoint["classes"], Preprocessing(**checkpoint["preprocessing"]),
                   float(checkpoint.get("temperature", 1.0)), device, NeitherRule.from_checkpoint(checkpoint),
                   resolve_precision(precision, device), bool(checkpoint.get("config", {}).get("tta", False)))

    def decode(self, source: Source, tta: bool | None = None, name: str | None = None) -> list[torch.Tensor]:
        """One photo (a path, a PIL image, or a file's bytes named `name`) -> the uint8 tensors a
        prediction takes: at the image size and, with TTA, at each of the model's test-time
        sizes. tta None: self.tta, in every method."""
        return [p.decode(source, name) for p in decodings(self.preprocessing, self.tta if tta is None else tta)]

    def logits(self, images: Batches, tta: bool | None = None, known: bool = False):
        """uint8 images [N, 3, S, S] (a list of them, one per decoding, with TTA) -> (logits, and
        with `known` what the neither rule reads: ImageNet logits and similarity to the training
        photos, else None), float32, averaged over the views, before the temperature."""
        images = [x.to(self.device).contiguous(memory_format=torch.channels_last) for x in as_list(images)]
        return model_outputs(self.model, images, self.preprocessing, self.tta if tta is None else tta,
                             self.precision, self.neither if known else None)

    @torch.inference_mode()
    def outputs(self, images: Batches, tta: bool | None = None, known: bool = True):
        """uint8 images -> (probabilities [N, classes], known scores [N] or None): how much each
        image looks like the trained classes; below the rule's threshold it is neither."""
        known = known and self.neither is not None
        logits, imagenet_logits, similarity = self.logits(images, tta, known)
        probabilities = (logits / self.temperature).softmax(dim=1).cpu()
        if not known:
            return probabilities, None
        return probabilities, self.neither.known_scores(logits, imagenet_logits, similarity).cpu()

    def probabilities(self, images: Batches, tta: bool | None = None) -> torch.Tensor:
        """uint8 images -> probabilities [N, classes]."""
        return self.outputs(images, tta, known=False)[0]

    def predict(self, image: Source, tta: bool | None = None) -> dict[str, float]:
        """One photo (a path, a PIL image or a file's bytes) -> {class name: probability}."""
        probabilities = self.probabilities([x[None] for x in self.decode(image, tta)], tta)[0]
        return dict(zip(self.classes, probabilities.tolist()))

    def results(self, decoded: list[list[torch.Tensor]], tta: bool | None = None) -> list[dict]:
        """Photos already decoded (self.decode) -> one answer each, as predict --json prints it
        (after "path"): "label", "probabilities" and, with a neither rule, "known_score" and
        "neither". One forward pass for all of them."""
        batches = [torch.stack(size) for size in zip(*decoded)]  # each photo's tensors, regrouped by size
        probabilities, scores = self.outputs(batches, tta)
        results = []
        for i, row in enumerate(probabilities.tolist()):
            result = {"label": self.classes[max(range(len(row)), key=row.__getitem__)],
                      "probabilities": {c: round(p, 6) for c, p in zip(self.classes, row)}}
            if scores is not None:  # "neither": the photo shows none of the trained classes
                result["known_score"] = round(scores[i].item(), 6)
                result["neither"] = bool(self.neither.is_neither(scores[i]))
                result["label"] = "neither" if result["neither"] else result["label"]
            results.append(result)
        return results

    def predict_paths(self, paths: Iterable[str], batch_size: int = 64, tta: bool | None = None,
                      workers: int | None = None) -> Iterator[dict]:
        """Yield one result per path, in order (see `results`), or {"path", "error"}. Decoding
        runs ahead in threads; one bad file stops nothing."""
        pending: list[tuple[str, list[torch.Tensor]]] = []

        def flush():
            answers = self.results([tensors for _, tensors in pending], tta) if pending else []
            yield from ({"path": path, **answer} for (path, _), answer in zip(pending, answers))
            pending.clear()

        for path, tensors, error in decode_stream(paths, lambda source: self.decode(source, tta), workers):
            if error is None:
                pending.append((str(path), tensors))
            if pending and (error is not None or len(pending) == batch_size):
                yield from flush()
            if error is not None:
                yield {"path": str(path), "error": error}
        yield from flush()


@dataclass
class OnnxClassifier(Classifier):
    """A Classifier whose model is an exported ONNX file run by onnxruntime (on the CPU).

    Same interface as Classifier; `model` is the onnxruntime InferenceSession. The exported graph
    takes uint8 images of the image size only, so TTA is the mirror image, no other sizes."""

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", precision: str = "fp32", fuse: bool = True) -> "OnnxClassifier":
        try:
            import onnxruntime
        except ImportError as error:
            raise ClassifierError(f"ONNX needs a package that is not installed ({error.name}): {ONNX_HELP}") from None
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for missing or broken files
            raise ClassifierError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0][:200]})") from None
        meta = session.get_modelmeta().custom_metadata_map
        if meta.get("format") != EXPORT_FORMAT:
            raise ClassifierError(f"{path}: an ONNX model not exported by `python -m classifier.export` "
                                  f"(no {EXPORT_FORMAT!r} metadata)")
        preprocessing = replace(Preprocessing(**json.loads(meta["preprocessing"])), tta_sizes=())
        return cls(session, json.loads(meta["classes"]), preprocessing, float(meta["temperature"]),
                   torch.device("cpu"), NeitherRule.from_dict(json.loads(meta["neither"])),
                   tta=json.loads(meta.get("tta", "false")))

    def logits(self, images: Batches, tta: bool | None = None, known: bool = False):
        """As Classifier.logits; the similarity to the training photos comes from the graph, which
        holds them."""
        outputs = {output.name for output in self.model.get_outputs()}
        names = ["logits"] + [n for n in ("imagenet_logits", "similarity") if known and n in outputs]

        def run(x: torch.Tensor) -> tuple:
            values = dict(zip(names, self.model.run(names, {"images": x.contiguous().numpy()})))
            return tuple(torch.from_numpy(values[n]) if n in values else None
                         for n in ("logits", "imagenet_logits", "similarity"))

        return average(run, views(as_list(images)[:1], self.tta if tta is None else tta), self.preprocessing.tta_below)
