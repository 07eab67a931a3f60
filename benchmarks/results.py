"""Keep benchmarks/RESULTS.md up to date: each benchmark owns one marked section."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.2f} at the end"


def write_section(name: str, title: str, body: str) -> None:
    """Replace (or append) the section `name` of RESULTS.md, stamped with command and date."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- {name}:start -->\n## {title}\n\n`{command}` on {stamp} ({machine()})\n\n"
               f"{body.strip()}\n<!-- {name}:end -->")
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEach section is rewritten by the script named in it.\n"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)
    print(section)
