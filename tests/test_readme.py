"""README.md, executed: every command of its fenced shell blocks (```bash, ```sh, ```console: the
lines after `$ `) and every ```python block runs, in README order, in one temporary working folder
shared by the whole README (a copy of the repository's files), and must exit 0 without printing a
Python traceback. One test item per command, named by its README line.

For README writers: a command runs as written, except for what the table below changes; the table
(the constants from DATA to SKIPPED) is the only place that knows about placeholders.

- PLACEHOLDERS: DIR, ../shared/data/catsdogs and $CATSDOGS_DATA become data/catsdogs, which in the
  working folder is a tiny real copy of $CATSDOGS_DATA (DATA_SIZES photos a class, as
  conftest.copy_subset takes them); CATSDOGS_DATA is set to it for every command.
- Files the commands read, made before the first one: PHOTOS (cat.jpg, dog.jpg, my_photo.jpg),
  FOLDERS (photos/, big_folder/), WEIGHTS (resnet18-f37072fd.pth: torchvision's resnet18 with
  random weights; the ImageNet ones are a download). Anything else must be written by an earlier
  command (checkpoints/best.pt by training).
- Training (TRAINING: train.py, torchrun ... train.py; make train through TRAIN_FLAGS) gets SMALL
  sizes appended (argparse: the last flag wins). It runs in the precision `--precision auto`
  resolves to here, as written, and where that is bf16 first also with --precision fp32 appended
  (an AVX2-only CPU: auto is fp32 and bf16 only emulated, so once). The item's name says which.
- REWRITES: make never reinstalls the venv, torchrun runs 2 CPU processes, curl fails on an HTTP
  error status.
- `. .venv/bin/activate`: .venv in the working folder links to the venv running the tests, and
  every command runs with it activated (PATH, VIRTUAL_ENV; PYTHONPATH: the working folder's code),
  on THREADS thread(s).
- SERVERS start in the background with `--port P` (a free port) appended, must answer HTTP within
  SERVER_START_SECONDS and serve the rest of their block (127.0.0.1:8000, or the --port the README
  gives, becomes 127.0.0.1:P), then get SIGTERM and must exit 0 (a "stop" item of its own).
- SKIPPED: commands that cannot run here, with the reason. Nothing else is skipped, and an entry
  that no longer matches a README command fails.

What the table does not know fails, saying what to add: a word in capitals (a placeholder such as
HOST or OUT), a file a command reads that neither an earlier command nor the test made, a command
that installs software, a fenced block in a language neither run nor in SHOWN_LANGUAGES, a server
missing from SERVERS (it times out after COMMAND_SECONDS).
"""

import ast
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torchvision

from classifier.crossval import SMALL_VAL
from classifier.runtime import resolve_precision, select_device
from conftest import REPO, copy_subset

README = REPO / "README.md"
TABLE = "tests/test_readme.py"

# --------------------------------------------------------------------------- the substitution table

