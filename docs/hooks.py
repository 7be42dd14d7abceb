"""MkDocs hook: math as MathML, and the docstrings' reStructuredText roles, rendered for the site.

The docstrings follow torch's style (``:math:`\\rho(t)```, ``.. math::`` blocks,
``:class:`~sigua_optim.SIGUAOptimizer```), which Markdown leaves as literal text. After each page
is rendered, a cross-reference becomes an autorefs link to the API page of the object it names
(plain code when the name is not documented there), and all math, the roles' and the pages' own
``\\( \\)`` / ``\\[ \\]`` (kept intact by ``pymdownx.arithmatex``), becomes MathML at build time:
browsers render it natively, with no script and no network.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

MATH_ROLE = re.compile(r":math:<code>(.*?)</code>", re.S)
MATH_BLOCK = re.compile(r"<p>\.\. math::\s*(.*?)</p>", re.S)  # ".. math::" and its indented lines
XREF_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):<code>(.*?)</code>", re.S)
INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)


def _xref(match: re.Match[str]) -> str:
    """``:class:`~a.b.C``` -> a link titled ``C``; ``:meth:`title <a.b.C.m>``` -> titled ``title``."""
    text = match.group(1).strip()
    explicit = re.fullmatch(r"(.*?)\s*&lt;(.+)&gt;", text, re.S)
    if explicit:
        title, target = explicit.group(1), explicit.group(2)
    else:
        target = text.lstrip("~")
        title = target.rsplit(".", 1)[-1] if text.startswith("~") else target
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def _mathml(tex: str, display: str) -> str:
    """TeX (HTML-escaped, as it stands in the page) as a MathML element."""
    return convert(html.unescape(tex).strip(), display=display)


def on_page_content(html: str, **kwargs: Any) -> str:
    """Rewrite the roles and the math of a rendered page (before autorefs resolves the links)."""
    html = MATH_BLOCK.sub(lambda m: _mathml(m.group(1), "block"), html)
    html = MATH_ROLE.sub(lambda m: _mathml(m.group(1), "inline"), html)
    html = DISPLAY.sub(lambda m: _mathml(m.group(1), "block"), html)
    html = INLINE.sub(lambda m: _mathml(m.group(1), "inline"), html)
    return XREF_ROLE.sub(_xref, html)
