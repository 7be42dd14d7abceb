"""MkDocs hook: the reStructuredText roles of the docstrings, rendered for the site.

The docstrings follow torch's style (``:math:`\\rho(t)```, ``.. math::`` blocks,
``:class:`~sigua_optim.SIGUAOptimizer```), which Markdown leaves as literal text. After each page
is rendered, math becomes MathJax input (``pymdownx.arithmatex``'s markup) and a cross-reference
becomes an autorefs link to the API page of the object it names (plain code when the name is not
documented there).
"""

from __future__ import annotations

import re
from typing import Any

MATH_ROLE = re.compile(r":math:<code>(.*?)</code>", re.S)
MATH_BLOCK = re.compile(r"<p>\.\. math::\s*(.*?)</p>", re.S)  # ".. math::" and its indented lines
XREF_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):<code>(.*?)</code>", re.S)


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


def on_page_content(html: str, **kwargs: Any) -> str:
    """Rewrite the roles in a rendered page (before autorefs resolves the links)."""
    html = MATH_BLOCK.sub(lambda m: f'<div class="arithmatex">\\[{m.group(1).strip()}\\]</div>', html)
    html = MATH_ROLE.sub(lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', html)
    return XREF_ROLE.sub(_xref, html)
