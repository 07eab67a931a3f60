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

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


def alive(job: Job) -> bool:
    """Whether job.pid is still this job's process (not a pid reused since)."""
    try:
        command = Path(f"/proc/{job.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(job.pid, 0)  # no /proc (macOS): the pid exists
            return True
        except OSError:
            return False
    return job.folder.encode() in b" ".join(command) or any(job.folder.encode() in part for part in command)


def last_line(log: Path, *starts: str) -> str:
    """The last line of the log that starts with one of `starts` ("" if none)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.startswith(starts)), "")


class Jobs:
    """The server's one job at a time: start, stop, and what became of it (job.json)."""

    def __init__(self):
        self.current: Job | None = None
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()

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
            env = {**os.environ, "CLASSIFIER_PROGRESS_SECONDS": str(PROGRESS_SECONDS), "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(classifier.__file__).parents[1]),
                                                                os.environ.get("PYTHONPATH")]))}
            with open(Path(job.folder) / LOG_FILE, "ab") as log:
                self.process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                cwd=job.folder, start_new_session=True)
            job.pid, self.current = self.process.pid, job
            job.save()
            threading.Thread(target=self.wait, args=(job, self.process), daemon=True).start()
            return job

    def wait(self, job: Job, process: subprocess.Popen) -> None:
        status = process.wait()
        with self.lock:
            self.finish(job, status)

    def finish(self, job: Job, status: int | None) -> None:
        """Record how the job ended: finished (status 0), stopped (asked to, and last.pt saved), failed."""
        log, folder = Path(job.folder) / LOG_FILE, Path(job.folder)
        if status == 0:
            job.state, job.message = "finished", ""
        elif (job.stop_requested or "stopped by" in last_line(log, "error: stopped")) and \
                (job.kind != "train" or (folder / "last.pt").is_file()):
            job.state, job.message = "stopped", "stopped; Resume continues where it stopped"
        elif job.stop_requested:
            job.state, job.message = "failed", "stopped before anything was saved: nothing to resume; start it again"
        else:
            job.state = "failed"
            job.message = last_line(log, "error:").removeprefix("error: ") or \
                f"the {job.kind} process ended with status {status}" + (f"; see {LOG_FILE}" if status else "")
        job.ended = time.time()
        job.save()
        if job is self.current:
            self.process = None

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
        """The server is stopping: a running job is stopped (and saves), not left behind."""
        if self.running():
            self.stop(wait=STOP_SECONDS)
            if self.process and self.process.poll() is None:
                self.process.kill()


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
