"""Figures with matplotlib, an optional extra (`pip install .[viz]`): every command that draws
asks for it through `require_matplotlib`, which says what to install when it is missing.
"""

from __future__ import annotations

from pathlib import Path

from classifier.errors import ClassifierError

DPI = 100


def require_matplotlib() -> None:
    """Raise ClassifierError saying what to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ClassifierError(
            "drawing figures needs matplotlib: pip install .[viz] (or pip install matplotlib)") from None


def figure(width: int, height: int):
    """A matplotlib Figure of exactly width x height pixels, drawn with Agg (no display needed)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")


def save_figure(fig, path):
    """Save as PNG to a path (folders made as needed) or a binary file object; returns `path`."""
    if isinstance(path, (str, Path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
