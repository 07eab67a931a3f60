"""Benchmarks: each measures what users run, with the library's own functions, and rewrites its
section of RESULTS.md. Run from the repository root: `python -m benchmarks.NAME --help`."""

from classifier.launch import tune_allocator

tune_allocator(always=True)  # measured as the project's commands run: with its malloc settings
