"""Sphinx math rendered at build time as MathML (latex2mathml): no script, no font, no request.

Browsers draw MathML themselves (Chromium since 109, Firefox, Safari), so the pages need nothing
from another host and work from ``file://``.
"""
from __future__ import annotations

from docutils import nodes
from latex2mathml.converter import convert


def _inline(self, node):
    self.body.append(f'<span class="math">{convert(node.astext())}</span>')
    raise nodes.SkipNode


def _block(self, node):
    self.body.append(f'<div class="math">{convert(node.astext(), display="block")}</div>')
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (_inline, None), (_block, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
