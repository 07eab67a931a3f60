"""Benchmarks: each measures what users run, with the library's own functions, and rewrites its
section of RESULTS.md. Run from the repository root: `python -m benchmarks.NAME --help`."""

from classifier.runtime import keep_freed_memory

keep_freed_memory()  # measured as the project's commands run
