"""Standalone HTML pages for people not at a terminal: the audit's and the training report's.

A page is one file that works offline and anywhere it is copied: the shared stylesheet
(static/pages.css) and every image are inside it, nothing is fetched. Text from outside (file
names, class names, folder names) goes through `escape`, so a hostile name is shown, never run.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

STYLESHEET = Path(__file__).parent / "static" / "pages.css"


def escape(value) -> str:
    """Any value as HTML text: <, >, & and quotes escaped."""
    return html.escape(str(value))


def data_uri(data: bytes, media_type: str) -> str:
    """A file's bytes as a data: URI, for an <img> that needs no file beside the page."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def table(header: Sequence, rows: Sequence[Sequence]) -> str:
    """An HTML table of text cells (escaped)."""
    cells = lambda row, tag: "".join(f"<{tag}>{escape(c)}</{tag}>" for c in row)
    return ("<table><tr>" + cells(header, "th") + "</tr>"
            + "".join("<tr>" + cells(row, "td") + "</tr>" for row in rows) + "</table>")


def page(title: str, body: str) -> str:
    """A whole HTML document: `title` (text) as its title and heading, then `body` (HTML, its
    text already escaped), with the shared stylesheet inlined."""
    title = escape(title)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
            f"<style>\n{STYLESHEET.read_text()}</style></head>\n<body><h1>{title}</h1>\n{body}\n</body></html>\n")
