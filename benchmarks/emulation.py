"""How fast the AVX2 emulation runs against a real AVX2-only CPU (AMD Zen 3, issue 14's figures).

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.emulation

Runs the two measurements issue 14 reported from a 2-core Zen 3 (fp32, 2 threads): the old
from-scratch recipe's training step on random tensors (from_scratch.py's pure compute: convnet
32-256 channels, 3x3 stem, 80 px, batch 64: 87 images/s there) and EfficientNet-Lite0's forward pass (272 px, batch 32: 35.5 images/s
there, with the allocator kept). The ratios say how much faster this machine's emulation is, so a
figure measured under it can be projected to such a CPU. Writes its section of RESULTS.md.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import cpu_class, write_section
from benchmarks.from_scratch import compute_rate, recipe_run
from benchmarks.precision import inference_rate
from classifier.models import create_model
from classifier.runtime import keep_freed_memory

# images/s on the Zen 3, issue 14, both with glibc told to keep freed memory (MALLOC_* variables there,
# runtime.keep_freed_memory here): the training step went 69 -> 87, the forward pass 13.7 -> 35.5.
ZEN3 = {"convnet training step": 87.0, "EfficientNet-Lite0 forward": 35.5}


def old_recipe_step(data: str, seconds: float) -> float:
    """from_scratch.py's "pure compute" for the recipe issue 14 measured (no stride-2 stem,
    32-256 channels, 80 px, fp32)."""
    run, _ = recipe_run(data, precision="fp32", image_size=80, size_from=0, channels=(32, 64, 128, 256),
                        stem_stride=1, epochs=90, tta_sizes=())
    return compute_rate(run, seconds)


def lite0_forward(seconds: float) -> float:
    model = create_model("efficientnet_lite0", 2, pretrained=True)
    return inference_rate(model, torch.randn(32, 3, 272, 272), "fp32", seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="dataset the run is set up on (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20, help="length of each measurement (default: %(default)s)")
    args = parser.parse_args()
    keep_freed_memory()
    here = {"convnet training step": old_recipe_step(args.data, args.seconds), "EfficientNet-Lite0 forward": lite0_forward(args.seconds)}
    rows = [f"| {name} | {here[name]:.1f} | {ZEN3[name]:.1f} | {ZEN3[name] / here[name]:.2f}x |" for name in ZEN3]
    body = "\n".join(["fp32, 2 threads, images/s:", "", "| measurement | here | AMD Zen 3 (issue 14) | Zen 3 / here |",
                      "|---|---|---|---|", *rows])
    write_section("emulation", f"The AVX2 emulation against a real Zen 3 ({cpu_class()})", body)


if __name__ == "__main__":
    main()
