"""Run a function in a forked child as an unprivileged user.

Tests run as root, for whom chmod 000 changes nothing. A forked child that drops to the
`nobody` user (uid/gid 65534) meets permissions as any user would; it needs no Python of
its own, since the fork already holds everything imported. The child must not run torch's
parallel kernels: its thread pool does not survive a fork.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

NOBODY = 65534


def shared_folder() -> Path:
    """A fresh folder another user can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="catsdogs-test-"))
    folder.chmod(0o755)
    return folder


def run_as_nobody(function, *args):
    """Call function(*args) in a forked child running as nobody; returns (its JSON-able
    result, what it wrote to stderr). An exception in the child fails the test with its text."""
    results, errors = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run, report, and leave without cleanup
        status = 0
        try:
            os.close(results[0]), os.close(errors[0])
            os.dup2(errors[1], 2)
            sys.stderr = open(2, "w", closefd=False)  # past pytest's capture, into the pipe
            os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)
            payload = {"result": function(*args)}
        except BaseException as error:  # reported to the parent, which fails the test
            payload, status = {"exception": f"{type(error).__name__}: {error}"}, 1
        sys.stderr.flush()
        os.write(results[1], json.dumps(payload).encode())
        os._exit(status)
    os.close(results[1]), os.close(errors[1])
    with os.fdopen(results[0], "rb") as out, os.fdopen(errors[0], "rb") as err:
        payload, stderr = json.loads(out.read() or b"{}"), err.read().decode()
    os.waitpid(pid, 0)
    assert "exception" not in payload, payload["exception"]
    return payload["result"], stderr
