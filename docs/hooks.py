"""mkdocs hook: Sphinx roles in docstrings (:class:`~prunekit.plan.Plan`) rendered as plain code
(``Plan``), since mkdocstrings leaves the role's prefix in the text."""
from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def strip_roles(html: str) -> str:
    """``:class:<code>~a.b.C</code>`` -> ``<code>C</code>``; without the tilde the whole name stays.

    >>> strip_roles(":class:<code>~prunekit.plan.Plan</code> and :func:<code>prunekit.prune_</code>")
    '<code>Plan</code> and <code>prunekit.prune_</code>'
    """
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def on_page_content(html: str, **kwargs) -> str:
    return strip_roles(html)