DATA = "data/catsdogs"  # in the working folder: the tiny real copy
DATA_SIZES = {"train": 12, "val": SMALL_VAL}  # photos a class; fewer val ones would add a cross-validation
PLACEHOLDERS = {"DIR": DATA, "../shared/data/catsdogs": DATA, "$CATSDOGS_DATA": DATA, "${CATSDOGS_DATA}": DATA}
PHOTOS = {"cat.jpg": "cat", "dog.jpg": "dog", "my_photo.jpg": "cat"}  # the first val photo of that class
FOLDERS = {"photos/": 3, "big_folder/": 6}  # that many val photos of each class
WEIGHTS = {"resnet18-f37072fd.pth": "resnet18"}  # torchvision architecture with random weights
SMALL = {  # appended to every training command
    "from scratch": ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--channels", "8,16"],
    "pretrained": ["--epochs", "1", "--image-size", "32", "--batch-size", "8"],  # the recipe takes any size
}
TRAINING = ("train.py", "classifier.train", "classifier-train")  # and `make train`
NOT_TRAINING = ("--list-models", "--help", "-h")
SERVERS = ("classifier.serve", "classifier-serve", "classifier.studio", "classifier-studio")
README_PORT = 8000  # a server's port when its command gives no --port
REWRITES = [  # (pattern, replacement, why): applied to every shell command, in this order
    (r"^make ", "make -o .venv/.installed ", "the venv exists and make must not reinstall it: from a temporary copy, "
     "pip install -e would point it at a folder about to be deleted (.ci/run's make test on a fresh clone sets it up)"),
    (r"(--nproc[-_]per[-_]node[= ])\d+", r"\g<1>2", "torchrun: 2 processes sharing the CPU (no GPUs here)"),
    (r"^curl ", "curl --fail-with-body ", "an HTTP error status fails the command"),
]
INSTALLERS = ("pip", "pip3", "apt", "apt-get", "sudo", "conda", "uv")  # never run: they change the venv
SKIPPED = {
    "make test": "this very suite (make test runs pytest over tests/, this file included)",
    "torchrun --nnodes=2 --node-rank=0 --nproc-per-node=4 --rdzv-endpoint=HOST:29500 train.py --data DIR":
        "needs a second machine",
}
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
PYTHON_LANGUAGES = ("python", "py")
SHOWN_LANGUAGES = ("text", "json", "jsonl", "html", "toml", "diff")  # shown to the reader, never run
THREADS = "1"  # OMP_NUM_THREADS of every command: the suite shares the machine's cores (a quarter less CPU time)
COMMAND_SECONDS = 240
SERVER_START_SECONDS = 90

# --------------------------------------------------------------------------- reading the README

OPERATORS = set("();<>|&")
OUTPUT_FLAGS = (">", ">>", "--out", "--output", "--explain", "-o")  # the next word is written, not read
READ_FILE = re.compile(r"\.(jpe?g|png|webp|gif|bmp|tiff?|pt|pth|onnx|jsonl?|txt)$|/$", re.IGNORECASE)
PLACEHOLDER = re.compile(r"\$\{?[A-Za-z_]\w*\}?|(?<![\w.$-])[A-Z][A-Z0-9_]*[A-Z0-9](?![\w=-]|\.\w)")
LOCAL_URL = r"(?:127\.0\.0\.1|localhost):{}\b"
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Step:
    """One item of the README's run: a shell command, a Python block, or stopping a server."""
    kind: str  # "shell", "python", "stop", or "language" (a block in a language the test does not know)
    line: int  # where it is in README.md
    text: str  # as written (a shell command without its comment)
    block: int  # which fenced block (a server lives until the end of its block)
    precision: str = ""  # training: "auto" (as written), or the --precision appended

    def __str__(self):
        appended = self.precision not in ("", "auto")
        return f"README.md:{self.line}: {self.text}" + (f"  [with --precision {self.precision}]" if appended else "")


def fenced_blocks(text: str) -> list[tuple[str, int, list[tuple[int, str]]]]:
    """(language, line of the opening fence, [(line, text)]) of every fenced block."""
    blocks, current, fence = [], None, ""
    for number, line in enumerate(text.splitlines(), 1):
        opening = re.match(r"\s*(```+|~~~+)\s*([\w+-]*)", line)
        if current is None and opening:
            current, fence = (opening.group(2).lower(), number, []), opening.group(1)
        elif current is not None and line.strip() == fence:
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append((number, line))
    return blocks


def unquoted(text: str, wanted) -> int:
    """The index of the first character outside quotes for which wanted(text, i) holds (else len)."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif wanted(text, i):
            return i
    return len(text)


def without_comment(line: str) -> str:
    return line[:unquoted(line, lambda t, i: t[i] == "#" and (i == 0 or t[i - 1].isspace()))].rstrip()


def shell_commands(language: str, lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The commands of a shell block, continuation lines joined and comments removed; in a
    console block only the lines after a `$ ` prompt (the others are output)."""
    commands, pending = [], None
    for number, line in lines:
        if pending is None:
            if language == "console":
                if not line.lstrip().startswith("$ "):
                    continue
                line = line.lstrip()[2:]
            pending = (number, "")
        text = pending[1] + without_comment(line)
        if text.endswith("\\"):
            pending = (pending[0], text[:-1])
            continue
        if text.strip():
            commands.append((pending[0], " ".join(text.split())))
        pending = None
    return commands


