"""The offline pages' shared frame (classifier/pages.py): one stylesheet inlined, text escaped."""

import base64

from classifier.pages import STYLESHEET, data_uri, escape, page, table

HOSTILE = '<script>alert(1)</script> & "q"'


def test_a_page_carries_its_stylesheet_and_fetches_nothing():
    document = page("Title", "<p>body</p>")
    assert document.startswith("<!DOCTYPE html>") and "<p>body</p>" in document
    assert STYLESHEET.read_text() in document
    assert "<link" not in document and "http://" not in document and "https://" not in document
    assert "@import" not in STYLESHEET.read_text() and "url(" not in STYLESHEET.read_text()


def test_hostile_text_is_shown_never_run():
    document = page(HOSTILE, table(("name", HOSTILE), [(HOSTILE, 1)]))
    assert "<script>" not in document and document.count(escape(HOSTILE)) == 4  # title, heading, two cells
    assert escape(HOSTILE) == "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot;"


def test_data_uri_holds_the_bytes():
    uri = data_uri(b"\x89PNG bytes", "image/png")
    assert uri.startswith("data:image/png;base64,") and base64.b64decode(uri.split(",", 1)[1]) == b"\x89PNG bytes"
