"""Griffe extension for the API reference: doctest examples shown as Python console code.

The docstrings hold ``>>>`` examples (run by ``pytest --doctest-modules``) in ``Example:``
sections and in plain paragraphs. Markdown reads ``>>>`` as three nested quotes; this extension
fences each run of example lines (``>>>``, ``...`` and the output that follows, up to a blank
line) as a ``pycon`` block, at its own indentation. Only the copy that the site renders changes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

PROMPT = re.compile(r"^(\s*)>>> ")


def fence(text: str) -> str:
    """Wrap every run of doctest lines of ``text`` in a fenced ``pycon`` block."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        prompt = PROMPT.match(lines[i])
        if not prompt:
            out.append(lines[i])
            i += 1
            continue
        indent = prompt.group(1)
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence the doctest examples of every docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the object's docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = fence(obj.docstring.value)
