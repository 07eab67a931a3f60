"""Commands keep the memory PyTorch frees inside the process (runtime.keep_freed_memory):
a large buffer allocated again after being freed costs no page faults."""

import subprocess
import sys

from conftest import REPO

FAULTS = """
import resource, sys, torch
from classifier.runtime import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
for _ in range(8):  # the heap grows to its working size
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB, freed at once
rounds = []  # the fewest of 3 rounds: the host may reclaim idle pages now and then (e.g. DAMON)
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, min(rounds))
"""


def faults(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, **env}).stdout.split()
    return out[0], int(out[1])


def test_freed_buffers_stay_in_the_process_instead_of_faulting_back_in():
    tuned, few = faults("tuned")
    _, many = faults("default")
    assert tuned == "True"
    assert many > 10 * 64 * 200  # glibc's default: each 64 MB buffer faulted in again, 4 KB at a time
    assert few < many / 100  # then reused as it is


def test_classifier_allocator_system_keeps_glibcs_defaults():
    assert faults("tuned", CLASSIFIER_ALLOCATOR="system")[0] == "False"