def words(text: str) -> list[str]:
    """Shell words, with operators such as > and | as words of their own."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def is_server(text: str) -> bool:
    return any(server in text.split() for server in SERVERS)


def is_training(text: str) -> bool:
    tokens = text.split()
    if tokens[:2] == ["make", "train"]:
        return True
    return any(t in tokens for t in TRAINING) and not any(t in tokens for t in NOT_TRAINING)


AUTO = resolve_precision("auto", select_device("auto"))  # what --precision auto computes in here
OTHER = "fp32" if AUTO != "fp32" else ""  # training also runs in fp32 where auto is bf16 (or fp16)


def block_steps(index: int, language: str, start: int, lines: list[tuple[int, str]]) -> list[Step]:
    if language in SHELL_LANGUAGES:
        return [Step("shell", number, command, index) for number, command in shell_commands(language, lines)
                if command not in SKIPPED]
    if language in PYTHON_LANGUAGES:
        return [Step("python", start, "\n".join(line for _, line in lines), index)]
    return [] if language in SHOWN_LANGUAGES else [Step("language", start, language or "(none)", index)]


def readme_steps(text: str) -> list[Step]:
    """Every step in README order: training first in the other precision, a server's stop at the
    end of its block."""
    steps = []
    for index, (language, start, lines) in enumerate(fenced_blocks(text)):
        found = block_steps(index, language, start, lines)
        for step in found:
            if step.kind == "shell" and is_training(step.text):
                steps += [Step("shell", step.line, step.text, index, OTHER)] if OTHER else []
                step.precision = "auto"
            steps.append(step)
        steps += [Step("stop", s.line, s.text, index) for s in found if s.kind == "shell" and is_server(s.text)]
    return steps


def step_id(step: Step) -> str:
    what = {"shell": step.text, "python": "python block", "stop": f"stop {step.text}", "language": "block"}[step.kind]
    precision = f"{AUTO} (auto)" if step.precision == "auto" else step.precision
    return f"L{step.line} {what[:70]}" + (f" @{precision}" if precision else "")


STEPS = readme_steps(README.read_text())

# --------------------------------------------------------------------------- the working folder


@dataclass
class Server:
    step: Step
    readme_port: int  # the port the README's commands talk to
    port: int  # the port it listens on
    process: subprocess.Popen
    log: Path


@dataclass
class Readme:
    """The working folder the README runs in, the environment of its commands, running servers."""
    work: Path
    env: dict
    servers: dict = field(default_factory=dict)  # README line of the command -> Server


def copy_repository(work: Path) -> None:
    """The repository's files (tracked, and new ones not ignored) into `work`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes((REPO / name).read_bytes())


def prepare(work: Path, real_data: Path) -> None:
    """What the table promises: the tiny data, the photos, folders and weight files."""
    copy_subset(real_data, work / DATA, DATA_SIZES)
    val = {name: sorted((work / DATA / "val" / name).iterdir()) for name in ("cat", "dog")}
    for name, label in PHOTOS.items():
        (work / name).write_bytes(val[label][0].read_bytes())
    for folder, count in FOLDERS.items():
        (work / folder).mkdir()
        for photo in val["cat"][:count] + val["dog"][:count]:
            (work / folder / photo.name).write_bytes(photo.read_bytes())
    for name, architecture in WEIGHTS.items():
        torch.save(torchvision.models.get_model(architecture).state_dict(), work / name)


