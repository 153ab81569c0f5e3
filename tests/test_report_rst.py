"""Config and CSV strings in the report's rst render as the characters they hold (issue 25, finding 5)."""

from __future__ import annotations

import io

import pytest
from docutils.core import publish_parts

from medtransfer.report import rst

HOSTILE = [
    "tiny <img src=x onerror=alert(1)> study",
    "name\n\n.. raw:: html\n\n   <script>alert(1)</script>\n",
    "name\n\n.. include:: /etc/passwd\n",
    "*bold* `x` :raw:`y` |sub| [1]_ a_b \\back co``de",
    " padded ",
]


def render(source: str) -> str:
    return publish_parts(source, writer_name="html", settings_overrides={
        "halt_level": 5, "report_level": 5, "warning_stream": io.StringIO(), "file_insertion_enabled": True,
        "raw_enabled": True})["html_body"]


@pytest.mark.parametrize("value", HOSTILE)
def test_text_and_literal_render_the_characters_and_no_markup(value):
    import html

    shown = html.escape(rst.visible_controls(value), quote=False)
    for piece in (rst.text(value), rst.literal(value)):
        body = render(f"before {piece} after\n")
        assert "<script" not in body and "<img" not in body and "root:" not in body
        assert "<em>" not in body and "<strong>" not in body and "system-message" not in body
        # one paragraph whose text is the value's own characters
        assert body.count("<p>") == 1
        plain = body.replace('<span class="pre">', "").replace("</span>", "").replace("&nbsp;", " ")
        assert shown.strip() in plain


def test_control_characters_are_shown_not_obeyed():
    assert rst.visible_controls("a\nb\tc\x1b") == "a\\nb\\tc\\x1b"
    assert rst.has_control_characters("a\nb") and not rst.has_control_characters("tiny study")


def test_a_title_from_a_hostile_name_stays_a_title():
    name = rst.text(HOSTILE[1])
    title = f"Study: {name}"
    body = render(f"{title}\n{'=' * len(title)}\n\ntext\n")
    assert "<script" not in body and "raw" in body  # the directive's name is shown as text
