"""Commands start with the malloc settings of launch.py; other programs that import the package
(pytest, a notebook, `python -c`) are left alone."""

import os
import subprocess
import sys

from classifier import launch
from conftest import REPO

REPORT = "import os, sys; print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ.get('CLASSIFIER_ALLOCATOR'))"


def run(program: list[str], **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in (*launch.SETTINGS, launch.SWITCH)}
    return subprocess.run([sys.executable, *program], cwd=REPO, capture_output=True, text=True,
                          env={**environment, **env}, check=True).stdout.split()


def test_a_command_restarts_itself_once_with_the_settings(tmp_path):
    script = tmp_path / "predict.py"  # named like the project's entry point
    script.write_text(f"import classifier\n{REPORT}\n")
    assert run([str(script)]) == [launch.SETTINGS["MALLOC_MMAP_THRESHOLD_"], "tuned"]


def test_other_programs_and_a_user_who_says_no_keep_glibcs_defaults(tmp_path):
    script = tmp_path / "predict.py"
    script.write_text(f"import classifier\n{REPORT}\n")
    assert run(["-c", f"import classifier; {REPORT}"]) == ["None", "None"]
    assert run([str(script)], CLASSIFIER_ALLOCATOR="system") == ["None", "system"]
    assert run([str(script)], MALLOC_MMAP_THRESHOLD_="65536") == ["65536", "None"]


def test_the_entry_points_are_commands():
    assert all(launch.is_command(p) for p in ("train.py", "/x/classifier/predict.py", "/venv/bin/classifier-serve"))
    assert not any(launch.is_command(p) for p in ("-c", "/venv/bin/pytest", "ipykernel_launcher.py"))
