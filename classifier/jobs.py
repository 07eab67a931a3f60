"""The studio's background jobs: training (`python -m classifier.train`) and the audit
(`python -m classifier.audit`), each in a process of its own, one at a time per server.

Why a process: training holds the CPU for minutes and stops on SIGTERM by saving last.pt (signal
handlers work only in a process's main thread); in a process of its own it never blocks the
server's event loop, survives a closed or reloaded tab, and is exactly the command a user runs.

A job's folder (the run's folder, or the project's audit/) holds, besides what the command writes:
  job.json   {"kind", "project", "name", "state", "pid", "command", "started", "ended", "message"}
             state: running -> finished | stopped (last.pt saved; resume continues) | failed
  job.log    the process's output (its progress lines, every CLASSIFIER_PROGRESS_SECONDS)

The page follows a job with `Follower`: the run's events (events.jsonl, see runs.py) and the
progress lines of job.log, read incrementally.
When the server stops, it stops a running job the same way (SIGTERM: last.pt is saved), so the
next server finds it stopped and resumable; a job left running by a server that was killed is
found by its pid and followed until it ends.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import classifier
from classifier.errors import ClassifierError
from classifier.runs import EVENTS_FILE

JOB_FILE, LOG_FILE = "job.json", "job.log"
PROGRESS_SECONDS = 0.5  # the job's progress lines, and so the page's updates, come this often
STOP_SECONDS = 60  # how long a stopping job may take to save before it is killed
PROGRESS_LINE = re.compile(r"^(?P<phase>[^:\n]+): (?P<done>\d+)(?:/(?P<total>\d+) \(\d+%\))? (?P<unit>\S+), "
                           r"(?P<elapsed>\d+) s, (?:(?P<rate>[\d.]+) \S+/s)?(?:, (?P<postfix>.*))?$")


class Busy(ClassifierError):
    """A job was asked for while another runs, or a job is not where it should be (answered 409)."""

    status = 409


@dataclass
class Job:
    kind: str  # "train" or "audit"
    project: str
    name: str  # the run's name (train) or "audit"
    folder: str
    command: list[str]
    state: str = "running"
    pid: int = 0
    started: float = field(default_factory=time.time)
    ended: float | None = None
    message: str = ""
    stop_requested: bool = False
    pid_started: int = 0  # the process's start time (clock ticks after boot): a pid reused since is not it

    def save(self) -> None:
        path = Path(self.folder) / JOB_FILE
        temporary = path.with_name(f".{JOB_FILE}.tmp")
        temporary.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(temporary, path)

    @classmethod
    def read(cls, folder: Path) -> "Job | None":
        try:
            return cls(**json.loads((Path(folder) / JOB_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def process_start(pid: int) -> int:
    """When process `pid` started, in clock ticks after boot (/proc/PID/stat); 0 if unknown, or if
    it has ended (a zombie: ended, not yet reaped by its parent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return 0 if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def alive(job: Job) -> bool:
    """Whether job.pid is still this job's process, not one that reused the number since."""
    try:
        os.kill(job.pid, 0)
    except OSError:  # no such process, or someone else's: not ours
        return False
    if not Path("/proc").is_dir():
        return True  # macOS: the pid exists
    started = process_start(job.pid)
    return started != 0 and (not job.pid_started or started == job.pid_started)


def last_line(log: Path, *starts: str) -> str:
    """The last line of the log that starts with one of `starts` ("" if none)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.startswith(starts)), "")


def ended_well(job: Job) -> bool:
    """Whether a job whose exit status is unknown got to its end: a run's last event is "end";
    an audit wrote its findings after it started."""
    folder = Path(job.folder)
    if job.kind == "train":
        try:
            return json.loads(last_line(folder / EVENTS_FILE, "{") or "{}").get("event") == "end"
        except ValueError:  # a line cut short
            return False
    findings = folder / "findings.jsonl"
    return findings.is_file() and findings.stat().st_mtime >= job.started


def job_environment() -> dict:
    """A job's environment: progress lines twice a second, unbuffered output, this server's code."""
    return {**os.environ, "CLASSIFIER_PROGRESS_SECONDS": str(PROGRESS_SECONDS), "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(classifier.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH")]))}


class Warm:
    """A process that has already imported a command's module (`python -m classifier.jobs MODULE`)
    and waits for one run's arguments: a job started in it skips the interpreter's start and the
    imports (torch, torchvision: seconds). It then runs exactly `python -m MODULE ARGS`."""

    def __init__(self, module: str):
        self.module = module
        self.process = subprocess.Popen(python_module("classifier.jobs", module), stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=job_environment(),
                                        start_new_session=True)

    def run(self, job: Job) -> subprocess.Popen | None:
        """Hand it the job; None if it cannot take it (it died, or the command is another module's)."""
        module, args = job.command[2], job.command[3:]
        if job.command[:2] != [sys.executable, "-m"] or module != self.module or self.process.poll() is not None:
            return None
        order = {"args": args, "cwd": job.folder, "log": str(Path(job.folder) / LOG_FILE)}
        try:
            self.process.stdin.write((json.dumps(order) + "\n").encode())
            self.process.stdin.close()
        except OSError:
            return None
        return self.process

    def close(self) -> None:
        """An unused worker ends when its input does."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()


def run_one(module: str) -> None:
    """`python -m classifier.jobs MODULE`: import MODULE, wait for one order on stdin (a JSON line:
    args, cwd, log), then run `python -m MODULE ARGS` in this process, output into the log."""
    importlib.import_module(module)
    line = sys.stdin.readline()
    if not line:
        return  # the server went away without a job for it
    order = json.loads(line)
    os.chdir(order["cwd"])
    log = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = [module, *order["args"]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class Jobs:
    """The server's one job at a time: start, stop, and what became of it (job.json). With
    `warm` modules, a process that imported each waits for the next job (Warm)."""

    def __init__(self, warm: tuple[str, ...] = ()):
        self.current: Job | None = None
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.warm = {module: Warm(module) for module in warm}
        self.when_finished: list[Callable[[Job], None]] = []  # told of each job that finished well (quick calls)

    def running(self) -> Job | None:
        with self.lock:
            if self.current and self.current.state == "running" and self.process is None and not alive(self.current):
                self.finish(self.current, None)  # a job adopted from an earlier server has ended
            return self.current if self.current and self.current.state == "running" else None

    def start(self, job: Job) -> Job:
        """Run job.command in its own process (and session), output into job.log; Busy if a job runs."""
        with self.lock:
            if self.current and self.current.state == "running":
                other = self.current
                raise Busy(f"a job is already running ({other.kind} {other.name!r} of project {other.project!r}); "
                           f"one at a time: stop it or wait for it to finish")
            Path(job.folder).mkdir(parents=True, exist_ok=True)
            warm = self.warm.get(job.command[2])
            self.process = warm.run(job) if warm else None
            if self.process is None:
                with open(Path(job.folder) / LOG_FILE, "ab") as log:
                    self.process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT,
                                                    env=job_environment(), cwd=job.folder, start_new_session=True)
            job.pid, job.pid_started, self.current = self.process.pid, process_start(self.process.pid), job
            job.save()
            threading.Thread(target=self.wait, args=(job, self.process), daemon=True).start()
            return job

    def wait(self, job: Job, process: subprocess.Popen) -> None:
        status = process.wait()
        with self.lock:
            self.finish(job, status)
            for module, warm in self.warm.items():
                if warm.process is process or warm.process.poll() is not None:  # used, or died: the next one
                    self.warm[module] = Warm(module)

    def finish(self, job: Job, status: int | None) -> None:
        """Record how the job ended: finished (status 0), stopped (asked to, or ended unseen, with
        last.pt saved: resumable), failed (with the command's one-line error, paths in the project
        relative to it). status None: not known (a process another server started)."""
        log, folder = Path(job.folder) / LOG_FILE, Path(job.folder)
        if status is None and ended_well(job):
            status = 0
        if status == 0:
            job.state, job.message = "finished", ""
        elif (job.stop_requested or "stopped by" in last_line(log, "error: stopped")) and \
                (job.kind != "train" or (folder / "last.pt").is_file()):
            job.state, job.message = "stopped", "stopped; Resume continues where it stopped"
        elif job.stop_requested:
            job.state, job.message = "failed", "stopped before anything was saved: nothing to resume; start it again"
        elif status is None and (folder / "last.pt").is_file():  # its process ended unseen (the server was killed)
            job.state, job.message = "stopped", "interrupted; Resume continues from the last saved epoch"
        else:
            job.state = "failed"
            error = last_line(log, "error:").removeprefix("error: ")
            project = Path(job.folder).parents[1 if job.kind == "train" else 0]
            job.message = error.replace(f"{project}{os.sep}", "") or \
                f"the {job.kind} process ended with status {status}" + (f"; see {LOG_FILE}" if status else "")
        job.ended = time.time()
        job.save()
        if job is self.current:
            self.process = None
        if job.state == "finished":
            for call in self.when_finished:
                call(job)

    def stop(self, wait: float = 0) -> Job:
        """SIGTERM to the running job: training saves last.pt and exits. ClassifierError if none runs."""
        job = self.running()
        if job is None:
            raise ClassifierError("no job is running")
        job.stop_requested = True
        job.save()
        os.kill(job.pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while wait and self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        return job

    def adopt(self, job: Job) -> None:
        """A job.json that says running: follow that process if it still is (an earlier server was
        killed), else record it as stopped or failed."""
        with self.lock:
            if job.state != "running":
                return
            if alive(job) and not (self.current and self.current.state == "running"):
                self.current, self.process = job, None
            elif not alive(job):
                self.finish(job, None)

    def shutdown(self) -> None:
        """The server is stopping: a running job is stopped (and saves), not left behind; idle warm
        processes end."""
        if self.running():
            self.stop(wait=STOP_SECONDS)
            if self.process and self.process.poll() is None:
                self.process.kill()
        with self.lock:
            for warm in self.warm.values():
                warm.close()
            self.warm = {}


def job_of(folder: Path) -> dict | None:
    """What job.json says about a folder's job, or None."""
    job = Job.read(folder)
    return None if job is None else {k: v for k, v in asdict(job).items() if k not in ("command", "folder")}


# --------------------------------------------------------------------------- following a run


class Follower:
    """The events of a run not yet read: the lines train.py appends to events.jsonl (EVENTS.md: start,
    plan, step, epoch, end, stopped, error), and, for the phases before and between epochs that
    send no events (decoding, the frozen network's pass, cross-validation), job.log's latest
    progress line as a "progress" event."""

    def __init__(self, folder: Path):
        self.folder, self.offsets = Path(folder), {}

    def read_new(self, name: str) -> list[str]:
        """Whole lines appended to folder/name since the last call."""
        path = self.folder / name
        try:
            with open(path, "rb") as file:
                file.seek(self.offsets.get(name, 0))
                data = file.read()
        except OSError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self.offsets[name] = self.offsets.get(name, 0) + len(complete)
        return complete.decode(errors="replace").splitlines()

    def events(self) -> list[dict]:
        found = [json.loads(line) for line in self.read_new(EVENTS_FILE) if line.strip()]
        phases = [match for line in self.read_new(LOG_FILE)
                  if (match := PROGRESS_LINE.match(line)) and not match["phase"].startswith("epoch ")]
        return found + [progress_event(phases[-1])] if phases else found


def progress_event(match: re.Match) -> dict:
    """A progress line ("features of train views: 4/12 (33%) batch, 2 s, 1.9 batch/s") as an event."""
    done, total = int(match["done"]), int(match["total"]) if match["total"] else None
    rate = float(match["rate"]) if match["rate"] else 0.0
    return {"event": "progress", "phase": match["phase"], "done": done, "total": total, "unit": match["unit"],
            "elapsed": int(match["elapsed"]), "eta": round((total - done) / rate, 1) if total and rate else None,
            "time": time.time()}


def python_module(module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args` with this server's Python."""
    return [sys.executable, "-m", module, *args]


if __name__ == "__main__":
    run_one(sys.argv[1])
