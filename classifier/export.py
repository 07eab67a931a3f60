"""Ship a trained model without the training code: ONNX or TorchScript.

    python -m classifier.export checkpoints/best.pt --format onnx --out model.onnx
    python -m classifier.export checkpoints/best.pt --format torchscript --out model.ts
    python predict.py photos/ --checkpoint model.onnx      # as best.pt, without test-time sizes

The file is read back by inference.OnnxClassifier.

What the exported model takes and gives:
  input   "images": uint8 RGB [N, 3, S, S], channels first, pixel values 0-255, N any. S and how
          a photo becomes S x S are in the metadata ("preprocessing": image_size, and resize:
          "squash" = resize the whole photo to S x S, "center_crop" = resize the shorter side to
          S and crop the middle), exactly as Preprocessing.decode does it. Normalization (mean,
          std) is inside the model: do not normalize the pixels yourself.
  outputs "probabilities" [N, classes] (the calibration temperature applied), "logits"
          [N, classes] (before it), and for pretrained cat/dog backbones whose "neither" rule
          uses them, "imagenet_logits" [N, 1000] and, with the rule's bank of training photos
          inside the graph, "similarity" [N] (cosine similarity to the nearest training photo).
  metadata (ONNX metadata_props; TorchScript extra file "classifier.json"): "classes" (JSON
          list, in output order), "preprocessing" (JSON), "temperature", "neither" (JSON), "tta"
          (JSON: whether predict averages the mirror image by default), and "format"
          (EXPORT_FORMAT). The graph takes S x S only, so predict --tta on an export averages
          the mirror image but not the checkpoint's other test-time sizes (tta_sizes).

ONNX export and running ONNX models need the optional extra: pip install 'catsdogs-classifier[onnx]'.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from classifier.cli import run_command
from classifier.errors import ClassifierError
from classifier.inference import EXPORT_FORMAT, ONNX_HELP, Classifier

FORMATS = ("onnx", "torchscript")


class ExportedModel(nn.Module):
    """uint8 images -> (probabilities, logits[, imagenet_logits[, similarity]]): normalization, the model,
    the temperature and softmax in one module; the neither rule's similarity (its bank inside)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.model = classifier.model
        self.temperature = classifier.temperature
        self.neither = classifier.neither if classifier.neither and classifier.neither.uses_imagenet else None
        self.register_buffer("mean", torch.tensor(classifier.preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(classifier.preprocessing.std).view(1, 3, 1, 1))
        self.similarity = self.neither is not None and self.neither.bank is not None

    def forward(self, images: torch.Tensor):
        x = (images.float() / 255 - self.mean) / self.std  # as Preprocessing.normalize
        if self.neither is None:
            logits = self.model(x)
            return (logits / self.temperature).softmax(1), logits
        logits, imagenet_logits, embedding = self.model.forward_all(x)
        outputs = ((logits / self.temperature).softmax(1), logits, imagenet_logits)
        return (*outputs, self.neither.similarity(embedding)) if self.similarity else outputs

    def output_names(self) -> list[str]:
        return ["probabilities", "logits"] + (["imagenet_logits"] if self.neither else []) \
            + (["similarity"] if self.similarity else [])


def metadata(classifier: Classifier) -> dict[str, str]:
    """What travels with the exported file, as strings: enough to use it with nothing else."""
    return {"format": EXPORT_FORMAT, "classes": json.dumps(classifier.classes),
            "preprocessing": json.dumps(classifier.preprocessing.to_dict()),
            "temperature": repr(classifier.temperature),
            "neither": json.dumps(classifier.neither.to_dict() if classifier.neither else None),
            "tta": json.dumps(classifier.tta)}


def export(checkpoint: str | Path, out: str | Path, format: str = "onnx") -> Path:
    """Write `checkpoint`'s model to `out` as ONNX or TorchScript; returns the path."""
    if format not in FORMATS:
        raise ClassifierError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    classifier = Classifier.load(checkpoint, device="cpu", precision="fp32")
    wrapper = ExportedModel(classifier).eval()
    size = classifier.preprocessing.image_size
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchscript":  # deprecated upstream in favour of torch.export; still loads everywhere
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(wrapper, example)
            torch.jit.save(traced, str(out), _extra_files={"classifier.json": json.dumps(metadata(classifier))})
        return out
    onnx = _require_onnx()
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["images"],
                                    output_names=wrapper.output_names(),
                                    dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    proto = program.model_proto
    for key, value in metadata(classifier).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return out


def _require_onnx():
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked now so export never writes a file predict cannot use)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ClassifierError(f"ONNX needs a package that is not installed ({error.name}): {ONNX_HELP}") from None
    return onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classifier.export", description=__doc__.split("\n")[0],
                                     epilog="The exported model's inputs, outputs and metadata are "
                                            "described in classifier/export.py and the README.")
    parser.add_argument("checkpoint", help="checkpoint to export (a best.pt or last.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default: %(default)s)")
    parser.add_argument("--out", required=True, help="file to write, e.g. model.onnx or model.ts")
    args = parser.parse_args(argv)

    def run() -> None:
        path = export(args.checkpoint, args.out, args.format)
        print(f"wrote {path} ({args.format}); try: python predict.py PHOTO --checkpoint {path}"
              if args.format == "onnx" else f"wrote {path} (torchscript); load with torch.jit.load")

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