@pytest.fixture(scope="module")
def readme(real_data, tmp_path_factory):
    assert sys.prefix != sys.base_prefix, "run the tests from the project's venv (the README activates .venv)"
    work = tmp_path_factory.mktemp("readme")
    copy_repository(work)
    (work / ".venv").symlink_to(sys.prefix)
    prepare(work, real_data)
    env = {**os.environ, "PATH": str(Path(sys.prefix) / "bin") + os.pathsep + os.environ["PATH"],
           "VIRTUAL_ENV": sys.prefix, "PYTHONPATH": str(work), "CATSDOGS_DATA": str(work / DATA),
           "CLASSIFIER_CACHE": str(tmp_path_factory.mktemp("cache")), "TORCH_HOME": str(work / ".torch"),
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": THREADS}
    state = Readme(work, env)
    yield state
    for server in state.servers.values():  # one whose stop step did not run (-k): never left behind
        server.process.kill()
        server.process.wait()


# --------------------------------------------------------------------------- running a step


def fail(step, problem: str):
    """Fail with the README line, the command and the problem (not the test code's traceback)."""
    pytest.fail(f"{step}\n  {problem}", pytrace=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def substituted(text: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = re.sub(r"(?<![\w./$-])" + re.escape(placeholder) + r"(?![\w-])", value, text)
    return text


def read_files(tokens: list[str]) -> list[str]:
    """The words that name a file or folder the command reads (photos, checkpoints, weights ...)."""
    paths = []
    for previous, token in zip([""] + tokens, tokens):
        if previous in OUTPUT_FLAGS or token.split("=")[0] in OUTPUT_FLAGS or "://" in token:
            continue
        path = token.split("=", 1)[-1].lstrip("@")
        if READ_FILE.search(path) and not set(path) & OPERATORS:
            paths.append(path)
    return paths


def check_inputs(step: Step, paths: list[str], work: Path) -> None:
    for path in paths:
        if not (work / path).exists():
            fail(step, f"reads {path}, which no earlier README command wrote and the test does not "
                        f"prepare: add it to PHOTOS, FOLDERS or WEIGHTS in {TABLE} (or fix the README)")


def check_known(step: Step, tokens: list[str], readme: "Readme") -> None:
    """Fail, saying what to add to the table, for a placeholder, an installer or a missing input."""
    unknown = [match for token in tokens for match in PLACEHOLDER.findall(token)]
    if unknown:
        fail(step, f"has placeholder(s) {unknown} the README test does not know: add them to "
                    f"PLACEHOLDERS in {TABLE} (or write the command as a user would type it)")
    program = next((t for t in tokens if "=" not in t), "")
    if program in INSTALLERS or tokens[1:3] == ["-m", "pip"]:
        fail(step, f"installs software into the test's venv: add it to SKIPPED in {TABLE} with the reason")
    if any(re.search(LOCAL_URL.format(r"\d+"), t) for t in tokens) and not servers_of(step, readme):
        fail(step, f"talks to a server, but none was started earlier in its block (or it failed, or was "
                   f"deselected; a new server: add it to SERVERS in {TABLE})")
    check_inputs(step, read_files(tokens), readme.work)


def servers_of(step: Step, readme: "Readme") -> list:
    """The servers started earlier in the step's block."""
    return [server for server in readme.servers.values() if server.step.block == step.block]


def before_operators(text: str, extra: str) -> str:
    """`extra` inserted after the command's words, before any redirection or pipe."""
    end = unquoted(text, lambda t, i: t[i] in OPERATORS)
    return f"{text[:end].rstrip()} {extra} {text[end:]}".rstrip()


def as_run(step: Step, text: str, readme: Readme) -> str:
    """The command as the test runs it: SMALL sizes for training, REWRITES, the servers' ports."""
    if is_training(step.text):
        extra = SMALL["pretrained" if {"--pretrained", "--weights"} & set(text.split()) else "from scratch"]
        extra = shlex.join(extra + (["--precision", step.precision] if step.precision != "auto" else []))
        text = before_operators(text, shlex.quote(f"TRAIN_FLAGS={extra}") if text.startswith("make ") else extra)
    for pattern, replacement, _ in REWRITES:
        text = re.sub(pattern, replacement, text)
    for server in servers_of(step, readme):
        text = re.sub(LOCAL_URL.format(server.readme_port), f"127.0.0.1:{server.port}", text)
    return text


def excerpt(output: str, size: int = 3000) -> str:
    """The first traceback (the root cause: torchrun's own report comes after its workers') and the end."""
    first = output.find(TRACEBACK)
    if first < 0 or len(output) - first <= 2 * size:
        return output[-2 * size:]
    return f"{output[first:first + size]}\n[...]\n{output[-size:]}"


def check_output(step: Step, command: str, returncode: int, output: str) -> None:
    if returncode != 0 or TRACEBACK in output:
        problem = f"exit status {returncode}" if returncode != 0 else "a traceback"
        fail(step, f"ran as: {command}\n  {problem}; its output:\n{excerpt(output)}")


def run_shell(step: Step, readme: Readme) -> None:
    text = substituted(step.text)
    check_known(step, words(text), readme)
    command = as_run(step, text, readme)
    if is_server(step.text):
        return start_server(step, command, readme)
    try:
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=readme.work, env=readme.env,
                              capture_output=True, text=True, timeout=COMMAND_SECONDS)
    except subprocess.TimeoutExpired as timeout:
        fail(step, f"ran as: {command}\n  still running after {COMMAND_SECONDS} s: if it is a server, "
                    f"add it to SERVERS in {TABLE}; else make it fast on the tiny data\n{timeout.stderr or ''}")
    check_output(step, command, done.returncode, done.stdout + done.stderr)


def start_server(step: Step, command: str, readme: Readme) -> None:
    """Start it in the background on a free port and wait until it answers HTTP."""
    tokens = words(command)
    readme_port = next((int(b) for a, b in zip(tokens, tokens[1:]) if a == "--port"), README_PORT)
    port = free_port()
    command = before_operators(command, f"--port {port}")
    log = readme.work / f"server-{step.line}.log"
    with open(log, "w") as output:
        process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=readme.work, env=readme.env,
                                   stdout=output, stderr=subprocess.STDOUT)
    readme.servers[step.line] = Server(step, readme_port, port, process, log)
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            check_output(step, command, process.returncode, log.read_text())
            fail(step, f"ran as: {command}\n  exited (status 0) instead of serving:\n{excerpt(log.read_text())}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
            return
        except urllib.error.HTTPError:
            return  # an error page is an answer too
        except OSError:
            time.sleep(0.2)
    fail(step, f"ran as: {command}\n  did not answer on port {port} within {SERVER_START_SECONDS} s:\n"
                f"{excerpt(log.read_text())}")


def stop_server(step: Step, readme: Readme) -> None:
    """SIGTERM at the end of its block: it must exit 0, without a traceback."""
    server = readme.servers.pop(step.line, None)
    if server is None:
        fail(step, "was not started (its command failed, or was deselected)")
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        fail(step, f"did not stop within 30 s of SIGTERM:\n{excerpt(server.log.read_text())}")
    check_output(step, f"{step.text} (then SIGTERM)", server.process.returncode, server.log.read_text())


def run_python(step: Step, readme: Readme) -> None:
    code = substituted(step.text)
    strings = [node.value for node in ast.walk(ast.parse(code))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    check_inputs(step, read_files(strings), readme.work)
    done = subprocess.run([sys.executable, "-c", code], cwd=readme.work, env=readme.env, capture_output=True,
                          text=True, timeout=COMMAND_SECONDS)
    check_output(step, "python -c <the block>", done.returncode, done.stdout + done.stderr)


@pytest.mark.parametrize("step", STEPS, ids=[step_id(s) for s in STEPS])
def test_readme_step(step, readme):
    """Each README command, in README order, in the shared working folder."""
    if step.kind == "language":
        pytest.fail(f"README.md:{step.line}: a fenced block in {step.text!r}: tag shell commands ```bash and "
                    f"Python ```python (both run), or add the language to SHOWN_LANGUAGES in {TABLE}", pytrace=False)
    {"shell": run_shell, "python": run_python, "stop": stop_server}[step.kind](step, readme)


def test_every_skipped_command_is_in_the_readme():
    """A SKIPPED entry that no longer matches a command would hide nothing: keep the table exact."""
    shown = {command for language, _, lines in fenced_blocks(README.read_text()) if language in SHELL_LANGUAGES
             for _, command in shell_commands(language, lines)}
    assert not set(SKIPPED) - shown, f"SKIPPED in {TABLE} lists commands README.md no longer has"


# --------------------------------------------------------------------------- the table itself

SAMPLE = """
```bash
make train                           # a comment
python train.py --data DIR \\
    --model mlp > log.txt
python -m classifier.serve --port 8080
curl http://127.0.0.1:8080/health
```

```console
$ python predict.py cat.jpg
cat  0.97  cat.jpg
```

```python
print("cat.jpg")
```

```
untagged
```
"""


def test_the_readme_is_read_into_steps_as_the_table_says():
    twice = [OTHER, "auto"] if OTHER else ["auto"]
    steps = [(s.kind, s.line, s.text, s.precision) for s in readme_steps(SAMPLE)]
    assert steps == [
        *[("shell", 3, "make train", p) for p in twice],
        *[("shell", 4, "python train.py --data DIR --model mlp > log.txt", p) for p in twice],
        ("shell", 6, "python -m classifier.serve --port 8080", ""),
        ("shell", 7, "curl http://127.0.0.1:8080/health", ""),
        ("stop", 6, "python -m classifier.serve --port 8080", ""),
        ("shell", 11, "python predict.py cat.jpg", ""),
        ("python", 15, 'print("cat.jpg")', ""),
        ("language", 19, "(none)", ""),
    ]


def test_commands_are_run_with_small_sizes_and_the_rewrites(tmp_path):
    readme = Readme(tmp_path, {})
    train = Step("shell", 1, "python train.py --data DIR > log.txt", 0, "fp32")
    assert as_run(train, substituted(train.text), readme) == \
        "python train.py --data data/catsdogs " + shlex.join(SMALL["from scratch"]) + " --precision fp32 > log.txt"
    make = Step("shell", 1, "make train", 0, "auto")
    assert as_run(make, make.text, readme) == \
        "make -o .venv/.installed train " + shlex.quote("TRAIN_FLAGS=" + shlex.join(SMALL["from scratch"]))
    torchrun = Step("shell", 1, "torchrun --standalone --nproc-per-node=4 train.py --list-models", 0)
    assert as_run(torchrun, torchrun.text, readme) == "torchrun --standalone --nproc-per-node=2 train.py --list-models"


@pytest.mark.parametrize("command, what_to_add", [
    ("python train.py --data FOLDER", "PLACEHOLDERS"),
    ("python -m classifier.report $RUN", "PLACEHOLDERS"),
    ("python predict.py holiday.jpg", "PHOTOS, FOLDERS or WEIGHTS"),
    ("pip install -e .[viz]", "SKIPPED"),
    ("curl http://127.0.0.1:8000/health", "SERVERS"),
])
def test_a_command_the_table_does_not_know_fails_saying_what_to_add(command, what_to_add, tmp_path):
    (tmp_path / "cat.jpg").touch()
    known = "python predict.py cat.jpg --output holiday.jsonl"
    check_known(Step("shell", 1, known, 0), words(known), Readme(tmp_path, {}))  # every word known: passes
    with pytest.raises(pytest.fail.Exception, match=re.escape(what_to_add)):
        check_known(Step("shell", 1, command, 0), words(substituted(command)), Readme(tmp_path, {}))
